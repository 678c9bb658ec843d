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
    assert {"catalogue_ingest", "catalogue_rollback", "query_endpoints_deploy", "query_endpoints_teardown"} <= set(
        DAG_IDS
    )


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
def test_dag_has_no_cycles(dag_id):
    dagbag().dags[dag_id].check_cycle()  # raises on a cycle


def test_ingest_dag_shape():
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
        "prepare_encoding",
        "encode_images",
        "record_embeddings",
        "load_index",
        "validate_index",
        "evaluate_index",
        "swap_alias",
    ]
    for up, down in zip(order, order[1:]):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} -> {down} missing"
    assert dag.get_task("swap_alias").outlets, "swap_alias does not declare the index Asset"
    # runs when the encode step was skipped (nothing new): it still writes the run report
    assert dag.get_task("record_embeddings").trigger_rule == "none_failed"
    # The clean-up runs whatever happened (a teardown: ALL_DONE semantics) and never decides the run's state.
    clean_up = dag.get_task("clean_up")
    assert clean_up.is_teardown and "clean_up" in dag.get_task("swap_alias").downstream_task_ids
    assert str(clean_up.trigger_rule) in {"all_done_setup_success", "TriggerRule.ALL_DONE_SETUP_SUCCESS"}


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_imports_fast_and_light(dag_file):
    """With Airflow already loaded (as in the DAG processor), a DAG file parses in well under a second."""
    probe = f"""
import importlib.util, json, sys, time
import airflow.sdk
from airflow.providers.amazon.aws.operators import sagemaker as _warm  # provider import is shared by all DAG files
before = set(sys.modules)
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", {str(dag_file)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
elapsed = time.perf_counter() - start
heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules and m not in before)
print(json.dumps({{"seconds": elapsed, "heavy": heavy}}))
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "include"), str(REPO / "plugins"), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"{dag_file.name} imports heavy modules at top level: {result['heavy']}"
    assert result["seconds"] < 1.0, f"{dag_file.name} took {result['seconds']:.2f}s to import"
