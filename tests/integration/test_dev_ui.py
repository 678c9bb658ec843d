"""`./dev ui` stops everything it started: a real `airflow standalone`, then Ctrl-C or SIGTERM.

Airflow runs in a private AIRFLOW_HOME on free ports of 127.0.0.1 (API server
and the two log servers), with a private cache for its pid file. The test waits
until the scheduler, the triggerer and the DAG processor report healthy (the
LocalExecutor's workers are forked by then), signals `./dev ui`, and then reads
/proc: no process of its session or of Airflow's process group may be left.
Every wait is bounded; whatever is left is killed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from catalogue_search_dev import testenv, ui

START_TIMEOUT = 300  # a cold start on a busy 2-core machine takes about a minute
STOP_TIMEOUT = ui.GRACE_SECONDS + ui.TERM_SECONDS + 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session(sid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process of session `sid`, zombies included."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:
            out.append((int(name), fields[0]))
    return out


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3) as resp:
            health = json.load(resp)
    except Exception:
        return False
    return all(health.get(c, {}).get("status") == "healthy" for c in ("scheduler", "triggerer", "dag_processor"))


def _kill_session(sid: int) -> None:
    for pid, _ in _session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ctrl_c_on_dev_ui_leaves_no_airflow_process_behind(tmp_path, moto_url, opensearch_url):
    import airflow

    home = testenv.fresh_airflow_home(tmp_path)
    (home / f".db-migrated-{airflow.__version__}").touch()  # what `./dev` would do first
    port = _free_port()
    env = {
        **os.environ,
        **testenv.airflow_home_env(home),
        "CATSEARCH_HOME": str(tmp_path / "cache"),  # its own airflow.pid
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
    }
    log = tmp_path / "dev-ui.log"
    with open(log, "wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "catalogue_search_dev.dev", "ui"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal of its own: Ctrl-C is SIGINT to this process group
        )
    sid = dev.pid
    status = [sys.executable, "-m", "catalogue_search_dev.dev", "stack", "status"]
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(port):
            assert dev.poll() is None, f"./dev ui exited early:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"Airflow not healthy in {START_TIMEOUT}s:\n{log.read_text()[-4000:]}"
            time.sleep(2)
        airflow_pid = int((tmp_path / "cache" / "stack" / "airflow.pid").read_text().split()[0])
        running = _session(sid)
        assert len(running) >= 8, running  # dev, standalone, 4 components, executor workers, log servers
        shown = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60).stdout
        assert f"airflow: running at http://127.0.0.1:{port} (started by ./dev ui, pid {airflow_pid}" in shown

        os.killpg(sid, signal.SIGINT)  # Ctrl-C: what the terminal sends to its foreground process group
        started = time.monotonic()
        code = dev.wait(timeout=STOP_TIMEOUT)
        took = time.monotonic() - started
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        left = _session(sid)
        _kill_session(sid)

    output = log.read_text()
    assert left == [], f"left running: {left}\n{output[-3000:]}"
    assert not [p for p in ui.group_members(airflow_pid)], "Airflow's process group is not empty"
    assert code == 0, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert "Shutting down components" in output  # standalone's own shutdown ran first
    assert "Airflow stopped: no process it started is left" in output
    assert took < STOP_TIMEOUT
    shown = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60).stdout
    assert "airflow: not running" in shown


# A stand-in for a hung `airflow standalone`: it ignores SIGINT and SIGTERM, and so do its child in its
# group and a grandchild in a process group of its own (as Airflow's task processes are) whose parent
# has exited (an orphan). Only SIGKILL stops them.
STUBBORN = r"""
import os, signal, subprocess, sys, time
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
ignore = "import signal, time; [signal.signal(s, signal.SIG_IGN) for s in (2, 15)]; time.sleep(600)"
subprocess.Popen([sys.executable, "-c", ignore])
orphan_maker = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', sys.argv[1]], process_group=0)"
subprocess.Popen([sys.executable, "-c", orphan_maker, ignore]).wait()
print("ready", flush=True)
time.sleep(600)
"""

RUNNER = """
import sys
from catalogue_search_dev import ui
sys.exit(ui.run([sys.executable, "-c", sys.argv[1]], dict(__import__("os").environ), grace=2, term=2))
"""


def test_sigterm_stops_processes_that_ignore_it_and_orphans_in_other_groups(tmp_path):
    env = {**os.environ, "CATSEARCH_HOME": str(tmp_path / "cache")}
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-c", RUNNER, STUBBORN],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sid = dev.pid
    try:
        deadline = time.monotonic() + 60
        while "ready" not in log.read_text():
            assert dev.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        groups = {pid: os.getpgid(pid) for pid, _ in _session(sid)}
        assert len(groups) == 4 and len(set(groups.values())) == 3, groups  # runner, stand-in + child, orphan
        os.kill(dev.pid, signal.SIGTERM)
        code = dev.wait(timeout=30)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        left = _session(sid)
        _kill_session(sid)
    output = log.read_text()
    assert left == [], f"left running: {left}\n{output}"
    assert code == 0 and "Traceback" not in output, output
    assert "sending SIGTERM" in output and "sending SIGKILL" in output
