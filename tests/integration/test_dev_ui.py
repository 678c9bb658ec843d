"""`./dev ui` stops everything it started, whatever its stdout is, and `./dev stack status` says so.

The first test runs a real `airflow standalone` the way the issue found it
failing: `./dev ui 2>&1 | tee ui.log` in a terminal of its own, then Ctrl-C
(SIGINT to the foreground process group, which kills tee too). Airflow runs in
a private AIRFLOW_HOME on free ports of 127.0.0.1 (API server and the two log
servers), with a private cache for its record. The other tests replace Airflow
with a stand-in that floods its output and ignores SIGINT and SIGTERM (so do
its child, an orphan in a process group of its own and a grandchild in a
session of its own): only the supervisor's SIGKILL stops them.

Every wait is bounded; whatever is left is killed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from catalogue_search_dev import containers, procs, ui

START_TIMEOUT = 420  # a cold start takes one to two minutes on 2 idle cores, near four when 8 suites share them
STOP_TIMEOUT = ui.GRACE_SECONDS + ui.TERM_SECONDS + 30


def _free_port() -> int:
    return containers.free_ports(1)[0]  # below the ephemeral range: no client's connection takes it meanwhile


def _session(sid: int) -> list[int]:
    return procs.session_members(sid)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3) as resp:
            health = json.load(resp)
    except Exception:
        return False
    return all(health.get(c, {}).get("status") == "healthy" for c in ("scheduler", "triggerer", "dag_processor"))


def _wait(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        text = log.read_text(errors="replace") if log.exists() else ""
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f}s:\n{text[-4000:]}"
        time.sleep(0.2)


def test_ctrl_c_on_dev_ui_piped_into_tee_leaves_no_airflow_process_behind(tmp_path, moto_url, opensearch_url):
    import airflow

    from catalogue_search_dev import testenv

    home = testenv.fresh_airflow_home(tmp_path)
    (home / f".db-migrated-{airflow.__version__}").touch()  # what `./dev` would do first
    port, worker_logs, trigger_logs = containers.free_ports(3)
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        **testenv.airflow_home_env(home),
        "CATSEARCH_HOME": str(cache),  # its own record and log
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_logs),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_logs),
        # No run starts: with the weekly ingest's latest slot running (the local default unpauses new DAGs),
        # Airflow's shutdown waits for its task and the stop took the whole grace period (30 s) or none of it.
        # A process that outlives the grace period is `test_every_process_the_supervisor_started_is_stopped`.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "DEV_UI": f"{sys.executable} -m catalogue_search_dev.dev ui",
        "TEE_LOG": str(tmp_path / "ui.log"),
    }
    ui_log = cache / "stack" / "airflow-ui.log"
    shell = subprocess.Popen(
        ["bash", "-c", '$DEV_UI 2>&1 | tee "$TEE_LOG"'],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a terminal of its own: Ctrl-C is SIGINT to this process group
    )
    sid = shell.pid
    status = [sys.executable, "-m", "catalogue_search_dev.dev", "stack", "status"]
    airflow_sid = None
    try:
        _wait(lambda: shell.poll() is None and _healthy(port), START_TIMEOUT, "Airflow healthy", ui_log)
        record = json.loads((cache / "stack" / "airflow.json").read_text())
        airflow_sid = record["airflow"]
        assert len(_session(airflow_sid)) >= 6, _session(airflow_sid)  # standalone, 4 components, workers
        _wait(lambda: procs.listeners(worker_logs) and procs.listeners(trigger_logs), 60, "log servers", ui_log)
        for log_port in (worker_logs, trigger_logs):
            assert {addr for addr, _ in procs.listeners(log_port)} == {"127.0.0.1"}, log_port
        listening = procs.listening(_session(airflow_sid))  # every port any Airflow process listens on
        assert {p for _, p, _ in listening} >= {port, worker_logs, trigger_logs}, listening
        assert {addr for addr, _, _ in listening} == {"127.0.0.1"}, listening
        shown = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60).stdout
        assert f"airflow: running at http://127.0.0.1:{port} (started by ./dev ui, pid {airflow_sid}" in shown

        os.killpg(sid, signal.SIGINT)  # Ctrl-C: what the terminal sends to its foreground process group
        started = time.monotonic()
        _wait(lambda: not _session(sid) and not _session(airflow_sid), STOP_TIMEOUT, "everything stopped", ui_log)
        took = time.monotonic() - started
    finally:
        left = _session(sid) + (_session(airflow_sid) if airflow_sid else [])
        _kill(left)
        shell.wait(timeout=30)

    output = ui_log.read_text(errors="replace")
    assert left == [], f"left running: {left}\n{output[-3000:]}"
    for any_port in (port, worker_logs, trigger_logs):
        assert procs.listeners(any_port) == [], f"port {any_port} still listening"
    assert "SIGINT: stopping Airflow" in output
    assert "Shutting down components" in output  # standalone's own shutdown ran first
    assert output.rstrip().endswith("[dev] Airflow stopped: no process it started is left"), output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    assert took < STOP_TIMEOUT
    assert not (cache / "stack" / "airflow.json").exists()
    shown = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60).stdout
    assert f"airflow: not running (no Airflow started by ./dev ui; port {port} is free)" in shown


# A stand-in for a hung `airflow standalone` that floods its stdout. It, its child, an orphan in a
# process group of its own (as Airflow's task processes are) and a grandchild in a session of its own
# ignore SIGINT and SIGTERM; each writes its pid to $PIDS_DIR. Only SIGKILL stops them.
STUBBORN = r"""
import os, signal, subprocess, sys, time
from pathlib import Path
note = "import os; from pathlib import Path; Path(os.environ['PIDS_DIR'], str(os.getpid())).touch()"
ignore = note + "; import signal, time; [signal.signal(s, signal.SIG_IGN) for s in (2, 15)]; time.sleep(600)"
exec(ignore.replace("time.sleep(600)", ""))
subprocess.Popen([sys.executable, "-c", ignore])
orphan_maker = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', sys.argv[1]], process_group=0)"
subprocess.Popen([sys.executable, "-c", orphan_maker, ignore]).wait()
escaper = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', sys.argv[1]], start_new_session=True)"
subprocess.Popen([sys.executable, "-c", escaper, ignore]).wait()
while len(os.listdir(os.environ["PIDS_DIR"])) < 4:
    time.sleep(0.05)
print("ready", flush=True)
n = 0
while True:
    n += 1
    print(f"standalone | line {n} " + "x" * 100, flush=True)
    time.sleep(0.002)
"""

RUNNER = """
import os, sys, traceback
from pathlib import Path
from catalogue_search_dev import ui
try:
    code = ui.run([sys.executable, "-c", os.environ["STUB"]], dict(os.environ), grace=1, term=1)
except BaseException:
    Path(os.environ["RUNNER_RESULT"]).write_text(traceback.format_exc())
    raise
Path(os.environ["RUNNER_RESULT"]).write_text(str(code))
sys.exit(code)
"""


def _start_stub(tmp_path: Path, stdout_kind: str) -> tuple[subprocess.Popen, dict[str, str]]:
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {
        **os.environ,
        "CATSEARCH_HOME": str(tmp_path / "cache"),
        "PIDS_DIR": str(pids),
        "STUB": STUBBORN,
        "RUNNER": RUNNER,
        "RUNNER_RESULT": str(tmp_path / "result"),
        "AIRFLOW__API__PORT": str(_free_port()),  # what the record and `status` look at
    }
    kinds = {
        "file": (["bash", "-c", f'exec {sys.executable} -c "$RUNNER" > "{tmp_path}/out" 2>&1'], None),
        "tee": (["bash", "-c", f'{sys.executable} -c "$RUNNER" 2>&1 | tee "{tmp_path}/out"'], None),
        "closed pipe": (["bash", "-c", f'exec {sys.executable} -c "$RUNNER"'], "closed"),
    }
    cmd, special = kinds[stdout_kind]
    if special == "closed":
        read_end, write_end = os.pipe()
        os.close(read_end)  # nobody will ever read: every write fails with EPIPE
        proc = subprocess.Popen(cmd, env=env, stdout=write_end, stderr=write_end, start_new_session=True)
        os.close(write_end)
    else:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    log = tmp_path / "cache" / "stack" / "airflow-ui.log"
    _wait(lambda: log.exists() and "ready" in log.read_text(errors="replace"), 60, "the stand-in", log)
    assert len(os.listdir(pids)) == 4
    return proc, env


def _stub_pids(tmp_path: Path) -> list[int]:
    return sorted(int(name) for name in os.listdir(tmp_path / "pids"))


@pytest.mark.parametrize(
    ("stdout_kind", "how"),
    [("tee", "ctrl-c"), ("file", signal.SIGTERM), ("closed pipe", signal.SIGHUP)],
    ids=["tee+ctrl-c", "file+sigterm", "closed-pipe+sighup"],
)
def test_every_process_the_supervisor_started_is_stopped(tmp_path, stdout_kind, how):
    proc, env = _start_stub(tmp_path, stdout_kind)
    sid = proc.pid
    log = tmp_path / "cache" / "stack" / "airflow-ui.log"
    try:
        if how == "ctrl-c":
            os.killpg(sid, signal.SIGINT)
        else:
            os.kill(proc.pid, how)  # the bash -c exec'd into the runner: this is the supervisor
        _wait(lambda: not [p for p in _stub_pids(tmp_path) if procs.alive(p)], 30, "stand-ins stopped", log)
        proc.wait(timeout=30)
    finally:
        left = [p for p in _stub_pids(tmp_path) if procs.alive(p)] + _session(sid)
        _kill(left)
    output = log.read_text(errors="replace")
    assert left == [], f"left running: {left}\n{output[-2000:]}"
    assert (tmp_path / "result").read_text() == "0", (tmp_path / "result").read_text()
    assert "sending SIGTERM" in output and "sending SIGKILL" in output
    assert output.rstrip().endswith("[dev] Airflow stopped: no process it started is left")
    assert not (tmp_path / "cache" / "stack" / "airflow.json").exists()


def test_status_tells_when_the_supervisor_died_and_down_stops_what_it_left(tmp_path, monkeypatch):
    from catalogue_search_dev import ui_state

    proc, env = _start_stub(tmp_path, "file")
    try:
        for name in ("CATSEARCH_HOME", "AIRFLOW__API__PORT"):
            monkeypatch.setenv(name, env[name])
        record = ui_state.read()
        assert record is not None and record.supervisor == proc.pid
        assert ui_state.status().startswith(f"running at {record.url} (started by ./dev ui, pid {record.airflow}")
        os.kill(proc.pid, signal.SIGKILL)  # the supervisor gone without a word: its record stays
        proc.wait(timeout=30)
        shown = ui_state.status()
        assert shown.startswith(f"NOT stopped: ./dev ui (pid {proc.pid}) is gone, but "), shown
        assert str(record.airflow) in shown and "`./dev stack down` stops them" in shown

        # the stand-ins ignore SIGTERM: SIGKILL after 1 s (10 s for `./dev stack down`, Airflow's own shutdown)
        assert ui_state.stop_recorded(term=1) == f"stopped the Airflow of ./dev ui (session {record.airflow})"
        assert procs.session_members(record.airflow) == []
        assert ui_state.status().startswith("not running (no Airflow started by ./dev ui")
    finally:
        _kill([p for p in _stub_pids(tmp_path) if procs.alive(p)])
