"""Base against fine-tuned on the held-out test products, the gate, and the promotion.

Both models answer the same queries: each test product's title, encoded as a
text search encodes it (the TEXT model's `{"inputs": [title]}` request),
ranks the test products' images (encoded as the batch transform encodes them)
by cosine; the product itself is the answer. The figures are the quality
measure's (`quality.metrics`, `quality.chance`): recall@1/5/10 and MRR of
text -> image. A product whose image or title a model refuses is left out for
both models, so both are measured on the same set.

The gate promotes only when the fine-tuned text -> image recall@10 exceeds the
base's by more than the noise of the sample: Z standard errors of the
difference, the root of the sum of squares of both `quality.margin`s. The
promotion keeps the serving artifact under `models/<model>/previous/<version>/`
and copies the fine-tuned one to the configured artifact URI (metadata and
all), which is what `catalogue_ingest` encodes with; the DAG then records the
model Asset's event that schedules the re-index.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from catalogue_search import catalogue, quality
from catalogue_search.contract import IMAGE, JSON, TEXT, X_IMAGE, parse_embeddings
from catalogue_search.errors import PermanentError
from catalogue_search.finetune.package import copy_artifact
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.model_artifact import read_artifact_metadata
from catalogue_search.s3util import get_bytes, parse_s3_uri, put_bytes
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

Z = 1.96


def _vectors(settings: Settings, s3, uri: str, kind: str, payloads: list[bytes]) -> list[np.ndarray | None]:
    handler = load_handler_from_artifact(uri, kind, s3_client=s3, cache_dir=settings.model_cache)
    answers = handler.invoke_many(payloads, X_IMAGE if kind == IMAGE else JSON)
    where = f"the {kind} model of {uri}"
    return [None if a.error is not None else np.asarray(parse_embeddings(a.body, where)) for a in answers]


def text_to_image(settings: Settings, s3, uri: str, images: list[bytes], titles: list[str]) -> list[int | None]:
    """Each title's rank (1-based, None past `quality.DEPTH` or refused) among the images, by cosine."""
    image_vectors = _vectors(settings, s3, uri, IMAGE, images)
    title_vectors = _vectors(settings, s3, uri, TEXT, [json.dumps({"inputs": [t]}).encode() for t in titles])
    keep = [i for i, (a, b) in enumerate(zip(image_vectors, title_vectors)) if a is not None and b is not None]
    if len(keep) < len(titles):
        raise _Refused([i for i in range(len(titles)) if i not in keep])
    matrix = np.stack(image_vectors)  # type: ignore[arg-type]
    ranks: list[int | None] = []
    for i, vector in enumerate(title_vectors):
        scores = matrix @ vector
        rank = 1 + int(np.sum(scores > scores[i]))  # ties count in the product's favour, for both models alike
        ranks.append(rank if rank <= quality.DEPTH else None)
    return ranks


class _Refused(Exception):
    def __init__(self, rows: list[int]) -> None:
        super().__init__(f"{len(rows)} inputs refused")
        self.rows = rows


def measure_both(settings: Settings, s3, base_uri: str, tuned_uri: str, test_uri: str, logger=log) -> dict[str, Any]:
    """The figures of both models on the test products of `test_uri` (JSON Lines of pairs)."""
    bucket, key = parse_s3_uri(test_uri)
    pairs = catalogue.from_jsonl(get_bytes(s3, bucket, key))
    images = [get_bytes(s3, *parse_s3_uri(p["image"])) for p in pairs]
    models = {"base": base_uri, "tuned": tuned_uri}
    return measure_pairs(settings, s3, models, pairs, images, logger)


def measure_pairs(
    settings: Settings, s3, models: dict[str, str], pairs: list[dict], images: list[bytes], logger=log
) -> dict[str, Any]:
    """Text -> image figures of each of `models` (name -> artifact) on the same `pairs` and image bytes."""
    titles = [p["item_name"].strip() for p in pairs]
    for _ in range(3):  # a product any model refuses leaves for all; at most twice more
        try:
            ranks = {name: text_to_image(settings, s3, uri, images, titles) for name, uri in models.items()}
            break
        except _Refused as refused:
            logger.warning("left out of the test (a model refused it): %s", [pairs[i]["item_id"] for i in refused.rows])
            keep = [i for i in range(len(pairs)) if i not in set(refused.rows)]
            pairs, images, titles = [pairs[i] for i in keep], [images[i] for i in keep], [titles[i] for i in keep]
    else:
        raise PermanentError("the models kept refusing test products: nothing comparable to measure")
    figures = {name: quality.metrics(found) for name, found in ranks.items()}
    return {"test_products": len(pairs), "chance": quality.chance(len(pairs)), **figures}


@dataclass(frozen=True)
class Decision:
    base: float
    tuned: float
    gain: float
    noise: float
    promote: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(figures: dict[str, Any]) -> Decision:
    """Promote when text -> image recall@10 gains more than the sampling noise of the difference."""
    n = int(figures["test_products"])
    base, tuned = figures["base"]["recall@10"], figures["tuned"]["recall@10"]
    noise = round(math.hypot(quality.margin(base, n, Z), quality.margin(tuned, n, Z)), 6)
    gain = round(tuned - base, 6)
    promote = gain > noise
    verb = "promoted" if promote else "refused"
    reason = (
        f"{verb}: text -> image recall@10 on {n} held-out products {tuned:.4f} fine-tuned against {base:.4f} base "
        f"(gain {gain:+.4f}, noise of the sample {noise:.4f}, chance {figures['chance']['recall@10']:.4f})"
    )
    return Decision(base, tuned, gain, noise, promote, reason)


def promote(settings: Settings, s3, *, tuned_uri: str, base_version: str, logger=log) -> dict[str, Any]:
    """Make `tuned_uri` the artifact `catalogue_ingest` uses; the serving one is kept as `previous`."""
    serving = read_artifact_metadata(s3, settings.artifact_uri)
    tuned = read_artifact_metadata(s3, tuned_uri)
    if serving.version == tuned.version:
        logger.info("%s already serves version %s (a rerun): nothing to copy", settings.artifact_uri, tuned.version)
        return {"artifact_uri": settings.artifact_uri, "version": tuned.version, "previous": None}
    if serving.version != base_version:
        raise PermanentError(
            f"{settings.artifact_uri} is version {serving.version}, not the base {base_version} this run was "
            "measured against (another model was promoted meanwhile): fine-tune again from it"
        )
    bucket, _ = parse_s3_uri(settings.artifact_uri)
    previous = f"s3://{bucket}/{settings.models_prefix}{settings.model_slug}/previous/{serving.version}/model.tar.gz"
    copy_artifact(s3, settings.artifact_uri, previous)
    copy_artifact(s3, tuned_uri, settings.artifact_uri)
    logger.info(
        "promoted %s (%s) to %s; the previous is at %s", tuned_uri, tuned.version, settings.artifact_uri, previous
    )
    return {"artifact_uri": settings.artifact_uri, "version": tuned.version, "previous": previous}


def write_report(settings: Settings, s3, key: str, report: dict[str, Any]) -> str:
    put_bytes(s3, settings.bucket, key, json.dumps(report, indent=1).encode(), JSON)
    return f"s3://{settings.bucket}/{key}"
