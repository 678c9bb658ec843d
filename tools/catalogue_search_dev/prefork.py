"""`airflow dags test` for the tests, forked from a Python that has Airflow and the heavy libraries imported.

A test's DAG run is a process of its own, as `python -m airflow dags test` is.
Started from nothing, each one first imports Airflow, torch and open_clip (the
quality evaluation encodes titles) and the SageMaker SDK (the image URI), builds
Airflow's in-process execution API, and at its end tears every module down:
9.5, 2.6 and 1.9 of a first ingest run's 36 CPU seconds (py-spy), paid again by
each of the suite's DAG runs on a machine whose cores are the limit.

`Prefork` is a Python that imports all that and then waits; each run is a fork
of it: a new process, in a new session, with the run's environment, working
directory and arguments, stdin from /dev/null and its output in files, that runs
`python -m <module>` and ends as that would (threads joined, atexit, output
flushed) without tearing down every module (about 2 CPU seconds with torch
loaded). Airflow reads its settings when imported, so a fork server serves the
runs of one Airflow environment (`airflow_key`: the home and `AIRFLOW__*`
options); this project's own modules and the DAG files are imported by the run,
with its environment.

The fork servers are themselves forks, of one base server per test process
that has imported the third-party libraries (`PRELOAD`: torch, open_clip, the
SageMaker SDK; about 5 CPU seconds), so a server of another Airflow environment
(a test module's own home, another DAG folder) pays only for Airflow. A server
talks to its client over a Unix socket the client listens on. What differs from
a fresh interpreter: the preloaded libraries saw the base server's environment
(the first run's), and the process's command line is the base server's.

    result = prefork.dags_test("catalogue_ingest", env, conf="{}", timeout=600)

`CATSEARCH_TEST_PREFORK=0` runs a plain subprocess instead.
"""

from __future__ import annotations

import gc
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

from catalogue_search_dev import procs

ENV = "CATSEARCH_TEST_PREFORK"
# Third-party libraries only: none reads Airflow's or this project's settings when imported.
PRELOAD = (
    "numpy",
    "PIL.Image",
    "torch",
    "open_clip",
    "sagemaker.core.image_uris",
    "sqlalchemy.orm",
    "fastapi",
    "cadwyn",
    "pydantic",
    "libcst",
    "werkzeug",
    "aiohttp",
    "aiobotocore.session",
    "boto3",
    "opensearchpy",
    "pandas",
    "jinja2",
    "httpx",
    "structlog",
    "pendulum",
)


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(ENV, "1") != "0"


# --- the fork server (its own process) -------------------------------------------------------------------------


def _preload_libraries() -> list[str]:
    failed = []
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception as exc:  # a missing library only costs the run its import
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


def _preload_airflow_environment() -> list[str]:
    failed = []
    try:
        _preload_airflow()
    except Exception as exc:
        failed.append(f"airflow: {type(exc).__name__}: {exc}")
    try:
        _share_aws_models()
    except Exception as exc:
        failed.append(f"botocore models: {type(exc).__name__}: {exc}")
    return failed


AWS_SERVICES = ("s3", "sagemaker", "sagemaker-runtime")


def _share_aws_models() -> None:
    """One cache of botocore's service models for every loader of the process, filled here for the services
    the runs call. Each boto3 session has a loader of its own that parses the models' JSON again (about 0.1
    CPU s a session), and the Amazon provider's hooks make a session each; the runs fork with the models
    parsed. The models are read-only data: what a client gets is what it would have parsed itself. Loaders
    with other search paths keep caches of their own."""
    import boto3
    import botocore.loaders

    caches: dict[tuple, dict] = {}
    init = botocore.loaders.Loader.__init__

    def shared_init(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        self._cache = caches.setdefault(tuple(self.search_paths), {})

    botocore.loaders.Loader.__init__ = shared_init
    session = boto3.session.Session(aws_access_key_id="-", aws_secret_access_key="-", region_name="us-east-1")
    for service in AWS_SERVICES:  # builds no connection: a client connects at its first call
        session.client(service, endpoint_url="http://127.0.0.1:9")


# `dags test` checks for runnable tasks, and when there is none (a failed task's downstream tasks are marked
# upstream_failed one level per check; a retry waits its delay) sleeps 1 s before it checks again: after a
# failure deep in the ingest DAG, about 7 s of a run doing nothing. In the runs, its first checks come 0.1 s
# apart; after IDLE_FAST of them in a row (a retry delay), 1 s apart as before.
IDLE_POLL_S = 0.1
IDLE_FAST = 20


def _quicker_dag_test_polls() -> None:
    import airflow.sdk.definitions.dag as dag_module

    sleep, test_code = time.sleep, dag_module.DAG.test.__code__
    state = {"fast": 0, "woke": 0.0}

    def dag_test_aware_sleep(seconds: float) -> None:
        if seconds == 1 and sys._getframe(1).f_code is test_code:
            if time.monotonic() - state["woke"] > 0.5:  # a task ran since the last check: fast again
                state["fast"] = 0
            state["fast"] += 1
            sleep(IDLE_POLL_S if state["fast"] <= IDLE_FAST else seconds)
            state["woke"] = time.monotonic()
            return
        sleep(seconds)

    time.sleep = dag_test_aware_sleep


def _preload_airflow() -> None:
    """Airflow, its CLI and the Amazon provider's SageMaker classes, configured from this server's environment
    (the runs it forks share its Airflow settings: `airflow_key`), and the in-process execution API that
    `dags test` builds once per process (its versioned routes: about 3 CPU seconds). Not a thread is started:
    the API's event loop starts in the run, at its first request."""
    import airflow  # noqa: F401
    import airflow.cli.commands.dag_command  # noqa: F401
    import airflow.providers.amazon.aws.operators.sagemaker  # noqa: F401
    import airflow.providers.amazon.aws.sensors.sagemaker  # noqa: F401
    import airflow.providers.amazon.aws.triggers.sagemaker  # noqa: F401
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    app = in_process_api_server().app
    initialize = getattr(app, "_cadwyn_initialize", None)  # Cadwyn builds its routes at the first request
    if initialize is not None and getattr(app, "_cadwyn_initialized", True) is False:
        initialize()


def _freeze_the_heap() -> None:
    # What the forks inherit stays out of their collections: a collection in a run would walk (and, writing
    # to each object, copy) the whole preloaded heap. Measured (py-spy, one first ingest run): 21 to 14 CPU s.
    gc.collect()
    gc.freeze()


def _serve_base() -> dict | None:
    """The base server: import the libraries, then fork a fork server for each request on stdin (a JSON line:
    its environment and the socket its client listens on), answering its pid. In the child, return the
    request. The servers are not waited for here: each ends when its client closes the socket."""
    failed = _preload_libraries()
    return _fork_per_request(sys.stdin.buffer, sys.stdout.buffer, failed, wait=False)


def _fork_per_request(requests, replies, failed: list[str], wait: bool) -> dict | None:
    """Say ready, then fork a child for each request on `requests` (a JSON line each) until it closes,
    answering its pid (and, with `wait`, its exit code when it ends); in the child, return its request."""

    def answer(message: dict) -> None:
        replies.write((json.dumps(message) + "\n").encode())
        replies.flush()

    _freeze_the_heap()
    answer({"ready": True, "failed": failed})
    for line in requests:
        if not line.strip():
            continue
        procs.reap()  # the base server's fork servers that have ended
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        answer({"pid": pid})
        if wait:
            _, status = os.waitpid(pid, 0)
            answer({"code": os.waitstatus_to_exitcode(status)})
    return None


def _become_server(request: dict) -> tuple:
    """In a fork of the base server: the environment of the Airflow it serves, and its client's socket as
    stdin and stdout (the base server's pipes closed here). Returns the streams to serve on."""
    os.environ.clear()
    os.environ.update(request["env"])
    _add_python_path(request["env"])
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(request["socket"])
    for fd in (0, 1):
        os.dup2(client.fileno(), fd)
    client.close()
    return open(0, "rb", closefd=False), open(1, "wb", buffering=0, closefd=False)


def _serve(requests, replies) -> dict | None:
    """A fork server: Airflow imported, then a run forked (and waited for) for each request on `requests`;
    in the run, return its request."""
    return _fork_per_request(requests, replies, _preload_airflow_environment(), wait=True)


def _add_python_path(env: Mapping[str, str]) -> None:
    for extra in reversed([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]):
        if extra not in sys.path:
            sys.path.insert(1, extra)


def _become(request: dict) -> None:
    """In the forked child: the run's session, directory, environment, output files and arguments."""
    os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _add_python_path(request["env"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, fd)
        os.close(out)
    os.close(devnull)
    # The signal handlers stay the server's, which are a fresh interpreter's (SIGPIPE ignored, SIGINT raising).
    sys.argv = [request["module"], *request["args"]]


def main() -> None:
    server = _serve_base()
    if server is None:
        return
    request = _serve(*_become_server(server))
    if request is None:  # its client closed the socket: end without tearing down every module
        os._exit(0)
    _become(request)
    try:
        _quicker_dag_test_polls()
    except (ImportError, AttributeError):  # another Airflow: its own polls
        pass
    import runpy
    import traceback

    code: int | str | None = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    _end(code)


def _end(code: int | str | None) -> None:
    """End as the interpreter would (its other threads joined, atexit, output flushed), without tearing
    down every module: with torch imported that alone is about 2 CPU seconds."""
    import atexit

    threading._shutdown()  # the interpreter's own first step: threading's exit hooks, then its threads joined
    atexit._run_exitfuncs()
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)


# --- the client (in the test process) --------------------------------------------------------------------------


def airflow_key(env: Mapping[str, str]) -> tuple:
    """The environment Airflow reads when imported (its home, `AIRFLOW__*` options): runs with another key
    need a fork server of their own. Connections and variables from the environment are read when used."""
    lazy = ("AIRFLOW_CONN_", "AIRFLOW_VAR_")
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith("AIRFLOW") and not k.startswith(lazy)))


class _Base:
    """The base server of this process (`_serve_base`), started with the first run's environment."""

    proc: subprocess.Popen | None = None

    @classmethod
    def spawn(cls, env: Mapping[str, str], timeout: float = 300) -> _Server:
        """A fork server for `env`, connected: ready to read its first line from."""
        if cls.proc is None or cls.proc.poll() is not None:
            cls.proc = subprocess.Popen(
                [sys.executable, "-m", "catalogue_search_dev.prefork"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=dict(env),
                bufsize=0,  # unbuffered replies: a line read ahead into a buffer would hide from `select`
            )
            ready = json.loads(Prefork._reply(cls.proc, timeout))
            if not ready.get("ready"):
                raise RuntimeError(f"the base fork server did not start: {ready}")
            for failure in ready.get("failed") or []:  # the runs import it themselves
                warnings.warn(f"the fork server could not preload {failure}", stacklevel=3)
        folder = tempfile.mkdtemp(prefix="prefork-")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.path.join(folder, "socket"))
            listener.listen(1)
            listener.settimeout(timeout)
            assert cls.proc.stdin is not None
            cls.proc.stdin.write((json.dumps({"env": dict(env), "socket": listener.getsockname()}) + "\n").encode())
            cls.proc.stdin.flush()
            pid = json.loads(Prefork._reply(cls.proc, 60))["pid"]
            connection, _ = listener.accept()
        finally:
            listener.close()
            shutil.rmtree(folder, ignore_errors=True)
        connection.settimeout(None)
        return _Server(pid, connection, cls.proc.pid)

    @classmethod
    def close(cls) -> None:
        if cls.proc is not None:
            assert cls.proc.stdin is not None
            _stop(cls.proc, cls.proc.stdin.close)
        cls.proc = None


def _stop(proc: subprocess.Popen | _Server, end_input) -> None:
    """End a server's input (its loop then ends), give it 30 s, then kill it."""
    if proc.poll() is not None:
        return
    end_input()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


class _Server:
    """A fork server (a child of the base server, not of this process) and the socket to it: what
    `subprocess.Popen` gives for a process with pipes, as far as `Prefork` uses it."""

    def __init__(self, pid: int, connection: socket.socket, parent: int) -> None:
        self.pid, self.parent, self.connection = pid, parent, connection
        self.args = [sys.executable, "-m", "catalogue_search_dev.prefork"]
        self.stdin = connection.makefile("wb", buffering=0)
        self.stdout = connection.makefile("rb", buffering=0)

    def poll(self) -> int | None:
        """None while it runs (a zombie not yet collected by the base server has ended, and a process with
        its pid but another parent is another process)."""
        try:
            state, parent = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            return 0
        return 0 if state in ("Z", "X") or int(parent) != self.parent else None

    def end_requests(self) -> None:
        """No more requests: the server's loop reads the end of its input and ends."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def release(self) -> None:
        for stream in (self.stdin, self.stdout, self.connection):
            stream.close()


class Prefork:
    """One fork server, for runs with `env`'s Airflow settings; runs are one at a time (a lock)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.proc: _Server | None = None
        self.lock = threading.Lock()

    def _server(self) -> _Server:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.proc.release()
            self.proc = _Base.spawn(self.env)
            ready = json.loads(self._reply(self.proc, 300))
            if not ready.get("ready"):
                raise RuntimeError(f"the fork server did not start: {ready}")
            for failure in ready.get("failed") or []:  # the runs import it themselves
                warnings.warn(f"the fork server could not preload {failure}", stacklevel=2)
        return self.proc

    @staticmethod
    def _reply(proc: subprocess.Popen, timeout: float) -> str:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit code {proc.poll()})")
        return line.decode()

    def run(
        self, module: str, args: Sequence[str], env: Mapping[str, str], timeout: float, cwd: str | None = None
    ) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", module, *args]
        with self.lock, tempfile.TemporaryDirectory(prefix="prefork-") as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            request = {
                "module": module,
                "args": list(args),
                "env": dict(env),
                "cwd": cwd or os.getcwd(),
                "stdout": str(out),
                "stderr": str(err),
            }
            proc = self._server()
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
            pid = json.loads(self._reply(proc, 60))["pid"]
            started = time.monotonic()
            try:
                code = json.loads(self._reply(proc, timeout))["code"]
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._reply(proc, 60)
                raise subprocess.TimeoutExpired(command, time.monotonic() - started) from None
            read = lambda path: path.read_text(errors="replace")  # noqa: E731
            return subprocess.CompletedProcess(command, code, read(out), read(err))

    def close(self) -> None:
        if self.proc is not None:
            _stop(self.proc, self.proc.end_requests)
            self.proc.release()
        self.proc = None


MAX_SERVERS = 2  # the session's Airflow home and one other (a module with a home of its own)
_SERVERS: OrderedDict[tuple, Prefork] = OrderedDict()


def run_module(
    module: str, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 1200
) -> subprocess.CompletedProcess:
    """`python -m module args` with `env` added to this process's environment, output as text. Airflow's
    CLI runs as a fork of the preloaded server for its Airflow settings; any other module, or any run when
    CATSEARCH_TEST_PREFORK=0, in a plain subprocess (the preloaded Airflow has set up its logging, which
    a module that never imports Airflow would not have)."""
    full = {**os.environ, **(env or {})}
    if module != "airflow" or not enabled(full):
        return subprocess.run(
            [sys.executable, "-m", module, *args], env=full, capture_output=True, text=True, timeout=timeout
        )
    key = airflow_key(full)
    server = _SERVERS.pop(key, None) or Prefork(full)
    _SERVERS[key] = server
    while len(_SERVERS) > MAX_SERVERS:
        _SERVERS.popitem(last=False)[1].close()
    return server.run(module, args, full, timeout)


def dags_test(
    dag_id: str, env: Mapping[str, str] | None = None, conf: str | None = None, timeout: float = 1200
) -> subprocess.CompletedProcess:
    """`airflow dags test dag_id [--conf conf]`, as `run_module` runs it."""
    return run_module(
        "airflow", ["dags", "test", dag_id, *(["--conf", conf] if conf is not None else [])], env, timeout
    )


def close() -> None:
    while _SERVERS:
        _SERVERS.popitem()[1].close()
    _Base.close()


if __name__ == "__main__":
    main()
