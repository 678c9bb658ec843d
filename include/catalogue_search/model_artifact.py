"""Package CLIP as the `model.tar.gz` the SageMaker PyTorch container serves.

Layout (what the container expects): `model.pt` (state_dict) and
`clip_config.json` at the archive root, the handler under `code/`
(`inference.py`, `requirements.txt`, copied from `inference_code/`), and
`artifact_version.txt`: the ARTIFACT VERSION, a digest of the weights, the
model config and the handler code (which holds the image preprocessing). It
is also stored in the uploaded object's metadata (`artifact-version`), so one
HEAD tells which vectors an artifact produces; stored embeddings and indices
are keyed by it (`read_artifact_version`).

With a pretrained tag (e.g. `openai`) the real weights are packaged; offline
(no model hub) or with `pretrained=""` the archive holds randomly initialised
weights of the same architecture and a loud warning says search results will
not be meaningful. Builds are deterministic: the same inputs give the same
bytes, so an unchanged artifact is neither rebuilt nor uploaded again.

    python -m catalogue_search.model_artifact build --model ViT-B-32 --pretrained openai \\
        --out /tmp/model.tar.gz [--config tiny.json] [--upload]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from catalogue_search.aws import is_s3_missing
from catalogue_search.contract import GZIP
from catalogue_search.errors import PermanentError
from catalogue_search.handler import INFERENCE_CODE_DIR, load_inference_module, sha256_file
from catalogue_search.s3util import parse_s3_uri
from catalogue_search.settings import Settings, boto3_client

logger = logging.getLogger(__name__)

CODE_FILES = ("inference.py", "requirements.txt")
VERSION_FILE = "artifact_version.txt"
VERSION_METADATA = "artifact-version"  # S3 user metadata key (x-amz-meta-artifact-version)
FORMAT_VERSION = 1
RANDOM_SEED = 0
RANDOM_WEIGHTS_WARNING = (
    "model.tar.gz for {model} holds RANDOMLY INITIALISED weights ({reason}): the pipeline runs end to "
    "end, but search results will NOT be meaningful. Build with a pretrained tag where the model hub "
    "is reachable to package real CLIP weights."
)


@dataclass(frozen=True)
class ArtifactInfo:
    """What a build produced; `pretrained_loaded` is False when the weights are random."""

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _read_model_cfg(model_name: str, model_cfg_path: str | Path | None) -> dict[str, Any]:
    import open_clip

    if model_cfg_path:
        cfg = json.loads(Path(model_cfg_path).read_text())
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError(f"{model_cfg_path} is not an open_clip model config (embed_dim, vision_cfg, text_cfg)")
        return cfg
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(
            f"{model_name!r} is not an open_clip built-in model: pass --config with its architecture "
            f"(built-ins include {', '.join(open_clip.list_models()[:8])}, ...)"
        )
    return cfg


def _recipe(model_name: str, pretrained: str, cfg: dict[str, Any], code_dir: Path, seed: int) -> str:
    """A digest of everything that decides the artifact's bytes (for the local cache)."""
    import open_clip

    digest = hashlib.sha256()
    digest.update(
        json.dumps([FORMAT_VERSION, model_name, pretrained, cfg, seed, open_clip.__version__], sort_keys=True).encode()
    )
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
) -> dict[str, Any]:
    """Write what goes inside model.tar.gz into `model_dir`; return clip_config.json's content.

    `pretrained` is an open_clip tag, a local checkpoint file, or "" for random
    weights. A tag that cannot be fetched (offline) falls back to random
    weights of the same architecture; an unknown tag or a bad file is an error.
    """
    import open_clip
    import torch

    model_dir = Path(model_dir)
    pretrained = pretrained or ""
    cfg = _read_model_cfg(model_name, model_cfg_path)
    tag_cfg: dict[str, Any] = {}
    checkpoint_file = ""
    if pretrained:
        if Path(pretrained).is_file():
            checkpoint_file = pretrained
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if model_cfg_path or pretrained not in tags:
                raise ValueError(
                    f"pretrained={pretrained!r} is neither a checkpoint file nor a pretrained tag of the "
                    f"built-in {model_name} config (tags: {', '.join(tags) or 'none'})"
                )
            tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
            if tag_cfg.get("quick_gelu") and not cfg.get("quick_gelu"):
                cfg = {**cfg, "quick_gelu": True}  # the weights were trained with QuickGELU
    preprocess_overrides = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}

    inference = load_inference_module(code_dir / "inference.py")
    name = inference.register_model_config(model_name, cfg)
    model = None
    loaded = False
    reason = "no pretrained tag was given"
    if tag_cfg:
        try:
            model, _, _ = open_clip.create_model_and_transforms(
                model_name,
                pretrained=pretrained,
                force_quick_gelu=bool(cfg.get("quick_gelu")),
                cache_dir=cache_dir,
            )
            loaded = True
        except Exception as exc:  # offline: no model hub
            reason = f"pretrained {model_name}/{pretrained} could not be loaded: {exc}"
            logger.warning("Falling back to random weights: %s", reason)
    elif checkpoint_file:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=checkpoint_file)
        loaded = True
    if model is None:
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None, force_preprocess_cfg=preprocess_overrides or None)
        logger.warning(RANDOM_WEIGHTS_WARNING.format(model=model_name, reason=reason))

    image_size = model.visual.image_size
    if isinstance(image_size, (tuple, list)):
        image_size = int(image_size[0]) if len(set(image_size)) == 1 else list(image_size)
    recorded = Path(pretrained).name if checkpoint_file else pretrained
    clip_config = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "pretrained": recorded if loaded else "",
        "pretrained_requested": recorded,
        "embed_dim": int(cfg["embed_dim"]),
        "image_size": image_size,
        "context_length": int(cfg["text_cfg"].get("context_length", 77)),
        "model_cfg": _jsonable(cfg),
        "preprocess_cfg": _jsonable(model.visual.preprocess_cfg),
        "open_clip_version": open_clip.__version__,
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), model_dir / "model.pt")
    (model_dir / "clip_config.json").write_text(json.dumps(clip_config, indent=2, sort_keys=True) + "\n")
    (model_dir / "code").mkdir(exist_ok=True)
    for file_name in CODE_FILES:
        (model_dir / "code" / file_name).write_bytes((code_dir / file_name).read_bytes())
    (model_dir / VERSION_FILE).write_text(artifact_version(model_dir) + "\n")
    return clip_config


def artifact_version(model_dir: str | Path) -> str:
    """The version of what a model directory computes: weights + model config + handler code.

    The handler code (`code/inference.py`) holds the image decoding and
    preprocessing, so a change there gives new vectors as surely as new
    weights. 16 hex digits of a sha256 (64 bits: no collisions among the
    artifacts one project will ever build).
    """
    model_dir = Path(model_dir)
    digest = hashlib.sha256(b"catalogue-search artifact version 1\n")
    digest.update(sha256_file(model_dir / "model.pt").encode())
    config = json.loads((model_dir / "clip_config.json").read_text())
    digest.update(json.dumps(config, sort_keys=True).encode())
    digest.update((model_dir / "code" / "inference.py").read_bytes())
    return digest.hexdigest()[:16]


def read_artifact_version(s3_client: Any, uri: str) -> str:
    """The artifact version of the model.tar.gz at `uri`: one HEAD (its S3 metadata).

    Raises `ArtifactVersionError` when the object is missing or was uploaded
    without a version (built before versions existed): rebuild and upload it.
    """
    bucket, key = parse_s3_uri(uri)
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if is_s3_missing(exc, bucket=True):
            raise ArtifactVersionError(
                f"no model artifact at {uri}: build and upload it first "
                "(`./dev demo` or `python -m catalogue_search.model_artifact build --upload`)"
            ) from exc
        raise
    version = (head.get("Metadata") or {}).get(VERSION_METADATA, "")
    if not version:
        raise ArtifactVersionError(
            f"the model artifact at {uri} has no {VERSION_METADATA!r} metadata (built by an older version of "
            "this project): rebuild and upload it with `python -m catalogue_search.model_artifact build --upload`"
        )
    return version


class ArtifactVersionError(PermanentError, RuntimeError):
    """The model artifact's version cannot be read; the message says what to do."""


def _write_deterministic_tar(out_path: Path, root: Path) -> None:
    """Tar + gzip `root` with fixed metadata and member order, so equal inputs give equal bytes."""
    paths = sorted(p for p in root.rglob("*"))
    partial = out_path.with_name(out_path.name + ".partial")
    with partial.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for path in paths:
                    info = tarfile.TarInfo(path.relative_to(root).as_posix())
                    info.mtime = 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if path.is_dir():
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                        tar.addfile(info)
                    else:
                        info.mode = 0o644
                        info.size = path.stat().st_size
                        with path.open("rb") as handle:
                            tar.addfile(info, handle)
    partial.replace(out_path)


def _pretrained_weights_available(model_name: str, tag: str, cache_dir: str | None) -> bool:
    """Whether a tag's weights can be fetched now (or are in open_clip's download cache)."""
    import open_clip

    try:
        return bool(open_clip.download_pretrained(open_clip.get_pretrained_cfg(model_name, tag), cache_dir=cache_dir))
    except Exception as exc:  # offline: no model hub
        logger.info("pretrained %s/%s unavailable: %s", model_name, tag, exc)
        return False


def _info_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".json")


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
) -> ArtifactInfo:
    """Build model.tar.gz at `out_path` (see the module docstring for the layout).

    A previous build of the same recipe at `out_path` (recorded in the
    `<out>.json` side file) is reused unless `force`, or unless it fell back to
    random weights while pretrained ones were asked for.
    """
    out_path = Path(out_path)
    pretrained = pretrained or ""
    cfg = _read_model_cfg(model_name, model_cfg_path)
    recipe = _recipe(model_name, pretrained, cfg, code_dir, seed)
    info_path = _info_path(out_path)
    if not force and out_path.is_file() and info_path.is_file():
        try:
            cached = ArtifactInfo(**json.loads(info_path.read_text()))
        except (TypeError, ValueError):
            cached = None
        if (
            cached is not None
            and cached.recipe == recipe
            and cached.artifact_version
            and cached.size_bytes == out_path.stat().st_size
        ):
            if cached.pretrained_loaded or not pretrained:
                logger.info("Reusing %s (same recipe %s)", out_path, recipe[:12])
                if not cached.pretrained_loaded:
                    logger.warning(RANDOM_WEIGHTS_WARNING.format(model=model_name, reason="pretrained=''"))
                return cached
            if not _pretrained_weights_available(model_name, pretrained, cache_dir):
                logger.warning(
                    RANDOM_WEIGHTS_WARNING.format(
                        model=model_name, reason=f"{pretrained} weights are still unavailable; reusing {out_path}"
                    )
                )
                return cached

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="model-artifact-", dir=out_path.parent) as tmp:
        clip_config = write_model_dir(
            tmp, model_name, pretrained, model_cfg_path, seed=seed, cache_dir=cache_dir, code_dir=code_dir
        )
        _write_deterministic_tar(out_path, Path(tmp))
        clip_config = {**clip_config, "artifact_version": (Path(tmp) / VERSION_FILE).read_text().strip()}
    info = ArtifactInfo(
        path=str(out_path),
        model_name=model_name,
        pretrained=pretrained,
        pretrained_loaded=bool(clip_config["pretrained"]),
        embed_dim=clip_config["embed_dim"],
        image_size=clip_config["image_size"],
        context_length=clip_config["context_length"],
        sha256=sha256_file(out_path),
        size_bytes=out_path.stat().st_size,
        recipe=recipe,
        artifact_version=clip_config["artifact_version"],
    )
    info_path.write_text(json.dumps(info.as_dict(), indent=2) + "\n")
    logger.info("Built %s (%d bytes, sha256 %s)", out_path, info.size_bytes, info.sha256[:12])
    return info


def archive_version(path: str | Path) -> str:
    """The artifact version recorded inside a model.tar.gz."""
    with tarfile.open(path, "r:*") as tar:
        try:
            member = tar.extractfile(VERSION_FILE)
        except KeyError:
            member = None
        if member is None:
            raise ArtifactVersionError(f"{path} has no {VERSION_FILE}: rebuild it (`model_artifact build --force`)")
        return member.read().decode().strip()


def upload_model_artifact(settings: Settings, s3_client: Any, path: str | Path) -> str:
    """Upload model.tar.gz to `settings.artifact_uri` (skipped when the same bytes are there).

    The object's metadata carries `sha256` and the artifact version (`artifact-version`).
    """
    from botocore.exceptions import ClientError

    uri = settings.artifact_uri
    bucket, key = parse_s3_uri(uri)
    sha256 = sha256_file(Path(path))
    version = archive_version(path)
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        meta = head.get("Metadata", {})
        if meta.get("sha256") == sha256 and meta.get(VERSION_METADATA) == version:
            logger.info("%s already holds this artifact (sha256 %s): not uploading", uri, sha256[:12])
            return uri
    except ClientError as exc:
        if not is_s3_missing(exc):
            raise
    s3_client.upload_file(
        str(path),
        bucket,
        key,
        ExtraArgs={"Metadata": {"sha256": sha256, VERSION_METADATA: version}, "ContentType": GZIP},
    )
    logger.info("Uploaded %s to %s", path, uri)
    return uri


def inference_image_uri(settings: Settings, instance_type: str | None = None) -> str:
    """The serving image: the configured one, else SageMaker's PyTorch inference image."""
    if settings.inference_image_uri:
        return settings.inference_image_uri
    from sagemaker.core import image_uris  # slow import: only when needed

    return image_uris.retrieve(
        framework="pytorch",
        region=settings.region,
        version=settings.framework_version,
        py_version=settings.py_version,
        image_scope="inference",
        instance_type=instance_type or settings.transform_instance_type,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `build` a model.tar.gz (optionally `--upload` it), or print the `image-uri`."""
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m catalogue_search.model_artifact",
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
    image = commands.add_parser("image-uri", help="print the inference container image URI")
    image.add_argument("--instance-type", default=None)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "image-uri":
        print(inference_image_uri(settings, args.instance_type))
        return 0

    settings = settings.replace(model_name=args.model)
    out = args.out or settings.model_cache.parent / "artifacts" / settings.model_slug / "model.tar.gz"
    info = build_model_artifact(out, args.model, args.pretrained, args.config, force=args.force)
    result = info.as_dict()
    if args.upload:
        result["uri"] = upload_model_artifact(settings, boto3_client("s3", settings), out)
    print(json.dumps(result, indent=2))
    if not info.pretrained_loaded:
        print(
            f"WARNING: {out} holds RANDOM weights for {args.model}: search results will not be meaningful.",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
