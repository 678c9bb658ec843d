"""Hybrid search's OpenSearch side: its ranked lists asked for ids only, against the lists with their documents.

    ./dev bench hybrid [--products 2000] [--queries 100]

A `bench-` index of generated products (512-d image and title vectors from the
clustered latent set, titles from a word list) behind an alias; then
`search.engine.Alias.hybrid` (BM25 + both k-NN lists of 100, fused, a page of
12, no folding) for each query, run two ways, interleaved query by query:
- **ids**: as the search client runs it, each list's hits as ids from the
  `item_id` doc values (`index.ONLY_IDS`), then the page's 12 documents;
- **documents**: `index.ONLY_IDS` emptied for the run, so every list's hits
  come with their `_source` (vectors excluded), as before.
The pages of the two ways must be the same hits in the same order. Encoding
the query is not included: the vectors are the products' own title vectors.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common as bench

from catalogue_search import index
from catalogue_search.search.engine import Alias
from catalogue_search.search.query import Filters, Page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args(argv)
    client = bench.client()
    print(f"machine: {bench.machine()}")
    with bench.bench_index(client, "hybrid") as name:
        alias = f"{name}-alias"
        settings = bench.settings(index_alias=alias)
        n = args.products
        images = bench.vectors("latent", n, 512, seed=0)
        names = bench.vectors("latent", n, 512, seed=1)
        titles = [
            f"{bench.product(i)['product_type'].lower()} item {i} {('red', 'oak', 'blue')[i % 3]}" for i in range(n)
        ]
        index.create_index(client, name, index.index_body(settings, alias=alias, dimension=512, run_key=name))
        docs = (
            index.document({**bench.product(i), "item_name": titles[i]}, images[i].tolist(), "bench", names[i].tolist())
            for i in range(n)
        )
        index.bulk_load(client, name, docs, total=n, threads=2)
        index.finish_loading(client, name, 0)
        client.indices.put_alias(index=name, name=alias)
        engine = Alias(client, settings)
        ids_only = dict(index.ONLY_IDS)
        times: dict[str, list[float]] = {"ids": [], "documents": []}
        try:
            for i in range(args.queries + 10):  # the first 10 warm the node up, not timed
                pages = {}
                for way in times:
                    index.ONLY_IDS.clear()
                    index.ONLY_IDS.update(ids_only if way == "ids" else {})
                    started = time.perf_counter()
                    hits = engine.hybrid(names[i % n].tolist(), Page(12, 0), titles[i % n], Filters(), None, None)
                    if i >= 10:
                        times[way].append((time.perf_counter() - started) * 1000)
                    pages[way] = [h.item_id for h in hits]
                if pages["ids"] != pages["documents"]:
                    raise SystemExit(f"query {i}: the two ways gave different pages: {pages}")
        finally:
            index.ONLY_IDS.clear()
            index.ONLY_IDS.update(ids_only)
    print(f"\nhybrid search, {n} products x 512-d, lists of 100, a page of 12, {args.queries} queries (same pages):")
    for way, xs in times.items():
        print(f"  {way:10s} p50 {statistics.median(xs):7.1f} ms   p95 {sorted(xs)[int(0.95 * len(xs))]:7.1f} ms")
    ratio = statistics.median(times["documents"]) / statistics.median(times["ids"])
    print(f"  ids-first is x{ratio:.1f} faster at the median")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
