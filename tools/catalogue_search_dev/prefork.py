"""`airflow dags test` for the tests, forked from a Python that has the heavy libraries imported already.

A test's DAG run is a process of its own, as `python -m airflow dags test` is.
Started from nothing, each one first imports torch and open_clip (the quality
evaluation encodes titles), the SageMaker SDK (the image URI), FastAPI,
SQLAlchemy and the rest under Airflow: about 6 CPU seconds of a run's 25, paid
again by every one of the suite's runs on a machine whose cores are the limit.

`Prefork` starts one Python per test process that imports those libraries (not
Airflow, not this project: they read the environment and the configuration
when imported, and every run has its own) and then waits. Each run is a fork of
it: a new process, in a new session, with the run's environment, working
directory and arguments, its stdin from /dev/null and its output in files, that
then runs `python -m <module>` and ends as that would (its threads joined, atexit, output
flushed) but without tearing down every module (`_end`). What
differs from a fresh interpreter: the preloaded modules saw the forking
process's environment, and the process's command line is the fork server's.

    result = prefork.run_module("airflow", ["dags", "test", dag_id], env=env, timeout=600)

`CATSEARCH_TEST_PREFORK=0` runs a plain subprocess instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

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


def _preload() -> list[str]:
    failed = []
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception as exc:  # a missing library only costs the run its import
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


def _serve() -> dict | None:
    """Answer requests on stdin (a JSON line each) until it closes; in a forked child, return its request."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    replies.write((json.dumps({"ready": True, "failed": _preload()}) + "\n").encode())
    replies.flush()
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        replies.write((json.dumps({"pid": pid}) + "\n").encode())
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write((json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n").encode())
        replies.flush()
    return None


def _become(request: dict) -> None:
    """In the forked child: the run's session, directory, environment, output files and arguments."""
    os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for extra in reversed([p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]):
        if extra not in sys.path:
            sys.path.insert(1, extra)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, fd)
        os.close(out)
    os.close(devnull)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
    sys.argv = [request["module"], *request["args"]]


def main() -> None:
    request = _serve()
    if request is None:
        return
    _become(request)
    import atexit
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
    _end(code, atexit)


def _end(code: int | str | None, atexit) -> None:
    """End as the interpreter would (its other threads joined, atexit, output flushed), without tearing
    down every module: with torch imported that alone is about 2 CPU seconds."""
    import threading

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


class Prefork:
    """One fork server for this process; runs are one at a time (a lock)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def _server(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "catalogue_search_dev.prefork"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=dict(os.environ),
            )
            ready = json.loads(self._reply(self.proc, 300))
            if not ready.get("ready"):
                raise RuntimeError(f"the fork server did not start: {ready}")
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
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


_SHARED = Prefork()


def run_module(
    module: str, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 1200
) -> subprocess.CompletedProcess:
    """`python -m module args` with `env` added to this process's environment: a fork of the preloaded
    server, or a plain subprocess when CATSEARCH_TEST_PREFORK=0. Output captured as text."""
    full = {**os.environ, **(env or {})}
    if not enabled(full):
        return subprocess.run(
            [sys.executable, "-m", module, *args], env=full, capture_output=True, text=True, timeout=timeout
        )
    return _SHARED.run(module, args, full, timeout)


def dags_test(
    dag_id: str, env: Mapping[str, str] | None = None, conf: str | None = None, timeout: float = 1200
) -> subprocess.CompletedProcess:
    """`airflow dags test dag_id [--conf conf]`, as `run_module` runs it."""
    return run_module(
        "airflow", ["dags", "test", dag_id, *(["--conf", conf] if conf is not None else [])], env, timeout
    )


def close() -> None:
    _SHARED.close()


if __name__ == "__main__":
    main()
