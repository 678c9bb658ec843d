"""Is a new index fit to serve: its count, sampled products holding exactly their vector, ANN recall."""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any, Iterable

from catalogue_search.errors import PermanentError
from catalogue_search.index.queries import exact_query, knn_query, self_match_query

log = logging.getLogger(__name__)

SELF_MATCH_SCORE = 0.9999  # OpenSearch cosine score is (1 + cos) / 2: 1.0 for the same vector.
RECALL_K = 10


class IndexValidationError(PermanentError, RuntimeError):
    """The new index is not fit to serve: the alias stays where it was."""


def validate(
    client,
    index: str,
    *,
    expected_count: int,
    expected: dict[str, list[float]],
    queries: list[list[float]] | None = None,
    min_recall: float = 0.0,
    candidates: int = 0,
    logger: logging.Logger = log,
) -> dict[str, Any]:
    """Raise IndexValidationError unless the index is fit to serve.

    - the document count is `expected_count`;
    - every product of `expected` (item_id -> its stored embedding) is in the index
      with exactly that vector: a k-NN query filtered on its item_id scores 1.0, so
      products that share an image, or a big index, cannot hide it;
    - recall@10 of the ANN search against exact cosine search, over `queries`, is at
      least `min_recall` (ties at the 10th score count as found), with the candidate
      count searches use (`candidates`).
    """
    count = client.count(index=index)["count"]
    if count != expected_count:
        raise IndexValidationError(f"index {index} holds {count} documents, expected {expected_count}")
    for item_id, vector in expected.items():
        hits = client.search(index=index, body=self_match_query(vector, item_id))["hits"]["hits"]
        if not hits:
            raise IndexValidationError(f"self-match failed: product {item_id} is not in index {index}")
        score = hits[0]["_score"]
        if hits[0]["_id"] != item_id or score < SELF_MATCH_SCORE:
            raise IndexValidationError(
                f"self-match failed for {item_id}: its indexed vector scores {score:.6f} against its stored "
                f"embedding, expected 1.0 (the index holds a wrong vector for it)"
            )
    if expected:
        logger.info("self-match ok: %d sampled products hold exactly their stored embedding", len(expected))
    report: dict[str, Any] = {"count": count, "self_matches": len(expected)}
    if queries:
        recall = ann_recall(client, index, queries, k=min(RECALL_K, count), candidates=candidates)
        report.update(recall=round(recall, 4), recall_queries=len(queries))
        logger.info("ANN recall@%d against exact search: %.4f over %d queries", RECALL_K, recall, len(queries))
        if recall < min_recall:
            raise IndexValidationError(
                f"ANN recall@{RECALL_K} of index {index} is {recall:.4f}, below the minimum {min_recall:.2f} "
                "(CATSEARCH_MIN_RECALL_PERCENT)"
            )
    return report


def ann_recall(client, index: str, queries: list[list[float]], k: int = RECALL_K, candidates: int = 0) -> float:
    """Mean recall@k of the k-NN (HNSW) search against exact search, ties included."""
    if k <= 0 or not queries:
        return 1.0
    total = 0.0
    for vector in queries:
        exact = client.search(index=index, body=exact_query(vector, k))["hits"]["hits"]
        body = knn_query(vector, k, candidates=candidates)
        body["_source"] = False
        ann = client.search(index=index, body=body)["hits"]["hits"]
        if not exact:
            total += 1.0
            continue
        floor = exact[-1]["_score"] - 1e-6
        wanted = {h["_id"] for h in exact}
        found = sum(1 for h in ann if h["_id"] in wanted or h["_score"] >= floor)
        total += min(found, len(exact)) / len(exact)
    return total / len(queries)


def sample_ids(item_ids: Iterable[str], n: int, seed: str = "") -> list[str]:
    """`n` ids drawn at random with a seed (the run), so every run checks other products."""
    ids = sorted(set(item_ids))
    rng = random.Random(hashlib.sha256(seed.encode()).hexdigest())
    return sorted(rng.sample(ids, min(n, len(ids))))
