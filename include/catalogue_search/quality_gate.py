"""The `evaluate_index` step: measure a new index, record the figures, and gate its publication.

Runs after validation and before the alias moves:

1. the index's search quality (`quality.evaluate`), the titles as queries of the
   TEXT model of the artifact that encoded the index, run in this process (the
   handler and request bytes the query endpoints use; the endpoints may still
   serve the published model, a new model being what the gate is for, or be torn
   down), checked against and completed by the index's title vectors
   (`quality_queries.QueryVectors`);
2. the figures go to the run report in the bucket (`quality.json` in the run's
   prefix), the index `_meta` (`quality`, `weights`) and the task log (a table);
3. the gates, each of which leaves the alias where it is:
   - an artifact with random weights is refused unless the deployment opts in
     (`CATSEARCH_ALLOW_RANDOM_WEIGHTS`; the local stack does);
   - on a model change (another artifact version than the served index's), a
     text -> image recall@10 lower than the served index's by more than the
     tolerance plus the sampling margin is refused, unless the run allows it
     (Param `allow_quality_drop`). A re-index with the same model is only reported.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from catalogue_search import index, quality
from catalogue_search.errors import PermanentError
from catalogue_search.model_artifact import RANDOM_WEIGHTS_METADATA
from catalogue_search.s3util import parse_s3_uri, put_bytes
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

Z = 1.96  # the gate's confidence: 95%, two-sided
KEY_FIELDS = ["item_id", "image_id"]  # of every product, from the doc values (`index.scan_fields`)
DOC_FIELDS = ["item_id", "item_name", "product_type", "image_id"]  # of the sampled products, from `_source`


def artifact_weights(metadata: dict[str, str], clip_config: dict[str, Any]) -> dict[str, Any]:
    """`{"random": bool, "pretrained": tag | None}` of an artifact: random unless its object's metadata
    says `random-weights: false` (absent counts as random) and its clip_config.json does not say otherwise."""
    flag = str((metadata or {}).get(RANDOM_WEIGHTS_METADATA, "")).strip().lower()
    random = flag != "false" or clip_config.get("random_weights") is True
    return {"random": random, "pretrained": None if random else (clip_config.get("pretrained") or None)}


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on text -> image recall@10 against the served index."""

    served_index: str | None
    same_model: bool
    served: float | None
    new: float | None
    drop: float | None  # served - new (positive: worse)
    allowed: float | None  # tolerance + sampling margin
    refused: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(new: dict[str, Any], served: dict[str, Any] | None, served_index: str | None, tolerance: float) -> Verdict:
    """Refuse `new` when, on a model change, its recall@10 is below `served`'s by more than
    `tolerance` (a fraction) plus Z standard errors of the difference of the two samples."""
    ours = quality.headline(new)
    if served_index is None:
        return Verdict(None, False, None, ours, None, None, False, "no index is served yet: nothing to compare with")
    same = bool(served) and served.get("artifact_version") == new.get("artifact_version")
    theirs = quality.headline(served)
    if theirs is None or ours is None:
        why = f"served index {served_index} has no recorded quality: the gate cannot compare, only report"
        return Verdict(served_index, same, theirs, ours, None, None, False, why)
    drop = round(theirs - ours, 6)
    n_new, n_old = int(new.get("sample_size") or 0), int(served.get("sample_size") or 0)  # type: ignore[union-attr]
    spread = (ours * (1 - ours) / max(n_new, 1) + theirs * (1 - theirs) / max(n_old, 1)) ** 0.5
    allowed = round(tolerance + Z * spread, 6)
    change = f"text -> image recall@10 {ours:.4f} against {theirs:.4f} served by {served_index} (drop {drop:+.4f})"
    if same:
        return Verdict(served_index, True, theirs, ours, drop, allowed, False, f"same model, reported only: {change}")
    refused = drop > allowed
    limit = f"the allowed drop is {allowed:.4f} (tolerance {tolerance:.4f} + sampling margin {allowed - tolerance:.4f})"
    return Verdict(served_index, False, theirs, ours, drop, allowed, refused, f"model change: {change}; {limit}")


def _meta(client, name: str) -> dict[str, Any]:
    mappings = client.indices.get_mapping(index=name)
    return dict((mappings.get(name) or next(iter(mappings.values())))["mappings"].get("_meta") or {})


def describe(client, index_name: str, chosen: list[dict[str, Any]], batch: int = 500) -> list[dict[str, Any]]:
    """The `DOC_FIELDS` of the sampled products (`chosen`: item ids), in their order."""
    ids = [doc["item_id"] for doc in chosen]
    found = index.get_sources(client, index_name, ids, DOC_FIELDS, batch)
    missing = [item_id for item_id in ids if item_id not in found]
    if missing:  # nothing writes to an index under evaluation: something else does
        raise RuntimeError(
            f"{len(missing)} sampled products left index {index_name} during its evaluation (first: {missing[0]})"
        )
    return [found[item_id] for item_id in ids]


def measure(
    settings: Settings, s3, client, index_name: str, logger: logging.Logger = log, *, encode_all: bool = False
) -> dict[str, Any]:
    """The `quality` record of `index_name` (see COMMON contract) and the artifact's `weights`."""
    from catalogue_search.quality_queries import QueryRunner, QueryVectors, title_encoder

    meta = _meta(client, index_name)
    version = str(meta.get("artifact_version") or "")
    bucket, key = parse_s3_uri(settings.artifact_uri)
    head = s3.head_object(Bucket=bucket, Key=key).get("Metadata") or {}
    handler, encode = title_encoder(settings, s3, version)
    mapping = client.indices.get_mapping(index=index_name)
    properties = next(iter(mapping.values()))["mappings"].get("properties") or {}
    dimension = (properties.get(index.VECTOR_FIELD) or {}).get("dimension")
    if dimension is not None and dimension != handler.embed_dim:
        raise PermanentError(
            f"index {index_name} holds {dimension}-d vectors but the TEXT model of {settings.artifact_uri} encodes "
            f"{handler.embed_dim}-d ones: its vectors did not come from this model, so its quality cannot be measured"
        )
    clip_config = json.loads((handler.model_dir / "clip_config.json").read_text())
    weights = artifact_weights(head, clip_config)
    docs = list(index.scan_fields(client, index_name, KEY_FIELDS))
    if not docs:
        raise PermanentError(f"index {index_name} holds no products: nothing to evaluate")
    runner = QueryRunner(settings, client, index_name, quality.DEPTH)
    vectors = QueryVectors(client, index_name, encode, encode_all=encode_all, logger=logger)
    logger.info("evaluating %s: titles of up to %d of its %d products", index_name, settings.quality_sample, len(docs))
    started = time.monotonic()
    measured = quality.evaluate(
        docs,
        vectors,
        runner.ask,
        size=settings.quality_sample,
        seed=settings.quality_seed,
        describe=lambda chosen: describe(client, index_name, chosen),
    )
    took = time.monotonic() - started
    logger.info(
        "evaluated %d titles in %.1f s: %d encoded by the TEXT model (%.1f s; %d of them checked against the "
        "index's title vectors), %d taken from the index's title vectors; queries %.1f s",
        measured["sample_size"],
        took,
        vectors.encoded,
        vectors.seconds,
        vectors.checked,
        vectors.stored,
        took - vectors.seconds,
    )
    record = {
        "index": index_name,
        "model": meta.get("model") or settings.model_name,
        "artifact_version": version,
        "random_weights": weights["random"],
        **measured,
    }
    if weights["random"]:
        record["note"] = quality.RANDOM_WEIGHTS_NOTE
    return {"quality": record, "weights": weights}


def evaluate_index(
    settings: Settings,
    s3,
    client,
    *,
    index_name: str,
    alias: str,
    report_key: str,
    allow_quality_drop: bool = False,
    logger: logging.Logger = log,
) -> dict[str, Any]:
    """Measure `index_name`, write the figures (run report, `_meta`, log), then apply the gates
    (a `PermanentError` leaves the alias where it is)."""
    measured = measure(settings, s3, client, index_name, logger)
    new, weights = measured["quality"], measured["weights"]
    targets = index.alias_targets(client, alias)
    served_index = next((t for t in targets if t != index_name), None)
    served_meta = _meta(client, served_index) if served_index else {}
    served = served_meta.get("quality") or {"artifact_version": served_meta.get("artifact_version")}
    verdict = gate(new, served if served_index else None, served_index, settings.quality_tolerance_points / 100)
    if index_name in targets:  # a rerun of a run that published: reported, the serving index left as it is
        verdict = Verdict(
            index_name,
            True,
            None,
            quality.headline(new),
            None,
            None,
            False,
            f"index {index_name} serves alias {alias} already (a rerun): reported only",
        )
    report = {"index": index_name, "alias": alias, "weights": weights, "quality": new, "gate": verdict.as_dict()}
    put_bytes(s3, settings.bucket, report_key, json.dumps(report, indent=1).encode(), "application/json")
    if index_name not in targets:
        client.indices.put_mapping(index=index_name, body={"_meta": {**_meta(client, index_name), **measured}})
    for line in quality.format_table(new).splitlines():
        logger.info("%s", line)
    logger.info("quality gate: %s. Report: s3://%s/%s", verdict.reason, settings.bucket, report_key)
    if weights["random"]:
        if not settings.allow_random_weights:
            raise PermanentError(
                f"index {index_name} was encoded by a model artifact with random weights ({settings.artifact_uri}): "
                f"{quality.RANDOM_WEIGHTS_NOTE}. The alias {alias} stays where it is. Build the artifact with "
                "pretrained weights, or set CATSEARCH_ALLOW_RANDOM_WEIGHTS=true to publish it anyway (the local "
                "stack does)."
            )
        logger.warning("%s (published anyway: CATSEARCH_ALLOW_RANDOM_WEIGHTS=true)", quality.RANDOM_WEIGHTS_NOTE)
    if verdict.refused and not allow_quality_drop:
        raise PermanentError(
            f"quality gate: the new model is worse than the served one: {verdict.reason}. The alias {alias} stays "
            f'on {served_index}. If the drop is intended, trigger the run again with {{"allow_quality_drop": true}}.'
        )
    if verdict.refused:
        logger.warning("quality gate: drop of %.4f allowed for this run (allow_quality_drop)", verdict.drop)
    return {
        "index": index_name,
        "sample_size": new["sample_size"],
        "recall@10": quality.headline(new),
        "chance_recall@10": new["chance"]["recall@10"],
        "random_weights": weights["random"],
        "gate": verdict.reason,
        "report": f"s3://{settings.bucket}/{report_key}",
    }
