"""Metadata filter of all 16 listing shards of the full-size synthetic ABO catalogue: time, peak memory.

    ./dev bench filter [--listings 147702]

Runs exactly what the DAG's mapped `filter_shard` task runs per shard
(`catalogue.read_listings`, `read_images_csv`, `filter_listings`), each shard in
a fresh process as a worker would, reading the files the generator wrote
(`./dev generate-abo`; generated here if missing). The reference, measured in
the same run, is the floor of the same work: gunzip and parse every listing
line and read images.csv, with no filtering.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import _common as cm  # noqa: F401  (sys.path)


def _shard_task(out_dir: str, shard: str) -> tuple[float, float, float, dict]:
    """One filter_shard as the worker runs it: (seconds, images.csv seconds, peak RSS MiB, report)."""
    import pandas  # noqa: F401  (imported before the clock starts, as in a warm worker)

    from catalogue_search import catalogue

    base = Path(out_dir)
    started = time.perf_counter()
    listings = catalogue.read_listings((base / catalogue.LISTINGS_KEY.format(shard=shard)).read_bytes())
    t_csv = time.perf_counter()
    images = catalogue.read_images_csv((base / catalogue.IMAGES_CSV_KEY).read_bytes())
    csv_s = time.perf_counter() - t_csv
    products, report = catalogue.filter_listings(listings, images, language_tag="en_US", shard=shard)
    catalogue.to_jsonl(products)
    elapsed = time.perf_counter() - started
    return elapsed, csv_s, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, report.as_dict()


def _floor_task(out_dir: str) -> tuple[float, float]:
    """Parse every line of every shard and read images.csv once, nothing else."""
    import gzip
    import json

    import pandas as pd

    base = Path(out_dir)
    started = time.perf_counter()
    for shard in range(16):
        with gzip.open(base / f"listings/metadata/listings_{shard:x}.json.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                json.loads(line)
    pd.read_csv(base / "images/metadata/images.csv.gz", compression="gzip")
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    from catalogue_search_dev import abo_generator
    from catalogue_search_dev.localenv import cache_home

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listings", type=int, default=abo_generator.ABO_LISTINGS)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    out_dir = args.out or cache_home() / f"abo-synthetic-{args.listings}-0"
    if not (out_dir / abo_generator.SUMMARY_FILENAME).exists():
        print(f"generating the synthetic catalogue in {out_dir} first")
        abo_generator.write_layout(abo_generator.generate(args.listings), out_dir)

    print(f"machine: {cm.machine()}")
    ctx = multiprocessing.get_context("spawn")
    shards = [format(n, "x") for n in range(16)]
    per_shard = []
    started = time.perf_counter()
    for shard in shards:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:  # a fresh process, as a worker
            per_shard.append(pool.submit(_shard_task, str(out_dir), shard).result())
    total = time.perf_counter() - started
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        floor_s, floor_rss = pool.submit(_floor_task, str(out_dir)).result()

    work = sum(p[0] for p in per_shard)
    csv_s = sum(p[1] for p in per_shard)
    peak = max(p[2] for p in per_shard)
    listings = sum(p[3]["listings"] for p in per_shard)
    kept = sum(p[3]["kept"] for p in per_shard)
    dropped: dict[str, int] = {}
    for p in per_shard:
        for k, v in p[3]["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    print(f"metadata filter, 16 shards, {listings:,} listing lines -> {kept:,} products kept; dropped {dropped}")
    print(
        f"  filter work: {work:.1f} s over 16 tasks ({work / 16:.2f} s a shard; of it images.csv read 16 times: "
        f"{csv_s:.1f} s), wall with process start-up {total:.1f} s"
    )
    print(f"  peak RSS of one shard task: {peak:.0f} MiB")
    print(f"  reference (parse every line + read images.csv once): {floor_s:.1f} s, peak RSS {floor_rss:.0f} MiB")
    print(f"  ratio: filter / reference = x{work / floor_s:.2f}")
    cm.save_json(
        args.json,
        {
            "benchmark": "filter",
            "machine": cm.machine(),
            "listings": listings,
            "kept": kept,
            "dropped": dropped,
            "work_s": work,
            "images_csv_s": csv_s,
            "wall_s": total,
            "peak_rss_mib": peak,
            "reference_s": floor_s,
            "reference_rss_mib": floor_rss,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
