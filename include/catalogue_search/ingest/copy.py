"""Step 2, the image copy, split into parts that several workers share, then recorded by one.

Every part merges the run's product lists the same way (this run's shards and
the other shards as published), sorts them by image path and copies one
contiguous range of it: the parts share no image and few source folders. A
part writes the products it kept and what its copies taught the copy ledger
under keys of its own (`RunPlan.copy_part_key`), so a retried part overwrites
its own output and nothing else. `record_copies`, a single task, joins the
parts: the run's products, the shared copy ledger, the index's catalogue state.
"""

from __future__ import annotations

import logging
from typing import Any

from catalogue_search import catalogue, state
from catalogue_search.contract import JSONLINES
from catalogue_search.errors import PermanentError
from catalogue_search.ingest.lifecycle import served_indices
from catalogue_search.ingest.plan import RunPlan
from catalogue_search.s3util import copy_images, get_bytes, merge_ledgers, put_bytes
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

PRODUCTS = ".jsonl"
LEDGER = ".ledger.json.gz"


def part_range(total: int, part: int, parts: int) -> range:
    """The positions part `part` of `parts` takes of `total` items: contiguous, sizes differing by at most one."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not one of 0..{parts - 1}")
    return range(part * total // parts, (part + 1) * total // parts)


def merged_products(
    settings: Settings, s3, plan: RunPlan, logger: logging.Logger = log
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], int]:
    """(every shard's list, the merged products tagged with their shard, cross-shard duplicates dropped)."""
    lists = {s: catalogue.from_jsonl(get_bytes(s3, settings.bucket, plan.shard_key(s))) for s in plan.shards}
    for shard in plan.base_shards:
        assert plan.base_index is not None
        lists[shard] = state.read_shard(s3, settings, plan.alias, plan.base_index, shard)
        logger.info("shard %s: %d products as published in %s", shard, len(lists[shard]), plan.base_index)
    tagged = [[{**p, "shard": shard} for p in lists[shard]] for shard in sorted(lists)]
    merged, cross_shard = catalogue.merge_products(tagged, plan.max_products)
    if not merged:
        raise PermanentError(f"no products left after filtering shards {', '.join(sorted(lists))}: nothing to index")
    return lists, merged, cross_shard


def copy_part(settings: Settings, s3, plan: RunPlan, part: int, logger: logging.Logger = log) -> dict[str, Any]:
    """Copy the images of part `part` of `plan.parts` (a range of the products sorted by image path)."""
    _, merged, _ = merged_products(settings, s3, plan, logger)
    by_path = sorted(merged, key=lambda p: (p["path"], p["item_id"]))
    mine = [by_path[i] for i in part_range(len(by_path), part, plan.parts)]
    logger.info("copy part %d of %d: %d of %d products", part + 1, plan.parts, len(mine), len(merged))
    kept, report = copy_images(
        s3,
        mine,
        source_bucket=settings.source_bucket,
        source_prefix=settings.source_prefix,
        dest_bucket=settings.bucket,
        dest_prefix=settings.images_prefix,
        workers=settings.copy_workers,
        logger=logger,
        part_ledger=plan.copy_part_key(part, LEDGER) if plan.parts > 1 else None,
    )
    body = catalogue.to_jsonl({"item_id": p["item_id"]} for p in kept)
    put_bytes(s3, settings.bucket, plan.copy_part_key(part, PRODUCTS), body, JSONLINES)
    logger.info(
        "images: %d copied, %d already present, %d missing at the source (products dropped: %s)",
        report.copied,
        report.skipped,
        len(report.missing),
        ", ".join(report.missing) or "none",
    )
    return {"part": part, "products": len(kept), **report.as_dict()}


def record_copies(
    settings: Settings, s3, plan: RunPlan, part_reports: list[dict[str, Any]], logger: logging.Logger = log
) -> dict[str, Any]:
    """Join the parts: the run's products (in item_id order), the shared ledger, the index's state."""
    missing_parts = sorted(set(range(plan.parts)) - {r["part"] for r in part_reports})
    if missing_parts:
        raise PermanentError(f"copy parts {missing_parts} of {plan.parts} reported nothing")
    lists, merged, cross_shard = merged_products(settings, s3, plan, logger)
    if cross_shard:
        logger.info("dropped %d products listed in more than one shard (%s)", cross_shard, catalogue.DROP_DUPLICATE)
    kept_ids: set[str] = set()
    for part in range(plan.parts):
        rows = catalogue.from_jsonl(get_bytes(s3, settings.bucket, plan.copy_part_key(part, PRODUCTS)))
        kept_ids.update(row["item_id"] for row in rows)
    kept = [p for p in merged if p["item_id"] in kept_ids]
    if not kept:
        raise PermanentError("no products left: the source images of every product are missing")
    put_bytes(s3, settings.bucket, plan.products_key, catalogue.to_jsonl(kept), JSONLINES)
    if plan.parts > 1:
        ledgers = [plan.copy_part_key(part, LEDGER) for part in range(plan.parts)]
        logger.info(
            "copy ledger: %d entries merged from %d parts",
            merge_ledgers(s3, settings.bucket, settings.images_prefix, ledgers),
            plan.parts,
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
    totals = {"copied": 0, "skipped": 0, "missing": []}
    for report in sorted(part_reports, key=lambda r: r["part"]):
        totals["copied"] += report["copied"]
        totals["skipped"] += report["skipped"]
        totals["missing"] += report["missing"]
    totals["missing"].sort()
    logger.info(
        "%d products from %d copy parts: %d images copied, %d already present, %d missing at the source",
        len(kept),
        plan.parts,
        totals["copied"],
        totals["skipped"],
        len(totals["missing"]),
    )
    return {"products": len(kept), "cross_shard_duplicates": cross_shard, **totals}


def copy_run_images(settings: Settings, s3, plan: RunPlan, logger: logging.Logger = log) -> dict[str, Any]:
    """Step 2 in one process: every part in turn, then the record (notebooks, benchmarks, tests)."""
    reports = [copy_part(settings, s3, plan, part, logger) for part in range(plan.parts)]
    return record_copies(settings, s3, plan, reports, logger)
