"""The fork server the tests run `airflow dags test` from (`prefork`): a run is a process of its own with
its environment, arguments, directory, output and exit code, a hung run ends at its timeout, and runs of
another Airflow environment get a server of their own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from catalogue_search_dev import prefork

PROBE = """
import json, os, signal, sys, threading, time, atexit
mode = sys.argv[1]
if mode == "sleep":
    time.sleep(600)
import boto3
loaders = [boto3.session.Session()._session.get_component("data_loader") for _ in range(2)]
models = loaders[0]._cache
shared = models is loaders[1]._cache
models_shared = shared and any(k[:3] == ("load_service_model", "s3", "service-2") for k in models)
slept = time.monotonic()
time.sleep(1)  # not the poll of `dags test`: a whole second
slept = time.monotonic() - slept
atexit.register(lambda: print("atexit ran", flush=True))
# a non-daemon thread: the run ends when it does, as a plain interpreter would
threading.Thread(target=lambda: (time.sleep(0.3), print("thread ended", flush=True))).start()
print(json.dumps({"argv": sys.argv[1:], "models_shared": models_shared, "slept": slept,
                  "cwd": os.getcwd(), "probe": os.environ.get("PROBE_VALUE"),
                  "pid": os.getpid(), "sid": os.getsid(0), "torch": "torch" in sys.modules,
                  "sigpipe_ignored": signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[2]))
"""


def _ended(pid: int) -> bool:
    """Ended: gone, or a zombie until the base server collects it at its next request."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    (folder / "prefork_probe.py").write_text(textwrap.dedent(PROBE))
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}, folder


@pytest.fixture(scope="module")
def server(probe_env):
    env, _ = probe_env
    server = prefork.Prefork(env)
    yield server
    server.close()


def test_a_run_is_a_process_of_its_own_with_its_env_args_directory_output_and_exit_code(server, probe_env, tmp_path):
    import json

    env, _ = probe_env
    first = server.run("prefork_probe", ["hello", "3"], {**env, "PROBE_VALUE": "one"}, timeout=60, cwd=str(tmp_path))
    second = server.run("prefork_probe", ["again", "0"], {**env, "PROBE_VALUE": "two"}, timeout=60)
    assert first.returncode == 3 and second.returncode == 0
    seen = [json.loads(result.stdout.splitlines()[0]) for result in (first, second)]
    assert [s["argv"] for s in seen] == [["hello", "3"], ["again", "0"]]
    assert [s["probe"] for s in seen] == ["one", "two"]  # each run's own environment, not the server's
    assert seen[0]["cwd"] == str(tmp_path) and seen[1]["cwd"] == os.getcwd()
    assert seen[0]["pid"] != seen[1]["pid"] and all(s["sid"] == s["pid"] for s in seen)  # a session each
    assert all(s["torch"] for s in seen)  # forked after the preload
    assert all(s["models_shared"] for s in seen)  # botocore's models parsed once, before the fork
    assert all(s["slept"] >= 0.95 for s in seen)  # only the poll of `dags test` is quicker
    assert all(s["sigpipe_ignored"] for s in seen)  # a fresh interpreter's signal handlers (Python ignores SIGPIPE)
    for result in (first, second):
        assert result.stdout.splitlines()[1:] == ["thread ended", "atexit ran"]
        assert result.stderr == "to stderr\n"


def test_a_run_past_its_timeout_is_killed_and_the_server_serves_the_next(server, probe_env):
    env, _ = probe_env
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        server.run("prefork_probe", ["sleep", "0"], env, timeout=2)
    assert time.monotonic() - started < 30
    assert server.run("prefork_probe", ["after", "0"], env, timeout=60).returncode == 0


def test_airflow_runs_as_a_plain_interpreter_would_and_other_airflow_settings_get_their_own_server(tmp_path):
    plain = subprocess.run(
        [sys.executable, "-m", "airflow", "config", "get-value", "core", "dags_folder"],
        capture_output=True,
        text=True,
        env={**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path)},
    )
    forked = prefork.run_module(
        "airflow", ["config", "get-value", "core", "dags_folder"], {"AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path)}
    )
    assert (forked.returncode, forked.stdout) == (plain.returncode, plain.stdout) == (0, f"{tmp_path}\n")
    key = prefork.airflow_key({**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path)})
    assert key != prefork.airflow_key(os.environ) and key in prefork._SERVERS
    # every fork server is a fork of this process's one base server, which imported the libraries once
    servers = [server.proc for server in prefork._SERVERS.values() if server.proc is not None]
    parents = {int(Path(f"/proc/{s.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for s in servers}
    assert parents == {prefork._Base.proc.pid}
    other = prefork._SERVERS.pop(key)
    pid = other.proc.pid
    other.close()
    assert other.proc is None and _ended(pid)
    # connections and variables are read when used: they do not need a server of their own
    assert prefork.airflow_key({"A": "1", "AIRFLOW_CONN_X": "y", "AIRFLOW_VAR_Z": "1"}) == ()
