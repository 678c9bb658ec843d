"""The main job at ABO's size: `catalogue_ingest` on the synthetic 147,702-listing catalogue.

    ./dev bench full-dag [--listings 147702] [--runs 2] [--change 0.01] [--keep] [--json FILE]

1. The generated catalogue (`./dev generate-abo`, seed 0): its 16 listing shards,
   images.csv.gz and every main image in a moto source bucket of its own
   (`catalogue-search-abo-full`; kept between runs of this benchmark, since the
   upload is the slowest step: a rerun uploads only what is missing).
2. The model artifact (ViT-B-32, random weights) in a project bucket of its own.
3. PRECOMPUTED random unit vectors for every main image and every listing's title in
   the project's embedding stores, under the artifact's version. They are NOT CLIP
   embeddings: ViT-B-32 at the ~6 images/s two CPU cores reach would take 6.8 h
   for the images alone. The titles the quality evaluation asks (its sample, and
   500 to spare) get the TEXT model's own vectors, as in a real run, so that the
   evaluation encodes 32 of them as a check, not all of them
   (`abo_generator.model_title_vectors`). The DAG's transform tasks find nothing (or only the
   titles the seed did not cover) to encode; everything else is the real path.
4. `airflow dags test catalogue_ingest` in a private AIRFLOW_HOME, under the alias
   `bench-abo-full`, `--runs` times: the first run copies every image and builds
   the index; a second run is next week's re-index of an unchanged catalogue
   (it finds nothing changed and publishes nothing).
5. With `--change 0.01`, one more run after that share of the listings got another
   product type (a change that needs no new vector, so the figure is the
   pipeline's, not the encoder's): an incremental build from the served index.
   The listing shards are put back as they were at the end.

Printed per run: wall time, wall time per task (from the run's task instances;
`dags test` runs the tasks one after another in one process, so the 16 mapped
`filter_shard` tasks are summed: a scheduler with free slots runs them side by
side), the peak RSS of the worker process tree (sampled every 0.5 s), and the
indexed count against the count the generator says a correct run indexes.
The alias and its indices are deleted at the end unless `--keep`; the buckets stay.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import _common as cm

from catalogue_search import index
from catalogue_search_dev import abo_generator, testenv

ALIAS = "bench-abo-full"
PROJECT_BUCKET = "catalogue-search-abo-full-project"


class TreeRss:
    """Peak RSS of a process and its descendants (sampled every 0.5 s)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                self.peak_mib = max(self.peak_mib, total / 2**20)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(0.5)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


def _prepare(listings: int, settings) -> tuple[abo_generator.Generated, Path, dict[str, float]]:
    import boto3

    from catalogue_search.s3util import client_config
    from catalogue_search_dev import demo
    from catalogue_search_dev.localenv import cache_home
    from catalogue_search_dev.sample_catalogue import ensure_bucket

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    gen = abo_generator.generate(listings, 0)
    out_dir = cache_home() / f"abo-synthetic-{listings}-0"
    abo_generator.write_layout(gen, out_dir)
    timings["generate"] = time.perf_counter() - t0
    s3 = boto3.client("s3", **{**settings.boto3_kwargs(), "config": client_config(32)})
    t0 = time.perf_counter()
    report = abo_generator.upload(gen, out_dir, s3, settings.source_bucket, log=lambda m: print(m, flush=True))
    timings["upload"] = time.perf_counter() - t0
    print(f"source bucket {settings.source_bucket}: {report} in {timings['upload']:.0f} s", flush=True)
    t0 = time.perf_counter()
    ensure_bucket(s3, settings.bucket)
    demo.prepare_model(settings, s3)
    timings["model_artifact"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths, vecs = abo_generator.precomputed_vectors(gen, seed=0)
    import numpy as np

    np.savez(out_dir / abo_generator.VECTORS_FILENAME, ids=np.asarray(paths, dtype=str), embeddings=vecs)
    timings["seed_store"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model_titles = abo_generator.model_title_vectors(gen, s3, settings)
    timings["model_titles"] = time.perf_counter() - t0
    print(f"{len(model_titles):,} titles of the quality sample encoded by the TEXT model", flush=True)
    t0 = time.perf_counter()
    abo_generator.seed_embedding_store(
        gen, out_dir, s3, settings, log=lambda m: print(m, flush=True), title_vectors=model_titles
    )
    timings["seed_store"] += time.perf_counter() - t0
    return gen, out_dir, timings


def _task_times(home: Path, run_id: str) -> list[dict]:
    db = sqlite3.connect(home / "airflow.db")
    try:
        rows = db.execute(
            "SELECT task_id, map_index, state, start_date, end_date FROM task_instance "
            "WHERE dag_id = 'catalogue_ingest' AND run_id = ? ORDER BY start_date",
            (run_id,),
        ).fetchall()
    finally:
        db.close()
    by_task: dict[str, dict] = {}
    for task_id, map_index, state, start, end in rows:
        seconds = 0.0
        if start and end:
            seconds = (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
        t = by_task.setdefault(task_id, {"task": task_id, "instances": 0, "seconds": 0.0, "states": set()})
        t["instances"] += 1
        t["seconds"] += seconds
        t["states"].add(state)
    for t in by_task.values():
        t["states"] = ",".join(sorted(s or "none" for s in t["states"]))
    return list(by_task.values())


def _latest_run_id(home: Path) -> str:
    db = sqlite3.connect(home / "airflow.db")
    try:
        row = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = 'catalogue_ingest' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    finally:
        db.close()
    if not row:
        raise RuntimeError("the DAG run left no dag_run row")
    return row[0]


def _run_dag(env: dict[str, str], home: Path, log_path: Path) -> dict:
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", "catalogue_ingest"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        rss = TreeRss(proc.pid)
        code = proc.wait()
        peak = rss.stop()
    wall = time.perf_counter() - started
    text = log_path.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"catalogue_ingest failed (exit {code}); last lines:\n{text[-4000:]}")
    run_id = _latest_run_id(home)
    return {
        "run_id": run_id,
        "wall_s": wall,
        "peak_rss_mib": peak,
        "tasks": _task_times(home, run_id),
        "log": str(log_path),
    }


def _change_listings(settings, share: float) -> tuple[dict[str, bytes], int]:
    """Give every 1/share-th listing with a product type another one, in every shard of the source bucket;
    the shards' bytes as they were (to put back) and how many listings changed."""
    import boto3

    from catalogue_search_dev.sample_catalogue import put_source_listings, source_listings, source_listings_key

    s3 = boto3.client("s3", **settings.boto3_kwargs())
    step = max(1, round(1 / share))
    originals, changed = {}, 0
    for n in range(16):
        shard = f"{n:x}"
        key = source_listings_key(settings, shard)
        originals[shard] = s3.get_object(Bucket=settings.source_bucket, Key=key)["Body"].read()
        rows = source_listings(s3, settings, shard)
        edited = []
        for i, r in enumerate(rows):
            if i % step == 0 and r.get("product_type"):
                r, changed = {**r, "product_type": [{"value": "BENCH_CHANGED_TYPE"}]}, changed + 1
            edited.append(r)
        put_source_listings(s3, settings, shard, edited)
    return originals, changed


def _restore_listings(settings, originals: dict[str, bytes]) -> None:
    if not originals:
        return
    import boto3

    from catalogue_search_dev.sample_catalogue import source_listings_key

    s3 = boto3.client("s3", **settings.boto3_kwargs())
    for shard, raw in originals.items():
        s3.put_object(Bucket=settings.source_bucket, Key=source_listings_key(settings, shard), Body=raw)


def _build_line(log: str) -> str:
    """The run's build choice as its log says it (`build: incremental (...)`, or the no-op's sentence)."""
    for line in log.splitlines():
        for marker in ("build: ", "nothing changed since"):
            if marker in line:
                return line[line.index(marker) :].strip()[:400]
    return ""


def drop_alias(client) -> None:
    """Remove the benchmark's alias and delete every `bench-abo-full-*` index."""
    targets = index.alias_targets(client, ALIAS)
    if targets:
        client.indices.update_aliases(body={"actions": [{"remove": {"index": n, "alias": ALIAS}} for n in targets]})
    for name in client.indices.get(index=f"{ALIAS}-*", allow_no_indices=True):
        index.delete_index(client, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listings", type=int, default=abo_generator.ABO_LISTINGS)
    parser.add_argument("--runs", type=int, default=2, help="DAG runs one after the other (2: a re-index)")
    parser.add_argument("--keep", action="store_true", help="keep the alias and its indices afterwards")
    parser.add_argument("--change", type=float, default=0.0, help="then one run after this share of listings changed")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    bucket, project = abo_generator.DEFAULT_BUCKET, PROJECT_BUCKET
    if args.listings != abo_generator.ABO_LISTINGS:
        bucket, project = f"{bucket}-{args.listings}", f"{project}-{args.listings}"
    settings = cm.settings(source_bucket=bucket, bucket=project, index_alias=ALIAS)
    client = cm.client()
    drop_alias(client)  # a run left by `--keep`: this one starts with no live index
    print(f"machine: {cm.machine()}", flush=True)
    gen, out_dir, timings = _prepare(args.listings, settings)
    expected = gen.summary.expected_products
    print(f"prepared in {sum(timings.values()):.0f} s: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")

    home = testenv.fresh_airflow_home()
    env = {
        **os.environ,
        **testenv.airflow_home_env(home),
        "CATSEARCH_SOURCE_BUCKET": settings.source_bucket,
        "CATSEARCH_BUCKET": settings.bucket,
        "CATSEARCH_INDEX_ALIAS": ALIAS,
        "CATSEARCH_AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "CATSEARCH_OPENSEARCH_URL": settings.opensearch_url,
    }
    runs = []
    originals: dict[str, bytes] = {}
    try:
        for n in range(1, args.runs + 1 + (args.change > 0)):
            what = f"{args.listings:,} listings"
            if n > args.runs:
                originals, changed = _change_listings(settings, args.change)
                what += f", {changed:,} of them retyped"
            print(f"\n== run {n}: airflow dags test catalogue_ingest ({what})", flush=True)
            run = _run_dag(env, home, home / f"run-{n}.log")
            run["build"] = _build_line(Path(run["log"]).read_text(errors="replace"))
            if run["build"]:
                print(f"   {run['build']}", flush=True)
            count = int(client.count(index=ALIAS)["count"])
            run["indexed"] = count
            runs.append(run)
            print(
                f"wall {run['wall_s']:.0f} s, worker peak RSS {run['peak_rss_mib']:.0f} MiB, "
                f"indexed {count:,} (a correct run: {expected:,}){'' if count == expected else '  MISMATCH'}"
            )
            print(f"   {'task':<26} {'instances':>9} {'seconds':>8}  state")
            for t in run["tasks"]:
                print(f"   {t['task']:<26} {t['instances']:>9} {t['seconds']:>8.1f}  {t['states']}")
            cm.save_json(
                args.json, {"benchmark": "full-dag", "machine": cm.machine(), "prepare_s": timings, "runs": runs}
            )
    finally:
        _restore_listings(settings, originals)
        if not args.keep:
            drop_alias(client)
    cm.save_json(args.json, {"benchmark": "full-dag", "machine": cm.machine(), "prepare_s": timings, "runs": runs})
    return 0 if all(r["indexed"] == expected for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
