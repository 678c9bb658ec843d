"""Pairs of near-identical vectors, two ways: each vector's neighbours in the k-NN index
(`IndexNeighbours`, the pipeline's), or every pair compared exactly (`near_pairs`, the reference).

The index way costs one HNSW search per vector (images x log(images) in all)
and needs no vector matrix on the worker; the exact way is images^2 / 2 x dim
multiply-adds. `./dev bench duplicates` measures both side by side at 15k, 150k and 600k; BENCHMARKS.md
("Full-size DAG run") has the index way over 145,257 images in a DAG run: 410-515 s, 23.7 s for a 1% change.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

HIT_FIELDS = ["item_id", "image_id", "image_path"]
TITLE_KEYWORD = "item_name.keyword"  # the title's keyword subfield (mapping): doc values, up to ignore_above
MAX_K = 10_000  # the k-NN plugin's largest k, and OpenSearch's default max_result_window
RETRIES = 5


def near_pairs(matrix: np.ndarray, threshold: float, block_rows: int = 4096) -> Iterator[tuple[int, int, float]]:
    """(i, j, cosine) with i < j for every pair of unit rows with cosine >= threshold, tile by tile."""
    n = matrix.shape[0]
    for i0 in range(0, n, block_rows):
        a = np.asarray(matrix[i0 : i0 + block_rows], dtype=np.float32)
        for j0 in range(i0, n, block_rows):
            b = a if j0 == i0 else np.asarray(matrix[j0 : j0 + block_rows], dtype=np.float32)
            sims = a @ b.T
            if j0 == i0:
                sims = np.triu(sims, k=1) + np.tril(np.full_like(sims, -2.0))  # each pair once, no self pairs
            rows, cols = np.nonzero(sims >= threshold)
            for r, c in zip(rows.tolist(), cols.tolist()):
                yield i0 + r, j0 + c, float(sims[r, c])


class IndexNeighbours:
    """Each vector's neighbours at or above a cosine, from a k-NN index (`cosinesimil`: score = (1 + cos) / 2).

    A vector asks for its top `k` (with the Lucene engine, also the candidate
    list, at least `candidates`); while all `k` it got are at or above the
    threshold there may be more, so it asks again with 4 x k, up to `max_k`.
    Queries go `batch` at a time in one `_msearch`; a query the node rejects for
    load (429) is sent again.

    A full report finds a pair when either image finds the other; an incremental
    one only when the changed image does, so it asks with a longer candidate list.
    """

    def __init__(
        self,
        client,
        index: str,
        field: str = "embedding",
        *,
        k: int = 8,
        batch: int = 64,
        max_k: int = MAX_K,
        candidates: int = 0,
        logger: logging.Logger = log,
    ) -> None:
        if not 1 <= k <= max_k <= MAX_K:
            raise ValueError(f"need 1 <= k <= max_k <= {MAX_K}, got k={k}, max_k={max_k}")
        self.candidates = min(max(0, candidates), MAX_K)
        self.client, self.index, self.field = client, index, field
        self.k, self.batch, self.max_k, self.log = k, max(1, batch), max_k, logger
        self.queries = 0  # k-NN searches sent, the re-asks included
        self.widened = 0  # vectors asked again with a larger k
        self.capped = 0  # vectors with max_k neighbours at or above the threshold (a group may be split)

    def near(self, vectors: Sequence[Any], threshold: float) -> list[list[tuple[dict[str, Any], float]]]:
        """For each vector, the (document fields, cosine) of the indexed vectors with cosine >= threshold
        (the vector itself included when it is in the index)."""
        out: list[list[tuple[dict[str, Any], float]]] = [[] for _ in vectors]
        todo, k = list(range(len(vectors))), self.k
        while todo:
            again = []
            for i, hits in zip(todo, self._search([vectors[i] for i in todo], k)):
                near = [(h["_source"], 2.0 * h["_score"] - 1.0) for h in hits]
                out[i] = [(doc, cos) for doc, cos in near if cos >= threshold]
                if len(near) >= k and near[-1][1] >= threshold:
                    again.append(i)
            if k >= self.max_k:
                self.capped += len(again)
                if again:
                    self.log.warning("%d vectors have %d neighbours at cosine >= %s", len(again), k, threshold)
                break
            todo, k = again, min(self.max_k, 4 * k)
            self.widened += len(again)
        return out

    def _search(self, vectors: Sequence[Any], k: int) -> list[list[dict[str, Any]]]:
        header = json.dumps({"index": self.index})
        lines = []
        for vector in vectors:
            knn = {"vector": np.asarray(vector, dtype=np.float32).tolist(), "k": max(k, self.candidates)}
            query = {"knn": {self.field: knn}}
            lines += [header, json.dumps({"size": k, "_source": HIT_FIELDS, "query": query})]
        results: list[list[dict[str, Any]] | None] = [None] * len(vectors)
        todo = list(range(len(vectors)))
        for attempt in range(RETRIES + 1):
            body = "".join(f"{lines[2 * i]}\n{lines[2 * i + 1]}\n" for i in todo)
            responses = self.client.msearch(body=body)["responses"]
            self.queries += len(todo)
            busy = []
            for i, resp in zip(todo, responses):
                if "error" not in resp:
                    results[i] = resp["hits"]["hits"]
                elif resp.get("status") == 429 and attempt < RETRIES:
                    busy.append(i)
                else:
                    raise RuntimeError(f"k-NN search on {self.index} failed: {resp['error']}")
            if not busy:
                break
            time.sleep(min(30, 2**attempt))
            todo = busy
        return [r or [] for r in results]


def index_vectors(
    client, index: str, vector_field: str, batch: int = 500, only: Collection[str] | None = None
) -> Iterator[tuple[dict[str, Any], Any]]:
    """(document, image vector) of every product in `index`, streamed with a scroll.

    With `only` (item ids), the vector comes with those products alone; the
    others come with None (their documents are read without the vector).
    """
    from opensearchpy import helpers

    from catalogue_search.index import get_sources, scan_fields

    fields = ["item_id", "item_name", "image_id", "main_image_id", "image_path"]

    def scan(query: dict[str, Any], with_vector: bool) -> Iterator[dict[str, Any]]:
        body = {"_source": fields + [vector_field] if with_vector else fields, "query": query}
        for hit in helpers.scan(client, index=index, query=body, size=batch, preserve_order=False):
            yield hit["_source"]

    if only is None:
        for src in scan({"match_all": {}}, True):
            yield src, src.pop(vector_field)
        return
    # The others' fields come from their doc values (`index.scan_fields`): a scroll of `_source`
    # parses every document's whole source, vectors included. A title over the keyword's
    # `ignore_above` has no doc value: those few are read from `_source`.
    wanted, long_titles = set(only), []
    for doc in scan_fields(client, index, [f for f in fields if f != "item_name"] + [TITLE_KEYWORD]):
        if doc["item_id"] in wanted:
            continue
        if TITLE_KEYWORD not in doc:
            long_titles.append(doc["item_id"])
            continue
        doc["item_name"] = doc.pop(TITLE_KEYWORD)
        yield doc, None
    for src in get_sources(client, index, long_titles, fields, batch=1000).values():
        yield src, None
    ids = sorted(wanted)
    for lo in range(0, len(ids), 10_000):
        for src in scan({"terms": {"item_id": ids[lo : lo + 10_000]}}, True):
            yield src, src.pop(vector_field)
