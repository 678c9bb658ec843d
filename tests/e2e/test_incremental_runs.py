"""Runs that cost what changed, end to end (`airflow dags test`, tiny model, one alias of its own):

1. a full run publishes index A;
2. three products change (a title, a main image, a product type) and one is removed from the
   listings: the next run clones A, deletes the removed product, upserts the three, validates and
   publishes B; A is left as it was (rollback target);
3. a run with nothing changed builds nothing and leaves the alias on B.
"""

from __future__ import annotations

import json

import boto3
import pytest
from dag_runs import TINY, _all_ids, _dags_test, tiny_stack_env

from catalogue_search import index
from catalogue_search.contract import vectors_close
from catalogue_search_dev import demo, sample_catalogue


def _log(result) -> str:
    return result.stdout + result.stderr


class World:
    def __init__(self, env, settings, summary) -> None:
        self.env, self.settings, self.summary = env, settings, summary
        self.s3 = boto3.client("s3", **settings.boto3_kwargs())
        self.os = index.client_from_settings(settings)
        self.alias = settings.index_alias

    def run(self, conf: dict | None = None):
        result = _dags_test(self.env, json.dumps(conf or {}))
        errors = [line for line in _log(result).splitlines() if "Error" in line or "error" in line][-20:]
        assert result.returncode == 0, "\n".join(errors) + "\n" + result.stdout[-3000:]
        return result

    def target(self) -> str:
        return index.alias_targets(self.os, self.alias)[0]

    def indices(self) -> set[str]:
        return {i["index"] for i in index.indices_for_alias(self.os, self.alias)}

    def doc(self, name: str, item_id: str) -> dict:
        return self.os.get(index=name, id=item_id)["_source"]

    def edit_listings(self, shard: str, edit) -> None:
        rows = [r for r in edit(sample_catalogue.source_listings(self.s3, self.settings, shard)) if r is not None]
        sample_catalogue.put_source_listings(self.s3, self.settings, shard, rows)


@pytest.fixture(scope="module")
def world(moto_url, sagemaker_url, opensearch_url, aws_env):
    env, settings = tiny_stack_env("e2ei", moto_url, sagemaker_url, opensearch_url, aws_env)
    summary, _ = demo.prepare(settings, model_cfg_path=TINY)
    w = World(env, settings, summary)
    yield w
    for name in w.indices():
        w.os.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture(scope="module")
def run_a(world):
    world.run()
    return world.target()


@pytest.fixture(scope="module")
def changed(world, run_a):
    """Three products of shard 0 changed and one removed; the incremental run that follows."""
    clean = set(world.summary.clean_item_ids) - set(world.summary.duplicate)
    rows = []
    world.edit_listings("0", lambda r: rows.extend(r) or r)  # read shard 0 as it is
    picked = [r for r in rows if r["item_id"] in clean and r.get("product_type")][:5]
    renamed, reimaged, retyped, removed, donor = picked
    edits = {
        renamed["item_id"]: {"item_name": [{"language_tag": "en_US", "value": "A title changed between runs"}]},
        reimaged["item_id"]: {"main_image_id": donor["main_image_id"]},
        retyped["item_id"]: {"product_type": [{"value": "CHANGED_TYPE"}]},
    }
    world.edit_listings(
        "0",
        lambda rs: [None if r["item_id"] == removed["item_id"] else {**r, **edits.get(r["item_id"], {})} for r in rs],
    )
    before = {"a_count": world.os.count(index=run_a)["count"], "a_renamed": world.doc(run_a, renamed["item_id"])}
    result = world.run()
    return {
        "result": result,
        "index": world.target(),
        "renamed": renamed["item_id"],
        "reimaged": reimaged["item_id"],
        "retyped": retyped["item_id"],
        "removed": removed["item_id"],
        "donor": donor["item_id"],
        "before": before,
    }


def test_the_incremental_run_builds_from_the_served_index_and_holds_exactly_the_expected_documents(
    world, run_a, changed
):
    b = changed["index"]
    assert b != run_a
    log = _log(changed["result"])
    assert "build: incremental (only products changed): 0 added, 3 updated, 1 removed" in log
    # Built from A: OpenSearch records the clone's source, and the run's _meta names it.
    resize = world.os.indices.get_settings(index=b, name="index.resize.source.name", flat_settings=True)
    assert resize[b]["settings"]["index.resize.source.name"] == run_a
    assert index.alias_targets(world.os, world.alias) == [b]
    meta = world.os.indices.get_mapping(index=b)[b]["mappings"]["_meta"]
    assert (
        meta["built_from"] == run_a
        and meta["run"] != world.os.indices.get_mapping(index=run_a)[run_a]["mappings"]["_meta"]["run"]
    )
    assert "documents loaded: 3 / 3" in log  # only the changed products were indexed again
    assert _all_ids(world.os, b) == set(world.summary.clean_item_ids) - {changed["removed"]}
    assert world.doc(b, changed["renamed"])["item_name"] == "A title changed between runs"
    assert world.doc(b, changed["retyped"])["product_type"] == "CHANGED_TYPE"
    reimaged, donor = world.doc(b, changed["reimaged"]), world.doc(b, changed["donor"])
    assert reimaged["image_id"] == donor["image_id"]
    assert vectors_close(reimaged[index.VECTOR_FIELD], donor[index.VECTOR_FIELD])
    # An unchanged product holds the same document as in A (carried over by the clone).
    touched = {changed[k] for k in ("renamed", "reimaged", "retyped", "removed", "donor")}
    same = next(i for i in sorted(world.summary.clean_item_ids) if i not in touched)
    assert world.doc(b, same) == world.doc(run_a, same)


def test_the_served_index_was_left_as_it_was_for_rollback(world, run_a, changed):
    assert world.os.count(index=run_a)["count"] == changed["before"]["a_count"]
    assert world.doc(run_a, changed["renamed"]) == changed["before"]["a_renamed"]
    assert world.os.exists(index=run_a, id=changed["removed"])
    block = world.os.indices.get_settings(index=run_a, name="index.blocks.write", flat_settings=True)
    assert block.get(run_a, {}).get("settings", {}).get("index.blocks.write") in (None, "false")
    assert world.indices() == {run_a, changed["index"]}  # retention 1: A is the rollback target


def test_the_duplicate_report_checks_only_the_changed_images(world, changed):
    keys = [
        o["Key"]
        for o in world.s3.list_objects_v2(Bucket=world.settings.bucket, Prefix=world.settings.manifests_prefix)[
            "Contents"
        ]
        if o["Key"].endswith("duplicates.json")
    ]
    reports = [json.loads(world.s3.get_object(Bucket=world.settings.bucket, Key=k)["Body"].read()) for k in keys]
    incremental = [r for r in reports if r["method"] == "index"]
    assert len(incremental) == 1, [(r["method"], r["checked_images"]) for r in reports]
    report = incremental[0]
    assert 1 <= report["checked_images"] <= 3 and report["reused_pairs"] > 0
    assert report["counts"]["products"] == len(world.summary.clean_item_ids) - 1
    groups = [set(g["item_ids"]) for g in report["groups"]]
    assert any({changed["reimaged"], changed["donor"]} <= g for g in groups)  # they now share an image


@pytest.fixture(scope="module")
def unchanged(world, changed):
    before = world.indices()
    return world.run(), before


def test_a_run_with_nothing_changed_leaves_the_alias_on_the_same_index(world, changed, unchanged):
    result, before = unchanged
    log = _log(result)
    assert f"nothing changed since {changed['index']}" in log and "nothing is published" in log
    assert world.target() == changed["index"]
    assert world.indices() == before
    assert "choose_build" in log and "documents loaded" not in log
