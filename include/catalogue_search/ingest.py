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
    """Step 3a: chunks of the images the store lacks for this artifact version, and the
    transform request over them (None: nothing to do).

    Costs one HEAD (the artifact's version), one GET (the store's catalogue)
    and one listing of the images, whatever the catalogue's size.
    """
    from catalogue_search import embedding_store as store
    from catalogue_search.model_artifact import read_artifact_version

    version = read_artifact_version(s3, settings.artifact_uri)
    catalogue = store.Catalogue.load(s3, settings, version)
    etags = store.image_etags(s3, settings)
    items = products(settings, s3, plan)
    pending = store.pending_paths((p["path"] for p in items), catalogue, etags, plan.force_reencode)
    logger.info(
        "%d of %d images need encoding with %s, artifact version %s (%d in its store)%s",
        len(pending),
        len(items),
        settings.model_name,
        version,
        len(catalogue.images),
        " (force_reencode)" if plan.force_reencode else "",
    )
    encode = store.write_chunks(s3, settings, plan.prefix, version, pending, etags, settings.transform_chunk_size)
    if not pending:
        logger.info("nothing new to encode: every image already has an embedding for artifact %s", version)
        return None
    what = transform.ensure_model(sagemaker, transform.model_request(settings, transform.IMAGE, image_uri, version))
    logger.info("SageMaker model %s: %s", settings.sagemaker_model_name(transform.IMAGE), what)
    logger.info("%d chunks of up to %d images", len(encode.chunks), settings.transform_chunk_size)
    return transform.transform_request(
        settings,
        job=transform.job_name(settings, f"{plan.run_key}/{version}"),
        manifest_uri=f"s3://{settings.bucket}/{store.manifest_key(plan.prefix)}",
        output_uri=f"s3://{settings.bucket}/{encode.output_prefix}",
    )


def record_embeddings(settings: Settings, s3, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 3c: every chunk has its output (else fail naming the first missing key); the
    store's catalogue learns what was encoded; failed images are counted in the run report."""
    from catalogue_search import embedding_store as store

    report = store.record_outputs(s3, settings, plan.prefix, logger=logger)
    summary = report.as_dict()
    summary.pop("errors")
    summary["report"] = f"s3://{settings.bucket}/{store.report_key(plan.prefix)}"
    return summary


def prepare_name_encoding(
    settings: Settings, s3, sagemaker, plan: RunPlan, image_uri: str, logger: logging.Logger = log
) -> dict[str, Any] | None:
    """Step 3a': chunks of the titles the title store lacks for this artifact version, and the
    transform request that encodes them with the TEXT model (None: nothing to do).

    The image path's rails (`embedding_store`): same chunk size, batch size,
    payload limit and version keying; records are `{"id": <title digest>, "text": <title>}`.
    """
    from catalogue_search import embedding_store as store
    from catalogue_search import names
    from catalogue_search.model_artifact import read_artifact_version

    version = read_artifact_version(s3, settings.artifact_uri)
    name_settings = names.store_settings(settings)
    catalogue = store.Catalogue.load(s3, name_settings, version)
    titles = names.titles_of(products(settings, s3, plan))
    same = {tid: "" for tid in titles}  # content-addressed ids: no ETag to compare
    pending = store.pending_paths(titles, catalogue, same, plan.force_reencode)
    logger.info(
        "%d of %d distinct titles need encoding with %s (TEXT), artifact version %s (%d in its title store)%s",
        len(pending),
        len(titles),
        settings.model_name,
        version,
        len(catalogue.images),
        " (force_reencode)" if plan.force_reencode else "",
    )
    run_prefix = names.run_prefix(plan.prefix)
    encode = store.write_chunks(
        s3,
        name_settings,
        run_prefix,
        version,
        pending,
        same,
        settings.transform_chunk_size,
        body=lambda ids: names.chunk_body(titles, ids),
        content_type=names.TEXT_CHUNK_CONTENT_TYPE,
    )
    if not pending:
        logger.info("nothing new to encode: every title already has an embedding for artifact %s", version)
        return None
    what = transform.ensure_model(sagemaker, transform.model_request(settings, transform.TEXT, image_uri, version))
    logger.info("SageMaker model %s: %s", settings.sagemaker_model_name(transform.TEXT), what)
    return transform.transform_request(
        settings,
        job=transform.job_name(settings, f"{plan.run_key}/{version}/names"),
        manifest_uri=f"s3://{settings.bucket}/{store.manifest_key(run_prefix)}",
        output_uri=f"s3://{settings.bucket}/{encode.output_prefix}",
        encode_type=transform.TEXT,
    )


def record_name_embeddings(settings: Settings, s3, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 3c': the title chunks' outputs are all there; the title store learns them; run report."""
    from catalogue_search import embedding_store as store
    from catalogue_search import names

    run_prefix = names.run_prefix(plan.prefix)
    report = store.record_outputs(s3, names.store_settings(settings), run_prefix, logger=logger)
    summary = report.as_dict()
    summary.pop("errors")
    summary["report"] = f"s3://{settings.bucket}/{store.report_key(run_prefix)}"
    return summary


def add_name_vectors(
    settings: Settings,
    s3,
    client,
    plan: RunPlan,
    items: list[dict[str, Any]],
    version: str,
    logger: logging.Logger = log,
) -> int:
    """Add each product's title vector to its document: partial updates streamed chunk by chunk."""
    from opensearchpy import helpers

    from catalogue_search import embedding_store as store
    from catalogue_search import names

    name_settings = names.store_settings(settings)
    catalogue = store.Catalogue.load(s3, name_settings, version)
    by_title = names.products_by_title(items)
    missing = [tid for tid in by_title if tid not in catalogue.images]
    if missing:
        logger.warning(
            "%d titles have no title vector for artifact %s (their products are found by image and BM25 only)",
            len(missing),
            version,
        )
    vectors = store.iter_vectors(s3, name_settings, catalogue, by_title)
    updated, failed = 0, []
    for ok, item in helpers.streaming_bulk(
        client,
        names.name_updates(plan.index, index.NAME_VECTOR_FIELD, by_title, vectors),
        chunk_size=500,
        max_retries=5,
        initial_backoff=1,
        max_backoff=30,
        raise_on_error=False,
    ):
        if ok:
            updated += 1
        else:
            failed.append(str(item))
    if failed:
        raise RuntimeError(f"{len(failed)} title vectors were rejected, first: {failed[0]}")
    logger.info("title vectors added to %d of %d documents", updated, len(items))
    return updated


def load_index(settings: Settings, s3, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 4: create the run's index and bulk-load every product that has an embedding.

    Vectors stream from the store chunk by chunk (float32), so memory does
    not grow with the number of vectors; title vectors follow as partial
    updates, streamed from the title store the same way.
    """
    from catalogue_search import embedding_store as store

    version = store.read_plan(s3, settings, plan.prefix).version
    catalogue = store.Catalogue.load(s3, settings, version)
    items = products(settings, s3, plan)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for p in items:
        by_path.setdefault(p["path"], []).append(p)
    dropped: list[str] = []
    for path in sorted(by_path):
        if path not in catalogue.images:
            dropped.append(path)
            reason = catalogue.errors.get(path, ("", "no embedding in the store"))[1]
            logger.warning("image %s could not be encoded, its product is dropped: %s", path, reason)
    ready = sum(len(by_path[p]) for p in by_path if p in catalogue.images)
    if not ready:
        raise RuntimeError(f"no product has an embedding for artifact {version}: nothing to index")
    vectors = store.iter_vectors(s3, settings, catalogue, by_path)
    first_path, first_vector = next(vectors)
    dimension = int(first_vector.shape[0])
    body = index.index_body(settings, alias=plan.alias, dimension=dimension, run_key=plan.run_key)
    body["mappings"]["_meta"]["artifact_version"] = version
    logger.info("index %s: %s", plan.index, index.create_index(client, plan.index, body))

    def docs():
        import itertools

        for path, vector in itertools.chain([(first_path, first_vector)], vectors):
            row = vector.tolist()
            for product in by_path[path]:
                yield index.document(product, row, settings.model_name)

    report = index.bulk_load(client, plan.index, docs(), total=ready, logger=logger)
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} documents were rejected, first: {report.failed[0]}")
    loaded = [p for p in items if p["path"] in catalogue.images]
    titled = add_name_vectors(settings, s3, client, plan, loaded, version, logger=logger)
    index.finish_loading(client, plan.index, settings.index_replicas)
    return {
        "index": plan.index,
        "indexed": report.indexed,
        "title_vectors": titled,
        "dropped_no_embedding": dropped,
        "dimension": dimension,
        "artifact_version": version,
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
