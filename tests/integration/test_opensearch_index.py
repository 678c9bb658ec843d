"""Against the real OpenSearch 2.19.1 node with the k-NN plugin (started by ./dev test)."""

from __future__ import annotations

import math

import pytest

from catalogue_search import index
from catalogue_search.settings import Settings
from catalogue_search_dev import stack


@pytest.fixture
def client(opensearch_url):
    c = index.make_client(opensearch_url)
    created: list[str] = []
    yield c, created
    for name in created:
        c.indices.delete(index=name, ignore_unavailable=True)


def _unit(*xs: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in xs))
    return [x / n for x in xs]


def _product(item_id: str) -> dict:
    return {
        "item_id": item_id,
        "item_name": f"name of {item_id}",
        "image_id": f"img{item_id}",
        "main_image_id": f"img{item_id}",
        "path": f"ab/img{item_id}.jpg",
        "product_type": "TOY",
        "brand": "Tux Paint",
    }


def _load(c, name: str, alias: str, vectors: dict[str, list[float]]) -> None:
    body = index.index_body(Settings(), alias=alias, dimension=3, run_key=name)
    assert index.create_index(c, name, body) in {"created", "reused"}
    docs = [index.document(_product(i), v, "test") for i, v in vectors.items()]
    report = index.bulk_load(c, name, docs, total=len(docs))
    assert report.failed == []
    index.finish_loading(c, name, 0)


VECTORS = {"north": _unit(0, 1, 0), "east": _unit(1, 0, 0), "northeast": _unit(1, 1, 0), "up": _unit(0, 0, 1)}


def test_knn_plugin_is_installed(client):
    c, _ = client
    plugins = {p["component"] for p in c.cat.plugins(format="json")}
    assert "opensearch-knn" in plugins


def test_cosine_knn_index_answers_with_the_expected_neighbour(client, unique):
    c, created = client
    name = f"t-knn-{unique}"
    created.append(name)
    _load(c, name, f"alias-{unique}", VECTORS)
    mapping = c.indices.get_mapping(index=name)[name]["mappings"]["properties"]["embedding"]
    assert mapping["method"]["space_type"] == "cosinesimil" and mapping["method"]["engine"] == "lucene"
    hits = c.search(index=name, body=index.knn_query(_unit(0.9, 0.2, 0), 2))["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["east", "northeast"]
    assert "embedding" not in hits[0]["_source"]
    # OpenSearch's cosine score is (1 + cos) / 2: the vector itself scores 1.0.
    self_hit = c.search(index=name, body=index.knn_query(VECTORS["up"], 1))["hits"]["hits"][0]
    assert self_hit["_id"] == "up" and self_hit["_score"] == pytest.approx(1.0, abs=1e-6)


def test_reloading_the_same_documents_does_not_duplicate(client, unique):
    c, created = client
    name = f"t-idem-{unique}"
    created.append(name)
    _load(c, name, f"alias-{unique}", VECTORS)
    _load(c, name, f"alias-{unique}", VECTORS)  # a retry of the same run
    assert c.count(index=name)["count"] == len(VECTORS)


def test_validation_rejects_a_wrong_count_and_a_wrong_vector(client, unique):
    c, created = client
    name = f"t-val-{unique}"
    created.append(name)
    _load(c, name, f"alias-{unique}", VECTORS)
    expected = {"north": VECTORS["north"]}
    assert index.validate(c, name, expected_count=4, expected=expected)["count"] == 4
    with pytest.raises(index.IndexValidationError, match="holds 4 documents, expected 5"):
        index.validate(c, name, expected_count=5, expected=expected)
    with pytest.raises(index.IndexValidationError, match="self-match failed for north"):
        index.validate(c, name, expected_count=4, expected={"north": _unit(0.3, 1, 0.2)})
    with pytest.raises(index.IndexValidationError, match="product south is not in index"):
        index.validate(c, name, expected_count=4, expected={"south": _unit(0, -1, 0)})


def test_alias_swap_is_atomic(client, unique):
    c, created = client
    alias = f"alias-{unique}"
    names = [f"t-swap-{unique}-{n}" for n in range(3)]
    created.extend(names)
    for n, name in enumerate(names):
        _load(c, name, alias, {"only": _unit(1, n + 1, 0)})
        previous = index.swap_alias(c, alias, name)
        assert list(c.indices.get_alias(name=alias).keys()) == [name]
        assert previous == ([names[n - 1]] if n else [])


def test_stack_up_reuses_running_services():
    assert stack.up() == {"moto": "reused", "sagemaker": "reused", "opensearch": "reused"}


def test_parallel_bulk_load_loads_everything_and_reports_rejected_documents(client, unique, monkeypatch):
    """Two requests in flight, small chunks: every good document lands once, a document
    with a vector of the wrong dimension is reported (not raised), progress is logged,
    two requests do run at once, and the loader pulls documents lazily (never more
    than 2 x threads chunks ahead of what the node has answered)."""
    import logging
    import threading

    from opensearchpy import helpers

    c, created = client
    name = f"t-par-{unique}"
    created.append(name)
    body = index.index_body(Settings(), alias=f"alias-{unique}", dimension=3, run_key=name)
    index.create_index(c, name, body)
    lock = threading.Lock()
    state = {"pulled": 0, "answered": 0, "ahead": 0, "in_flight": 0, "most_in_flight": 0}
    real = helpers.streaming_bulk

    def counting(client, actions, **kwargs):
        with lock:
            state["in_flight"] += 1
            state["most_in_flight"] = max(state["most_in_flight"], state["in_flight"])
        try:
            for result in real(client, actions, **kwargs):
                with lock:
                    state["answered"] += 1
                yield result
        finally:
            with lock:
                state["in_flight"] -= 1

    monkeypatch.setattr(helpers, "streaming_bulk", counting)

    def docs():
        for i in range(1000):
            with lock:
                state["pulled"] += 1
                state["ahead"] = max(state["ahead"], state["pulled"] - state["answered"])
            vector = [0.0, 0.0] if i == 617 else _unit(1 + i % 7, 1 + i % 5, 1 + i % 3)
            yield index.document(_product(f"p{i:04d}"), vector, "test")

    lines: list[str] = []
    logger = logging.getLogger(f"test-par-{unique}")
    logger.addHandler(handler := logging.Handler())
    handler.emit = lambda record: lines.append(record.getMessage())
    logger.setLevel(logging.INFO)

    report = index.bulk_load(c, name, docs(), total=1000, chunk_size=37, threads=2, logger=logger)
    index.finish_loading(c, name, 0)
    assert report.indexed == 999 and len(report.failed) == 1 and "p0617" in report.failed[0]
    assert c.count(index=name)["count"] == 999
    assert lines[-1] == "documents loaded: 1000 / 1000" and 5 <= len(lines) <= 11
    assert state["most_in_flight"] == 2
    assert state["ahead"] <= (2 * 2 + 1) * 37
