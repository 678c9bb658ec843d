"""End to end: DAG file parse time, a text query through the CLI, the warm API (hook).

    ./dev bench e2e [--docs 10000] [--api-url URL]

- DAG parse: each file under dags/ imported in a fresh interpreter (what the
  scheduler's parser pays), best of 3; reference: a bare `import airflow.sdk`.
- CLI: `python -m catalogue_search.cli search TEXT` in a fresh process against a
  `bench-` alias of `--docs` 512-d documents, ViT-B-32 with random weights
  encoding the query in-process (CATSEARCH_QUERY_ENCODER=local, the model
  artifact read from a local file); best of 3 after one run that fills the
  model cache. Reference: the k-NN query alone (`search_vector`) in a warm process.
- Warm API: issue 12 adds the search API; pass `--api-url` (a URL taking
  `?q=TEXT`) to time warm requests against it (hook: `api_timings`).
- The main job's wall time (catalogue_ingest at 147,702 listings) is in
  BENCHMARKS.md, from the full-size DAG run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import _common as cm


def _best_of(cmd: list[str], runs: int = 3, env: dict | None = None) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr[-2000:]}")
        best = min(best, elapsed)
    return best


def api_timings(url: str, query: str, runs: int = 20) -> tuple[float, float]:
    """p50 / p95 ms of warm GET requests to the search API (issue 12's hook)."""
    import urllib.parse
    import urllib.request

    lat = []
    for i in range(runs + 2):
        started = time.perf_counter()
        with urllib.request.urlopen(f"{url}?q={urllib.parse.quote(query)}", timeout=60) as resp:
            resp.read()
        if i >= 2:
            lat.append((time.perf_counter() - started) * 1000)
    return cm.percentile(lat, 50), cm.percentile(lat, 95)


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from catalogue_search import index, search
    from catalogue_search_dev.model_archive import archive_version

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--query", default="a red flower")
    parser.add_argument("--api-url", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    out: dict = {"benchmark": "e2e", "machine": cm.machine()}
    print(f"machine: {cm.machine()}")

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(cm.REPO / "include"), str(cm.REPO / "tools"), env.get("PYTHONPATH", "")])
    bare = _best_of([sys.executable, "-c", "import airflow.sdk"], env=env)
    print(f"reference: `import airflow.sdk` in a fresh interpreter: {bare:.2f} s")
    for dag in sorted((cm.REPO / "dags").glob("*.py")):
        secs = _best_of([sys.executable, str(dag)], env=env)
        out[f"parse_{dag.stem}_s"] = secs
        print(f"DAG file {dag.name}: {secs:.2f} s to import (x{secs / bare:.2f} a bare airflow.sdk import)")

    s = cm.settings()
    c = cm.client()
    artifact = cm.random_artifact("ViT-B-32")
    with cm.bench_index(c, "e2e") as name:
        data = cm.vectors("latent", args.docs, 512, seed=3)
        body = index.index_body(s, alias=name, dimension=512, run_key=name)
        body["mappings"]["_meta"]["artifact_version"] = archive_version(artifact)  # the CLI checks it
        c.indices.create(index=name, body=body)
        cm.fast_load(c, name, data)
        index.finish_loading(c, name, 0)
        searcher = search.SearchClient(s.replace(index_alias=name), client=c, encoder=object())
        lat = []
        for q in data[:30]:
            started = time.perf_counter()
            searcher.search_vector(np.asarray(q).tolist(), 5)
            lat.append((time.perf_counter() - started) * 1000)
        knn_ms = cm.percentile(lat[5:], 50)
        cli_env = dict(
            env,
            CATSEARCH_MODEL_ARTIFACT_URI=f"file://{artifact}",
            CATSEARCH_QUERY_ENCODER="local",
            CATSEARCH_MODEL_PRETRAINED="",
        )
        cmd = [sys.executable, "-m", "catalogue_search.cli", "search", args.query, "-k", "5", "--alias", name]
        _best_of(cmd, runs=1, env=cli_env)  # fills the model cache (extracts the artifact once)
        cli_s = _best_of(cmd, env=cli_env)
        print(
            f"CLI text query (fresh process: imports, ViT-B-32 load, encode, k-NN over {args.docs:,} docs): "
            f"{cli_s:.2f} s; reference: the k-NN query alone in a warm process p50 {knn_ms:.1f} ms "
            f"(x{cli_s * 1000 / knn_ms:.0f})"
        )
        out.update(cli_s=cli_s, knn_ms=knn_ms, docs=args.docs)
    if args.api_url:
        p50, p95 = api_timings(args.api_url, args.query)
        print(
            f"warm API {args.api_url}: p50 {p50:.0f} ms, p95 {p95:.0f} ms "
            f"(x{cli_s * 1000 / p50:.0f} faster than the CLI)"
        )
        out.update(api_p50_ms=p50, api_p95_ms=p95)
    else:
        print("warm API: not measured here (pass --api-url once issue 12's search API is running)")
    cm.save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
