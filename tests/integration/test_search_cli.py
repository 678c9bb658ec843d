"""The search CLI on the shared catalogue: what it prints, and its one-line errors against the real node."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from catalogue_search import cli, index


@pytest.fixture
def env(search_world, monkeypatch):
    """The environment `./dev search` would have for the shared catalogue."""
    s = search_world.settings
    for key, value in {
        "CATSEARCH_AWS_ENDPOINT_URL": s.aws_endpoint_url,
        "CATSEARCH_OPENSEARCH_URL": s.opensearch_url,
        "CATSEARCH_BUCKET": s.bucket,
        "CATSEARCH_INDEX_ALIAS": s.index_alias,
        "CATSEARCH_MODEL_NAME": s.model_name,
        "CATSEARCH_QUERY_ENCODER": "local",
    }.items():
        monkeypatch.setenv(key, value)
    return s


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_cli_lists_values_with_counts_and_searches_like(search_world, env, capsys):
    assert cli.main(["search", "--list", "product-types"]) == 0
    out = capsys.readouterr().out.splitlines()
    counts = Counter(p.product_type for p in search_world.products)
    assert out[0].split() == ["product_type", "count"]
    assert {tuple(line.split()) for line in out[1:]} == {(k, str(v)) for k, v in counts.items()}
    assert cli.main(["search", "--list", "brands", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["brand"]: r["count"] for r in rows} == dict(Counter(p.brand for p in search_world.products))
    target = search_world.products[2]
    assert cli.main(["search", "--like", target.item_id, "-k", "3", "--json", "--product-type", "toy"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and all(h["product_type"] == "TOY" and h["item_id"] != target.item_id for h in hits)
    assert all(-1.0 <= h["similarity"] <= 1.0 for h in hits)


def test_cli_modes_and_folding(env, capsys):
    # An exact title is first in BM25 and in the title vectors: first in hybrid, whatever the images say.
    assert cli.main(["search", "Stainless steel kettle 1.7 litre", "--hybrid", "--json", "-k", "2"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["item_id"] == "B0KETTLE02" and first["score"] >= 2 / 61
    assert cli.main(["search", "Fireman figure", "--mode", "name", "--fold", "--fold-threshold", "0.9999"]) == 0
    assert "+1 with the same image" in capsys.readouterr().out
    assert cli.main(["search", "zebra", "--hybrid", "--rank-constant", "0"]) == 1
    assert "rank_constant" in capsys.readouterr().err


def test_a_10000_character_hybrid_query_is_refused_in_plain_words(env, capsys):
    query = "red " * 2499 + "ball"  # 10,000 characters, 2,500 words
    assert cli.main(["search", query, "--hybrid"]) == 1
    err = _one_line_error(capsys)
    assert "the text query is 10,000 characters long; a query may have at most 1,000" in err
    assert "maxClauseCount" not in err and "OpenSearch" not in err


def test_the_alias_result_window_is_checked_before_the_query(search_world, env, capsys):
    os_client = index.make_client(search_world.settings.opensearch_url)
    small = f"{search_world.settings.index_alias}-window"
    os_client.indices.create(index=small, body={"settings": {"index": {"max_result_window": 50}}})
    try:
        assert cli.main(["search", "a dog", "-k", "40", "--offset", "20", "--alias", small]) == 1
        assert "at most 50" in _one_line_error(capsys)
    finally:
        os_client.indices.delete(index=small, ignore_unavailable=True)


def test_a_refused_query_is_one_line(search_world, env, capsys):
    """An index whose product_type is a text field: OpenSearch refuses the terms aggregation."""
    os_client = index.make_client(search_world.settings.opensearch_url)
    bad = f"{search_world.settings.index_alias}-text"
    os_client.indices.create(index=bad, body={"mappings": {"properties": {"product_type": {"type": "text"}}}})
    try:
        assert cli.main(["search", "--list", "product-types", "--alias", bad]) == 1
        assert _one_line_error(capsys).startswith("error: OpenSearch refused the query (HTTP 400")
    finally:
        os_client.indices.delete(index=bad, ignore_unavailable=True)


def test_missing_alias_names_the_dag(env, capsys):
    assert cli.main(["search", "a dog", "--alias", "no-such-alias-x"]) == 1
    assert "catalogue_ingest" in _one_line_error(capsys)
