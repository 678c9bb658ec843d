"""Bulk load of 512-d documents: the project's loader against one `index()` per document and
against the fastest bulk settings found for the node; client peak memory.

    ./dev bench bulk                      (sweep at 20,000 docs + the project's loader at 150,000)
    ./dev bench bulk --subset 5000 --n 0  (sweep only, small)

Every index is created from the project's `index_body` (its HNSW parameters,
refresh off and no replicas while loading) and finished with `finish_loading`.
The per-document loop is measured on `--per-doc` documents and extrapolated
(it is far too slow to run at full size). The sweep loads the same documents
into fresh indices with `helpers.parallel_bulk` at several thread counts and
chunk sizes, so the ratios compare equal work in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as cm

from catalogue_search import index


def _docs(data, start: int = 0):
    import numpy as np

    for lo in range(0, len(data), 1000):
        rows = np.round(data[lo : lo + 1000].astype(np.float64), 7).tolist()
        for j, vec in enumerate(rows):
            yield index.document(cm.product(start + lo + j), vec, "bench")


def _create(c, name: str, s, dim: int) -> None:
    c.indices.create(index=name, body=index.index_body(s, alias="bench", dimension=dim, run_key=name))


def _project_loader(c, s, data) -> tuple[float, float]:
    """index.bulk_load as ingest.load_index calls it; returns (seconds, client RSS growth MiB)."""
    with cm.bench_index(c, "bulk-project") as name:
        _create(c, name, s, data.shape[1])
        with cm.RssSampler() as rss:
            started = time.perf_counter()
            report = index.bulk_load(
                c, name, _docs(data), total=len(data), chunk_size=s.bulk_chunk_size, threads=s.bulk_threads
            )
            index.finish_loading(c, name, 0)
            elapsed = time.perf_counter() - started
        assert report.indexed == len(data) and not report.failed, report.failed[:1]
        assert c.count(index=name)["count"] == len(data)
    return elapsed, rss.growth_mib


def _per_doc(c, s, data) -> float:
    """The original sample's loop: one index() call per document."""
    with cm.bench_index(c, "bulk-perdoc") as name:
        _create(c, name, s, data.shape[1])
        started = time.perf_counter()
        for doc in _docs(data):
            c.index(index=name, id=doc["item_id"], body=doc)
        index.finish_loading(c, name, 0)
        return time.perf_counter() - started


def _parallel(c, s, data, threads: int, chunk: int) -> tuple[float, float]:
    from opensearchpy import helpers

    with cm.bench_index(c, f"bulk-par{threads}x{chunk}") as name:
        _create(c, name, s, data.shape[1])
        actions = ({"_index": name, "_id": d["item_id"], "_source": d} for d in _docs(data))
        with cm.RssSampler() as rss:
            started = time.perf_counter()
            failed = [
                item
                for ok, item in helpers.parallel_bulk(
                    c, actions, thread_count=threads, chunk_size=chunk, raise_on_error=False
                )
                if not ok
            ]
            index.finish_loading(c, name, 0)
            elapsed = time.perf_counter() - started
        assert not failed, failed[:1]
        assert c.count(index=name)["count"] == len(data)
    return elapsed, rss.growth_mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=150_000, help="full-size load with the project's loader (0: skip)")
    parser.add_argument("--subset", type=int, default=20_000, help="documents per index in the sweep")
    parser.add_argument("--per-doc", type=int, default=1_000, help="documents for the one-index()-per-doc loop")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sweep", default="2:500,4:500,2:2000,4:100", help="threads:chunk pairs for parallel_bulk")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    s = cm.settings()
    c = cm.client()
    print(f"machine: {cm.machine()}; {cm.node_heap()}")
    print(f"mapping: HNSW m={s.knn_m}, ef_construction={s.knn_ef_construction} (the project's index_body)")
    data = cm.vectors("latent", max(args.n, args.subset), args.dim, seed=5)
    sub = data[: args.subset]
    out: dict = {"benchmark": "bulk", "machine": cm.machine(), "m": s.knn_m, "ef_construction": s.knn_ef_construction}

    per_doc_s = _per_doc(c, s, sub[: args.per_doc])
    per_doc_rate = args.per_doc / per_doc_s
    print(
        f"one index() per document: {args.per_doc:,} docs in {per_doc_s:.1f} s = {per_doc_rate:.0f} docs/s "
        f"(extrapolated: {args.subset / per_doc_rate:.0f} s for {args.subset:,}, "
        f"{max(args.n, args.subset) / per_doc_rate / 60:.0f} min for {max(args.n, args.subset):,})"
    )
    proj_s, proj_rss = _project_loader(c, s, sub)
    proj_rate = args.subset / proj_s
    print(
        f"project loader (index.bulk_load: {s.bulk_threads} requests in flight, chunk {s.bulk_chunk_size}): "
        f"{args.subset:,} docs in {proj_s:.1f} s = "
        f"{proj_rate:.0f} docs/s, client RSS +{proj_rss:.0f} MiB; x{proj_rate / per_doc_rate:.1f} the per-doc loop"
    )
    out.update(per_doc_rate=per_doc_rate, subset=args.subset, project_subset_s=proj_s, project_rate=proj_rate)
    best = (proj_rate, "project loader")
    sweep = []
    for pair in args.sweep.split(","):
        threads, chunk = (int(x) for x in pair.split(":"))
        secs, rss = _parallel(c, s, sub, threads, chunk)
        rate = args.subset / secs
        sweep.append({"threads": threads, "chunk": chunk, "s": secs, "rate": rate, "rss_mib": rss})
        print(
            f"parallel_bulk threads={threads} chunk={chunk}: {secs:.1f} s = {rate:.0f} docs/s, "
            f"client RSS +{rss:.0f} MiB; "
            f"x{rate / proj_rate:.2f} the project loader",
            flush=True,
        )
        if rate > best[0]:
            best = (rate, f"parallel_bulk threads={threads} chunk={chunk}")
    out["sweep"] = sweep
    print(
        f"fastest at {args.subset:,}: {best[1]} ({best[0]:.0f} docs/s), x{best[0] / proj_rate:.2f} the project loader"
    )
    if args.n:
        full_s, full_rss = _project_loader(c, s, data[: args.n])
        print(
            f"project loader at {args.n:,} x {args.dim}: {full_s:.0f} s = {args.n / full_s:.0f} docs/s, "
            f"client RSS +{full_rss:.0f} MiB (peak {cm.peak_rss_mib():.0f} MiB with the "
            f"{data.nbytes / 2**20:.0f} MiB of "
            f"test vectors); per-doc loop extrapolated: {args.n / per_doc_rate / 60:.0f} min "
            f"(x{(args.n / per_doc_rate) / full_s:.1f} slower); {cm.node_heap()}"
        )
        out.update(full_n=args.n, full_s=full_s, full_rss_mib=full_rss)
    cm.save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
