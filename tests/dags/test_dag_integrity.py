"""DAG integrity: every DAG file imports cleanly, fast, and follows the house rules.

Parametrized per DAG file and per DAG (as the Astro project template's
`test_dag_example.py` does), so a failure names its DAG in the test id.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY_MODULES = ["torch", "open_clip", "pandas", "torchvision", "sagemaker", "PIL", "opensearchpy", "numpy"]


@functools.cache
def dagbag():
    """The DagBag of dags/, loaded once (at collection, so each DAG can be a test parameter)."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def import_errors() -> dict[str, str]:
    return {Path(path).name: str(error).strip() for path, error in dagbag().import_errors.items()}


DAG_IDS = sorted(dagbag().dag_ids)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_imports_without_errors(dag_file):
    error = import_errors().get(dag_file.name)
    assert error is None, f"{dag_file.name} failed to import:\n{error}"


def test_the_dags_folder_holds_the_expected_dags():
    assert import_errors() == {}, import_errors()  # also files that are not in DAG_FILES
    assert {
        "catalogue_finetune",
        "catalogue_ingest",
        "catalogue_rollback",
        "catalogue_smoke_test",
        "query_endpoints_deploy",
        "query_endpoints_teardown",
    } <= set(DAG_IDS)


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_has_tags_and_docs(dag_id):
    dag = dagbag().dags[dag_id]
    assert dag.tags, f"{dag_id} has no tags"
    assert dag.doc_md, f"{dag_id} has no doc_md"


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_tasks_have_an_owner_and_retries(dag_id):
    dag = dagbag().dags[dag_id]
    for t in dag.tasks:
        assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"
        assert t.retries >= 2, f"{dag_id}.{t.task_id} retries={t.retries}"


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_and_every_task_have_a_time_limit(dag_id):
    """A hung call cannot hold a worker slot (or the DAG's only active run) forever."""
    dag = dagbag().dags[dag_id]
    assert dag.dagrun_timeout, f"{dag_id} has no dagrun_timeout"
    for t in dag.tasks:
        assert t.execution_timeout, f"{dag_id}.{t.task_id} has no execution_timeout"
        assert t.execution_timeout <= dag.dagrun_timeout, f"{dag_id}.{t.task_id} may outlive its run"


def test_each_task_has_the_time_limit_of_its_kind_of_work():
    """Each `CATSEARCH_<KIND>_TIMEOUT_S` reaches the tasks of its kind (a DagBag with every limit different)."""
    from catalogue_search.settings import TIMEOUTS

    limits = {f"CATSEARCH_{name.upper()}": str(100 + n) for n, name in enumerate(TIMEOUTS)}
    probe = f"""
import json
from airflow.dag_processing.dagbag import DagBag
dags = DagBag(dag_folder={str(REPO / "dags")!r}).dags
print(json.dumps({{d: [dags[d].dagrun_timeout.total_seconds(), {{t.task_id: t.execution_timeout.total_seconds()
    for t in dags[d].tasks}}] for d in dags}}))
"""
    env = {**os.environ, **limits}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    seconds = {name.removesuffix("_timeout_s"): 100 + n for n, name in enumerate(TIMEOUTS)}
    ingest_run, ingest = found["catalogue_ingest"]
    assert ingest_run == seconds["ingest_dagrun"]
    expected = {
        "plan": "task",
        "shards_of": "task",
        "filter_shard": "filter",
        "parts_of": "task",
        "copy_images": "copy",
        "record_copies": "task",
        "prepare_encoding": "task",
        "encode_images": "transform",
        "encode_names": "transform",
        "choose_build": "load",
        "load_index": "load",
        "finish_index": "load",
        "validate_index": "validate",
        "report_duplicates": "validate",
        "swap_alias": "task",
        "clean_up": "task",
    }
    assert {t: ingest[t] for t in expected} == {t: seconds[kind] for t, kind in expected.items()}
    for dag_id in ("catalogue_rollback", "catalogue_smoke_test", "query_endpoints_deploy", "query_endpoints_teardown"):
        assert found[dag_id][0] == seconds["dagrun"], dag_id
    assert found["catalogue_smoke_test"][1] == {"check_search": seconds["validate"]}
    finetune_run, finetune = found["catalogue_finetune"]
    assert finetune_run == seconds["finetune_dagrun"] and finetune["train_model"] == seconds["training"]
    assert finetune["evaluate_models"] == seconds["validate"] and finetune["export_pairs"] == seconds["task"]
    assert set(found["query_endpoints_deploy"][1].values()) == {seconds["task"]}


def test_every_python_task_runs_through_the_one_task_body():
    """Settings, clients, plan and fail-fast come from `airflow_tasks.catalogue_task`, in every DAG."""
    for dag_id in DAG_IDS:
        for t in dagbag().dags[dag_id].tasks:
            if "Decorated" in t.task_type:  # @task, @task.short_circuit, mapped or not
                body = t.python_callable
                assert body.__code__.co_filename.endswith("airflow_tasks.py"), f"{dag_id}.{t.task_id}: its own body"
            else:
                assert type(t).__module__.startswith("airflow.providers."), f"{dag_id}.{t.task_id}: {t.task_type}"


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_has_no_cycles(dag_id):
    dagbag().dags[dag_id].check_cycle()  # raises on a cycle


def test_ingest_dag_shape():
    from airflow.sdk import AssetAlias

    dag = dagbag().dags["catalogue_ingest"]
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert set(dag.params.keys()) >= {
        "shards",
        "language_tag",
        "max_products",
        "alias",
        "force_reencode",
        "allow_shrink",
        "allow_quality_drop",
        "full_rebuild",
    }
    encode = dag.get_task("encode_images")
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTransformOperator

    assert isinstance(encode, SageMakerTransformOperator)
    from catalogue_search.settings import Settings

    assert encode.check_interval == Settings.from_env().transform_poll_seconds  # 2 s locally, not 30
    # Deferred while SageMaker works (no worker held for hours), polled long enough for the longest job.
    assert encode.deferrable is True and encode.wait_for_completion is True
    assert encode.max_attempts * encode.check_interval >= encode.max_ingestion_time
    order = [
        "filter_shard",
        "copy_images",
        "record_copies",
        "prepare_encoding",
        "encode_images",
        "record_embeddings",
        "choose_build",
        "load_index",
        "finish_index",
        "validate_index",
        "evaluate_index",
        "swap_alias",
    ]
    for up, down in zip(order, order[1:]):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} -> {down} missing"
    # The asset alias: each event names the concrete asset of the alias the run moved.
    assert dag.get_task("swap_alias").outlets == [AssetAlias("catalogue-search-index")]
    # The copy and the load are mapped over the plan's parts (several workers share them); their
    # record steps are single tasks.
    for mapped in ("copy_images", "load_index"):
        assert dag.get_task(mapped).is_mapped, mapped
    for single in ("record_copies", "finish_index", "validate_index", "swap_alias"):
        assert not dag.get_task(single).is_mapped, single
    # A start date in the past: once unpaused, a scheduler runs the latest weekly slot at once (tests/cluster),
    # and only that one (no catch-up). The schedule is the weekly cron beside the model Asset.
    from datetime import datetime, timedelta, timezone

    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    assert dag.start_date is not None and dag.start_date < datetime.now(timezone.utc) - timedelta(days=7)
    timetable = decode_timetable(encode_timetable(dag.timetable))  # as the scheduler reads it
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(dag.start_date, None, catchup=dag.catchup)
    )
    assert not dag.catchup and first is not None
    assert timedelta(0) <= datetime.now(timezone.utc) - first.run_after <= timedelta(days=7), first
    # runs when the encode step was skipped (nothing new): it still writes the run report
    assert dag.get_task("record_embeddings").trigger_rule == "none_failed"
    # A run with nothing new stops at choose_build: no index, no publish (the clean-up still runs).
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    chooser = dag.get_task("choose_build")
    assert isinstance(chooser, ShortCircuitOperator) and chooser.trigger_rule == "none_failed"
    assert {"record_embeddings", "record_name_embeddings"} <= chooser.upstream_task_ids
    # The clean-up runs whatever happened (a teardown: ALL_DONE semantics) and never decides the run's state.
    clean_up = dag.get_task("clean_up")
    assert clean_up.is_teardown and "clean_up" in dag.get_task("swap_alias").downstream_task_ids
    assert str(clean_up.trigger_rule) in {"all_done_setup_success", "TriggerRule.ALL_DONE_SETUP_SUCCESS"}


# One interpreter loads Airflow and the provider once (as the DAG processor has them), then forks a
# child per DAG file, so each file is imported and measured on its own without paying for Airflow again.
IMPORT_PROBE = """
import importlib.util, json, os, sys, time
import airflow.sdk
from airflow.providers.amazon.aws.operators import sagemaker as _warm  # provider import is shared by all DAG files
for path in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:
        before = set(sys.modules)
        start = time.process_time()  # CPU seconds: what parsing costs the DAG processor, whatever the load
        spec = importlib.util.spec_from_file_location("dag_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        elapsed = time.process_time() - start
        heavy = sorted(m for m in HEAVY if m in sys.modules and m not in before)
        os.write(write, json.dumps({"seconds": elapsed, "heavy": heavy}).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        text = answer.read()
    _, status = os.wait()
    print(json.dumps({"file": os.path.basename(path), "status": status, "result": text}))
"""


@functools.cache
def import_probe() -> dict[str, dict]:
    """Per DAG file: its import time and the heavy modules it loaded, each measured in a fresh fork."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "include"), str(REPO / "plugins"), env.get("PYTHONPATH", "")])
    probe = IMPORT_PROBE.replace("HEAVY", repr(HEAVY_MODULES))
    out = subprocess.run(
        [sys.executable, "-c", probe, *map(str, DAG_FILES)], capture_output=True, text=True, env=env, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"file"')]
    return {line["file"]: line for line in lines}


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_imports_fast_and_light(dag_file):
    """With Airflow already loaded (as in the DAG processor), a DAG file parses in well under a CPU second."""
    answer = import_probe()[dag_file.name]
    assert answer["status"] == 0 and answer["result"], f"{dag_file.name} failed to import in the probe"
    result = json.loads(answer["result"])
    assert result["heavy"] == [], f"{dag_file.name} imports heavy modules at top level: {result['heavy']}"
    assert result["seconds"] < 1.0, f"{dag_file.name} took {result['seconds']:.2f} CPU s to import"


def test_the_index_asset_names_the_alias_and_no_host_and_something_consumes_it():
    from airflow.sdk import Asset, AssetAlias

    from catalogue_search.airflow_tasks import index_asset
    from catalogue_search.settings import Settings

    settings = Settings.from_env()
    asset = index_asset(settings.index_alias)
    assert asset.uri == f"x-catalogue-search://index/{settings.index_alias}"
    assert asset.name == f"catalogue-search-index/{settings.index_alias}"
    for secret in (settings.opensearch_url.split("://")[-1], settings.opensearch_user or "@"):
        assert secret not in asset.uri
    # Every task that moves the alias declares the asset alias its events go through.
    movers = {("catalogue_ingest", "swap_alias"), ("catalogue_rollback", "roll_back")}
    for dag_id, task_id in movers:
        assert dagbag().dags[dag_id].get_task(task_id).outlets == [AssetAlias("catalogue-search-index")]
    declared = {(d, t.task_id) for d in DAG_IDS for t in dagbag().dags[d].tasks if t.outlets}
    assert declared == movers | {("catalogue_finetune", "promote_model")}
    # The smoke test is scheduled on the serving alias's asset (a trial alias's does not trigger it).
    consumers = [d for d in DAG_IDS if asset in getattr(dagbag().dags[d].timetable.asset_condition, "objects", [])]
    assert consumers == ["catalogue_smoke_test"]
    assert Asset(name=asset.name, uri=asset.uri) == asset  # what the consumer and the events name is one asset


def test_the_endpoint_sensor_polls_at_the_settings_interval():
    """Rescheduled between pokes (no worker held); every 2 s on the local stack, 30 s by default."""
    from catalogue_search.settings import Settings

    dag = dagbag().dags["query_endpoints_deploy"]
    sensors = [t for t in dag.tasks if t.task_id.endswith("wait_in_service")]
    assert sensors and {(s.mode, s.poke_interval) for s in sensors} == {
        ("reschedule", Settings.from_env().endpoint_poll_seconds)
    }
    assert Settings().endpoint_poll_seconds == 30


def test_a_promoted_model_schedules_the_reindex():
    """`catalogue_finetune`'s promotion records the model Asset that `catalogue_ingest` is scheduled on."""
    from catalogue_search.airflow_tasks import model_asset
    from catalogue_search.settings import Settings

    asset = model_asset(Settings.from_env())
    assert dagbag().dags["catalogue_finetune"].get_task("promote_model").outlets == [asset]
    ingest = dagbag().dags["catalogue_ingest"].timetable
    assert asset in ingest.asset_condition.objects and ingest.timetable.expression  # and still the cron schedule
    consumers = [d for d in DAG_IDS if asset in getattr(dagbag().dags[d].timetable.asset_condition, "objects", [])]
    assert consumers == ["catalogue_ingest"]
