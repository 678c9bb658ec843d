"""The cluster's two axes on this machine: the split copy and load with 1 and 2 workers, and the bulk
rate on 1 node against 3 nodes with 1 replica.

    ./dev bench cluster                       (4,000 listings, 20,000 bulk documents)
    ./dev bench cluster --listings 1000 --bulk 5000

On the light stack (moto and the one node must run): it starts three OpenSearch
nodes of its own on the test cluster's ports (`cluster.Layout.for_tests`) and
stops them at the end. A Celery worker has 2 task slots, so "1 worker" runs the
parts 2 at a time and "2 workers" 4 at a time, each part in its own process as
a Celery task is; "one task" is the copy and the load before the split (every
part in one process). The parts are the DAG's own (`ingest.copy_part`,
`ingest.load_part`); the catalogue is the generated ABO layout with its vectors
seeded, so the load reads real chunks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import _common as cm
import boto3
import numpy as np

from catalogue_search import index, ingest
from catalogue_search.settings import Settings
from catalogue_search_dev import abo_generator, cluster, demo, testenv
from catalogue_search_dev.sample_catalogue import ensure_bucket

PARTS = 4
SLOTS = {"one task (no split)": 1, "1 worker (2 slots)": 2, "2 workers (4 slots)": 4}


def _settings(**overrides) -> Settings:
    return Settings.from_env(**overrides)


def _copy_part(args) -> dict:
    settings, plan, part = args
    return ingest.copy_part(settings, boto3.client("s3", **settings.boto3_kwargs()), plan, part)


def _load_part(args) -> dict:
    settings, plan, part = args
    client = index.make_client(settings.opensearch_url, timeout=300)
    return ingest.load_part(settings, boto3.client("s3", **settings.boto3_kwargs()), client, plan, part)


def _run_parts(fn, settings, plan, slots: int) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    jobs = [(settings, plan, part) for part in range(plan.parts)]
    if slots == 1:
        out = [fn(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=slots) as pool:
            out = list(pool.map(fn, jobs))
    return time.perf_counter() - started, out


def prepare(listings: int, base: Settings) -> tuple[Settings, int]:
    """The generated catalogue in moto, filtered, with its vectors seeded and its encode plan written."""
    s3 = boto3.client("s3", **base.boto3_kwargs())
    gen = abo_generator.generate(listings, seed=11)
    out = cm.Path(os.environ.get("TMPDIR", "/tmp")) / f"{base.bucket}-abo"
    ensure_bucket(s3, base.bucket)
    demo.prepare_model(base, s3, cm.REPO / "tests" / "fixtures" / "tiny_clip.json")
    abo_generator.stage_seeded(gen, out, s3, base, seed=11, chunk=128)
    shutil.rmtree(out, ignore_errors=True)
    return base, gen.summary.expected_products


def measure_split(base: Settings, expected: int, layout: cluster.Layout) -> dict:
    s3 = boto3.client("s3", **base.boto3_kwargs())
    sagemaker = boto3.client("sagemaker", **base.boto3_kwargs("sagemaker"))
    results = {}
    for label, slots in SLOTS.items():
        tag = f"s{slots}"
        settings = base.replace(images_prefix=f"images-{tag}/", split_parts=PARTS)
        plan = ingest.RunPlan.for_run(settings, f"bench-{tag}", shards=ingest.available_shards(s3, settings))
        for shard in plan.shards:
            ingest.filter_shard(settings, s3, plan, shard)
        copy_s, parts = _run_parts(_copy_part, settings, plan, slots)
        copied = ingest.record_copies(settings, s3, plan, parts)
        ingest.prepare_encoding(settings, s3, sagemaker, plan, "local/catalogue-search:bench")
        load_settings = settings.replace(opensearch_url=layout.opensearch_url, index_shards=3, index_replicas=1)
        client = index.make_client(layout.opensearch_url, timeout=300)
        load_s, parts = _run_parts(_load_part, load_settings, plan, slots)
        loaded = ingest.finish_index(load_settings, s3, client, plan, parts)
        assert copied["copied"] == copied["products"] and loaded["indexed"] == expected, (copied, loaded)
        assert client.count(index=plan.index)["count"] == expected
        client.indices.delete(index=plan.index)
        results[label] = {"copy_s": round(copy_s, 1), "load_s": round(load_s, 1), "products": expected}
        print(f"{label}: copy {copy_s:.1f} s ({copied['copied']} images), load {load_s:.1f} s ({expected} docs)")
    return results


def measure_bulk(n: int, layout: cluster.Layout) -> dict:
    data = np.random.default_rng(5).normal(size=(n, 512)).astype(np.float32)
    targets = {
        "1 node, 1 shard, 0 replicas": (Settings.from_env().opensearch_url.split(",")[0], 1, 0),
        "3 nodes, 3 shards, 1 replica": (layout.opensearch_url, 3, 1),
    }
    out = {}
    for label, (url, shards, replicas) in targets.items():
        settings = _settings(opensearch_url=url, index_shards=shards, index_replicas=replicas)
        client = index.make_client(url, timeout=300)
        name = cm.bench_name("cluster-bulk")
        client.indices.create(index=name, body=index.index_body(settings, alias="bench", dimension=512, run_key=name))
        docs = (index.document(cm.product(i), data[i].tolist(), "bench") for i in range(n))
        started = time.perf_counter()
        report = index.bulk_load(client, name, docs, total=n, chunk_size=500, threads=2)
        index.finish_loading(client, name, replicas)
        seconds = time.perf_counter() - started
        assert report.indexed == n and not report.failed
        client.indices.delete(index=name)
        out[label] = {"docs": n, "seconds": round(seconds, 1), "docs_per_s": round(n / seconds)}
        print(f"bulk {label}: {n} docs in {seconds:.1f} s = {n / seconds:.0f} docs/s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listings", type=int, default=4000)
    parser.add_argument("--bulk", type=int, default=20000)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    print(cm.machine(), "| load average", " ".join(f"{x:.1f}" for x in os.getloadavg()))
    token = testenv.unique_name_part()
    base = _settings(
        bucket=f"bench-clu-{token}",
        source_bucket=f"bench-clu-abo-{token}",
        model_name="tiny-clip",
        model_pretrained="",
        endpoint_prefix=f"bench-{token}",
    )
    layout = cluster.Layout.for_tests()
    try:
        for node in range(cluster.NODES):
            cluster.start_node(layout, node)
        cluster.wait_for_nodes(layout, ("green",))
        _, expected = prepare(args.listings, base)
        figures = {"split": measure_split(base, expected, layout), "bulk": measure_bulk(args.bulk, layout)}
    finally:
        for node in range(cluster.NODES):
            cluster.stop_pid(layout.pid_file(cluster.node_name(node)), group=False, wait=60)
        shutil.rmtree(layout.data, ignore_errors=True)
        testenv.sweep(testenv.session_token())
    figures["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    cm.save_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
