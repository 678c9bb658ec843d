"""The queries of the quality evaluation: the search client's requests, one `_msearch` per product.

A title's vector is asked in the three modes with the bodies `SearchClient`
sends for a text search (`index.knn_query` with the same k and candidate
count; for `hybrid`, BM25 on the title and both k-NN lists with the default
`search.Fusion`, fused by `search.reciprocal_rank_fusion`), and a product with
duplicates asks "more like this" with its image vector, itself left out. Only
the hit ids come back (`_source: false`, documents are keyed by item_id): the
ranking is the search client's, without fetching and parsing every hit's
source (two 512-d vectors each). tests/integration/test_quality_evaluation.py checks the
ranks against `SearchClient`'s own.
"""

from __future__ import annotations

from typing import Any

from catalogue_search import index
from catalogue_search.errors import PermanentError
from catalogue_search.settings import Settings


class QueryRunner:
    """Asks one product's title vector in every mode against `index_name`, in one round trip."""

    def __init__(self, settings: Settings, client, index_name: str, depth: int, fusion=None) -> None:
        from catalogue_search import search

        self.client = client
        self.index = index_name
        self.depth = depth
        self.fusion = fusion or search.Fusion()
        self.fuse = search.reciprocal_rank_fusion
        self.candidates = min(settings.knn_candidates, search.KNN_MAX_K)
        # search_hybrid's list size for a first page of `depth` hits, no folding
        self.hybrid_size = min(search.KNN_MAX_K, max(self.fusion.candidates, depth))

    def _knn(self, vector: list[float], k: int, field: str, exclude: str | None = None) -> dict[str, Any]:
        body = index.knn_query(vector, k, None, field=field, candidates=self.candidates)
        if exclude:  # as SearchClient.more_like_this: the product itself is filtered out
            body["query"]["knn"][field]["filter"] = {"bool": {"must_not": [{"ids": {"values": [exclude]}}]}}
        return body

    def bodies(self, title: str, vector: list[float], image_vector: list[float] | None, item_id: str):
        """(name, body) of every query one product asks."""
        size, fusion = self.hybrid_size, self.fusion
        out = [
            ("image", self._knn(vector, self.depth, index.VECTOR_FIELD)),
            ("name", self._knn(vector, self.depth, index.NAME_VECTOR_FIELD)),
        ]
        if fusion.lexical_weight:
            out.append(("hybrid/lexical", index.title_query(title, size, None)))
        if fusion.name_weight:
            out.append(("hybrid/name", self._knn(vector, size, index.NAME_VECTOR_FIELD)))
        if fusion.image_weight:
            out.append(("hybrid/image", self._knn(vector, size, index.VECTOR_FIELD)))
        if image_vector is not None:
            out.append(("duplicates", self._knn(image_vector, self.depth, index.VECTOR_FIELD, exclude=item_id)))
        return out

    def image_vector(self, item_id: str) -> list[float]:
        """The stored image vector of a product (what "more like this" queries with)."""
        got = self.client.get(index=self.index, id=item_id, _source_includes=[index.VECTOR_FIELD])
        return got["_source"][index.VECTOR_FIELD]

    def ask(self, doc: dict[str, Any], vector: list[float], duplicates: bool = False) -> dict[str, list[str]]:
        """Hit ids per mode (and `duplicates`), best first, at most `depth` each."""
        image_vector = self.image_vector(doc["item_id"]) if duplicates else None
        named = self.bodies(doc["item_name"].strip(), vector, image_vector, doc["item_id"])
        lines: list[dict[str, Any]] = []
        for _, body in named:
            lines += [{"index": self.index}, {**body, "_source": False}]
        answers = self.client.msearch(body=lines)["responses"]
        ids: dict[str, list[str]] = {}
        for (name, _), answer in zip(named, answers):
            if "error" in answer:
                problem = f"the {name} query of the quality evaluation failed: {str(answer['error'])[:300]}"
                if answer.get("status") in index.RETRY_STATUSES:
                    raise RuntimeError(problem)  # a busy or failing node: the task's retry asks again
                raise PermanentError(problem)
            ids[name] = [hit["_id"] for hit in answer["hits"]["hits"]]
        lists = {name.split("/")[1]: ids.pop(name) for name in list(ids) if name.startswith("hybrid/")}
        weights = {"lexical": self.fusion.lexical_weight, "name": self.fusion.name_weight}
        weights["image"] = self.fusion.image_weight
        fused = self.fuse(lists, weights, self.fusion.rank_constant)
        ids["hybrid"] = [item_id for item_id, _ in fused[: self.depth]]
        return ids
