"""Peak memory (RSS) of `ingest.load_index` over N stored embeddings.

    python benchmarks/load_index_memory.py [--n 150000] [--dim 512] [--chunk 512]

Writes N random unit vectors as chunk outputs (`.npz`, as batch transform
writes them) plus the store's catalogue and N products to a fresh bucket on
the local moto server, then runs `load_index` in a child process against the
real OpenSearch node and reports the child's peak RSS (its high-water mark,
`VmHWM`), its RSS before `load_index` started (interpreter + imports) and
the wall time. The target is a peak under 1 GB at 150,000 x 512. Everything
the run created (bucket, index) is removed afterwards.

Uses the local stack's addresses (`CATSEARCH_AWS_ENDPOINT_URL`,
`CATSEARCH_OPENSEARCH_URL`, as `./dev` exports them). A smaller `--n` gives a
quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "include", REPO / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

VERSION = "bench0000000000"


def _settings(bucket: str, alias: str):
    from catalogue_search.settings import Settings
    from catalogue_search_dev.localenv import local_environment

    return Settings.from_env(local_environment(dict(os.environ)), bucket=bucket, index_alias=alias)


def write_store(settings, s3, n: int, dim: int, chunk: int) -> None:
    """N unit vectors in chunks, the catalogue, the run's products and encode plan."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from catalogue_search import catalogue as cat
    from catalogue_search import encoding, ingest

    plan = ingest.RunPlan.for_run(settings, "bench")
    paths = [f"{i % 256:02x}/{i:08d}.jpg" for i in range(n)]
    store = encoding.Store(settings, encoding.IMAGE)
    out_prefix = store.output_prefix(VERSION, plan.prefix)
    catalogue = encoding.Catalogue(version=VERSION)

    def put(number: int) -> str:
        ids = paths[number * chunk : (number + 1) * chunk]
        vectors = rng_for(number).standard_normal((len(ids), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        key = f"{out_prefix}{number:05d}.jsonl.out"
        s3.put_object(Bucket=settings.bucket, Key=key, Body=encoding.encode_output(ids, vectors, {}, VERSION))
        return key

    def rng_for(number: int):
        return np.random.default_rng([0, number])

    n_chunks = -(-n // chunk)
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(put, range(n_chunks)))
    for number, key in enumerate(keys):
        catalogue.add(key, paths[number * chunk : (number + 1) * chunk], {}, {})
    catalogue.save(s3, store)
    products = [
        {
            "item_id": f"B{i:09d}",
            "item_name": f"Benchmark product number {i} with a title of ordinary length",
            "image_id": f"img{i:08d}",
            "main_image_id": f"img{i:08d}",
            "path": path,
            "product_type": "CHAIR" if i % 2 else "SHOES",
            "brand": f"brand-{i % 97}",
        }
        for i, path in enumerate(paths)
    ]
    s3.put_object(Bucket=settings.bucket, Key=plan.products_key, Body=cat.to_jsonl(products))
    encode = encoding.EncodePlan(version=VERSION, output_prefix=out_prefix)
    s3.put_object(Bucket=settings.bucket, Key=store.plan_key(plan.prefix), Body=encode.as_json())


def _memory(field: str) -> int:
    """This process's `VmRSS` (now) or `VmHWM` (peak), in bytes.

    Not `ru_maxrss`: on Linux it carries over the parent's peak across fork
    and exec, so a child would report the data generator's memory.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(bucket: str, alias: str) -> None:
    """Run load_index alone in this process and print its figures as JSON."""
    import logging

    import boto3

    from catalogue_search import index, ingest

    logging.basicConfig(level=logging.WARNING)
    settings = _settings(bucket, alias)
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    client = index.client_from_settings(settings)
    client.info()
    before = _memory("VmRSS")
    started = time.monotonic()
    loaded = ingest.load_index(settings, s3, client, ingest.RunPlan.for_run(settings, "bench"))
    seconds = time.monotonic() - started
    peak = _memory("VmHWM")
    print(json.dumps({"indexed": loaded["indexed"], "rss_before": before, "rss_peak": peak, "seconds": seconds}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=150_000, help="stored embeddings (%(default)s)")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (%(default)s)")
    parser.add_argument("--chunk", type=int, default=512, help="vectors per stored chunk (%(default)s)")
    parser.add_argument("--child", nargs=2, metavar=("BUCKET", "ALIAS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    import boto3

    from catalogue_search import index

    token = uuid.uuid4().hex[:8]
    settings = _settings(f"bench-load-{token}", f"bench-load-{token}")
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    client = index.client_from_settings(settings)
    s3.create_bucket(Bucket=settings.bucket)
    try:
        started = time.monotonic()
        write_store(settings, s3, args.n, args.dim, args.chunk)
        print(f"wrote {args.n} x {args.dim} embeddings in chunks of {args.chunk} ({time.monotonic() - started:.0f} s)")
        result = subprocess.run(
            [sys.executable, __file__, "--child", settings.bucket, settings.index_alias],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(REPO / "tools")])},
        )
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return 1
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        mb = 1024 * 1024
        print(
            f"load_index: {figures['indexed']} documents ({args.n} x {args.dim} stored), "
            f"peak RSS {figures['rss_peak'] / mb:.0f} MB (before load_index: {figures['rss_before'] / mb:.0f} MB), "
            f"{figures['seconds']:.0f} s"
        )
        return 0 if figures["indexed"] == args.n else 1
    finally:
        for name in client.indices.get(index=f"{settings.index_alias}-*", ignore_unavailable=True):
            client.indices.delete(index=name)
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=settings.bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=settings.bucket, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=settings.bucket)


if __name__ == "__main__":
    sys.exit(main())
