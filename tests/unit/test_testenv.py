"""The test session's isolation: its own Airflow home, the leftover check's verdicts, local sizing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catalogue_search_dev import cluster_procs, localenv, testenv
from catalogue_search_dev.testenv import Snapshot

TOKEN = "tst0a1b2"


def test_the_session_runs_airflow_in_its_own_home():
    """What `airflow dags test` in a test would use (it inherits this environment): a private temp home."""
    from airflow.configuration import conf  # loaded here after tests/conftest.py set the environment

    home = Path(os.environ["AIRFLOW_HOME"])
    assert home.name.startswith("catsearch-test-airflow-")
    assert home != localenv.cache_home() / "airflow"
    assert "AIRFLOW_CONFIG" not in os.environ  # a user's config file cannot point elsewhere
    assert conf.get("database", "sql_alchemy_conn") == f"sqlite:///{home / 'airflow.db'}"
    assert (home / "airflow.db").is_file()
    assert testenv.TOKEN_PATTERN.fullmatch(os.environ[testenv.TOKEN_ENV])


def test_unique_names_hold_the_session_token(unique):
    assert unique.startswith(os.environ[testenv.TOKEN_ENV]) and len(unique) == 12


@pytest.fixture(autouse=True)
def not_shared(monkeypatch):
    monkeypatch.delenv(testenv.SHARED_ENV, raising=False)


def test_an_unchanged_world_passes():
    snap = Snapshot(buckets={"catalogue-search-local"}, aliases={"products": ["products-v1"]}, airflow={"dag_run": 3})
    assert testenv.compare(snap, snap, TOKEN) == ([], [])


def test_leftovers_of_this_session_are_named():
    before = Snapshot(buckets={"catalogue-search-local"}, indices={"products-v1"})
    after = Snapshot(
        buckets={"catalogue-search-local", f"test-project-{TOKEN}abcd"},
        models={f"t{TOKEN}abcd-tiny-clip-image-0123456789"},
        indices={"products-v1", f"t-knn-{TOKEN}abcd"},
        aliases={f"alias-{TOKEN}abcd": [f"t-knn-{TOKEN}abcd"]},
    )
    problems, _ = testenv.compare(before, after, TOKEN)
    text = "\n".join(problems)
    for name in (f"test-project-{TOKEN}", f"t{TOKEN}abcd-tiny-clip-image", f"t-knn-{TOKEN}", f"alias-{TOKEN}"):
        assert name in text


def test_what_the_user_had_must_still_be_there_unchanged():
    before = Snapshot(endpoints={"catalogue-search-vit-b-32-text"}, aliases={"products": ["products-v1"]})
    after = Snapshot(aliases={"products": ["products-v2"]})
    problems, _ = testenv.compare(before, after, TOKEN)
    assert any("deleted" in p and "catalogue-search-vit-b-32-text" in p for p in problems)
    assert any("alias products changed" in p for p in problems)


def test_a_new_name_without_a_token_fails():
    after = Snapshot(buckets={"search-1234abcd"}, transform_jobs={"catsearch-encode-x"})
    problems, notes = testenv.compare(Snapshot(), after, TOKEN)
    assert any("search-1234abcd" in p for p in problems)
    assert any("catsearch-encode-x" in n for n in notes)  # transform jobs cannot be deleted: listed only


def test_on_a_shared_stack_only_this_sessions_traces_fail(monkeypatch):
    """Another test session's resources came and went: what names no token cannot be pinned on this run."""
    before = Snapshot(buckets={"test-project-tstfffff1111"}, aliases={"search-x": ["search-x-v1"]})
    after = Snapshot(buckets={"search-1234abcd", "test-project-tstfffff0000", f"leftover-{TOKEN}beef"})
    problems, notes = testenv.compare(before, after, TOKEN)
    assert len(problems) == 1 and f"leftover-{TOKEN}beef" in problems[0]
    assert any("tstfffff0000" in n and "tstfffff1111" in n for n in notes)
    assert any("search-1234abcd" in n for n in notes) and any("alias search-x changed" in n for n in notes)
    monkeypatch.setenv(testenv.SHARED_ENV, "1")
    problems, _ = testenv.compare(Snapshot(), Snapshot(buckets={"search-1234abcd"}), TOKEN)
    assert problems == []


def test_runs_asset_events_or_dag_versions_in_the_user_db_fail():
    before = Snapshot(airflow={"dag_run": 2, "asset_event": 1, "dag_version": 3, "task_instance": 9})
    after = Snapshot(airflow={"dag_run": 4, "asset_event": 2, "dag_version": 3, "task_instance": 9})
    problems, _ = testenv.compare(before, after, TOKEN)
    assert len(problems) == 1
    assert "dag_run" in problems[0] and "asset_event" in problems[0] and "dag_version" not in problems[0]


def test_the_user_db_is_read_without_writing(tmp_path, monkeypatch):
    """Counts come from a read-only connection: a DB that does not exist is not created."""
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    monkeypatch.delenv("CATSEARCH_AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("CATSEARCH_OPENSEARCH_URL", raising=False)
    snap = testenv.snapshot(str(tmp_path))
    assert snap.airflow == {} and not (tmp_path / "airflow.db").exists()
    # a freshly migrated DB (every table there, empty), whatever earlier tests did to the session's own
    home = testenv.fresh_airflow_home(tmp_path)
    db = Path(home) / "airflow.db"
    before = db.read_bytes()
    assert testenv.snapshot(str(home)).airflow == {t: 0 for t in testenv.AIRFLOW_TABLES}
    assert db.read_bytes() == before


def test_a_sweep_refuses_anything_but_a_test_token():
    for bad in ("", "products", "tst", "catalogue-search"):
        try:
            testenv.sweep(bad)
        except ValueError:
            continue
        raise AssertionError(f"sweep({bad!r}) ran")


def test_local_airflow_is_sized_for_the_machine():
    assert localenv.airflow_sizing(2)["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert localenv.airflow_sizing(16)["AIRFLOW__CORE__PARALLELISM"] == "32"
    assert localenv.airflow_sizing(1)["AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES"] == "1"
    env = localenv.local_environment({})
    assert env["AIRFLOW__CORE__PARALLELISM"] == str(max(2, 2 * (os.cpu_count() or 1)))
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    # The OpenSearch connection has no 4-character "none" for the secrets masker to warn about.
    assert "extra" not in json.loads(env["AIRFLOW_CONN_OPENSEARCH_DEFAULT"])
    assert localenv.local_environment({"AIRFLOW__API__PORT": "18080"})["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://127.0.0.1:18080/execution/"
    )


# --- the stack gate: pytest collects while `./dev test` brings the stack up ---
WAITER = (
    "import sys; from catalogue_search_dev import testenv; {announce}"
    "testenv.wait_at_stack_gate(poll_s=0.05); print('passed')"
)


def _waiter(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WAITER.format(announce="")],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_without_a_gate_the_tests_start_at_once(monkeypatch):
    monkeypatch.delenv(testenv.STACK_GATE_ENV, raising=False)
    started = time.monotonic()
    testenv.wait_at_stack_gate()
    assert time.monotonic() - started < 0.05


def test_a_pytest_process_waits_at_the_gate_until_it_opens(tmp_path):
    gate = testenv.StackGate(tmp_path)
    waiter = _waiter(gate.env())  # this process plays `./dev test`
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=1.5)
        gate.open()
        assert waiter.communicate(timeout=30) == ("passed\n", "")
        assert waiter.returncode == 0
    finally:
        waiter.kill()


def test_a_waiting_process_ends_when_dev_test_has_gone(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    waiter = _waiter({testenv.STACK_GATE_ENV: f"{gone.pid}:{tmp_path / 'never'}"})
    try:
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert (waiter.returncode, out, err) == (1, "", "")  # ended at the gate, quietly


def test_a_waiting_worker_ends_when_its_controller_has_gone(tmp_path):
    """pytest-xdist's workers are children of its controller, which `./dev test` stops if the stack fails."""
    gate = testenv.StackGate(tmp_path)
    announced = WAITER.format(announce="print('waiting', flush=True); ")  # its parent is the controller now
    controller = (  # the worker's output goes to the controller alone: this test reads the controller's to its end
        "import subprocess, sys; "
        f"w = subprocess.Popen([sys.executable, '-c', {announced!r}], stdout=subprocess.PIPE, "
        "stderr=subprocess.DEVNULL, text=True); print(w.stdout.readline().strip(), w.pid, flush=True)"
    )
    shown = subprocess.run(
        [sys.executable, "-c", controller], env={**os.environ, **gate.env()}, capture_output=True, text=True, timeout=60
    )
    said, worker = shown.stdout.split()
    assert said == "waiting", shown.stderr  # the worker reached the gate
    worker = int(worker)
    deadline = time.monotonic() + 30
    while cluster_procs.alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cluster_procs.alive(worker), "the worker still waits at the gate after its controller ended"
    assert not gate.file.exists()
