"""Search quality of an index: each product's title as the query, the product itself as the answer.

A seeded sample of the index's products asks its titles through the query
path users get (the TEXT model's vector, then the search client's k-NN or
hybrid queries, `quality_queries`) in each mode, and reads the rank of the
product itself among the first `DEPTH` hits:

- recall@k: the share of queries whose product is among the first k hits;
- mrr: the mean of 1/rank, 0 when the product is not in the first `DEPTH` (MRR@10);
- chance: what a random ranking of the index's N products scores.

Only the `image` mode is an honest cross-modal measure: the titles are in the
index as name vectors, so `name` and `hybrid` find a title with itself.
Where products share an image id (duplicates), their image vectors also ask
"more like this" (the product itself left out) for another product of the group.
Nothing here imports Airflow; `quality_gate` runs it for the DAG and the CLI.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

KS = (1, 5, 10)
DEPTH = 10
METRICS = ("recall@1", "recall@5", "recall@10", "mrr")
MODES = ("image", "name", "hybrid")
HEADLINE = ("image", "recall@10")  # the figure the gate and the page use: text -> image recall@10
RANDOM_WEIGHTS_NOTE = "random weights: quality is chance level"
NO_TYPE = "(none)"
# Queries in flight: the node answers several at once, and encoding is already done.
QUERY_THREADS = 4


def metrics(ranks: Sequence[int | None]) -> dict[str, float]:
    """recall@1/5/10 and MRR@10 of ranks (1-based; None = not in the first DEPTH hits)."""
    n = len(ranks)
    if not n:
        return dict.fromkeys(METRICS, 0.0)
    out = {f"recall@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in KS}
    out["mrr"] = sum(1.0 / r for r in ranks if r is not None and r <= DEPTH) / n
    return {key: round(value, 6) for key, value in out.items()}


def chance(products: int) -> dict[str, float]:
    """The expected metrics of a ranking drawn at random among `products` products."""
    if products < 1:
        return dict.fromkeys(METRICS, 0.0)
    out = {f"recall@{k}": min(k, products) / products for k in KS}
    out["mrr"] = sum(1.0 / r for r in range(1, min(DEPTH, products) + 1)) / products
    return {key: round(value, 6) for key, value in out.items()}


def margin(p: float, n: int, z: float = 1.96) -> float:
    """Half the width of the normal confidence interval of a proportion p measured on n queries."""
    return z * math.sqrt(max(p * (1 - p), 0.0) / n) if n else 1.0


def rank_of(hit_ids: Sequence[str], wanted: Callable[[str], bool] | set[str]) -> int | None:
    """1-based rank of the first hit that is wanted, None if none is."""
    test = wanted.__contains__ if isinstance(wanted, set) else wanted
    return next((rank for rank, item_id in enumerate(hit_ids, start=1) if test(item_id)), None)


def sample(docs: Iterable[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """`size` products (all when fewer, or when size <= 0), ordered by a hash of (seed, item_id).

    The hash order keeps a product in the sample from one catalogue to the next
    (as long as it stays among the first `size`), so two indices of nearly the
    same catalogue are measured on nearly the same products.
    """

    def key(doc: dict[str, Any]) -> str:
        return hashlib.sha256(f"{seed}:{doc['item_id']}".encode()).hexdigest()

    ordered = sorted(docs, key=key)
    return ordered if size <= 0 else ordered[:size]


def evaluate(
    docs: list[dict[str, Any]],
    query_vectors: Callable[[list[dict[str, Any]]], list[list[float] | None]],
    ask: Callable[[dict[str, Any], list[float], bool], dict[str, list[str]]],
    *,
    size: int,
    seed: int,
    threads: int = QUERY_THREADS,
    describe: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Measure a sample of `docs` (the index's products: item_id, item_name, product_type, image_id).

    With `describe`, `docs` need only `item_id` and `image_id`: `describe(sample)` gives the
    sampled products whole (reading every product's title and type would cost a scan of sources).

    `query_vectors` gives the products' titles as query vectors (None: the model refused one);
    `ask(doc, vector, duplicates)` returns the hit ids per mode, best first (and,
    when `duplicates`, those of "more like this" on the product's image).
    Returns the `quality` record without the model fields.
    """
    chosen = sample(docs, size, seed)
    if describe is not None:
        chosen = describe(chosen)
    vectors = query_vectors(chosen)
    shared = Counter(d.get("image_id") for d in docs if d.get("image_id"))
    image_of = {d["item_id"]: d.get("image_id") for d in docs}

    def one(pair: tuple[dict[str, Any], list[float] | None]) -> dict[str, int | None]:
        doc, vector = pair
        if vector is None:  # the model refused the title: a user's query would find nothing
            return dict.fromkeys(MODES)
        image_id = doc.get("image_id")
        duplicated = bool(image_id) and shared[image_id] > 1
        hits = ask(doc, vector, duplicated)
        ranks = {mode: rank_of(hits[mode], {doc["item_id"]}) for mode in MODES}
        if duplicated:  # image -> the same picture listed as another product, the product itself left out
            ranks["duplicates"] = rank_of(hits["duplicates"], lambda other: image_of.get(other) == image_id)
        return ranks

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="quality") as pool:
        answers = list(pool.map(one, zip(chosen, vectors)))
    by_type: dict[str, list[dict[str, int | None]]] = defaultdict(list)
    for doc, ranks in zip(chosen, answers):
        by_type[doc.get("product_type") or NO_TYPE].append(ranks)
    duplicate_ranks = [r["duplicates"] for r in answers if "duplicates" in r]
    return {
        "sample_size": len(chosen),
        "seed": seed,
        "products": len(docs),
        "chance": chance(len(docs)),
        "modes": {mode: metrics([r[mode] for r in answers]) for mode in MODES},
        "per_product_type": {
            kind: {mode: metrics([r[mode] for r in rows]) for mode in MODES} for kind, rows in sorted(by_type.items())
        },
        "type_counts": {kind: len(rows) for kind, rows in sorted(by_type.items())},
        "duplicates": {"queries": len(duplicate_ranks), **metrics(duplicate_ranks)} if duplicate_ranks else None,
    }


def headline(quality: dict[str, Any] | None) -> float | None:
    """Text -> image recall@10 of a `quality` record (None if it has none)."""
    try:
        return float(quality["modes"][HEADLINE[0]][HEADLINE[1]])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


def format_table(quality: dict[str, Any], other: dict[str, Any] | None = None, types: int = 12) -> str:
    """A small text table of a `quality` record; with `other`, each figure beside the other index's."""
    cols = [quality] + ([other] if other else [])
    lines = []
    for label, q in zip(("index", "compared with"), cols):
        lines.append(
            f"{label}: {q.get('index', '?')} (model {q.get('model')}, artifact {q.get('artifact_version')}, "
            f"{q.get('sample_size')} of {q.get('products')} products, seed {q.get('seed')})"
            + (f": {RANDOM_WEIGHTS_NOTE}" if q.get("random_weights") else "")
        )
    lines.append(f"{'':<20}" + "".join(f"{m if i == 0 else '(other)':>11}" for m in METRICS for i in range(len(cols))))
    rows = [(f"text -> {mode}", [q["modes"].get(mode, {}) for q in cols]) for mode in MODES]
    rows.append(("chance", [q.get("chance", {}) for q in cols]))
    if any(q.get("duplicates") for q in cols):
        rows.append(("image -> duplicate", [q.get("duplicates") or {} for q in cols]))
    for label, values in rows:
        lines.append(f"{label:<20}" + "".join(_cell(v.get(m)) for m in METRICS for v in values))
    counts = quality.get("type_counts") or {}
    if counts:
        lines.append(f"text -> image recall@10 per product type ({min(types, len(counts))} largest, queries):")
        for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:types]:
            values = [q.get("per_product_type", {}).get(kind, {}).get("image", {}).get("recall@10") for q in cols]
            lines.append(f"  {kind[:18]:<18}" + "".join(_cell(v) for v in values) + f"{n:>8}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return f"{value:>11.4f}" if isinstance(value, (int, float)) else f"{'-':>11}"
