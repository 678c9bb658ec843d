"""The build a run needs (nothing, the delta on a clone, or a full build), decided against the served
index's recorded fingerprint in a real bucket (moto); the clone and the delta's deletes on the real node."""

from __future__ import annotations

import dataclasses

import pytest

from catalogue_search import index, state
from catalogue_search.errors import PermanentError
from catalogue_search.ingest import RunPlan, delta
from catalogue_search_dev import testenv

BASE = "base-index"


def _fingerprint(settings, digests: dict[str, str], version: str = "v1") -> dict:
    return {
        "format": delta.FORMAT,
        "artifact_version": version,
        "mapping": delta.mapping_digest(settings),
        "prefix": "manifests/base-run/",
        "products": digests,
    }


@pytest.fixture
def served(settings, s3):
    """A plan building on BASE, whose fingerprint (100 products) is recorded."""
    plan = dataclasses.replace(RunPlan.for_run(settings, "run-2"), base_index=BASE)
    products = {f"B{i:09d}": f"digest-{i}" for i in range(100)}
    state.write_catalogue(s3, settings, plan.alias, BASE, _fingerprint(settings, products))
    return plan, products


def _decide(settings, s3, plan, current, full_rebuild=False):
    return delta._decide(settings, s3, plan, current, full_rebuild)


def test_nothing_changed_is_a_noop(settings, s3, served):
    plan, products = served
    decision, ids = _decide(settings, s3, plan, _fingerprint(settings, dict(products)))
    assert decision["mode"] == delta.NOOP and decision["reason"] == "nothing changed" and not ids
    assert decision["base_prefix"] == "manifests/base-run/"


def test_a_few_changed_products_are_an_incremental_build_with_their_ids(settings, s3, served):
    plan, products = served
    now = {**products, "B000000001": "new digest", "B999999999": "added"}
    del now["B000000002"]
    decision, ids = _decide(settings, s3, plan, _fingerprint(settings, now))
    assert decision["mode"] == delta.INCREMENTAL
    assert (decision["added"], decision["updated"], decision["removed"]) == (1, 1, 1)
    assert decision["change_percent"] == 3.0
    assert ids == {"upsert": ["B999999999", "B000000001"], "delete": ["B000000002"]}


@pytest.mark.parametrize(
    "case, reason",
    [
        ("param", "the full_rebuild Param"),
        ("artifact", "a new artifact version (v1 -> v2)"),
        ("mapping", "a new mapping"),
        ("large", "more than CATSEARCH_INCREMENTAL_MAX_CHANGE_PERCENT=20.0"),
        ("no base", "the alias serves no index yet"),
        ("no record", "has no recorded fingerprint"),
    ],
)
def test_a_full_build_when_more_than_products_changed(settings, s3, served, case, reason):
    plan, products = served
    current = _fingerprint(settings, dict(products))
    if case == "artifact":
        current["artifact_version"] = "v2"
    elif case == "mapping":
        current = _fingerprint(settings.replace(knn_m=settings.knn_m + 1), dict(products))
    elif case == "large":
        current["products"] = {**products, **{f"B{i:09d}": "changed" for i in range(21)}}  # 21% > 20%
    elif case == "no base":
        plan = dataclasses.replace(plan, base_index=None)
    elif case == "no record":
        plan = dataclasses.replace(plan, base_index="an-index-built-before-fingerprints")
    decision, ids = _decide(settings, s3, plan, current, full_rebuild=case == "param")
    assert decision["mode"] == delta.FULL and reason in decision["reason"] and not ids


def test_the_clone_holds_the_served_documents_and_leaves_the_source_as_it_was(opensearch_url):
    client = index.make_client(opensearch_url)
    source = f"test-clone-{testenv.unique_name_part()}"
    target = f"{source}-next"
    try:
        client.indices.create(index=source, body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
        for i in range(5):
            client.index(index=source, id=f"p{i}", body={"item_id": f"p{i}"})
        client.indices.refresh(index=source)
        seconds = index.clone_index(client, source, target)
        assert seconds >= 0
        assert client.count(index=target)["count"] == 5
        flat = client.indices.get_settings(index=target, flat_settings=True)[target]["settings"]
        assert flat["index.resize.source.name"] == source
        assert index.delete_documents(client, target, ["p1", "p2", "gone"]) == 2
        client.index(index=target, id="p9", body={"item_id": "p9"}, refresh=True)  # the clone takes writes
        assert client.count(index=target)["count"] == 4
        assert client.count(index=source)["count"] == 5  # the source kept its documents
        block = client.indices.get_settings(index=source, flat_settings=True)[source]["settings"]
        assert "index.blocks.write" not in block  # its block setting back as it was (none)
        with pytest.raises(PermanentError, match="exists"):
            index.clone_index(client, source, target)
    finally:
        client.indices.delete(index=f"{source}*", ignore_unavailable=True)
