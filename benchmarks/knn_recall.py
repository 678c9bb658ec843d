"""k-NN recall@10 and latency against exact cosine search, for HNSW m / ef_construction
and query-time candidate counts, on two synthetic vector sets, with and without a filter.

    ./dev bench knn                                      (150,000 x 512, both sets: ~30 min on 2 cores)
    ./dev bench knn --n 20000 --hnsw 16:100 --candidates 10,100

Each index is built from the project's own `index_body` (only m / ef_construction
are varied), loaded, refreshed as the pipeline leaves it (no force-merge), and
queried with the project's own `knn_query` (k=10, `candidates` as the candidate
count). The reference, measured in the same run, is exact search: recall is
against numpy's exact cosine top-10, and the latency ratio is against the k-NN
plugin's exact `knn_score` script over every document. The filter is a
`product_type` term matching about 10% of the documents; its exact top-10 is
computed within that 10%.
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as cm

from catalogue_search import index

DATASETS = {
    "latent": "200 clusters in a 32-d latent space (centres N(0,1), spread 0.5) "
    "projected to 512 by a fixed Gaussian matrix",
    "isotropic": "200 random unit centres + N(0, 1/512) noise in every dimension "
    "(hard: a cluster's points nearly equidistant)",
}


def _parse_hnsw(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in part.split(":")) for part in text.split(",") if part]  # type: ignore[misc]


def _query_rounds(c, name, queries, truths: dict, candidates: list[int], filt: str, warmup: int = 10):
    """Every (candidates, filter) setting for each query in turn (interleaved, so a load spike on
    this shared machine hits all settings alike); recall@10 and client / server latency per setting."""
    stats = {(cand, label): {"lat": [], "took": [], "recall": []} for cand in candidates for label in truths}
    for qi, q in enumerate(queries):
        vector = q.tolist()
        for cand in candidates:
            for label, truth in truths.items():
                filters = [{"term": {"product_type": filt}}] if label != "none" else None
                body = index.knn_query(vector, 10, filters, candidates=cand)
                started = time.perf_counter()
                resp = c.search(index=name, body=body)
                elapsed = (time.perf_counter() - started) * 1000
                st = stats[(cand, label)]
                if qi >= warmup or len(queries) <= warmup:
                    st["lat"].append(elapsed)
                    st["took"].append(resp["took"])
                got = {h["_id"] for h in resp["hits"]["hits"]}
                want = {cm.doc_id(int(i)) for i in truth[qi]}
                st["recall"].append(len(got & want) / len(want))
    return {
        key: {
            "recall": sum(st["recall"]) / len(st["recall"]),
            "p50_ms": cm.percentile(st["lat"], 50),
            "p95_ms": cm.percentile(st["lat"], 95),
            "took_p50_ms": cm.percentile(st["took"], 50),
        }
        for key, st in stats.items()
    }


def _exact_latency(c, name, queries, count: int = 10) -> float:
    """p50 of the k-NN plugin's exact (brute-force) script score over every document."""
    lat = []
    for q in queries[:count]:
        body = {
            "size": 10,
            "_source": False,
            "query": {
                "script_score": {
                    "query": {"match_all": {}},
                    "script": {
                        "source": "knn_score",
                        "lang": "knn",
                        "params": {"field": index.VECTOR_FIELD, "query_value": q.tolist(), "space_type": "cosinesimil"},
                    },
                }
            },
        }
        started = time.perf_counter()
        c.search(index=name, body=body, request_timeout=120)
        lat.append((time.perf_counter() - started) * 1000)
    return cm.percentile(lat, 50)


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=150_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--datasets", default="latent,isotropic")
    parser.add_argument("--hnsw", default="16:100,32:256", help="m:ef_construction pairs")
    parser.add_argument("--candidates", default="10,50,100,200,400")
    parser.add_argument("--threads", type=int, default=2, help="parallel bulk requests while loading")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    s = cm.settings()
    c = cm.client()
    candidates = [int(x) for x in args.candidates.split(",")]
    print(f"machine: {cm.machine()}; OpenSearch {c.info()['version']['number']}, {cm.node_heap()}")
    print(
        f"k-NN: {args.n:,} x {args.dim}, {args.queries} queries (first 10 are warm-up for latency), k=10; "
        f"chosen settings: m={s.knn_m}, ef_construction={s.knn_ef_construction}, candidates={s.knn_candidates}"
    )
    results = []
    for kind in args.datasets.split(","):
        data = cm.vectors(kind, args.n, args.dim, seed=args.seed)
        queries = cm.vectors(kind, args.queries, args.dim, seed=args.seed)  # same shape, other draws
        types = np.array([cm.product_type(i) for i in range(args.n)])
        filt = cm.PRODUCT_TYPES[3]
        truth = cm.exact_top(data, queries, 10)
        truth_f = cm.exact_top(data, queries, 10, mask=types == filt)
        print(f"\n== {kind}: {DATASETS[kind]}, generator seed {args.seed}")
        for m, efc in _parse_hnsw(args.hnsw):
            with cm.bench_index(c, f"knn-{kind}-m{m}-ef{efc}") as name:
                body = index.index_body(
                    s.replace(knn_m=m, knn_ef_construction=efc), alias="bench", dimension=args.dim, run_key=name
                )
                c.indices.create(index=name, body=body)
                load_s = cm.fast_load(c, name, data, threads=args.threads)
                refresh_start = time.perf_counter()
                index.finish_loading(c, name, 0)
                load_s += time.perf_counter() - refresh_start
                segs = cm.segments(c, name)
                exact_ms = _exact_latency(c, name, queries)
                print(
                    f"-- m={m} ef_construction={efc}: loaded in {load_s:.0f} s ({args.n / load_s:.0f} docs/s), "
                    f"{segs} segments; exact knn_score p50 {exact_ms:.0f} ms"
                )
                print(
                    f"   {'candidates':>10} {'filter':>7} {'recall@10':>9} {'p50 ms':>7} {'p95 ms':>7} "
                    f"{'took p50':>8} {'vs exact':>8}"
                )
                measured = _query_rounds(c, name, queries, {"none": truth, "10%": truth_f}, candidates, filt)
                for (cand, label), r in measured.items():
                    row = {
                        "dataset": kind,
                        "n": args.n,
                        "dim": args.dim,
                        "m": m,
                        "ef_construction": efc,
                        "candidates": cand,
                        "filter": label,
                        "segments": segs,
                        "load_s": load_s,
                        "exact_p50_ms": exact_ms,
                        **r,
                    }
                    results.append(row)
                    print(
                        f"   {cand:>10} {label:>7} {r['recall']:>9.3f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} "
                        f"{r['took_p50_ms']:>8.0f} {'x%.0f' % (exact_ms / r['p50_ms']):>8}",
                        flush=True,
                    )
                cm.save_json(
                    args.json, {"benchmark": "knn", "machine": cm.machine(), "args": vars(args), "results": results}
                )
    cm.save_json(args.json, {"benchmark": "knn", "machine": cm.machine(), "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
