"""The chosen k-NN parameters reach the node: HNSW m / ef_construction in the mapping,
the query-time candidate count in every search and validation query (small size, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from catalogue_search import index, search
from catalogue_search.settings import Settings

DIM = 8
N = 300


class Recording:
    """The real client, with the bodies of its search calls kept."""

    def __init__(self, client) -> None:
        self._client = client
        self.bodies: list[dict] = []

    def search(self, **kwargs):
        self.bodies.append(kwargs["body"])
        return self._client.search(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.fixture
def loaded(opensearch_url, unique):
    """A small index built from the project's own index_body, behind an alias."""
    settings = Settings(opensearch_url=opensearch_url, index_alias=f"knnparams-{unique}")
    client = index.make_client(opensearch_url)
    name = f"{settings.index_alias}-v1"
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(N, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.create_index(client, name, index.index_body(settings, alias=settings.index_alias, dimension=DIM, run_key="t"))
    docs = [
        index.document(
            {
                "item_id": f"B{i:09d}",
                "item_name": f"item {i}",
                "image_id": f"img{i}",
                "main_image_id": f"img{i}",
                "path": f"00/{i:08x}.jpg",
                "product_type": "EVEN" if i % 2 == 0 else "ODD",
            },
            vectors[i].tolist(),
            "test",
        )
        for i in range(N)
    ]
    assert index.bulk_load(client, name, docs, total=N).failed == []
    index.finish_loading(client, name, 0)
    client.indices.put_alias(index=name, name=settings.index_alias)
    yield settings, client, name, vectors
    client.indices.delete(index=name, ignore_unavailable=True)


def test_mapping_carries_the_chosen_hnsw_parameters(loaded):
    settings, client, name, _ = loaded
    method = client.indices.get_mapping(index=name)[name]["mappings"]["properties"][index.VECTOR_FIELD]["method"]
    assert method["engine"] == "lucene"
    # Explicit, as chosen in BENCHMARKS.md (not left to the engine's defaults, which may change).
    assert method["parameters"] == {"m": settings.knn_m, "ef_construction": settings.knn_ef_construction}
    assert (settings.knn_m, settings.knn_ef_construction, settings.knn_candidates) == (16, 100, 75)


def test_index_body_follows_the_settings():
    body = index.index_body(Settings(knn_m=12, knn_ef_construction=99), alias="a", dimension=4, run_key="r")
    params = body["mappings"]["properties"][index.VECTOR_FIELD]["method"]["parameters"]
    assert params == {"m": 12, "ef_construction": 99}


def test_search_asks_for_the_candidate_count_and_returns_the_page(loaded):
    settings, client, _, vectors = loaded
    recording = Recording(client)
    searcher = search.SearchClient(settings, client=recording, encoder=object())
    hits = searcher.search_vector(vectors[3].tolist(), 5)
    knn = recording.bodies[-1]["query"]["knn"][index.VECTOR_FIELD]
    assert knn["k"] == settings.knn_candidates > 5
    assert recording.bodies[-1]["size"] == 5
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0].item_id == "B000000003"

    # A page deeper than the candidate count asks for the page itself.
    deep = settings.knn_candidates + 10
    searcher.search_vector(vectors[3].tolist(), search.Page(10, offset=deep - 10))
    assert recording.bodies[-1]["query"]["knn"][index.VECTOR_FIELD]["k"] == deep

    # A filtered query keeps the candidate count and the filter.
    hits = searcher.search_vector(vectors[4].tolist(), 3, filters=search.Filters(product_type="EVEN"))
    knn = recording.bodies[-1]["query"]["knn"][index.VECTOR_FIELD]
    assert knn["k"] == settings.knn_candidates
    assert knn["filter"] == {"bool": {"filter": [{"term": {"product_type": "EVEN"}}]}}
    assert hits[0].item_id == "B000000004" and {h.product_type for h in hits} == {"EVEN"}


def test_validation_queries_use_the_candidate_count(loaded):
    settings, client, name, vectors = loaded
    recording = Recording(client)
    queries = [vectors[i].tolist() for i in (0, 1, 2)]
    index.validate(recording, name, expected_count=N, expected={}, queries=queries, candidates=settings.knn_candidates)
    # the recall check's ANN queries ask for the candidate count, as searches do (the exact ones are script_score)
    ann = [b["query"]["knn"][index.VECTOR_FIELD]["k"] for b in recording.bodies if "knn" in b["query"]]
    assert ann == [settings.knn_candidates] * 3


def test_knn_query_never_asks_for_fewer_than_k():
    assert index.knn_query([1.0, 0.0], 10, candidates=0)["query"]["knn"][index.VECTOR_FIELD]["k"] == 10
    assert index.knn_query([1.0, 0.0], 10, candidates=64)["query"]["knn"][index.VECTOR_FIELD]["k"] == 64
    assert index.knn_query([1.0, 0.0], 10, candidates=64)["size"] == 10
    with pytest.raises(ValueError):
        index.knn_query([1.0, 0.0], 0)
