"""The OpenSearch side of the query path, for input already checked: what the alias holds, the query
bodies of each mode, one search per ranked list, fusion, folding and paging into `Hit`s."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from catalogue_search import index
from catalogue_search.search.errors import (
    EmptyQueryError,
    IndexMissingError,
    ModelVersionMismatchError,
    ProductNotFoundError,
    QueryRefusedError,
    opensearch_errors,
)
from catalogue_search.search.query import FACETS, KNN_MAX_K, FacetValue, Filters, Fold, Hit, Page
from catalogue_search.search.ranking import Candidate, Fusion, fold_candidates, reciprocal_rank_fusion
from catalogue_search.settings import Settings

# OpenSearch's default `index.max_result_window` (from + size).
DEFAULT_MAX_RESULT_WINDOW = 10_000
FOLD_CANDIDATES_FACTOR = 4  # folding looks at this many times offset + k candidates


class Alias:
    """Queries on the read alias (`settings.index_alias`) through an opensearch-py client."""

    def __init__(self, client, settings: Settings) -> None:
        self.client, self.settings = client, settings

    @property
    def name(self) -> str:
        return self.settings.index_alias

    @contextmanager
    def opensearch(self) -> Iterator[None]:
        with opensearch_errors(self.settings.opensearch_url, self.name):
            yield

    # --- what the alias holds ------------------------------------------------------------------
    def result_limit(self) -> int:
        """The lower of `index.max_result_window` (of every index behind the alias) and the k-NN plugin's
        largest k; IndexMissingError when there is no such alias."""
        with self.opensearch():
            got = self.client.indices.get_settings(
                index=self.name, name="index.max_result_window", include_defaults=True, flat_settings=True
            )
        windows = [
            int(
                info.get("settings", {}).get("index.max_result_window")
                or info.get("defaults", {}).get("index.max_result_window", DEFAULT_MAX_RESULT_WINDOW)
            )
            for info in got.values()
        ]
        if not windows:
            raise IndexMissingError(f"index or alias {self.name!r} does not exist: run the catalogue_ingest DAG first")
        return min(KNN_MAX_K, *windows)

    def artifact_version(self) -> str:
        """The artifact version in the `_meta` of the indices behind the alias ("" if none recorded)."""
        with self.opensearch():
            mappings = self.client.indices.get_mapping(index=self.name)
        versions = {(m.get("mappings") or {}).get("_meta", {}).get("artifact_version", "") for m in mappings.values()}
        if len(versions) > 1:
            raise ModelVersionMismatchError(
                f"alias {self.name!r} spans indices of several artifact versions: {versions}"
            )
        return versions.pop() if versions else ""

    def product_vector(self, item_id: str) -> list[float]:
        if not isinstance(item_id, str) or not item_id.strip():
            raise EmptyQueryError("the product id is empty")
        body = {"size": 1, "query": {"ids": {"values": [item_id]}}, "_source": {"includes": [index.VECTOR_FIELD]}}
        with self.opensearch():
            hits = self.client.search(index=self.name, body=body)["hits"]["hits"]
        if not hits:
            raise ProductNotFoundError(f"no product {item_id!r} in the catalogue")
        vector = hits[0].get("_source", {}).get(index.VECTOR_FIELD)
        if not isinstance(vector, list) or not vector:
            raise QueryRefusedError(f"product {item_id!r} has no stored vector in {self.name!r}")
        return vector

    def facets(self, filters: Filters, size: int = 100) -> dict[str, list[FacetValue]]:
        """The values present for each facet, with counts (a terms aggregation). Each facet counts the
        products that match the other facets' filters, so a chip's count is what choosing it would give."""
        aggs = {}
        for name in FACETS:
            others = filters.clauses(without=name)
            aggs[name] = {
                "filter": {"bool": {"filter": others}} if others else {"match_all": {}},
                "aggs": {
                    "values": {
                        "terms": {"field": name, "size": size},
                        "aggs": {"label": {"terms": {"field": f"{name}.raw", "size": 1}}},
                    }
                },
            }
        with self.opensearch():
            got = self.client.search(index=self.name, body={"size": 0, "aggs": aggs})
        out: dict[str, list[FacetValue]] = {}
        for name in FACETS:
            out[name] = []
            for bucket in got["aggregations"][name]["values"]["buckets"]:
                labels = bucket.get("label", {}).get("buckets") or [{"key": bucket["key"]}]
                out[name].append(FacetValue(value=str(labels[0]["key"]), count=int(bucket["doc_count"])))
        return out

    # --- ranked lists ---------------------------------------------------------------------------
    def knn(
        self, vector, page: Page, filters: Filters, field: str, fold: Fold | None, exclude: str | None = None
    ) -> list[Hit]:
        """k-NN on `field`; `exclude`: an item id left out (more like this)."""
        body = index.knn_query(
            vector, page.fetch(_factor(fold)), filters.clauses() or None, field=field, candidates=self._k
        )
        if exclude:
            knn = body["query"]["knn"][field]
            knn.setdefault("filter", {"bool": {}})["bool"]["must_not"] = [{"ids": {"values": [exclude]}}]
        return self._page([Candidate(float(h["_score"]), h["_source"]) for h in self._search(body, fold)], page, fold)

    def lexical(self, text: str, page: Page, filters: Filters, fold: Fold | None) -> list[Hit]:
        """BM25 on the title."""
        body = index.title_query(text, page.fetch(_factor(fold)), filters.clauses() or None)
        return self._page([Candidate(float(h["_score"]), h["_source"]) for h in self._search(body, fold)], page, fold)

    def hybrid(
        self, vector, page: Page, text: str | None, filters: Filters, fusion: Fusion | None, fold: Fold | None
    ) -> list[Hit]:
        """Reciprocal rank fusion of BM25 on the title (with `text`), k-NN on the title vectors and on the images."""
        fusion = fusion or Fusion()
        size = min(page.ceiling, max(fusion.candidates, page.end * _factor(fold)))
        clauses = filters.clauses() or None
        bodies: dict[str, dict[str, Any]] = {}
        if text and fusion.lexical_weight:
            bodies["lexical"] = index.title_query(text, size, clauses)
        for name, field in (("name", index.NAME_VECTOR_FIELD), ("image", index.VECTOR_FIELD)):
            if fusion.weights[name]:
                bodies[name] = index.knn_query(vector, size, clauses, field=field, candidates=self._k)
        sources: dict[str, dict[str, Any]] = {}
        ranked: dict[str, list[str]] = {}
        nearest: dict[str, float] = {}  # item -> its best k-NN score (for Hit.similarity)
        for name, body in bodies.items():
            if fold is None:  # the lists' ids only; the page's documents are read once they are fused
                body.update(index.ONLY_IDS)
            hits = self._search(body, fold)
            ranked[name] = [index.hit_id(h) for h in hits]
            for h in hits:
                item_id = index.hit_id(h)
                if fold is not None:
                    sources.setdefault(item_id, h["_source"])
                if name != "lexical":
                    nearest[item_id] = max(nearest.get(item_id, 0.0), float(h["_score"]))
        fused = reciprocal_rank_fusion(ranked, fusion.weights, fusion.rank_constant)
        if fold is None:  # the page's documents; one deleted since the lists were asked is left out
            before, window = fused[: page.offset], fused[page.offset : page.end]
            sources = self._documents([item_id for item_id, _ in window])
            fused = before + [(item_id, score) for item_id, score in window if item_id in sources]
        return self._page(
            [Candidate(s, sources.get(i, {}), knn_score=nearest.get(i, 0.0)) for i, s in fused], page, fold
        )

    def _documents(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The documents of `ids` (vectors left out), by item id; one that has gone since is missing."""
        if not ids:
            return {}
        body = {"size": len(ids), "query": {"ids": {"values": ids}}, "_source": {"excludes": list(index.VECTOR_FIELDS)}}
        with self.opensearch():
            hits = self.client.search(index=self.name, body=body)["hits"]["hits"]
        return {h["_source"]["item_id"]: h["_source"] for h in hits}

    @property
    def _k(self) -> int:
        """The k-NN query's candidate list (with the Lucene engine, its `k`)."""
        return min(self.settings.knn_candidates, KNN_MAX_K)

    def _search(self, body: dict[str, Any], fold: Fold | None) -> list[dict[str, Any]]:
        """Run one query on the alias; when folding, hits carry their image vector (for folding only)."""
        if fold is not None:
            body["_source"] = {"excludes": [index.NAME_VECTOR_FIELD]}
        with self.opensearch():
            return self.client.search(index=self.name, body=body)["hits"]["hits"]

    def _page(self, cands: list[Candidate], page: Page, fold: Fold | None) -> list[Hit]:
        if fold is not None:
            threshold = self.settings.duplicate_cosine_threshold if fold.threshold is None else fold.threshold
            cands = fold_candidates(cands, threshold)
        return [
            Hit(
                rank=rank,
                score=cand.score,
                item_id=cand.source["item_id"],
                item_name=cand.source["item_name"],
                image_path=cand.source["image_path"],
                image_id=cand.source.get("image_id"),
                product_type=cand.source.get("product_type"),
                brand=cand.source.get("brand"),
                duplicates=len(cand.folded),
                duplicate_ids=tuple(cand.folded),
                similarity=cand.similarity,
            )
            for rank, cand in enumerate(cands[page.offset : page.end], start=page.offset + 1)
        ]


def _factor(fold: Fold | None) -> int:
    return FOLD_CANDIDATES_FACTOR if fold is not None else 1
