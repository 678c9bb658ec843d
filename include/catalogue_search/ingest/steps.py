"""The run's steps up to the vectors: filter the listings, encode (images and titles); the copy is in `copy`.

Each step reads its inputs from S3 paths keyed by the run and writes its
outputs there too, so any step can be retried or rerun and leaves the same
result. Images and titles take one encode path, parameterised by the target
(`encoding.IMAGE`, `encoding.TITLE`).
"""

from __future__ import annotations

import logging
from typing import Any

from catalogue_search import catalogue, encoding, transform
from catalogue_search.contract import JSONLINES
from catalogue_search.encoding import Target
from catalogue_search.ingest.plan import RunPlan
from catalogue_search.s3util import get_bytes, put_bytes
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)


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
    kept, report = catalogue.filter_listings(listings, images, language_tag=plan.language_tag, shard=shard)
    put_bytes(s3, settings.bucket, plan.shard_key(shard), catalogue.to_jsonl(kept), JSONLINES)
    logger.info(
        "shard %s: %d listings, kept %d, dropped %s", shard, report.listings, report.kept, report.dropped or "none"
    )
    return report.as_dict()


def products(settings: Settings, s3, plan: RunPlan) -> list[dict[str, Any]]:
    """The run's products (written by `copy_run_images`)."""
    return catalogue.from_jsonl(get_bytes(s3, settings.bucket, plan.products_key))


def prepare_encoding(
    settings: Settings,
    s3,
    sagemaker,
    plan: RunPlan,
    image_uri: str,
    logger: logging.Logger = log,
    *,
    target: Target = encoding.IMAGE,
) -> dict[str, Any] | None:
    """Step 3a: chunks of the entries (`target`: images, or titles) the store lacks for this
    artifact version, and the transform request that encodes them (None: nothing to do).

    Costs one HEAD (the artifact's version), one GET (the store's catalogue)
    and, for images, one listing of the images, whatever the catalogue's size.
    """
    from catalogue_search.model_artifact import read_artifact_version

    version = read_artifact_version(s3, settings.artifact_uri)
    store = encoding.Store(settings, target)
    stored = encoding.Catalogue.load(s3, store, version)
    wanted = encoding.wanted(target, settings, s3, products(settings, s3, plan))
    pending = encoding.pending_ids(wanted.ids, stored, wanted.etags, plan.force_reencode)
    logger.info(
        "%d of %d %s need encoding with %s (%s), artifact version %s (%d in its store)%s",
        len(pending),
        len(wanted.ids),
        target.plural,
        settings.model_name,
        target.encode_type,
        version,
        len(stored.encoded),
        " (force_reencode)" if plan.force_reencode else "",
    )
    chunk_size = settings.transform_chunk_size
    encode = encoding.write_chunks(s3, store, plan.prefix, version, pending, wanted.etags, wanted.records, chunk_size)
    if not pending:
        logger.info("nothing new to encode: every %s already has an embedding for artifact %s", target.name, version)
        return None
    model = transform.model_request(settings, target.encode_type, image_uri, version)
    logger.info("SageMaker model %s: %s", model["ModelName"], transform.ensure_model(sagemaker, model))
    logger.info("%d chunks of up to %d %s", len(encode.chunks), chunk_size, target.plural)
    return transform.transform_request(
        settings,
        job=transform.job_name(settings, f"{plan.run_key}/{version}{target.job_suffix}"),
        manifest_uri=store.uri(store.manifest_key(plan.prefix)),
        output_uri=store.uri(encode.output_prefix),
        encode_type=target.encode_type,
    )


def record_embeddings(
    settings: Settings, s3, plan: RunPlan, logger: logging.Logger = log, *, target: Target = encoding.IMAGE
) -> dict[str, Any]:
    """Step 3c: every chunk has its output (else fail naming the first missing key); the
    store's catalogue learns what was encoded; failed entries are counted in the run report."""
    store = encoding.Store(settings, target)
    summary = encoding.record_outputs(s3, store, plan.prefix, logger=logger).as_dict()
    summary.pop("errors")
    summary["report"] = store.uri(store.report_key(plan.prefix))
    return summary


def prepare_name_encoding(
    settings: Settings, s3, sagemaker, plan: RunPlan, image_uri: str, logger: logging.Logger = log
) -> dict[str, Any] | None:
    """Step 3a': `prepare_encoding` for the titles (the TEXT model)."""
    return prepare_encoding(settings, s3, sagemaker, plan, image_uri, logger, target=encoding.TITLE)


def record_name_embeddings(settings: Settings, s3, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 3c': `record_embeddings` for the titles."""
    return record_embeddings(settings, s3, plan, logger, target=encoding.TITLE)
