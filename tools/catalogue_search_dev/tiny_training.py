"""A tiny CLIP that has learnt the sample catalogue: a model whose quality is above chance.

Random weights put text -> image search at chance level, so the quality gate
cannot be shown with them. A few hundred steps of CLIP's contrastive loss over
the sample catalogue's (image, title) pairs give the tiny test architecture a
text -> image recall@10 far above chance on that catalogue (its own training
set, memorised: all a gate test needs). `permuted_text_projection` then makes
a worse model of it: the text tower's output dimensions shuffled, so a title
still finds its own title vector (name mode) while text -> image falls to chance.

Checkpoints are cached in $CATSEARCH_HOME/trained, keyed by everything that
decides them. The artifacts are built with `model_artifact` (a checkpoint file
as the pretrained weights) and uploaded with `random-weights: false`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from catalogue_search.handler import load_handler, sha256_file
from catalogue_search.model_artifact import VERSION_METADATA
from catalogue_search.s3util import parse_s3_uri
from catalogue_search.settings import Settings
from catalogue_search_dev.localenv import cache_home, exclusive
from catalogue_search_dev.model_archive import archive_version
from catalogue_search_dev.model_build import write_model_dir

log = logging.getLogger(__name__)

RECIPE_VERSION = 1


def _recipe(cfg: dict[str, Any], products: list[dict[str, Any]], **knobs: Any) -> str:
    import open_clip

    pairs = [(p["item_id"], p["item_name"], p["path"]) for p in products]
    text = json.dumps([RECIPE_VERSION, cfg, pairs, knobs, open_clip.__version__], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trained_checkpoint(
    layout: Path,
    products: list[dict[str, Any]],
    model_cfg_path: Path,
    *,
    steps: int = 150,
    batch: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> Path:
    """A state_dict of the tiny model trained on `products`' images and titles (cached)."""
    cfg = json.loads(Path(model_cfg_path).read_text())
    recipe = _recipe(cfg, products, steps=steps, batch=batch, lr=lr, seed=seed)
    out = Path(cache_dir or cache_home() / "trained") / f"tiny-clip-{recipe}.pt"
    if out.is_file():
        return out
    with exclusive(out.with_suffix(".lock")):  # two processes training one recipe: the second waits, then reads
        if not out.is_file():
            _train(model_cfg_path, layout, products, out, steps=steps, batch=batch, lr=lr, seed=seed)
    return out


def _train(model_cfg_path, layout, products, out: Path, *, steps: int, batch: int, lr: float, seed: int) -> None:
    import torch

    with tempfile.TemporaryDirectory(prefix="tiny-training-") as tmp:
        write_model_dir(tmp, "tiny-clip", "", model_cfg_path, seed=seed)
        images, texts = load_handler(tmp, "IMAGE"), load_handler(tmp, "TEXT")
        pixels, titles = [], []
        for product in products:  # the handler's own decoding and preprocessing
            try:
                blob = (Path(layout) / "images/small" / product["path"]).read_bytes()
                pixels.append(images.module.image_tensor(blob, images.model))
                titles.append(product["item_name"].strip())
            except Exception as exc:  # a corrupt image: left out, as the pipeline leaves it out
                log.info("training without %s: %s", product["item_id"], exc)
        x, tokens = torch.stack(pixels), texts.model.tokenizer(titles)
        model = images.model.model
        model.train().requires_grad_(True)
        torch.manual_seed(seed)
        order = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        for step in range(steps):
            rows = torch.randperm(len(titles), generator=order)[:batch]
            image = model.encode_image(x[rows], normalize=True)
            text = model.encode_text(tokens[rows], normalize=True)
            logits = model.logit_scale.exp() * image @ text.T
            labels = torch.arange(len(rows))
            loss = (
                torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
            ) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % 50 == 0 or step == steps - 1:
                log.info("tiny CLIP training: step %d/%d, loss %.3f", step + 1, steps, loss.item())
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, partial)
        partial.replace(out)


def permuted_text_projection(checkpoint: Path, out: Path, seed: int = 0) -> Path:
    """The same weights with the text projection's output dimensions shuffled: a worse text -> image model."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    projection = state["text_projection"]  # (width, embed_dim)
    order = torch.randperm(projection.shape[1], generator=torch.Generator().manual_seed(seed))
    state["text_projection"] = projection[:, order].clone()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def upload_artifact(settings: Settings, s3, path: Path, *, random_weights: bool) -> str:
    """Upload a model.tar.gz to the settings' artifact URI with its version and `random-weights` metadata."""
    bucket, key = parse_s3_uri(settings.artifact_uri)
    metadata = {
        "sha256": sha256_file(Path(path)),
        VERSION_METADATA: archive_version(path),
        "random-weights": "true" if random_weights else "false",
    }
    s3.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": metadata, "ContentType": "application/gzip"})
    return metadata[VERSION_METADATA]
