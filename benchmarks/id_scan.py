"""Reading every product's ids from an index: `_source` against the keyword doc values.

    ./dev bench id-scan [--n 145000] [--json FILE]

The quality evaluation and the incremental duplicate report read each product's
`item_id` and `image_id` (and the report its title) from the run's index. A
project index of `--n` documents, each with its two 512-d vectors (image and
title, the benchmarks' "latent" set), is scrolled three ways, side by side in
one run, best of 3 each:

1. `_source` filtered to the two fields (what the tasks read before): the node
   parses each document's whole source, vectors included;
2. the doc values, with each hit's `_id` (stored in the same compressed block
   as the source, so the block is still decompressed);
3. the doc values with `stored_fields: _none_` (`index.scan_fields`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import _common as cm

from catalogue_search import index

FIELDS = ["item_id", "image_id"]


def _load(c, name: str, n: int, dim: int) -> float:
    from opensearchpy import helpers

    images = cm.unit_rows(cm.vectors("latent", n, dim, seed=1))
    titles = cm.unit_rows(cm.vectors("latent", n, dim, seed=2))
    started = time.perf_counter()

    def actions():
        for i in range(n):
            doc = index.document(cm.product(i), images[i].tolist(), "bench", titles[i].tolist())
            yield {"_index": name, "_id": cm.doc_id(i), "_source": doc}

    helpers.bulk(c, actions(), chunk_size=500, request_timeout=600)
    index.finish_loading(c, name, 0)
    return time.perf_counter() - started


def _scan(c, name: str, body: dict, page: int) -> tuple[int, float]:
    from opensearchpy import helpers

    started = time.perf_counter()
    count = sum(1 for _ in helpers.scan(c, index=name, query=body, size=page, preserve_order=False))
    return count, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    from contextlib import ExitStack

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=145_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    c = cm.client(timeout=600)
    print(f"machine: {cm.machine()}; OpenSearch {c.info()['version']['number']}", flush=True)
    ways = {
        "_source (2 fields)": ({"_source": FIELDS}, 1000),
        "doc values, with _id": ({"_source": False, "docvalue_fields": FIELDS}, 5000),
        "doc values, stored_fields _none_ (index.scan_fields)": (
            {"_source": False, "stored_fields": "_none_", "docvalue_fields": FIELDS},
            5000,
        ),
    }
    payload: dict = {"benchmark": "id-scan", "machine": cm.machine(), "n": args.n, "results": {}}
    with ExitStack() as stack:
        name = stack.enter_context(cm.bench_index(c, "id-scan"))
        body = index.index_body(cm.settings(), alias="bench", dimension=args.dim, run_key=name)
        c.indices.create(index=name, body=body)
        print(f"loaded {args.n:,} documents with two {args.dim}-d vectors in {_load(c, name, args.n, args.dim):.0f} s")
        best: dict[str, float] = {}
        for _ in range(3):  # rounds alternate the ways, so the load is the same for each
            for label, (body, page) in ways.items():
                count, took = _scan(c, name, body, page)
                if count != args.n:
                    raise SystemExit(f"{label}: {count} documents read, not {args.n}")
                best[label] = min(took, best.get(label, took))
        fields = sum(1 for _ in index.scan_fields(c, name, FIELDS))
        if fields != args.n:
            raise SystemExit(f"index.scan_fields read {fields} documents, not {args.n}")
    base = best["_source (2 fields)"]
    for label, took in best.items():
        print(f"  {label:<55} {took:7.2f} s  x{base / took:.1f} against _source")
        payload["results"][label] = round(took, 3)
    cm.save_json(args.json, payload)
    print(json.dumps(payload["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
