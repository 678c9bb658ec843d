"""Build CLIP as the `model.tar.gz` the SageMaker PyTorch inference container serves.

Layout (what the container expects, unpacked to /opt/ml/model):
- `model.pt` (state_dict) and `clip_config.json` at the root;
- the handler under `code/`: `inference.py` and `requirements.txt` from
  `inference_code/`, and `wheels/`, the packages the handler needs beyond the
  image, vendored (`vendor_wheels`), so the container starts with no network;
- `artifact_version.txt`: the ARTIFACT VERSION, a digest of the weights, the
  model config and the handler code (`code/inference.py` holds the image
  preprocessing, `code/requirements.txt` the open_clip version). The upload
  stores it in the object's metadata (`model_archive.upload_model_artifact`).

`clip_config.json` says which weights the archive holds: `"random_weights"`
and `"pretrained"` (the tag, or null). With a pretrained tag (e.g. `openai`)
the real weights are packaged. A tag whose weights cannot be loaded (no model
hub in reach) is an error unless `--allow-random-weights` is given: then the
archive holds randomly initialised weights of the same architecture, says so,
and a loud warning says search results will not be meaningful. `--pretrained
""` asks for random weights outright. Builds are deterministic: the same inputs
give the same bytes, so an unchanged artifact is neither rebuilt nor uploaded
again.

    python -m catalogue_search_dev.model_build build --model ViT-B-32 --pretrained openai \\
        [--out /tmp/model.tar.gz] [--config tiny.json] [--upload] [--allow-random-weights]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from catalogue_search.handler import INFERENCE_CODE_DIR, load_inference_module, sha256_file
from catalogue_search.model_artifact import VERSION_FILE
from catalogue_search.model_package import CODE_FILES, artifact_version
from catalogue_search.settings import Settings, boto3_client
from catalogue_search_dev import vendor_wheels
from catalogue_search_dev.localenv import exclusive
from catalogue_search_dev.model_archive import upload_model_artifact, write_deterministic_tar
from catalogue_search_dev.model_weights import (
    RANDOM_WEIGHTS_WARNING,
    RandomWeightsError,
    create_model,
    pretrained_cfg,
    pretrained_weights_available,
    read_model_cfg,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: random_weights, pretrained=null, vendored wheels
RANDOM_SEED = 0


@dataclass(frozen=True)
class ArtifactInfo:
    """What a build produced; `random_weights` is True when the weights are not a pretrained checkpoint."""

    path: str
    model_name: str
    pretrained: str
    pretrained_loaded: bool
    embed_dim: int
    image_size: int | list[int]
    context_length: int
    sha256: str
    size_bytes: int
    recipe: str
    artifact_version: str = ""
    random_weights: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recipe(model_name: str, pretrained: str, cfg: dict[str, Any], code_dir: Path, seed: int, target: str) -> str:
    """A digest of everything that decides the artifact's bytes (for the local cache)."""
    import open_clip

    digest = hashlib.sha256()
    key = [FORMAT_VERSION, model_name, pretrained, cfg, seed, open_clip.__version__, target]
    digest.update(json.dumps(key, sort_keys=True).encode())
    if pretrained and Path(pretrained).is_file():
        digest.update(sha256_file(Path(pretrained)).encode())
    for name in CODE_FILES:
        digest.update((code_dir / name).read_bytes())
    return digest.hexdigest()


def write_model_dir(
    model_dir: str | Path,
    model_name: str,
    pretrained: str,
    model_cfg_path: str | Path | None = None,
    *,
    seed: int = RANDOM_SEED,
    cache_dir: str | None = None,
    code_dir: Path = INFERENCE_CODE_DIR,
    allow_random_weights: bool = False,
    vendor_for: Settings | None = None,
) -> dict[str, Any]:
    """Write what goes inside model.tar.gz into `model_dir`; return clip_config.json's content.

    `pretrained` is an open_clip tag, a local checkpoint file, or "" for random
    weights; an unknown tag or a bad file is an error, and so is a tag whose
    weights cannot be fetched unless `allow_random_weights`. With `vendor_for`
    (the settings naming the target container), the handler's wheels go under
    `code/wheels/`; without it the directory serves in-process only.
    """
    import open_clip
    import torch

    model_dir = Path(model_dir)
    pretrained = pretrained or ""
    cfg = read_model_cfg(model_name, model_cfg_path)
    checkpoint_file = pretrained if pretrained and Path(pretrained).is_file() else ""
    tag_cfg: dict[str, Any] = {}
    if pretrained and not checkpoint_file:
        tag_cfg = pretrained_cfg(model_name, pretrained, bool(model_cfg_path))
        if tag_cfg.get("quick_gelu") and not cfg.get("quick_gelu"):
            cfg = {**cfg, "quick_gelu": True}  # the weights were trained with QuickGELU
    name = load_inference_module(code_dir / "inference.py").register_model_config(model_name, cfg)
    options = {"cache_dir": cache_dir, "allow_random_weights": allow_random_weights, "checkpoint_file": checkpoint_file}
    model, loaded = create_model(name, model_name, pretrained, tag_cfg, cfg, seed, options)

    image_size = model.visual.image_size
    if isinstance(image_size, (tuple, list)):
        image_size = int(image_size[0]) if len(set(image_size)) == 1 else list(image_size)
    recorded = Path(pretrained).name if checkpoint_file else pretrained
    clip_config = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "pretrained": recorded if loaded else None,
        "pretrained_requested": recorded,
        "random_weights": not loaded,
        "embed_dim": int(cfg["embed_dim"]),
        "image_size": image_size,
        "context_length": int(cfg["text_cfg"].get("context_length", 77)),
        "model_cfg": json.loads(json.dumps(cfg)),
        "preprocess_cfg": json.loads(json.dumps(model.visual.preprocess_cfg)),
        "open_clip_version": open_clip.__version__,
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), model_dir / "model.pt")
    (model_dir / "clip_config.json").write_text(json.dumps(clip_config, indent=2, sort_keys=True) + "\n")
    (model_dir / "code").mkdir(exist_ok=True)
    for file_name in CODE_FILES:
        (model_dir / "code" / file_name).write_bytes((code_dir / file_name).read_bytes())
    if vendor_for is not None:
        vendor_wheels.vendor(model_dir / "code", vendor_for)
    (model_dir / VERSION_FILE).write_text(artifact_version(model_dir) + "\n")
    return clip_config


def _info_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".json")


def _cached(out_path: Path, recipe: str, pretrained: str, allow_random_weights: bool, cache_dir: str | None):
    """The previous build at `out_path` if it is of this recipe and holds what was asked for.

    A random-weight build where pretrained weights were asked for is reused only
    while they are still unavailable and random weights are allowed.
    """
    try:
        cached = ArtifactInfo(**json.loads(_info_path(out_path).read_text()))
    except (OSError, TypeError, ValueError):
        return None
    if cached.recipe != recipe or not cached.artifact_version or not out_path.is_file():
        return None
    if cached.size_bytes != out_path.stat().st_size:
        return None
    if cached.random_weights and pretrained:
        if not allow_random_weights or pretrained_weights_available(cached.model_name, pretrained, cache_dir):
            return None  # build again: it fetches the weights, or refuses
    return cached


def build_model_artifact(
    out_path: str | Path,
    model_name: str,
    pretrained: str,
    model_cfg_path: str | Path | None = None,
    *,
    seed: int = RANDOM_SEED,
    force: bool = False,
    cache_dir: str | None = None,
    code_dir: Path = INFERENCE_CODE_DIR,
    allow_random_weights: bool = False,
    settings: Settings | None = None,
) -> ArtifactInfo:
    """Build model.tar.gz at `out_path` (see the module docstring for the layout).

    A previous build of the same recipe at `out_path` (recorded in the
    `<out>.json` side file) is reused unless `force`, or unless it holds random
    weights while pretrained ones were asked for. `settings` names the target
    container (default: from the environment).
    """
    out_path = Path(out_path)
    pretrained = pretrained or ""
    settings = settings or Settings.from_env()
    cfg = read_model_cfg(model_name, model_cfg_path)
    targets = ",".join(vendor_wheels.target_pythons(settings))
    recipe = _recipe(model_name, pretrained, cfg, code_dir, seed, targets)
    # Two processes building one artifact (the suite's workers on a fresh machine) take turns: the second
    # reuses the first one's build instead of writing the same `.partial` file beside it.
    with exclusive(out_path.with_name(out_path.name + ".lock")):
        cached = None if force else _cached(out_path, recipe, pretrained, allow_random_weights, cache_dir)
        if cached is not None:
            logger.info("Reusing %s (same recipe %s)", out_path, recipe[:12])
            if cached.random_weights:
                reason = f"{pretrained} weights are still unavailable" if pretrained else "pretrained=''"
                logger.warning(RANDOM_WEIGHTS_WARNING.format(model=model_name, reason=reason))
            return cached

        with tempfile.TemporaryDirectory(prefix="model-artifact-", dir=out_path.parent) as tmp:
            clip_config = write_model_dir(
                tmp,
                model_name,
                pretrained,
                model_cfg_path,
                seed=seed,
                cache_dir=cache_dir,
                code_dir=code_dir,
                allow_random_weights=allow_random_weights,
                vendor_for=settings,
            )
            version = (Path(tmp) / VERSION_FILE).read_text().strip()
            write_deterministic_tar(out_path, Path(tmp))
        info = ArtifactInfo(
            path=str(out_path),
            model_name=model_name,
            pretrained=pretrained,
            pretrained_loaded=not clip_config["random_weights"],
            embed_dim=clip_config["embed_dim"],
            image_size=clip_config["image_size"],
            context_length=clip_config["context_length"],
            sha256=sha256_file(out_path),
            size_bytes=out_path.stat().st_size,
            recipe=recipe,
            artifact_version=version,
            random_weights=clip_config["random_weights"],
        )
        _info_path(out_path).write_text(json.dumps(info.as_dict(), indent=2) + "\n")
        logger.info("Built %s (%d bytes, sha256 %s)", out_path, info.size_bytes, info.sha256[:12])
        return info


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `build` a model.tar.gz, optionally `--upload` it."""
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m catalogue_search_dev.model_build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build model.tar.gz")
    build.add_argument("--model", default=settings.model_name, help="open_clip model name (%(default)s)")
    build.add_argument(
        "--pretrained",
        default=settings.model_pretrained,
        help='pretrained tag or checkpoint file; "" for random weights (%(default)s)',
    )
    build.add_argument("--out", type=Path, default=None, help="output path (default: a local cache)")
    build.add_argument("--config", type=Path, default=None, help="open_clip model config JSON (non built-in models)")
    build.add_argument("--upload", action="store_true", help="upload to the settings' artifact URI")
    build.add_argument("--force", action="store_true", help="rebuild even if the cached artifact matches")
    build.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="package random weights when the pretrained ones cannot be loaded, instead of failing",
    )
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = settings.replace(model_name=args.model)
    out = args.out or settings.model_cache.parent / "artifacts" / settings.model_slug / "model.tar.gz"
    try:
        info = build_model_artifact(
            out,
            args.model,
            args.pretrained,
            args.config,
            force=args.force,
            allow_random_weights=args.allow_random_weights,
            settings=settings,
        )
    except (RandomWeightsError, vendor_wheels.VendorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = info.as_dict()
    if args.upload:
        result["uri"] = upload_model_artifact(settings, boto3_client("s3", settings), out)
    print(json.dumps(result, indent=2))
    if info.random_weights:
        print(
            f"WARNING: {out} holds RANDOM weights for {args.model}: search results will not be meaningful.",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
