"""k-NN recall@10 and latency across a family of synthetic sets the settings were not tuned on.

    ./dev bench knn-family                                         (every member, 150,000 x 512: hours)
    ./dev bench knn-family --sets stress --hnsw 16:100,32:200 --candidates 75,300
    ./dev bench knn-family --n 20000 --sets latent16,stress        (small, for development)

Members (`catalogue_search_dev.vector_sets.FAMILY`): clustered sets in a 16-,
32- or 64-d latent space projected to 512-d, with few or many clusters, tight
or wide; the isotropic set; and issue 24's stress set (200 clusters, N(0,1)
centres, noise 0.35 in every dimension). Two kinds of queries per member:
`fresh` (new draws from the member's distribution) and `perturbed` (stored
vectors plus noise of norm 0.1, the way a shopper's photo of a listed product
lands). Recall@10 is against numpy's exact cosine top-10; the candidate counts
are interleaved query by query (knn_recall's rounds), so they share the load.
Each index is built from the project's `index_body` and left as the pipeline
leaves it (no force-merge).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _common as cm
from knn_recall import _parse_hnsw

from catalogue_search import index
from catalogue_search_dev.vector_sets import FAMILY, perturbed

REFERENCE_SET = "latent32"
REFERENCE_QUIET_P50_MS = 9.4  # latent32, m=16 / ef_construction=100, 75 candidates, quiet machine (BENCHMARKS.md)


def _build(c, s, name: str, data, m: int, efc: int, threads: int) -> dict:
    tuned = s.replace(knn_m=m, knn_ef_construction=efc)
    c.indices.create(index=name, body=index.index_body(tuned, alias="bench", dimension=data.shape[1], run_key=name))
    before = os.getloadavg()[0]
    started = time.perf_counter()
    cm.fast_load(c, name, data, threads=threads)
    index.finish_loading(c, name, 0)
    load_s = time.perf_counter() - started
    return {
        "load_s": round(load_s),
        "load_docs_per_s": round(len(data) / load_s),
        "build_load_average": round((before + os.getloadavg()[0]) / 2, 1),
        "segments": cm.segments(c, name),
    }


def _search(c, name: str, vector, cand: int) -> tuple[float, int, set[str]]:
    body = index.knn_query(vector.tolist(), 10, candidates=cand)
    started = time.perf_counter()
    resp = c.search(index=name, body=body)
    return (time.perf_counter() - started) * 1000, resp["took"], {h["_id"] for h in resp["hits"]["hits"]}


def _rounds(c, name: str, queries, truth, candidates: list[int], reference, warmup: int = 10) -> dict:
    """Each query at every candidate count in turn, then one query on the reference index (its own
    set, 75 candidates): the member's latency as a ratio of the reference's under the same load."""
    ref_name, ref_queries = reference
    stats = {cand: {"lat": [], "took": [], "recall": []} for cand in candidates}
    ref_lat = []
    for qi, q in enumerate(queries):
        for cand in candidates:
            ms, took, got = _search(c, name, q, cand)
            want = {cm.doc_id(int(i)) for i in truth[qi]}
            st = stats[cand]
            st["recall"].append(len(got & want) / len(want))
            if qi >= warmup:
                st["lat"].append(ms)
                st["took"].append(took)
        ms, _, _ = _search(c, ref_name, ref_queries[qi % len(ref_queries)], 75)
        if qi >= warmup:
            ref_lat.append(ms)
    ref_p50 = cm.percentile(ref_lat, 50)
    return {
        cand: {
            "recall": sum(st["recall"]) / len(st["recall"]),
            "p50_ms": cm.percentile(st["lat"], 50),
            "p95_ms": cm.percentile(st["lat"], 95),
            "took_p50_ms": cm.percentile(st["took"], 50),
            "reference_p50_ms": ref_p50,
            "vs_reference": cm.percentile(st["lat"], 50) / ref_p50,
            "quiet_estimate_ms": REFERENCE_QUIET_P50_MS * cm.percentile(st["lat"], 50) / ref_p50,
        }
        for cand, st in stats.items()
    }


def _measure(c, name: str, member, queries, truths, candidates, reference, row0: dict, payload: dict) -> None:
    head = ("queries", "candidates", "recall@10", "p50 ms", "p95 ms", "took p50", "vs ref", "quiet est")
    print("   " + " ".join(f"{h:>10}" for h in head) + "  load")
    for kind, q in queries.items():
        before = os.getloadavg()[0]
        measured = _rounds(c, name, q, truths[kind], candidates, reference)
        during = round((before + os.getloadavg()[0]) / 2, 1)
        for cand, r in measured.items():
            row = {"set": member.name, "latent": member.latent, "queries": kind, **row0}
            row.update(candidates=cand, query_load_average=during, **r)
            payload["results"].append(row)
            cells = (r["recall"], r["p50_ms"], r["p95_ms"], r["took_p50_ms"], r["vs_reference"])
            print(
                f"   {kind:>10} {cand:>10} "
                + " ".join(f"{v:>10.3f}" if i == 0 else f"{v:>10.1f}" for i, v in enumerate(cells))
                + f" {r['quiet_estimate_ms']:>10.1f}  {during}",
                flush=True,
            )
    payload["machine"] = cm.machine()


def _member(c, s, member, args, candidates: list[int], reference, payload: dict) -> None:
    """Build the member's index per HNSW setting (the reference's own when it is the reference set), measure
    it as loaded and, for the --merge sets, again force-merged to one segment (one graph: the hardest case)."""
    from contextlib import nullcontext

    data = member.vectors(args.n, args.dim, seed=args.seed)
    queries = {
        "fresh": member.vectors(args.queries, args.dim, seed=args.seed),  # same shape, other draws
        "perturbed": perturbed(data, args.queries, seed=args.seed)[0],
    }
    truths = {kind: cm.exact_top(data, q, 10) for kind, q in queries.items()}
    print(f"\n== {member.name}: {member.description}", flush=True)
    for m, efc in _parse_hnsw(args.hnsw):
        own = member.name == REFERENCE_SET and (m, efc) == (s.knn_m, s.knn_ef_construction)
        own = own and member.name not in args.merge.split(",")
        with nullcontext(reference[0]) if own else cm.bench_index(c, f"family-{member.name}-m{m}-ef{efc}") as name:
            built = payload["reference"] if own else _build(c, s, name, data, m, efc, args.threads)
            print(f"-- m={m} ef_construction={efc}: {built}", flush=True)
            row0 = {"n": args.n, "m": m, "ef_construction": efc, "merged": False, **built}
            _measure(c, name, member, queries, truths, candidates, reference, row0, payload)
            cm.save_json(args.json, payload)
            if member.name in args.merge.split(","):
                started = time.perf_counter()
                c.indices.forcemerge(index=name, max_num_segments=1, request_timeout=14400)
                merge_s = round(time.perf_counter() - started)
                print(f"-- force-merged to {cm.segments(c, name)} segment in {merge_s} s", flush=True)
                row0 = {**row0, "merged": True, "segments": cm.segments(c, name), "merge_s": merge_s}
                _measure(c, name, member, queries, truths, candidates, reference, row0, payload)
                cm.save_json(args.json, payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=150_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="of each kind (fresh, perturbed)")
    parser.add_argument("--sets", default=",".join(FAMILY))
    parser.add_argument("--hnsw", default="16:100", help="m:ef_construction pairs")
    parser.add_argument("--candidates", default="75,150,300,600")
    parser.add_argument("--threads", type=int, default=2, help="parallel bulk requests while loading")
    parser.add_argument("--merge", default="", help="sets also measured force-merged to one segment")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    s = cm.settings()
    c = cm.client()
    candidates = [int(x) for x in args.candidates.split(",")]
    print(f"machine: {cm.machine()}; OpenSearch {c.info()['version']['number']}, {cm.node_heap()}")
    payload: dict = {"benchmark": "knn-family", "args": vars(args), "results": []}
    with cm.bench_index(c, "family-reference") as ref_name:
        ref_data = FAMILY[REFERENCE_SET].vectors(args.n, args.dim, seed=args.seed)
        ref_info = _build(c, s, ref_name, ref_data, s.knn_m, s.knn_ef_construction, args.threads)
        reference = (ref_name, FAMILY[REFERENCE_SET].vectors(args.queries, args.dim, seed=args.seed))
        del ref_data
        print(f"reference: latent32, m={s.knn_m} ef_construction={s.knn_ef_construction}, {ref_info}", flush=True)
        payload["reference"] = ref_info
        for set_name in args.sets.split(","):
            _member(c, s, FAMILY[set_name], args, candidates, reference, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
