"""The catalogue across runs, end to end: `airflow dags test` runs in sequence on one alias.

One module-scoped sequence (each run costs minutes, most of it Airflow), in
file order, each step a fixture that builds on the one before:

0. a misspelt conf key fails the run at its first task, on the first try;
1. a full run publishes index A (every clean product): its log names what was dropped and why, its
   transform tasks deferred, its titles and images find their products; a second run with nothing
   changed encodes nothing, builds no index and leaves the alias where it was; a run whose transform
   job fails (another bucket and alias) fails the task with the job's reason;
2. shard 0's listing changes (a product added, one renamed, one removed), and a
   backfill of shard 0 on the default alias publishes B: the whole catalogue,
   with shard 0's changes, built incrementally from a clone of A;
3. re-running B's finished `load_index` leaves the served index as it was;
4. a full run whose index would be half the size is refused by the shrink guard;
5. a run that fails validation leaves no index behind;
6. a full rebuild (`full_rebuild`) publishes E; B, served before the two failed runs, is kept (retention 1);
7. the rollback DAG moves the alias back to B;
8. the search smoke test (the index Asset's consumer) passes on the alias.

Each publish and the rollback record one event of the alias's index Asset,
naming the index the alias then serves; the refused and failed runs none.
A private source bucket (the listing files are edited), project bucket, alias
and AIRFLOW_HOME; everything is removed at the end.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import datetime

import boto3
import pytest
from dag_runs import TINY, _all_ids, _dags_test

from catalogue_search import index, state
from catalogue_search.s3util import parse_s3_uri
from catalogue_search.search import LocalEncoder, SearchClient
from catalogue_search.settings import Settings
from catalogue_search_dev import demo, prefork, sample_catalogue, testenv


def _log(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def _tail(result: subprocess.CompletedProcess) -> str:
    return testenv.run_failure(result)


def _settings_of(client, name: str) -> dict:
    found = client.indices.get_settings(index=name)[name]["settings"]["index"]
    return {k: found.get(k) for k in ("refresh_interval", "number_of_replicas", "uuid", "creation_date")}


class World:
    """The module's stack: names, clients, and helpers to edit the source listings."""

    def __init__(self, env: dict[str, str], settings: Settings, summary, logs) -> None:
        import boto3

        self.env, self.settings, self.summary, self.logs = env, settings, summary, logs
        self.runs = 0
        self.alias = settings.index_alias
        self.s3 = boto3.client("s3", **settings.boto3_kwargs())
        self.os = index.client_from_settings(settings)

    def run(self, conf: dict | None = None, **env: str) -> subprocess.CompletedProcess:
        result = _dags_test({**self.env, **env}, json.dumps(conf or {}))
        self.runs += 1
        (self.logs / f"run-{self.runs}.log").write_text(_log(result))  # kept by pytest's tmp_path retention
        return result

    def target(self) -> str:
        return index.alias_targets(self.os, self.alias)[0]

    def count(self) -> int:
        return self.os.count(index=self.alias)["count"]

    def names(self) -> dict[str, str]:
        resp = self.os.search(
            index=self.alias, body={"size": 10000, "_source": ["item_name"], "query": {"match_all": {}}}
        )
        return {h["_id"]: h["_source"]["item_name"] for h in resp["hits"]["hits"]}

    def indices(self) -> set[str]:
        return {i["index"] for i in index.indices_for_alias(self.os, self.alias)}

    def _db(self, query: str) -> list[tuple]:
        db = sqlite3.connect(self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()

    def asset_events(self) -> list[dict]:
        """Every asset event in this sequence's Airflow DB, oldest first."""
        rows = self._db(
            "SELECT a.name, a.uri, e.extra, e.source_dag_id, e.source_task_id "
            "FROM asset_event e JOIN asset a ON a.id = e.asset_id ORDER BY e.id"
        )
        keys = ("name", "uri", "extra", "dag_id", "task_id")
        return [dict(zip(keys, (*row[:2], json.loads(row[2]), *row[3:]))) for row in rows]

    def queued_consumers(self) -> set[str]:
        """The DAGs the scheduler would start for the alias's index Asset (asset_dag_run_queue)."""
        rows = self._db(
            "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id "
            f"WHERE a.name = 'catalogue-search-index/{self.alias}'"
        )
        return {row[0] for row in rows}

    def listings(self, shard: str) -> list[dict]:
        return sample_catalogue.source_listings(self.s3, self.settings, shard)

    def put_listings(self, shard: str, rows: list[dict]) -> None:
        sample_catalogue.put_source_listings(self.s3, self.settings, shard, rows)


def _empty_bucket(s3, bucket: str) -> None:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
    except Exception:
        pass


@pytest.fixture(scope="module")
def world(moto_url, sagemaker_url, opensearch_url, aws_env, tmp_path_factory):
    token = testenv.unique_name_part()  # the session's sweep removes whatever a failure leaves behind
    # A private AIRFLOW_HOME for this sequence of runs (a migrated, empty DB).
    home = testenv.fresh_airflow_home(tmp_path_factory.mktemp("airflow"))
    env = {
        **testenv.airflow_home_env(home),
        "CATSEARCH_BUCKET": f"e2e9-project-{token}",
        "CATSEARCH_SOURCE_BUCKET": f"e2e9-source-{token}",
        "CATSEARCH_INDEX_ALIAS": f"e2e9-products-{token}",
        "CATSEARCH_ENDPOINT_PREFIX": f"e2e9-{token}",
        "CATSEARCH_INDEX_RETENTION": "1",
        "CATSEARCH_SHRINK_GUARD_PERCENT": "10",
        "CATSEARCH_MODEL_NAME": "tiny-clip",
        "CATSEARCH_MODEL_PRETRAINED": "",
        "CATSEARCH_ALLOW_RANDOM_WEIGHTS": "true",
        "CATSEARCH_QUALITY_SAMPLE": "200",
        "CATSEARCH_AWS_ENDPOINT_URL": moto_url,
        "CATSEARCH_OPENSEARCH_URL": opensearch_url,
    }
    # this checkout's SageMaker server (runtime and transform jobs), as the ingest e2e test uses
    env.update(aws_env(Settings.from_env(aws_endpoint_url=moto_url, sagemaker_endpoint_url=sagemaker_url)))
    settings = Settings.from_env({**os.environ, **env})
    summary, _ = demo.prepare(settings, model_cfg_path=TINY)
    w = World(env, settings, summary, tmp_path_factory.mktemp("dag-runs"))
    yield w
    for name in w.indices():
        w.os.indices.delete(index=name, ignore_unavailable=True)
    _empty_bucket(w.s3, settings.bucket)
    _empty_bucket(w.s3, settings.source_bucket)


# --- 0. an unknown conf key ---------------------------------------------------


@pytest.fixture(scope="module")
def misspelt(world):
    return world.run({"shard": ["0"]})


def test_an_unknown_conf_key_fails_the_first_task_on_its_first_try(world, misspelt):
    log = _log(misspelt)
    assert misspelt.returncode != 0
    assert "unknown conf key(s) 'shard'" in log
    valid = "alias, allow_quality_drop, allow_shrink, force_reencode, full_rebuild, language_tag, max_products, shards"
    assert f"valid Params are {valid}" in log
    assert "new_state=failed" in log and "up_for_retry" not in log.lower()  # AirflowFailException: no second try
    assert "listings, kept" not in log  # no shard was filtered: the run stopped at `plan`
    assert not world.indices()


# --- 1. a full run ------------------------------------------------------------


@pytest.fixture(scope="module")
def run_a(world, misspelt):
    result = world.run()
    assert result.returncode == 0, _tail(result)
    world.first_run = result
    return world.target()


def test_a_full_run_publishes_every_clean_product_and_records_its_state(world, run_a):
    assert _all_ids(world.os, world.alias) == set(world.summary.clean_item_ids)
    record = state.read_manifest(world.s3, world.settings, world.alias, run_a)
    assert record["shards"].keys() == {"0", "1"} and record["language_tag"] == "en_US"
    assert state.served(world.s3, world.settings, world.alias) == [run_a]


def test_the_publish_records_an_event_of_the_alias_asset_naming_the_index_it_serves(world, run_a):
    """The event names the alias the run published and the index it points at; no host in the URI."""
    events = world.asset_events()
    assert len(events) == 1  # the misspelt run published nothing
    event = events[0]
    assert event["name"] == f"catalogue-search-index/{world.alias}"
    assert event["uri"] == f"x-catalogue-search://index/{world.alias}"
    assert event["extra"]["alias"] == world.alias and event["extra"]["action"] == "publish"
    assert event["extra"]["index"] == run_a == world.target()
    assert (event["dag_id"], event["task_id"]) == ("catalogue_ingest", "swap_alias")
    assert "catalogue_smoke_test" in world.queued_consumers()  # the scheduler would run its consumer


# --- 1b. the same full run, seen from its log, its jobs and its index; a run with nothing changed; a run
# whose transform job fails (another bucket and alias) ---------------------------------------------------


@pytest.fixture(scope="module")
def stack_env(world, run_a):
    return world.env, world.settings, world.summary


@pytest.fixture(scope="module")
def first_run(world, run_a):
    return world.first_run


def test_indexes_every_clean_product_and_none_of_the_dirty_ones(stack_env, first_run):
    _, settings, summary = stack_env
    client = index.client_from_settings(settings)
    assert client.indices.exists_alias(name=settings.index_alias)
    ids = _all_ids(client, settings.index_alias)
    assert len(ids) == len(summary.clean_item_ids) == 773
    assert ids == set(summary.clean_item_ids)
    assert not ids & set(summary.excluded_item_ids)


def test_the_transform_task_deferred_and_the_local_data_plane_wrote_the_outputs(first_run, stack_env):
    _, settings, _ = stack_env
    log = first_run.stdout + first_run.stderr
    assert "running trigger in line" in log  # encode_images deferred; dags test ran its trigger
    assert re.search(r"SageMaker job catsearch-encode-\S+ completed", log)
    import boto3

    sagemaker = boto3.client("sagemaker", **settings.boto3_kwargs("sagemaker"))
    jobs = sagemaker.list_transform_jobs(NameContains="catsearch-encode")["TransformJobSummaries"]
    ours = [j for j in jobs if j["TransformJobName"] in log]
    assert [j["TransformJobStatus"] for j in ours] == ["Completed", "Completed"]  # images, titles


def test_logs_name_what_was_dropped_and_why(first_run, stack_env):
    _, _, summary = stack_env
    log = first_run.stdout + first_run.stderr
    assert "no_title_in_language" in log
    assert summary.image_missing_from_bucket[0] in log  # the missing source image is named
    assert "could not be encoded" in log  # the corrupt JPEG
    assert "documents loaded: 773 / 773" in log


def test_the_run_logs_no_noise(first_run):
    """Pools sized to the worker threads, no 4-character connection extra to mask, graphviz installed."""
    log = first_run.stdout + first_run.stderr
    for noise in ("Connection pool is full", "too short (<", "Could not import graphviz"):
        assert noise not in log, f"{noise!r} in the log"


def test_an_image_finds_its_own_product_first(stack_env, first_run):
    _, settings, summary = stack_env
    import boto3

    s3 = boto3.client("s3", **settings.boto3_kwargs())
    client = SearchClient(settings)
    for item_id in summary.clean_item_ids[:3]:
        doc = client.client.get(index=settings.index_alias, id=item_id)["_source"]
        image = s3.get_object(Bucket=settings.bucket, Key=settings.images_prefix + doc["image_path"])["Body"].read()
        hits = client.search_image(image, 5)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert item_id in {h.item_id for h in hits if h.score >= 0.9999}
        assert all("embedding" not in h.as_dict() for h in hits)


def test_second_run_with_nothing_changed_publishes_nothing_and_leaves_the_alias(stack_env, first_run):
    env, settings, summary = stack_env
    client = index.client_from_settings(settings)
    before_index = list(client.indices.get_alias(name=settings.index_alias))
    before_indices = {i["index"] for i in index.indices_for_alias(client, settings.index_alias)}
    result = _dags_test(env)
    assert result.returncode == 0, testenv.run_failure(result)
    log = result.stdout + result.stderr
    assert "nothing new to encode" in log
    assert f"nothing changed since {before_index[0]}" in log and "nothing is published" in log
    assert "documents loaded" not in log  # no index was built
    assert list(client.indices.get_alias(name=settings.index_alias)) == before_index  # the alias did not move
    assert {i["index"] for i in index.indices_for_alias(client, settings.index_alias)} == before_indices
    assert _all_ids(client, settings.index_alias) == set(summary.clean_item_ids)


def test_every_title_is_encoded_and_finds_its_product(stack_env, first_run):
    _, settings, summary = stack_env
    client = index.client_from_settings(settings)
    with_titles = client.count(
        index=settings.index_alias, body={"query": {"exists": {"field": index.NAME_VECTOR_FIELD}}}
    )["count"]
    assert with_titles == len(summary.clean_item_ids)
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    searcher = SearchClient(settings, encoder=LocalEncoder(settings, s3_client=s3))
    for item_id in summary.clean_item_ids[:3]:
        title = client.get(index=settings.index_alias, id=item_id)["_source"]["item_name"]
        hits = searcher.search_text(title, 5, mode="name")
        assert item_id in {h.item_id for h in hits if h.score >= 0.9999}, (title, hits)
        assert item_id in {h.item_id for h in searcher.search_text(title, 5, mode="hybrid")}


def test_the_duplicate_report_lists_the_products_that_share_a_picture(stack_env, first_run):
    from catalogue_search_dev import sample_index

    _, settings, _ = stack_env
    layout = sample_index.layout_dir()
    identical = sample_index.identical_image_groups(layout, sample_index.sample_products(layout))
    assert identical
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=settings.bucket, Prefix=settings.manifests_prefix).get("Contents", [])
        if o["Key"].endswith("duplicates.json")
    ]
    assert keys
    report = json.loads(s3.get_object(Bucket=settings.bucket, Key=sorted(keys)[0])["Body"].read())
    listed = [set(g["item_ids"]) for g in report["groups"]]
    for group in identical:
        assert any(set(group) <= found for found in listed), (group, report["counts"])
    assert "near-duplicates:" in first_run.stdout + first_run.stderr


def test_a_failed_transform_job_fails_the_task_with_its_reason(stack_env, tmp_path, make_handler_artifact):
    """The artifact's handler cannot load its weights: the job is Failed, encode_images fails with the
    FailureReason, nothing is published."""
    import boto3

    env, settings, _ = stack_env
    broken = {
        **env,
        "CATSEARCH_BUCKET": f"{settings.bucket}-noart",
        "CATSEARCH_INDEX_ALIAS": f"{settings.index_alias}-noart",
        "CATSEARCH_TASK_RETRIES": "0",
    }
    # the catalogue is in the source bucket; the project bucket holds an artifact (with a version,
    # as model_artifact uploads it) whose own handler raises while loading
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    s3.create_bucket(Bucket=broken["CATSEARCH_BUCKET"])
    crashing = make_handler_artifact(
        tmp_path / "model.tar.gz",
        """
        def model_fn(model_dir):
            raise RuntimeError("the weights are corrupt")

        def transform_fn(model, body, content_type, accept):
            raise RuntimeError("unreachable")
        """,
    )
    bucket, key = parse_s3_uri(Settings.from_env({**os.environ, **broken}).artifact_uri)
    s3.upload_file(str(crashing), bucket, key, ExtraArgs={"Metadata": {"artifact-version": "crashing0000"}})

    result = _dags_test(broken)

    log = result.stdout + result.stderr
    assert result.returncode != 0
    failure = [line for line in log.splitlines() if line.startswith("RuntimeError: Error while running transform job")]
    assert failure, log[-5000:]
    assert "'status': 'failed'" in failure[0], failure
    assert "the weights are corrupt" in failure[0], failure
    client = index.client_from_settings(settings)
    assert not client.indices.exists_alias(name=broken["CATSEARCH_INDEX_ALIAS"])  # nothing was published
    # The failure reaches the downstream tasks one level per check of `dags test`, which the fork server
    # makes 0.1 s apart instead of 1 s (prefork.IDLE_POLL_S)
    checks = [line.split()[0] for line in log.splitlines() if "No tasks to run" in line]
    assert len(checks) >= 3, log[-3000:]
    stamps = [datetime.fromisoformat(check.rstrip("Z")) for check in checks]
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(stamps, stamps[1:])]
    assert max(gaps) < (0.6 if prefork.enabled() else 1.6), gaps


# --- 2. a backfill of shard 0 on the default alias ------------------------------


@pytest.fixture(scope="module")
def backfill(world, run_a):
    clean = set(world.summary.clean_item_ids) - set(world.summary.duplicate) - set(world.summary.multiple_en_us_titles)
    rows = world.listings("0")
    candidates = [r for r in rows if r["item_id"] in clean]
    removed, renamed, donor = candidates[0], candidates[1], candidates[2]
    added = {
        **donor,
        "item_id": "B9ADDED000",
        # Shares its main image with `donor`: both score 1.0 for that image.
        "item_name": [{"language_tag": "en_US", "value": "A product added between runs"}],
    }
    new_rows = []
    for row in rows:
        if row["item_id"] == removed["item_id"]:
            continue
        if row["item_id"] == renamed["item_id"]:
            row = {**row, "item_name": [{"language_tag": "en_US", "value": "A product renamed between runs"}]}
        new_rows.append(row)
    world.put_listings("0", new_rows + [added])
    result = world.run({"shards": ["0"]})
    assert result.returncode == 0, _tail(result)
    return {
        "result": result,
        "index": world.target(),
        "removed": removed["item_id"],
        "renamed": renamed["item_id"],
        "added": added["item_id"],
        "shared_with": donor["item_id"],
    }


def test_a_backfill_of_one_shard_publishes_the_whole_catalogue_with_its_changes(world, run_a, backfill):
    expected = set(world.summary.clean_item_ids) - {backfill["removed"]} | {backfill["added"]}
    assert backfill["index"] != run_a
    assert world.count() == len(world.summary.clean_item_ids)  # one added, one removed
    names = world.names()
    assert set(names) == expected
    assert names[backfill["renamed"]] == "A product renamed between runs"
    assert names[backfill["added"]] == "A product added between runs"
    log = _log(backfill["result"])
    assert "keeps shards 1 as published" in log
    assert "build: incremental (only products changed): 1 added, 1 updated, 1 removed" in log
    assert world.os.indices.exists(index=run_a)  # the previous served index, for rollback


def test_products_sharing_an_image_both_find_it(world, backfill):
    from catalogue_search.search import SearchClient

    doc = world.os.get(index=world.alias, id=backfill["shared_with"])["_source"]
    key = world.settings.images_prefix + doc["image_path"]
    image = world.s3.get_object(Bucket=world.settings.bucket, Key=key)["Body"].read()
    hits = SearchClient(world.settings).search_image(image, 5)
    perfect = {h.item_id for h in hits if h.score >= 0.9999}
    assert {backfill["shared_with"], backfill["added"]} <= perfect


# --- 3. re-running a finished run's load_index ----------------------------------


@pytest.fixture(scope="module")
def rerun_load(world, backfill):
    served = backfill["index"]
    before = (world.os.count(index=served)["count"], _settings_of(world.os, served))
    run_id = world.os.indices.get_mapping(index=served)[served]["mappings"]["_meta"]["run"].split("/", 1)[1]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow",
            "tasks",
            "test",
            "catalogue_ingest",
            "load_index",
            run_id,
            "--map-index",
            "0",
        ],
        env={**os.environ, **world.env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    after = (world.os.count(index=served)["count"], _settings_of(world.os, served))
    return result, before, after


def test_rerunning_load_index_of_a_finished_run_leaves_the_served_index_unchanged(world, backfill, rerun_load):
    result, before, after = rerun_load
    assert result.returncode == 0, _tail(result)
    assert "left unchanged, nothing loaded" in _log(result)
    assert after == before
    assert before[1]["refresh_interval"] != "-1"
    assert world.target() == backfill["index"]


# --- 4. the shrink guard ----------------------------------------------------------


@pytest.fixture(scope="module")
def shrink(world, rerun_load, backfill):
    original = world.listings("1")
    world.put_listings("1", [])  # shard 1 loses every product: about half the catalogue
    before = world.indices()
    try:
        result = world.run()
    finally:
        world.put_listings("1", original)
    return result, before


def test_a_run_that_would_halve_the_catalogue_is_refused(world, backfill, shrink):
    result, before = shrink
    assert result.returncode != 0
    log = _log(result)
    assert "shrink guard" in log and 'trigger the run again with {"allow_shrink": true}' in log
    assert world.target() == backfill["index"]
    assert world.count() == len(world.summary.clean_item_ids)
    assert world.indices() == before  # the refused run's index was cleaned up


# --- 5. a run that fails validation --------------------------------------------------


@pytest.fixture(scope="module")
def invalid(world, shrink):
    before = world.indices()
    # An impossible recall floor: validation fails like it would on a broken index (a full build:
    # the catalogue is B's, so without the Param the run would build and publish nothing).
    return world.run({"full_rebuild": True}, CATSEARCH_MIN_RECALL_PERCENT="101"), before


def test_a_run_that_fails_validation_leaves_no_index_behind(world, backfill, invalid):
    result, before = invalid
    assert result.returncode != 0
    assert "below the minimum" in _log(result)
    assert "up_for_retry" not in _log(result).lower()
    assert world.indices() == before
    assert world.target() == backfill["index"]


# --- 6. the served index survives the failed runs ------------------------------------


@pytest.fixture(scope="module")
def run_e(world, invalid):
    result = world.run({"full_rebuild": True})
    assert result.returncode == 0, _tail(result)
    return world.target()


def test_the_previous_served_index_survives_failed_runs_with_retention_1(world, run_a, backfill, run_e):
    assert run_e != backfill["index"]
    # B served before the refused and the failed run; with retention 1 it is E's rollback target.
    assert world.indices() == {run_e, backfill["index"]}
    assert not world.os.indices.exists(index=run_a)
    assert state.served(world.s3, world.settings, world.alias) == [backfill["index"], run_e]


# --- 7. rollback ------------------------------------------------------------------


@pytest.fixture(scope="module")
def rollback(world, backfill, run_e):
    result = _dags_test(world.env, "{}", dag_id="catalogue_rollback")
    assert result.returncode == 0, _tail(result)
    return result


def test_the_rollback_dag_returns_the_alias_to_the_previous_served_index(world, backfill, rollback):
    assert world.target() == backfill["index"]
    assert world.count() == len(world.summary.clean_item_ids)
    assert state.served(world.s3, world.settings, world.alias) == [backfill["index"]]


def test_each_move_of_the_alias_and_only_those_recorded_an_event_naming_the_index(
    world, run_a, backfill, run_e, rollback
):
    """Three publishes (A, B, E) and the rollback to B; the refused and the failed run announce nothing."""
    moves = [(e["extra"]["action"], e["extra"]["index"]) for e in world.asset_events()]
    assert moves == [
        ("publish", run_a),
        ("publish", backfill["index"]),
        ("publish", run_e),
        ("rollback", backfill["index"]),
    ]
    last = world.asset_events()[-1]
    assert last["extra"]["index"] == world.target() and last["extra"]["previous"] == run_e
    assert (last["dag_id"], last["task_id"]) == ("catalogue_rollback", "roll_back")
    assert {e["name"] for e in world.asset_events()} == {f"catalogue-search-index/{world.alias}"}


# --- 8. the index Asset's consumer ---------------------------------------------------


def test_the_search_smoke_test_finds_a_product_of_the_served_index(world, backfill, rollback):
    result = _dags_test(world.env, json.dumps({"alias": world.alias}), dag_id="catalogue_smoke_test")
    assert result.returncode == 0, _tail(result)
    assert f"search smoke test on {world.alias} ({backfill['index']})" in _log(result)
    assert "found by its image and its title" in _log(result)
