"""Near-duplicate report at growing catalogue sizes: the k-NN index way (each image's neighbours)
against the exact blocked cosine, full and incremental.

    ./dev bench duplicates                                   (15,000, 150,000 and 600,000 x 512: hours)
    ./dev bench duplicates --sizes 20000 --exact-max 20000   (small, for development)

Each size is a fresh `bench-` index from the project's `index_body`, loaded with
products whose vectors are the benchmarks' clustered "latent" set plus planted
duplicates: `--shared` of the products show another product's image (same
image id, same vector) and `--near` are noisy copies of another product's
vector (cosine about 0.98 to 0.9995, new image ids). Timed, with the load
average beside each figure: the scroll alone (reading every vector), the exact
report (up to `--exact-max` products), the k-NN report over every image, and an
incremental report where `--change` of the products changed (their vectors
read, their images asked about; the pairs of the others reused). The k-NN
report's pairs and groups are compared with the exact report's where both ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import _common as cm

from catalogue_search import duplicates, index


def _plant(data, *, shared: float, near: float, seed: int):
    """Image ids per product and the vectors with planted duplicates (in place)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(data)
    image = np.arange(n)
    picks = rng.permutation(n)
    n_shared, n_near = int(n * shared), int(n * near)
    untouched = picks[n_shared + n_near :]  # the sources: rows that are neither a copy nor a variant
    copy_of = untouched[rng.integers(0, len(untouched), n_shared + n_near)]
    for row, src in zip(picks[:n_shared], copy_of[:n_shared]):
        image[row], data[row] = src, data[src]
    for row, src in zip(picks[n_shared : n_shared + n_near], copy_of[n_shared:]):
        data[row] = data[src] + rng.normal(scale=rng.uniform(0.0005, 0.0075), size=data.shape[1])
    return image, cm.unit_rows(data)


def _bodies(name: str, data, image, chunk: int = 500):
    import numpy as np

    for lo in range(0, len(data), chunk):
        lines = []
        for j, vec in enumerate(np.round(data[lo : lo + chunk].astype(np.float64), 7).tolist()):
            i = lo + j
            product = {**cm.product(i), "image_id": f"IMG{image[i]:08d}L", "path": f"{image[i]:08x}.jpg"}
            lines.append(json.dumps({"index": {"_index": name, "_id": cm.doc_id(i)}}))
            lines.append(json.dumps(index.document(product, vec, "bench")))
        yield "\n".join(lines) + "\n"


def _load(c, name: str, data, image, threads: int = 2) -> float:
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()

    def send(body: str) -> None:
        resp = c.bulk(body=body, request_timeout=600)
        if resp.get("errors"):
            raise RuntimeError(f"bulk rejected documents: {resp['items'][0]}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = []
        for body in _bodies(name, data, image):
            pending.append(pool.submit(send, body))
            if len(pending) >= 2 * threads:
                pending.pop(0).result()
        for fut in pending:
            fut.result()
    index.finish_loading(c, name, 0)
    return time.perf_counter() - started


def _timed(what: str, fn, row: dict):
    load = os.getloadavg()[0]
    started = time.perf_counter()
    out = fn()
    row[f"{what}_s"] = round(time.perf_counter() - started, 1)
    row[f"{what}_load"] = round((load + os.getloadavg()[0]) / 2, 1)
    print(f"   {what}: {row[f'{what}_s']:.1f} s (load average {row[f'{what}_load']})", flush=True)
    return out


def _pairs(report) -> set[tuple[str, str]]:
    return {(a, b) for a, b, _ in report.pairs}


def _groups(report) -> list[tuple]:
    return [(tuple(g.item_ids), tuple(g.image_ids)) for g in report.groups]


def build(c, stack, n: int, args) -> tuple[str, dict, object]:
    """A loaded bench index of n products (deleted when `stack` closes), its row and a sample of its vectors."""
    import numpy as np

    row: dict = {"n": n}
    data = cm.vectors("latent", n, args.dim, seed=args.seed)
    image, data = _plant(data, shared=args.shared, near=args.near, seed=args.seed)
    row["images"] = int(len(np.unique(image)))
    name = stack.enter_context(cm.bench_index(c, f"dups-{n}"))
    c.indices.create(index=name, body=index.index_body(cm.settings(), alias="bench", dimension=args.dim, run_key=name))
    _timed("load", lambda: _load(c, name, data, image), row)
    row["segments"] = cm.segments(c, name)
    print(f"   {n:,} products, {row['images']:,} images, {row['segments']} segments", flush=True)
    sample = data[np.random.default_rng(args.seed + 2).choice(n, args.probe, replace=False)].copy()
    return name, row, sample


def measure(c, name: str, row: dict, args) -> dict:
    import numpy as np

    n = row["n"]
    _timed("scroll", lambda: sum(1 for _ in duplicates.index_vectors(c, name, index.VECTOR_FIELD)), row)

    def report(**kw):
        return duplicates.find_duplicates(
            duplicates.index_vectors(c, name, index.VECTOR_FIELD, only=kw.pop("only", None)),
            total=n,
            threshold=args.threshold,
            **kw,
        )

    exact = _timed("exact", report, row) if n <= args.exact_max else None
    near = duplicates.IndexNeighbours(c, name, index.VECTOR_FIELD, k=args.k, batch=args.batch)
    full = _timed("index", lambda: report(neighbours=near), row)
    row.update(queries=near.queries, widened=near.widened, pairs=len(full.pairs), groups=len(full.groups))
    if exact is not None:
        want, got = _pairs(exact), _pairs(full)
        row["pair_recall"] = round(len(want & got) / max(1, len(want)), 5)
        row["extra_pairs"] = len(got - want)
        row["same_groups"] = _groups(exact) == _groups(full)
        row["exact_pairs"] = len(want)
    rng = np.random.default_rng(args.seed + 1)
    changed = {cm.doc_id(int(i)) for i in rng.choice(n, max(1, int(n * args.change)), replace=False)}
    # as the pipeline asks on an incremental run: with the search's candidate list
    near = duplicates.IndexNeighbours(
        c, name, index.VECTOR_FIELD, k=args.k, batch=args.batch, candidates=cm.settings().knn_candidates
    )
    previous = full.as_dict()
    step = _timed("incremental", lambda: report(only=changed, neighbours=near, changed=changed, previous=previous), row)
    row.update(incremental_checked=step.checked, incremental_reused=step.reused_pairs)
    row["incremental_same_groups"] = _groups(step) == _groups(full)
    builds(c, name, row, args)
    print("   " + json.dumps(row), flush=True)
    return row


def builds(c, name: str, row: dict, args) -> None:
    """The index side of the three builds: a no-op's fingerprint comparison, a 1% change applied to a
    `_clone` (and, up to --reindex-max, to a `_reindex` with a query instead), beside the full load."""
    import hashlib

    import numpy as np

    n = row["n"]
    rng = np.random.default_rng(args.seed + 3)
    changed = rng.choice(n, max(2, int(n * args.change)), replace=False)
    removed, updated = changed[: len(changed) // 5], changed[len(changed) // 5 :]

    def fingerprint() -> dict[str, str]:
        out = {}
        for i in range(n):
            line = json.dumps([cm.product(i), f"etag-{i}", True], sort_keys=True)
            out[cm.doc_id(i)] = hashlib.sha1(line.encode()).hexdigest()[:20]
        return out

    old = _timed("fingerprint", fingerprint, row)
    new = dict(old)
    _timed("compare", lambda: sum(1 for k in new if old.get(k) != new[k]) + len(set(old) - set(new)), row)
    vectors = cm.unit_rows(cm.vectors("latent", len(updated), args.dim, seed=args.seed + 4))
    docs = [index.document(cm.product(int(i)), v.tolist(), "bench") for i, v in zip(updated, vectors)]
    ids = [cm.doc_id(int(i)) for i in removed]
    target = f"{name}-clone"
    try:

        def apply_to_clone():
            index.clone_index(c, name, target)
            index.delete_documents(c, target, ids)
            loaded = index.bulk_load(c, target, docs, total=len(docs), threads=2)
            index.finish_loading(c, target, 0)
            return loaded

        _timed("clone_and_delta", apply_to_clone, row)
        row["clone_count_ok"] = c.count(index=target)["count"] == n - len(removed)
    finally:
        c.indices.delete(index=target, ignore_unavailable=True)
    if n <= args.reindex_max:
        target = f"{name}-reindex"
        try:

            def reindex_with_query():
                body = index.index_body(cm.settings(), alias="bench", dimension=args.dim, run_key=target)
                c.indices.create(index=target, body=body)
                skip = [cm.doc_id(int(i)) for i in changed]
                query = {"bool": {"must_not": {"ids": {"values": skip}}}}
                c.reindex(
                    body={"source": {"index": name, "query": query}, "dest": {"index": target}},
                    request_timeout=14400,
                    refresh=False,
                )
                index.bulk_load(c, target, docs, total=len(docs), threads=2)
                index.finish_loading(c, target, 0)

            _timed("reindex_and_delta", reindex_with_query, row)
        except Exception as exc:  # the integ-test node has no reindex module: POST /_reindex is refused
            row["reindex_and_delta"] = f"unavailable: {exc}"
            print(f"   reindex_and_delta: unavailable on this node: {exc}", flush=True)
        finally:
            c.indices.delete(index=target, ignore_unavailable=True)


def interleaved(c, built: list, args) -> dict[int, float]:
    """ms per neighbour query on each index, batches alternating between the sizes (same load for all)."""
    spent = {row["n"]: 0.0 for _, row, _ in built}
    for lo in range(0, args.probe, args.batch):
        for name, row, sample in built:
            near = duplicates.IndexNeighbours(c, name, index.VECTOR_FIELD, k=args.k, batch=args.batch)
            started = time.perf_counter()
            near.near(list(sample[lo : lo + args.batch]), args.threshold)
            spent[row["n"]] += time.perf_counter() - started
    per_query = {n: round(1000 * s / args.probe, 2) for n, s in spent.items()}
    print(f"\n== interleaved, {args.probe} stored vectors per size: ms per query {per_query}", flush=True)
    return per_query


def main(argv: list[str] | None = None) -> int:
    from contextlib import ExitStack

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="15000,150000,600000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--exact-max", type=int, default=150_000, help="largest size the exact report runs at")
    parser.add_argument("--threshold", type=float, default=0.98)
    parser.add_argument("--k", type=int, default=cm.settings().duplicate_neighbours)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--probe", type=int, default=2048, help="queries per size in the interleaved comparison")
    parser.add_argument("--shared", type=float, default=0.05, help="share of products showing another's image")
    parser.add_argument("--near", type=float, default=0.01, help="share of products with a near-identical vector")
    parser.add_argument("--change", type=float, default=0.01, help="share of products changed (incremental)")
    parser.add_argument("--reindex-max", type=int, default=150_000, help="largest size the _reindex is timed at")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    c = cm.client(timeout=600)
    print(f"machine: {cm.machine()}; OpenSearch {c.info()['version']['number']}, {cm.node_heap()}")
    payload: dict = {"benchmark": "duplicates", "machine": cm.machine(), "args": vars(args), "results": []}
    with ExitStack() as stack:
        built = []
        for n in (int(x) for x in args.sizes.split(",")):
            print(f"\n== {n:,} x {args.dim}, threshold {args.threshold}, k {args.k}", flush=True)
            built.append(build(c, stack, n, args))
            payload["results"].append(measure(c, built[-1][0], built[-1][1], args))
            cm.save_json(args.json, payload)
        payload["interleaved_ms_per_query"] = interleaved(c, built, args)
        cm.save_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
