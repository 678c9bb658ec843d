"""The network to package: an open_clip architecture with pretrained weights, or random ones when allowed.

`pretrained` is an open_clip tag (its weights come from the model hub), a
local checkpoint file, or "" for random weights. A tag whose weights cannot
be fetched is an error (`RandomWeightsError`) unless random weights are
allowed: then the network has the real architecture, randomly initialised
(seeded), and a loud warning says search results will not be meaningful.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from catalogue_search.errors import PermanentError

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "model.tar.gz for {model} holds RANDOMLY INITIALISED weights ({reason}): the pipeline runs end to "
    "end, but search results will NOT be meaningful. Build with a pretrained tag where the model hub "
    "is reachable to package real CLIP weights."
)


class RandomWeightsError(PermanentError):
    """Pretrained weights were asked for and cannot be loaded, and random ones were not allowed."""


def read_model_cfg(model_name: str, model_cfg_path: str | Path | None) -> dict[str, Any]:
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


def pretrained_cfg(model_name: str, pretrained: str, has_cfg_file: bool) -> dict[str, Any]:
    """open_clip's description of a pretrained tag (mean, std, quick_gelu, where to fetch it)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if has_cfg_file or pretrained not in tags:
        raise ValueError(
            f"pretrained={pretrained!r} is neither a checkpoint file nor a pretrained tag of the "
            f"built-in {model_name} config (tags: {', '.join(tags) or 'none'})"
        )
    return open_clip.get_pretrained_cfg(model_name, pretrained)


def create_model(name: str, model_name: str, pretrained: str, tag_cfg: dict, cfg: dict, seed: int, options: dict):
    """(model, loaded): the pretrained network, or random weights when allowed; `options` holds
    `cache_dir`, `allow_random_weights` and `checkpoint_file`."""
    import open_clip
    import torch

    if options["checkpoint_file"]:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=options["checkpoint_file"])
        return model, True
    reason = "no pretrained tag was given"
    if tag_cfg:
        try:
            model, _, _ = open_clip.create_model_and_transforms(
                model_name,
                pretrained=pretrained,
                force_quick_gelu=bool(cfg.get("quick_gelu")),
                cache_dir=options["cache_dir"],
            )
            return model, True
        except Exception as exc:  # offline: no model hub
            reason = f"pretrained {model_name}/{pretrained} could not be loaded: {type(exc).__name__}: {exc}"
            if not options["allow_random_weights"]:
                raise RandomWeightsError(
                    f"{reason}. Refusing to package random weights for a pretrained build: make the model hub "
                    "reachable (or pass a local checkpoint file), or pass --allow-random-weights to build an "
                    "artifact whose search results are not meaningful (the local stack does)."
                ) from exc
    overrides = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, force_preprocess_cfg=overrides or None)
    logger.warning(RANDOM_WEIGHTS_WARNING.format(model=model_name, reason=reason))
    return model, False


def pretrained_weights_available(model_name: str, tag: str, cache_dir: str | None) -> bool:
    """Whether a tag's weights can be fetched now (or are in open_clip's download cache)."""
    import open_clip

    try:
        return bool(open_clip.download_pretrained(open_clip.get_pretrained_cfg(model_name, tag), cache_dir=cache_dir))
    except Exception as exc:  # offline: no model hub
        logger.info("pretrained %s/%s unavailable: %s", model_name, tag, exc)
        return False
