"""The ingestion steps, as plain functions the DAG's tasks call.

Each step reads its inputs from S3 paths keyed by the run and writes its
outputs there too, so any step can be retried or rerun and leaves the same
result. Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

from catalogue_search import catalogue, index, transform
from catalogue_search.s3util import copy_images, get_bytes, list_objects, put_bytes
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """What one run does: decided once, from the run id and the Params."""

    run_key: str
    shards: list[str]
    language_tag: str
    max_products: int | None
    alias: str
    force_reencode: bool
    index: str
    prefix: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        return cls(**data)

    @property
    def products_key(self) -> str:
        return f"{self.prefix}products.jsonl"

    def shard_key(self, shard: str) -> str:
        return f"{self.prefix}shards/listings_{shard}.jsonl"

    @property
    def duplicates_key(self) -> str:
        return f"{self.prefix}duplicates.json"

    @property
    def transform_manifest_key(self) -> str:
        return f"{self.prefix}transform.manifest"


_SHARD = re.compile(r"listings_([0-9a-f])\.json\.gz$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")


def available_shards(s3, settings: Settings) -> list[str]:
    keys = list_objects(s3, settings.source_bucket, f"{settings.source_prefix}listings/metadata/")
    return sorted(m.group(1) for k in keys if (m := _SHARD.search(k)))


def plan_run(settings: Settings, s3, *, run_id: str, params: dict[str, Any]) -> RunPlan:
    """Validate the Params and fix what this run will do. Bad input fails here, clearly."""
    language = str(params.get("language_tag") or settings.language_tag)
    if not _LANGUAGE.match(language):
        raise ValueError(f"language_tag {language!r} is not an ABO language tag such as en_US")
    alias = str(params.get("alias") or settings.index_alias)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", alias):
        raise ValueError(f"alias {alias!r} must be lower-case letters, digits, '-' or '_'")
    max_products = params.get("max_products")
    if max_products in ("", 0, None):
        max_products = None
    elif int(max_products) < 0:
        raise ValueError(f"max_products must be positive, got {max_products}")
    available = available_shards(s3, settings)
    if not available:
        raise ValueError(f"no listings under s3://{settings.source_bucket}/{settings.source_prefix}listings/metadata/")
    wanted = [str(s).lower() for s in (params.get("shards") or [])] or available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise ValueError(f"listing shards {unknown} do not exist; available: {available}")
    run_key = f"{settings.model_slug}/{run_id}"
    return RunPlan(
        run_key=run_key,
        shards=sorted(set(wanted)),
        language_tag=language,
        max_products=int(max_products) if max_products else None,
        alias=alias,
        force_reencode=bool(params.get("force_reencode", False)),
        index=index.index_name(alias, settings.model_slug, run_key),
        prefix=settings.run_prefix(run_id),
    )


def filter_shard(settings: Settings, s3, plan: RunPlan, shard: str, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 1: one listings shard -> the shard's products (written to S3 under the run)."""
    src = settings.source_prefix
    listings_key = src + catalogue.LISTINGS_KEY.format(shard=shard)
    images_key = src + catalogue.IMAGES_CSV_KEY
    listings = catalogue.read_listings(
        get_bytes(s3, settings.source_bucket, listings_key), source=f"s3://{settings.source_bucket}/{listings_key}"
    )
    images = catalogue.read_images_csv(
        get_bytes(s3, settings.source_bucket, images_key), source=f"s3://{settings.source_bucket}/{images_key}"
    )
    products, report = catalogue.filter_listings(listings, images, language_tag=plan.language_tag, shard=shard)
    put_bytes(s3, settings.bucket, plan.shard_key(shard), catalogue.to_jsonl(products), "application/jsonlines")
    logger.info(
        "shard %s: %d listings, kept %d, dropped %s", shard, report.listings, report.kept, report.dropped or "none"
    )
    return report.as_dict()


def copy_run_images(settings: Settings, s3, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 2: merge the shards, copy their images into the project bucket, write the run's products."""
    shards = [catalogue.from_jsonl(get_bytes(s3, settings.bucket, plan.shard_key(s))) for s in plan.shards]
    merged, duplicates = catalogue.merge_products(shards, plan.max_products)
    if duplicates:
        logger.info("dropped %d products listed in more than one shard (%s)", duplicates, catalogue.DROP_DUPLICATE)
    kept, report = copy_images(
        s3,
        merged,
        source_bucket=settings.source_bucket,
        source_prefix=settings.source_prefix,
        dest_bucket=settings.bucket,
        dest_prefix=settings.images_prefix,
        workers=settings.copy_workers,
        logger=logger,
    )
    put_bytes(s3, settings.bucket, plan.products_key, catalogue.to_jsonl(kept), "application/jsonlines")
    logger.info(
        "images: %d copied, %d already present, %d missing at the source (products dropped: %s)",
        report.copied,
        report.skipped,
        len(report.missing),
        ", ".join(report.missing) or "none",
    )
    return {"products": len(kept), "cross_shard_duplicates": duplicates, **report.as_dict()}


def products(settings: Settings, s3, plan: RunPlan) -> list[dict[str, Any]]:
    return catalogue.from_jsonl(get_bytes(s3, settings.bucket, plan.products_key))


def prepare_encoding(
    settings: Settings, s3, sagemaker, plan: RunPlan, image_uri: str, logger: logging.Logger = log
) -> dict[str, Any] | None:
    """Step 3a: the transform request over the images with no embedding yet (None: nothing to do)."""
    items = products(settings, s3, plan)
    pending = transform.pending_paths(
        items, transform.encoded_paths(s3, settings), transform.image_paths(s3, settings), plan.force_reencode
    )
    logger.info(
        "%d of %d images need encoding with %s%s",
        len(pending),
        len(items),
        settings.model_name,
        " (force_reencode)" if plan.force_reencode else "",
    )
    if not pending:
        logger.info("nothing new to encode: every image already has an embedding for %s", settings.model_name)
        return None
    put_bytes(
        s3, settings.bucket, plan.transform_manifest_key, transform.manifest(settings, pending), "application/json"
    )
    what = transform.ensure_model(sagemaker, transform.model_request(settings, transform.IMAGE, image_uri))
    logger.info("SageMaker model %s: %s", settings.sagemaker_model_name(transform.IMAGE), what)
    return transform.transform_request(
        settings,
        job=transform.job_name(settings, plan.run_key),
        manifest_uri=f"s3://{settings.bucket}/{plan.transform_manifest_key}",
    )


def load_index(settings: Settings, s3, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 4: create the run's index and bulk-load every product that has an embedding."""
    items = products(settings, s3, plan)
    emb = transform.read_embeddings(s3, settings, [p["path"] for p in items], logger=logger)
    for path, err in sorted(emb.errors.items()):
        logger.warning("image %s could not be encoded, its product is dropped: %s", path, err)
    for path in emb.missing:
        logger.warning("image %s has no embedding, its product is dropped", path)
    ready = [p for p in items if p["path"] in emb.vectors]
    if not ready:
        raise RuntimeError("no product has an embedding: nothing to index")
    dimension = len(next(iter(emb.vectors.values())))
    body = index.index_body(settings, alias=plan.alias, dimension=dimension, run_key=plan.run_key)
    logger.info("index %s: %s", plan.index, index.create_index(client, plan.index, body))
    docs = (index.document(p, emb.vectors[p["path"]], settings.model_name) for p in ready)
    report = index.bulk_load(client, plan.index, docs, total=len(ready), logger=logger)
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} documents were rejected, first: {report.failed[0]}")
    index.finish_loading(client, plan.index, settings.index_replicas)
    return {
        "index": plan.index,
        "indexed": report.indexed,
        "dropped_no_embedding": sorted(set(emb.errors) | set(emb.missing)),
        "dimension": dimension,
    }


def validate_index(settings: Settings, s3, client, plan: RunPlan, loaded: dict[str, Any], logger: logging.Logger = log):
    """Step 5: the count matches and sampled products find themselves first with score 1.0."""
    items = {p["item_id"]: p for p in products(settings, s3, plan)}
    dropped = set(loaded["dropped_no_embedding"])
    indexed = [i for i, p in items.items() if p["path"] not in dropped]
    samples = []
    for item_id in index.sample_ids(indexed, settings.validation_sample):
        doc = client.get(index=plan.index, id=item_id)["_source"]
        samples.append((item_id, doc[index.VECTOR_FIELD]))
    return index.validate(
        client,
        plan.index,
        expected_count=len(indexed),
        samples=samples,
        candidates=settings.knn_candidates,
        logger=logger,
    )


def report_duplicates(settings: Settings, s3, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """The run's near-duplicate groups (same image id, or image vectors with cosine >= the
    threshold), read from the run's index: a JSON report in the run's prefix, counts in the log."""
    import json

    from catalogue_search import duplicates

    total = client.count(index=plan.index)["count"]
    report = duplicates.find_duplicates(
        duplicates.index_vectors(client, plan.index, index.VECTOR_FIELD),
        total=total,
        threshold=settings.duplicate_cosine_threshold,
        block_rows=settings.duplicate_block_rows,
        logger=logger,
    )
    body = json.dumps(report.as_dict(), indent=1, ensure_ascii=False).encode()
    put_bytes(s3, settings.bucket, plan.duplicates_key, body, "application/json")
    counts = report.counts
    logger.info(
        "near-duplicates: %d groups (%d same image id, %d near-identical vectors, cosine >= %.2f) holding %d of %d "
        "products; folding would hide %d. Report: s3://%s/%s",
        counts["groups"],
        counts["same_image_groups"],
        counts["near_vector_groups"],
        report.threshold,
        counts["products_in_groups"],
        counts["products"],
        counts["folded_away"],
        settings.bucket,
        plan.duplicates_key,
    )
    for group in report.groups[:20]:
        logger.info("  %s: %s", group.reason, ", ".join(f"{i} ({n})" for i, n in zip(group.item_ids, group.item_names)))
    return {**counts, "report": f"s3://{settings.bucket}/{plan.duplicates_key}"}


def publish(settings: Settings, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 6: move the read alias to the validated index; keep `index_retention` older ones."""
    return index.swap_alias(client, plan.alias, plan.index, settings.index_retention, logger=logger)
