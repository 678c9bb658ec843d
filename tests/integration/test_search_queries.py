"""The shared query logic against the real OpenSearch node: facets, more like this, case-insensitive
filters, the engine's result window, refused queries; and the CLI on top of it."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from search_world import build_world

from catalogue_search import cli, index, search


@pytest.fixture(scope="module")
def world(tmp_path_factory, moto_url, opensearch_url, tiny_artifact):
    w = build_world(moto_url, opensearch_url, tmp_path_factory.mktemp("world"), n=12, artifact=tiny_artifact)
    yield w
    w.cleanup()


@pytest.fixture(scope="module")
def client(world):
    return search.SearchClient(world.settings, encoder=search.LocalEncoder(world.settings, s3_client=world.s3))


def test_facets_count_the_values_present(world, client):
    facets = client.facets()
    want_types = Counter(p.product_type for p in world.products)
    want_brands = Counter(p.brand for p in world.products)
    assert {(v.value, v.count) for v in facets["product_type"]} == set(want_types.items())
    assert {(v.value, v.count) for v in facets["brand"]} == set(want_brands.items())
    # A facet counts what the *other* filters leave: product types among one brand.
    narrowed = client.facets(brand="roundish")
    want = Counter(p.product_type for p in world.products if p.brand == "Roundish")
    assert {(v.value, v.count) for v in narrowed["product_type"]} == set(want.items())


@pytest.mark.parametrize("spelling", ["FOOD", "food", "Food", " food "])
def test_filters_match_whatever_the_case(world, client, spelling):
    hits = client.search_image(world.products[1].image, k=12, product_type=spelling)
    assert hits and {h.product_type for h in hits} == {"FOOD"}
    assert len(hits) == sum(p.product_type == "FOOD" for p in world.products)


def test_more_like_this_uses_the_stored_vector_and_leaves_the_product_out(world, client):
    target = world.products[3]
    by_image = client.search_image(target.image, k=6)
    assert by_image[0].item_id == target.item_id and by_image[0].similarity == pytest.approx(1.0, abs=1e-4)
    similar = client.more_like_this(target.item_id, k=5)
    assert target.item_id not in {h.item_id for h in similar}
    assert [h.item_id for h in similar] == [h.item_id for h in by_image[1:6]]
    assert [h.rank for h in similar] == [1, 2, 3, 4, 5]
    page2 = client.more_like_this(target.item_id, k=3, offset=3, brand="SHAPES INC")
    assert all(h.brand == "Shapes Inc" and h.item_id != target.item_id for h in page2)
    with pytest.raises(search.ProductNotFoundError):
        client.more_like_this("B0NOSUCHTHING")


def test_similarity_is_the_cosine_of_the_vectors(world, client):
    import numpy as np

    hits = client.search_image(world.products[0].image, k=3)
    vec = {h.item_id: np.array(client.product_vector(h.item_id)) for h in hits}
    base = vec[hits[0].item_id]
    for h in hits:
        cos = float(base @ vec[h.item_id] / np.linalg.norm(base) / np.linalg.norm(vec[h.item_id]))
        assert h.similarity == pytest.approx(cos, abs=1e-4)
        assert h.score == pytest.approx((1 + cos) / 2, abs=1e-4)


def test_the_alias_result_window_is_checked_before_the_query(world, client, opensearch_url, capsys):
    os_client = index.make_client(opensearch_url)
    small = f"{world.settings.index_alias}-window"
    os_client.indices.create(index=small, body={"settings": {"index": {"max_result_window": 50}}})
    try:
        narrow = search.SearchClient(world.settings.replace(index_alias=small), encoder=client.encoder)
        assert narrow.result_limit() == 50
        with pytest.raises(search.OutOfRangeError, match="at most 50"):
            narrow.search_text("a red ellipse", k=40, offset=20)
        code = cli.main(["search", "a dog", "-k", "40", "--offset", "20", "--alias", small])
        err = capsys.readouterr().err
        assert code == 1 and err.strip().splitlines() == [err.strip()] and "at most 50" in err
    finally:
        os_client.indices.delete(index=small, ignore_unavailable=True)


def test_a_refused_query_is_one_line(world, opensearch_url, monkeypatch, capsys):
    """An index whose product_type is a text field: OpenSearch refuses the terms aggregation."""
    os_client = index.make_client(opensearch_url)
    bad = f"{world.settings.index_alias}-text"
    os_client.indices.create(index=bad, body={"mappings": {"properties": {"product_type": {"type": "text"}}}})
    try:
        monkeypatch.setenv("CATSEARCH_OPENSEARCH_URL", opensearch_url)
        code = cli.main(["search", "--list", "product-types", "--alias", bad])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err
        assert err.startswith("error: OpenSearch refused the query (HTTP 400") and len(err.strip().splitlines()) == 1
    finally:
        os_client.indices.delete(index=bad, ignore_unavailable=True)


def test_missing_alias_names_the_dag(world, monkeypatch, capsys, opensearch_url):
    monkeypatch.setenv("CATSEARCH_OPENSEARCH_URL", opensearch_url)
    code = cli.main(["search", "a dog", "--alias", "no-such-alias-x"])
    err = capsys.readouterr().err
    assert code == 1 and "catalogue_ingest" in err and len(err.strip().splitlines()) == 1


def test_cli_lists_values_with_counts_and_searches_like(world, monkeypatch, capsys):
    for key, value in {
        "CATSEARCH_OPENSEARCH_URL": world.settings.opensearch_url,
        "CATSEARCH_INDEX_ALIAS": world.settings.index_alias,
    }.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["search", "--list", "product-types"]) == 0
    out = capsys.readouterr().out.splitlines()
    counts = Counter(p.product_type for p in world.products)
    assert out[0].split() == ["product_type", "count"]
    assert {tuple(line.split()) for line in out[1:]} == {(k, str(v)) for k, v in counts.items()}
    assert cli.main(["search", "--list", "brands", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["brand"]: r["count"] for r in rows} == dict(Counter(p.brand for p in world.products))
    target = world.products[2]
    assert cli.main(["search", "--like", target.item_id, "-k", "3", "--json", "--product-type", "toy"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and all(h["product_type"] == "TOY" and h["item_id"] != target.item_id for h in hits)
    assert all(-1.0 <= h["similarity"] <= 1.0 for h in hits)
