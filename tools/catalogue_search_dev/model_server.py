"""Model servers: the SageMaker PyTorch inference container, run locally, one per model.

For a model (ModelDataUrl + Environment) `ModelServers.get` does what
SageMaker does when it starts the model's container: download `model.tar.gz`,
unpack it into the container's `model/` (its /opt/ml/model), set the model's
Environment plus what SageMaker adds, and start AWS's serving toolkit
(`sagemaker_pytorch_serving_container.serving.main()`, via `container_entry.py`)
on TorchServe, bound to loopback ports (`TS_INFERENCE_ADDRESS` and the other
listeners on 127.0.0.1). The toolkit pip-installs `code/requirements.txt` with
no reachable package index, so the model starts only if the archive carries
what it needs.

A server is ready when TorchServe answers `/ping` *and* a worker has loaded
the model (the management API says READY): `/ping` stays 200 while workers die
in `model_fn` and restart. A worker that dies before any is ready fails the
start with the error the container logged (`ModelServerError`).

Servers are shared by everything that runs the same artifact bytes with the
same environment, and stopped when no model uses them (`release`).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from catalogue_search.s3util import parse_s3_uri
from catalogue_search_dev import containers

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600.0
LOG_FILE = "container.log"
_DIED = re.compile(r"Backend worker process died|Load model failed|failed to install required packages")
_LOADED = "WorkerLoadTime"  # TorchServe's metric line once a worker has loaded the model
_PY_ERROR = re.compile(r"(?:MODEL_LOG - |^)((?:[\w.]+\.)?\w*(?:Error|Exception)\b[^\n]*)$")


class ModelServerError(RuntimeError):
    """The model's container cannot serve: it did not start, or the model did not load."""


@dataclass
class Reply:
    """The container's HTTP answer to one invocation."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class ModelEndpoint:
    """A running container's `/invocations`, as SageMaker's front end and transform agent call it."""

    url: str

    def invoke(self, body: bytes, content_type: str, accept: str | None, timeout: float) -> Reply:
        parts = urlsplit(self.url)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        if accept:
            headers["Accept"] = accept
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request("POST", "/invocations", body=body, headers=headers)
            answer = conn.getresponse()
            return Reply(answer.status, answer.getheader("Content-Type") or "", answer.read())
        finally:
            conn.close()


@dataclass
class ModelServer:
    """One running container: TorchServe on `port`, the toolkit's process group `process`."""

    key: tuple
    root: Path
    port: int
    management_port: int
    process: Any
    model_data_url: str
    models: set[str] = field(default_factory=set)
    holds: int = 0
    started: float = field(default_factory=time.time)
    ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / LOG_FILE

    @property
    def endpoint(self) -> ModelEndpoint:
        return ModelEndpoint(self.url)

    def _get(self, port: int, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "pid": self.process.pid,
            "alive": self.process.poll() is None,
            "models": sorted(self.models),
            "artifact": self.model_data_url,
            "ready_s": self.ready_s,
            "log": str(self.log_path),
        }

    def failure(self) -> str:
        """The error the container logged last (a Python exception line, or the toolkit's own words)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "the container left no log"
        for line in reversed(lines):
            match = _PY_ERROR.search(line.strip())
            if match and "Backend worker" not in line:
                return match.group(1).strip()
        died = [line for line in lines if _DIED.search(line)]
        return (died or lines or ["the container exited without a word"])[-1].strip()

    def wait_ready(self, timeout: float) -> None:
        """Until a worker has loaded the model and /ping answers; `ModelServerError` if it cannot.

        TorchServe logs `WorkerLoadTime` when a worker's `model_fn` returned; the
        log is read rather than the management API polled, which would flood it.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ModelServerError(f"the container exited with code {self.process.returncode}: {self.failure()}")
            try:
                text = self.log_path.read_text(errors="replace")
            except OSError:
                text = ""
            if _DIED.search(text):
                raise ModelServerError(f"the model did not load: {self.failure()}")
            if _LOADED in text:
                try:
                    if self._get(self.port, "/ping")[0] == 200:
                        self.ready_s = round(time.time() - self.started, 1)
                        return
                except OSError:
                    pass
            time.sleep(0.5)
        raise ModelServerError(f"the model was not ready after {timeout:.0f} s (log: {self.log_path})")

    def stop(self) -> None:
        """SIGTERM to the toolkit (it stops TorchServe), then kill what is left of the container."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # TorchServe's Java and workers share the group
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait()


def _download(s3_client: Any, url: str, cache: Path) -> tuple[Path, str]:
    """model.tar.gz from S3 into the cache (once per ETag); returns (path, ETag)."""
    bucket, key = parse_s3_uri(url)
    etag = s3_client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    path = cache / hashlib.sha256(f"{url}\n{etag}".encode()).hexdigest()[:16] / "model.tar.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"model.tar.gz.{os.getpid()}.{threading.get_ident()}")
        s3_client.download_file(bucket, key, str(partial))
        partial.replace(path)
    return path, etag


class ModelServers:
    """The running containers of the local SageMaker, keyed by artifact bytes and environment."""

    def __init__(
        self,
        root: str | Path,
        s3_client: Any,
        aws_env: Mapping[str, str],
        startup_timeout: float = 0,
        cpus: int | None = None,
    ):
        """`cpus`: the containers' CPU count, hence TorchServe workers per model (default: this machine's)."""
        self.root = Path(root)
        self.cpus = cpus
        self.s3 = s3_client
        self.aws_env = dict(aws_env)
        self.startup_timeout = startup_timeout or STARTUP_TIMEOUT_S
        self._servers: dict[tuple, ModelServer] = {}
        self._starting: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()
        self._count = 0

    def get(self, model_name: str, model_data_url: str, environment: Mapping[str, str], hold: bool = False):
        """The running server of this model, started (and waited for) if there is none."""
        try:
            archive, etag = _download(self.s3, model_data_url, self.root / "artifacts")
        except Exception as exc:
            raise ModelServerError(f"the model at {model_data_url} cannot be downloaded: {exc}") from exc
        key = (model_data_url, etag, tuple(sorted(environment.items())))
        with self._lock:
            starting = self._starting.setdefault(key, threading.Lock())
        with starting:
            with self._lock:
                server = self._servers.get(key)
            if server is None or server.process.poll() is not None:
                if server is not None:
                    log.warning("model server %s had exited; starting it again", server.root.name)
                server = self._start(key, model_data_url, archive, environment)
            with self._lock:
                server.models.add(model_name)
                server.holds += 1 if hold else 0
                self._servers[key] = server
        return server

    def _start(self, key: tuple, url: str, archive: Path, environment: Mapping[str, str]) -> ModelServer:
        with self._lock:
            self._count += 1
            name = f"server-{self._count}-{hashlib.sha256(repr(key).encode()).hexdigest()[:8]}"
        root = self.root / name
        bin_dir = containers.new_container(root)
        with tarfile.open(archive, "r:*") as tar:  # SageMaker unpacks model.tar.gz into /opt/ml/model
            tar.extractall(root / "model", filter="data")
        port, management, metrics, grpc, grpc_management = containers.free_ports(5)
        env = containers.base_environment(root, bin_dir, self.aws_env)
        env.update(environment)
        if self.cpus:
            env["LOCAL_CONTAINER_CPUS"] = str(self.cpus)
        env.update(
            {
                "SAGEMAKER_BIND_TO_PORT": str(port),
                "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{port}",
                "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{management}",
                "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
                "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1",
                "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1",
                "TS_GRPC_INFERENCE_PORT": str(grpc),
                "TS_GRPC_MANAGEMENT_PORT": str(grpc_management),
            }
        )
        process = containers.start(root, bin_dir, "serve", env, root / LOG_FILE)
        server = ModelServer(key, root, port, management, process, url)
        log.info("model server %s: starting TorchServe for %s on %s (log %s)", name, url, server.url, server.log_path)
        try:
            server.wait_ready(self.startup_timeout)
        except ModelServerError:
            server.stop()
            raise
        log.info("model server %s: ready in %.1f s (pid %d)", name, server.ready_s, process.pid)
        return server

    def unhold(self, server: ModelServer) -> None:
        with self._lock:
            server.holds = max(0, server.holds - 1)
        self._stop_unused()

    def release(self, model_name: str) -> None:
        """The model is gone: stop the servers no model (and no running job) uses any more."""
        with self._lock:
            for server in self._servers.values():
                server.models.discard(model_name)
        self._stop_unused()

    def _stop_unused(self) -> None:
        with self._lock:
            unused = [k for k, s in self._servers.items() if not s.models and not s.holds]
            stopping = [self._servers.pop(k) for k in unused]
        for server in stopping:
            log.info("model server %s: no model uses it any more, stopping", server.root.name)
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [server.describe() for server in self._servers.values()]

    def close(self) -> None:
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
        for server in servers:
            server.stop()
