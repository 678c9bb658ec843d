"""The run's steps from the vectors on: load the index, validate it, report its near-duplicates.

Vectors stream from the stores chunk by chunk (float32), so memory does not
grow with the catalogue. Each document is indexed once, with its image vector
and its title vector.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
from typing import Any

from catalogue_search import duplicates, encoding, index, state
from catalogue_search.contract import GZIP, JSON
from catalogue_search.errors import PermanentError
from catalogue_search.ingest import delta
from catalogue_search.ingest.lifecycle import served_indices
from catalogue_search.ingest.plan import RunPlan
from catalogue_search.ingest.steps import products
from catalogue_search.s3util import get_or_none, put_bytes
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)


def title_vectors(
    settings: Settings, s3, items: list[dict[str, Any]], version: str, logger: logging.Logger = log
) -> encoding.TitleVectors:
    """The title vectors of `items` from the title store (artifact `version`), ready for lookup
    (`encoding.TitleVectors`); titles the store lacks are counted in a warning."""
    store = encoding.Store(settings, encoding.TITLE)
    stored = encoding.Catalogue.load(s3, store, version)
    wanted = encoding.titles_of(items)
    missing = [tid for tid in wanted if tid not in stored.encoded]
    if missing:
        logger.warning(
            "%d titles have no title vector for artifact %s (their products are found by image and BM25 only)",
            len(missing),
            version,
        )
    return encoding.TitleVectors(encoding.iter_vectors(s3, store, stored, wanted))


def _loadable(settings: Settings, s3, plan: RunPlan):
    """(artifact version, the store's catalogue, the run's products by image path)."""
    store = encoding.Store(settings, encoding.IMAGE)
    version = encoding.read_plan(s3, store, plan.prefix).version
    stored = encoding.Catalogue.load(s3, store, version)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for p in products(settings, s3, plan):
        by_path.setdefault(p["path"], []).append(p)
    return store, version, stored, by_path


def load_part(settings: Settings, s3, client, plan: RunPlan, part: int, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 4, part `part` of `plan.parts`: the products whose image vectors lie in one range of the
    store's chunks (each chunk read by one part only), bulk-loaded into the run's index.

    A full build: the first part to run creates the index; the others reuse it.
    An incremental build (`choose_build` cloned the served index): the parts
    share the added and updated products only, by the chunks that hold them.
    Documents are keyed by `item_id`, so a retried part overwrites what its
    first try loaded. Each document carries its title vector too, looked up in
    a local spool of the title store (`encoding.TitleVectors`): one indexing per document.
    """
    from catalogue_search.ingest.copy import part_range

    store, version, stored, by_path = _loadable(settings, s3, plan)
    if not any(path in stored.encoded for path in by_path):
        raise PermanentError(f"no product has an embedding for artifact {version}: nothing to index")
    # What no part loads, named by every part alike (the first names why in its log): `finish_index`
    # then reads nothing from S3.
    dropped = sorted(path for path in by_path if path not in stored.encoded)
    if part == 0:
        for path in dropped:
            reason = stored.errors.get(path, ("", "no embedding in the store"))[1]
            logger.warning("image %s could not be encoded, its product is dropped: %s", path, reason)
    build = delta.read_build(settings, s3, plan) or {"mode": delta.FULL}
    if build["mode"] == delta.INCREMENTAL:  # the index is a clone of the served one: the changed products only
        upsert = set(delta.read_delta(settings, s3, plan)["upsert"])
        by_path = {path: kept for path, ps in by_path.items() if (kept := [p for p in ps if p["item_id"] in upsert])}
    chunks = sorted({stored.encoded[path][0] for path in by_path if path in stored.encoded})
    mine = {chunks[i] for i in part_range(len(chunks), part, plan.parts)}
    paths = {path: by_path[path] for path in by_path if path in stored.encoded and stored.encoded[path][0] in mine}
    loaded = [p for path in sorted(paths) for p in paths[path]]
    result = {"part": part, "index": plan.index, "indexed": 0, "title_vectors": 0, "chunks": len(mine)}
    result.update(dropped_no_embedding=dropped, artifact_version=version)
    result["build"] = {k: build[k] for k in ("mode", "base_index") if k in build}
    logger.info(
        "load part %d of %d: %d chunks, %d products%s",
        part + 1,
        plan.parts,
        len(mine),
        len(loaded),
        f" (added or updated since {build['base_index']})" if build["mode"] == delta.INCREMENTAL else "",
    )
    if not loaded:
        return result
    vectors = encoding.iter_vectors(s3, store, stored, paths)
    first_path, first_vector = next(vectors)
    dimension = int(first_vector.shape[0])
    body = index.index_body(settings, alias=plan.alias, dimension=dimension, run_key=plan.run_key)
    body["mappings"]["_meta"]["artifact_version"] = version
    created = index.create_index(client, plan.index, body, served=served_indices(settings, s3, client, plan.alias))
    logger.info("index %s: %s", plan.index, created)
    if created == "served":
        # A rerun of a finished run: the index serves (or served) readers and is never modified.
        logger.info("index %s has served alias %s: left unchanged, nothing loaded", plan.index, plan.alias)
        return {**result, "served": True}

    titled = 0

    def docs(titles: encoding.TitleVectors):
        nonlocal titled
        for path, vector in itertools.chain([(first_path, first_vector)], vectors):
            row = vector.tolist()
            for product in paths[path]:
                name_vector = titles.get(product.get("item_name"))
                titled += name_vector is not None
                yield index.document(product, row, settings.model_name, name_vector)

    with title_vectors(settings, s3, loaded, version, logger) as titles:
        logger.info("title vectors: %d read for %d documents", len(titles.rows), len(loaded))
        report = index.bulk_load(
            client,
            plan.index,
            docs(titles),
            total=len(loaded),
            chunk_size=settings.bulk_chunk_size,
            threads=settings.bulk_threads,
            logger=logger,
        )
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} documents were rejected, first: {report.failed[0]}")
    logger.info("title vectors added to %d of %d documents", titled, len(loaded))
    return {**result, "indexed": report.indexed, "title_vectors": titled, "dimension": dimension}


def finish_index(
    settings: Settings, s3, client, plan: RunPlan, parts: list[dict[str, Any]], logger: logging.Logger = log
) -> dict[str, Any]:
    """Step 4, once every part has loaded: the index gets its serving settings (refresh, replicas) and
    its documents become visible. It reads nothing from S3: the parts' reports say what was dropped
    and which build this is (an incremental run that only removed products loads nothing: the clone
    is the index)."""
    missing = sorted(set(range(plan.parts)) - {p["part"] for p in parts})
    if missing:
        raise PermanentError(f"load parts {missing} of {plan.parts} reported nothing")
    first = min(parts, key=lambda p: p["part"])
    result = {k: first[k] for k in ("index", "dropped_no_embedding", "artifact_version", "build")}
    result["dimension"] = next((p["dimension"] for p in parts if "dimension" in p), None)
    if any(p.get("served") for p in parts):
        return {**result, "indexed": int(client.count(index=plan.index)["count"]), "served": True}
    index.finish_loading(client, plan.index, settings.index_replicas)
    indexed = sum(p["indexed"] for p in parts)
    incremental = result["build"]["mode"] == delta.INCREMENTAL
    logger.info(
        "index %s: %d documents %s from %d load parts, %d replicas",
        plan.index,
        indexed,
        f"upserted into a clone of {result['build']['base_index']}" if incremental else "loaded",
        plan.parts,
        settings.index_replicas,
    )
    return {**result, "indexed": indexed, "title_vectors": sum(p["title_vectors"] for p in parts)}


def load_index(settings: Settings, s3, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 4 in one process: every part in turn, then `finish_index` (notebooks, benchmarks, tests)."""
    parts = [load_part(settings, s3, client, plan, part, logger) for part in range(plan.parts)]
    return finish_index(settings, s3, client, plan, parts, logger)


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
    store = encoding.Store(settings, encoding.IMAGE)
    version = loaded.get("artifact_version") or encoding.read_plan(s3, store, plan.prefix).version
    stored = encoding.Catalogue.load(s3, store, version)
    vectors = {path: vector.tolist() for path, vector in encoding.iter_vectors(s3, store, stored, paths)}
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


def _changed_since_served(settings: Settings, s3, plan: RunPlan, logger: logging.Logger):
    """(item ids upserted, the served index's report) when only those need a duplicate check, else (None, None)."""
    build = delta.read_build(settings, s3, plan) or {"mode": delta.FULL}
    if build["mode"] != delta.INCREMENTAL:
        return None, None
    raw = get_or_none(s3, settings.bucket, state.duplicates_key(settings, plan.alias, build["base_index"]))
    previous = None if raw is None else json.loads(gzip.decompress(raw))
    if previous is None or "pairs" not in previous or previous["threshold"] != settings.duplicate_cosine_threshold:
        logger.info("the served index %s has no reusable duplicate report: every image is checked", build["base_index"])
        return None, None
    return set(delta.read_delta(settings, s3, plan)["upsert"]), previous


def report_duplicates(settings: Settings, s3, client, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """The run's near-duplicate groups (same image id, or image vectors with cosine >= the
    threshold), read from the run's index: a JSON report in the run's prefix, counts in the log.
    After an incremental build only the added and updated products ask the index for their
    neighbours; the pairs among the others come from the served index's report."""
    total = client.count(index=plan.index)["count"]
    changed, previous = _changed_since_served(settings, s3, plan, logger)
    neighbours = None
    if changed is not None or total > settings.duplicate_exact_max_products:
        # An incremental report asks with the search's candidate list: only the changed image can find a pair.
        neighbours = duplicates.IndexNeighbours(
            client,
            plan.index,
            index.VECTOR_FIELD,
            k=settings.duplicate_neighbours,
            candidates=settings.knn_candidates if changed is not None else 0,
            logger=logger,
        )
    report = duplicates.find_duplicates(
        duplicates.index_vectors(client, plan.index, index.VECTOR_FIELD, only=changed),
        total=total,
        threshold=settings.duplicate_cosine_threshold,
        block_rows=settings.duplicate_block_rows,
        logger=logger,
        neighbours=neighbours,
        changed=changed,
        previous=previous,
    )
    body = json.dumps(report.as_dict(), indent=1, ensure_ascii=False).encode()
    put_bytes(s3, settings.bucket, plan.duplicates_key, body, JSON)
    # Beside the index's state (kept as long as the index, not the manifests): the next incremental run's pairs.
    key = state.duplicates_key(settings, plan.alias, plan.index)
    put_bytes(s3, settings.bucket, key, gzip.compress(body, mtime=0), GZIP)
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
