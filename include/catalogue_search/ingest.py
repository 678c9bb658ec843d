"""The ingestion steps, as plain functions the DAG's tasks call.

Each step reads its inputs from S3 paths keyed by the run and writes its
outputs there too, so any step can be retried or rerun and leaves the same
result. Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from catalogue_search import catalogue, index, state, transform
from catalogue_search.errors import PermanentError
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
    # The published state this run builds on: the index the alias served when the run was planned,
    # and the shards this run takes from it unchanged (every shard it does not process itself).
    base_index: str | None = None
    base_shards: list[str] = field(default_factory=list)
    allow_shrink: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_run(cls, settings: Settings, run_id: str, shards: list[str] | None = None) -> RunPlan:
        """A plan with the default Params for `run_id` (shard 0 unless given), named as `plan_run` names it:
        for notebooks, tests and benchmarks that call the steps without a DAG run."""
        run_key = f"{settings.model_slug}/{run_id}"
        return cls(
            run_key=run_key,
            shards=list(shards or ["0"]),
            language_tag=settings.language_tag,
            max_products=None,
            alias=settings.index_alias,
            force_reencode=False,
            index=index.index_name(settings.index_alias, settings.model_slug, run_key),
            prefix=settings.run_prefix(run_id),
        )

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


def check_conf(conf: dict[str, Any] | None, valid: Iterable[str]) -> None:
    """Reject conf keys that are not Params (a misspelt `shard` must not index every shard)."""
    unknown = sorted(set(conf or {}) - set(valid))
    if unknown:
        raise PermanentError(
            f"unknown conf key(s) {', '.join(map(repr, unknown))}: valid Params are {', '.join(sorted(valid))}"
        )


def plan_run(
    settings: Settings,
    s3,
    client=None,
    *,
    run_id: str,
    params: dict[str, Any],
    logger: logging.Logger = log,
) -> RunPlan:
    """Validate the Params and fix what this run will do. Bad input fails here, clearly, before any work.

    With an OpenSearch `client`, the run builds on the published state of the
    index the alias serves now: the shards it does not process come from there.
    """
    language = str(params.get("language_tag") or settings.language_tag)
    if not _LANGUAGE.match(language):
        raise PermanentError(f"language_tag {language!r} is not an ABO language tag such as en_US")
    alias = str(params.get("alias") or settings.index_alias)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", alias):
        raise PermanentError(f"alias {alias!r} must be lower-case letters, digits, '-' or '_'")
    max_products = params.get("max_products")
    if max_products in ("", 0, None):
        max_products = None
    elif int(max_products) < 0:
        raise PermanentError(f"max_products must be positive, got {max_products}")
    if max_products and alias == settings.index_alias:
        raise PermanentError(
            f"max_products={max_products} is for trials and would publish a partial catalogue to the default "
            f'alias {alias!r}: trigger again with another alias (e.g. {{"alias": "{alias}-trial"}}) '
            "or without max_products"
        )
    run_key = f"{settings.model_slug}/{run_id}"
    name = index.index_name(alias, settings.model_slug, run_key)
    if len(name.encode()) > index.MAX_INDEX_NAME_BYTES:
        raise PermanentError(
            f"alias {alias!r} is too long: its index names ({name[:40]}..., {len(name.encode())} bytes) "
            f"exceed OpenSearch's {index.MAX_INDEX_NAME_BYTES} bytes"
        )
    available = available_shards(s3, settings)
    if not available:
        raise PermanentError(
            f"no listings under s3://{settings.source_bucket}/{settings.source_prefix}listings/metadata/"
        )
    wanted = [str(s).lower() for s in (params.get("shards") or [])] or available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise PermanentError(f"listing shards {unknown} do not exist; available: {available}")
    shards = sorted(set(wanted))
    base_index, base_shards = None, []
    if client is not None:
        base_index, base_shards = _base_state(settings, s3, client, alias, shards, language, name, logger)
    return RunPlan(
        run_key=run_key,
        shards=shards,
        language_tag=language,
        max_products=int(max_products) if max_products else None,
        alias=alias,
        force_reencode=bool(params.get("force_reencode", False)),
        index=name,
        prefix=settings.run_prefix(run_id),
        base_index=base_index,
        base_shards=base_shards,
        allow_shrink=bool(params.get("allow_shrink", False)),
    )


def _base_state(
    settings: Settings, s3, client, alias: str, shards: list[str], language: str, own_index: str, logger
) -> tuple[str | None, list[str]]:
    """The index the alias serves and the shards to take from its state (those this run does not process)."""
    targets = index.alias_targets(client, alias)
    if not targets:
        logger.info("alias %s serves nothing yet: the run publishes shards %s only", alias, ", ".join(shards))
        return None, []
    base = targets[0]
    record = state.read_manifest(s3, settings, alias, base)
    if record is None:
        logger.warning(
            "alias %s serves %s, which has no recorded catalogue state: the run publishes shards %s only",
            alias,
            base,
            ", ".join(shards),
        )
        return base, []
    others = sorted(set(record["shards"]) - set(shards))
    if others and record["language_tag"] != language and base != own_index:
        raise PermanentError(
            f"language_tag {language} differs from the published catalogue's ({record['language_tag']}, index "
            f"{base}), whose shards {others} this run would keep: run every shard, or use another alias"
        )
    logger.info(
        "builds on %s (published state of alias %s): processes shards %s, keeps shards %s as published",
        base,
        alias,
        ", ".join(shards),
        ", ".join(others) or "none",
    )
    return base, others


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
    """Step 2: this run's shards + the other shards as published, copy their images, write the run's products.

    The per-shard lists are also written as the state of this run's index; they
    become the published state when the alias moves to it.
    """
    lists = {s: catalogue.from_jsonl(get_bytes(s3, settings.bucket, plan.shard_key(s))) for s in plan.shards}
    for shard in plan.base_shards:
        assert plan.base_index is not None
        lists[shard] = state.read_shard(s3, settings, plan.alias, plan.base_index, shard)
        logger.info("shard %s: %d products as published in %s", shard, len(lists[shard]), plan.base_index)
    tagged = [[{**p, "shard": shard} for p in lists[shard]] for shard in sorted(lists)]
    merged, duplicates = catalogue.merge_products(tagged, plan.max_products)
    if duplicates:
        logger.info("dropped %d products listed in more than one shard (%s)", duplicates, catalogue.DROP_DUPLICATE)
    if not merged:
        raise PermanentError(f"no products left after filtering shards {', '.join(sorted(lists))}: nothing to index")
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
    if not kept:
        raise PermanentError("no products left: the source images of every product are missing")
    put_bytes(s3, settings.bucket, plan.products_key, catalogue.to_jsonl(kept), "application/jsonlines")
    logger.info(
        "images: %d copied, %d already present, %d missing at the source (products dropped: %s)",
        report.copied,
        report.skipped,
        len(report.missing),
        ", ".join(report.missing) or "none",
    )
    if plan.index in served_indices(settings, s3, None, plan.alias):
        logger.info("index %s has served: its recorded state is left as it is", plan.index)
    else:
        by_shard: dict[str, list[dict[str, Any]]] = {shard: [] for shard in lists}
        for product in merged:
            by_shard[product["shard"]].append({k: v for k, v in product.items() if k != "shard"})
        state.write_state(
            s3, settings, plan.alias, plan.index, by_shard, language_tag=plan.language_tag, run_key=plan.run_key
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


def title_vectors(settings: Settings, s3, items: list[dict[str, Any]], version: str, logger: logging.Logger = log):
    """The title vectors of `items` from the title store (artifact `version`), ready for lookup
    (`names.TitleVectors`); a title the store lacks is named in a warning."""
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
    return names.TitleVectors(store.iter_vectors(s3, name_settings, catalogue, by_title))


def load_index(settings: Settings, s3, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 4: create the run's index and bulk-load every product that has an embedding.

    Vectors stream from the store chunk by chunk (float32), so memory does
    not grow with the number of vectors. Each document carries its title vector
    too, looked up in a local spool of the title store (`names.TitleVectors`):
    one indexing per document, no partial updates.
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
    loaded = [p for p in items if p["path"] in catalogue.images]
    ready = len(loaded)
    if not ready:
        raise RuntimeError(f"no product has an embedding for artifact {version}: nothing to index")
    vectors = store.iter_vectors(s3, settings, catalogue, by_path)
    first_path, first_vector = next(vectors)
    dimension = int(first_vector.shape[0])
    body = index.index_body(settings, alias=plan.alias, dimension=dimension, run_key=plan.run_key)
    body["mappings"]["_meta"]["artifact_version"] = version
    created = index.create_index(client, plan.index, body, served=served_indices(settings, s3, client, plan.alias))
    logger.info("index %s: %s", plan.index, created)
    if created == "served":
        # A rerun of a finished run: the index serves (or served) readers and is never modified.
        logger.info("index %s has served alias %s: left unchanged, nothing loaded", plan.index, plan.alias)
        return {
            "index": plan.index,
            "indexed": int(client.count(index=plan.index)["count"]),
            "dropped_no_embedding": dropped,
            "dimension": dimension,
            "artifact_version": version,
            "served": True,
        }

    titled = 0

    def docs(titles):
        nonlocal titled
        import itertools

        for path, vector in itertools.chain([(first_path, first_vector)], vectors):
            row = vector.tolist()
            for product in by_path[path]:
                name_vector = titles.get(product.get("item_name"))
                titled += name_vector is not None
                yield index.document(product, row, settings.model_name, name_vector)

    with title_vectors(settings, s3, loaded, version, logger) as titles:
        logger.info("title vectors: %d read for %d documents", len(titles.rows), ready)
        report = index.bulk_load(
            client,
            plan.index,
            docs(titles),
            total=ready,
            chunk_size=settings.bulk_chunk_size,
            threads=settings.bulk_threads,
            logger=logger,
        )
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} documents were rejected, first: {report.failed[0]}")
    logger.info("title vectors added to %d of %d documents", titled, len(loaded))
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
    """Step 5: the count matches, sampled products hold exactly their stored embedding, ANN recall is high.

    The samples are drawn with the run as seed, so successive runs check other products.
    """
    items = {p["item_id"]: p for p in products(settings, s3, plan)}
    dropped = set(loaded["dropped_no_embedding"])
    indexed = [i for i, p in items.items() if p["path"] not in dropped]
    checked = index.sample_ids(indexed, settings.validation_sample, seed=f"self-match/{plan.run_key}")
    queried = index.sample_ids(indexed, settings.recall_sample, seed=f"recall/{plan.run_key}")
    paths = sorted({items[i]["path"] for i in {*checked, *queried}})
    from catalogue_search import embedding_store as store

    version = loaded.get("artifact_version") or store.read_plan(s3, settings, plan.prefix).version
    catalogue = store.Catalogue.load(s3, settings, version)
    vectors = {path: vector.tolist() for path, vector in store.iter_vectors(s3, settings, catalogue, paths)}
    missing = [p for p in paths if p not in vectors]
    if missing:
        raise index.IndexValidationError(f"sampled images {missing[:5]} have no stored embedding to check against")
    return index.validate(
        client,
        plan.index,
        expected_count=len(indexed),
        expected={i: vectors[items[i]["path"]] for i in checked},
        queries=[vectors[items[i]["path"]] for i in queried],
        min_recall=settings.min_recall_percent / 100,
        candidates=settings.knn_candidates,
        logger=logger,
    )


def report_duplicates(settings: Settings, s3, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """The run's near-duplicate groups (same image id, or image vectors with cosine >= the
    threshold), read from the run's index: a JSON report in the run's prefix, counts in the log."""
    import json

    from catalogue_search import duplicates

    total = client.count(index=plan.index)["count"]
    neighbours = None
    if total > settings.duplicate_exact_max_products:
        neighbours = duplicates.IndexNeighbours(
            client, plan.index, index.VECTOR_FIELD, k=settings.duplicate_neighbours, logger=logger
        )
    report = duplicates.find_duplicates(
        duplicates.index_vectors(client, plan.index, index.VECTOR_FIELD),
        total=total,
        threshold=settings.duplicate_cosine_threshold,
        block_rows=settings.duplicate_block_rows,
        logger=logger,
        neighbours=neighbours,
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


def served_indices(settings: Settings, s3, client, alias: str) -> set[str]:
    """Indices that serve or have served `alias` (recorded in the bucket, plus the alias's targets)."""
    names = set(state.served(s3, settings, alias))
    if client is not None:
        names.update(index.alias_targets(client, alias))
    return names


def check_shrink(settings: Settings, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Refuse to publish an index much smaller than what the alias serves now (unless allowed for this run)."""
    new = int(client.count(index=plan.index)["count"])
    live = index.live_count(client, plan.alias)
    out = {"new_count": new, "live_count": live}
    if not live or new >= live:
        return out
    shrink = 100.0 * (live - new) / live
    out["shrink_percent"] = round(shrink, 2)
    if shrink <= settings.shrink_guard_percent:
        logger.info("catalogue shrinks by %.1f%% (%d -> %d): within the guard", shrink, live, new)
        return out
    if plan.allow_shrink:
        logger.warning("catalogue shrinks by %.1f%% (%d -> %d): allowed for this run (allow_shrink)", shrink, live, new)
        return out
    raise PermanentError(
        f"shrink guard: index {plan.index} holds {new} products, alias {plan.alias} serves {live} now; "
        f"publishing would shrink the catalogue by {shrink:.1f}%, more than the {settings.shrink_guard_percent}% "
        "allowed (CATSEARCH_SHRINK_GUARD_PERCENT). The alias stays where it is. If the shrink is intended, "
        'trigger the run again with {"allow_shrink": true}.'
    )


def publish(settings: Settings, s3, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 6: move the read alias to the validated index, record it as served, apply the retention.

    Refused (alias untouched) when the catalogue would shrink too much, when the
    alias moved since the run was planned, or when this run's index already served
    and was superseded (a cleared old run must not roll the catalogue back: use the
    rollback DAG).
    """
    targets = index.alias_targets(client, plan.alias)
    served = state.served(s3, settings, plan.alias)
    if targets != [plan.index]:
        if plan.index in served:
            raise PermanentError(
                f"index {plan.index} already served alias {plan.alias} and was superseded by {', '.join(targets)}: "
                "a rerun of an old run does not move the alias back (use the catalogue_rollback DAG)"
            )
        base = [plan.base_index] if plan.base_index else []
        if targets != base:
            raise PermanentError(
                f"alias {plan.alias} moved to {', '.join(targets) or '(none)'} after this run was planned on "
                f"{plan.base_index or '(none)'}: its catalogue is stale; trigger a new run"
            )
    guard = check_shrink(settings, client, plan, logger)
    previous = index.swap_alias(client, plan.alias, plan.index, logger=logger)
    served = [name for name in served if name != plan.index] + [plan.index]
    keep = served[-(settings.index_retention + 1) :]
    retired = [name for name in served if name not in keep]
    state.write_served(s3, settings, plan.alias, keep)
    for name in retired:
        index.delete_index(client, name, logger=logger)
        state.delete_index_state(s3, settings, plan.alias, name)
        logger.info("retention %d: removed the older served index %s", settings.index_retention, name)
    return {
        "alias": plan.alias,
        "index": plan.index,
        "previous": previous,
        "kept": keep[:-1],
        "deleted": retired,
        **guard,
    }


def clean_up(settings: Settings, s3, client, alias: str, logger: logging.Logger = log) -> dict[str, Any]:
    """Remove the indices of `alias` that never served (failed or refused runs, this one included).

    Runs whatever happened to the run. Lists only `<alias>-*`; never touches an
    index the alias points at or one recorded as served (the rollback targets).
    """
    keep = served_indices(settings, s3, client, alias)
    removed = []
    for info in index.indices_for_alias(client, alias):
        name = info["index"]
        if name in keep or info["aliased"]:
            continue
        index.delete_index(client, name, logger=logger)
        state.delete_index_state(s3, settings, alias, name)
        removed.append(name)
    logger.info(
        "clean-up of alias %s: removed %s; kept the served %s",
        alias,
        ", ".join(removed) or "nothing",
        ", ".join(sorted(keep)) or "none",
    )
    return {"alias": alias, "removed": removed, "kept": sorted(keep)}


def rollback(settings: Settings, s3, client, alias: str, logger: logging.Logger = log) -> dict[str, Any]:
    """Move `alias` back to the previous served index in one atomic `_aliases` call.

    The index rolled back from is no longer a rollback target: the next run's
    clean-up removes it. Its per-shard state goes with it; the previous index's
    state becomes the published one again.
    """
    targets = index.alias_targets(client, alias)
    served = state.served(s3, settings, alias)
    current = targets[0] if targets else None
    earlier = served[: served.index(current)] if current in served else [n for n in served if n != current]
    previous = next((n for n in reversed(earlier) if client.indices.exists(index=n)), None)
    if previous is None:
        raise PermanentError(
            f"alias {alias} serves {current or '(nothing)'} and has no earlier served index to roll back to "
            f"(served: {', '.join(served) or 'none recorded'})"
        )
    index.swap_alias(client, alias, previous, logger=logger)
    state.write_served(s3, settings, alias, served[: served.index(previous) + 1])
    logger.info("rolled back alias %s: %s -> %s", alias, current, previous)
    return {"alias": alias, "from": current, "to": previous}
