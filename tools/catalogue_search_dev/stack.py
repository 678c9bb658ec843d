"""The local stack: a real OpenSearch 2.19.1 node with k-NN, a moto server and the local SageMaker.

moto (127.0.0.1:5000) plays S3 and SageMaker's control plane; the local
SageMaker server (127.0.0.1:5100, `sagemaker_local.py`) sits in front of moto
for SageMaker and adds the data planes moto lacks (InvokeEndpoint, batch
transform jobs that really run).

`up()` is idempotent: a service already healthy at its address is reused, a
download already in the cache is not fetched again. `down()` stops only the
processes this module started, by the pids it recorded.

OpenSearch comes from Maven Central (the integ-test distribution plus the
k-NN plugin zip). Known traps, handled here: the k-NN zip carries no native
libraries (indices must use `engine: lucene`), its descriptor extends
`lang-painless`, which the integ-test zip lacks (marked optional), and
OpenSearch refuses to run as root (it runs as a dedicated system user).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from catalogue_search_dev.localenv import cache_home, exclusive

log = logging.getLogger(__name__)

OPENSEARCH_VERSION = "2.19.1"
KNN_VERSION = "2.19.1.0"
OPENSEARCH_ARTIFACT = f"org.opensearch.distribution.integ-test-zip:opensearch:{OPENSEARCH_VERSION}:zip"
KNN_ARTIFACT = f"org.opensearch.plugin:opensearch-knn:{KNN_VERSION}:zip"
SERVICE_USER = "catsearch-os"


@dataclass(frozen=True)
class Service:
    name: str
    url: str
    health_path: str

    @property
    def pid_file(self) -> Path:
        if self.name == "opensearch":
            return opensearch_root() / "run" / "opensearch.pid"
        return state_dir() / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return state_dir() / f"{self.name}.log"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=3) as resp:
                if self.name == "opensearch":
                    status = json.load(resp).get("status")
                    return status in {"green", "yellow"}
                return resp.status == 200
        except Exception:
            return False


def state_dir() -> Path:
    path = cache_home() / "stack"
    path.mkdir(parents=True, exist_ok=True)
    return path


def opensearch_root() -> Path:
    """Where OpenSearch is unpacked and keeps its data.

    As root, OpenSearch runs as a dedicated user that cannot enter root's home,
    so its files live under /var/tmp instead of the cache.
    """
    configured = os.environ.get("CATSEARCH_OPENSEARCH_HOME")
    if configured:
        return Path(configured)
    if _run_as_service_user():
        return Path("/var/tmp/catalogue-search-opensearch")
    return cache_home() / "opensearch"


def services() -> list[Service]:
    return [
        Service("moto", os.environ.get("CATSEARCH_AWS_ENDPOINT_URL", "http://127.0.0.1:5000"), "/moto-api/"),
        Service(
            "opensearch",
            # The first node: the cluster stack (cluster.py) names all three, comma-separated.
            os.environ.get("CATSEARCH_OPENSEARCH_URL", "http://127.0.0.1:9200").split(",")[0],
            "/_cluster/health",
        ),
        Service("sagemaker", os.environ.get("CATSEARCH_SAGEMAKER_ENDPOINT_URL", "http://127.0.0.1:5100"), "/ping"),
    ]


# --- pids ---------------------------------------------------------------------
def _read_pid(service: Service) -> int | None:
    try:
        pid = int(service.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _wait_healthy(service: Service, timeout: float, pid_alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.healthy():
            return
        if not pid_alive():
            break
        time.sleep(0.2)
    tail = "\n".join(_log_tail(service.log_file).splitlines()[-30:])
    raise RuntimeError(f"{service.name} did not become healthy at {service.url}; last log lines:\n{tail}")


LOG_KEEP_BYTES = 50 * 2**20  # a service's log past this at its start becomes <name>.log.1 (the one before goes)


def _open_log(path: Path):
    """The service's log, appended to: the log of every start, the last ones kept. moto logs each request,
    and a suite makes about 40,000 of them: without this its log grew by some 40 MB a run, for good."""
    try:
        if path.stat().st_size > LOG_KEEP_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    return open(path, "ab")


def _log_tail(path: Path, size: int = 64 * 1024) -> str:
    """The end of a log (not all of it: a service's log may be large)."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - size))
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _check_loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if host not in {"127.0.0.1", "localhost"}:
        raise RuntimeError(f"the local stack only starts services on loopback, not {url}")
    if port is None:
        raise RuntimeError(f"{url} names no port")
    return "127.0.0.1", port


# --- moto -----------------------------------------------------------------------
def start_moto(service: Service) -> str:
    if service.healthy():
        return "reused"
    host, port = _check_loopback(service.url)
    with _open_log(service.log_file) as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "catalogue_search_dev.moto_launch", "-H", host, "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    service.pid_file.write_text(str(proc.pid))
    _wait_healthy(service, 60, lambda: proc.poll() is None)
    return "started"


# --- the local SageMaker ----------------------------------------------------------
def start_sagemaker(service: Service, moto: Service) -> str:
    """Start the local SageMaker server in front of `moto` (which must be up)."""
    if service.healthy():
        return "reused"
    host, port = _check_loopback(service.url)
    command = [sys.executable, "-m", "catalogue_search_dev.sagemaker_local", "serve", "--host", host]
    command += ["--port", str(port), "--moto-url", moto.url]
    with _open_log(service.log_file) as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    service.pid_file.write_text(str(proc.pid))
    _wait_healthy(service, 60, lambda: proc.poll() is None)
    return "started"


# --- OpenSearch -------------------------------------------------------------------
def _maven_fetch(artifact: str, dest: Path) -> Path:
    """Fetch an artifact from Maven Central with mvn (cached in ~/.m2 and in dest)."""
    group, name, version, packaging = artifact.split(":")
    target = dest / f"{name}-{version}.{packaging}"
    if target.exists():
        return target
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to download OpenSearch from Maven Central")
    dest.mkdir(parents=True, exist_ok=True)
    log.warning("downloading %s from Maven Central", artifact)
    result = subprocess.run(
        ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={dest}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not target.exists():
        raise RuntimeError(f"mvn could not fetch {artifact}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return target


def _run_as_service_user() -> bool:
    return os.geteuid() == 0


def _ensure_service_user() -> None:
    try:
        subprocess.run(["id", SERVICE_USER], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )


def install_opensearch() -> Path:
    """Download, unpack and patch OpenSearch + k-NN into the cache (once)."""
    root = opensearch_root()
    home = root / f"opensearch-{OPENSEARCH_VERSION}"
    marker = home / ".catsearch-installed"
    if not marker.exists():
        with exclusive(root / ".install.lock"):  # the cluster's nodes, the secured node: one installs
            if not marker.exists():
                _install_opensearch(home, marker)
    return home


def _install_opensearch(home: Path, marker: Path) -> None:
    root = home.parent
    downloads = cache_home() / "downloads"
    dist = _maven_fetch(OPENSEARCH_ARTIFACT, downloads)
    knn = _maven_fetch(KNN_ARTIFACT, downloads)
    if home.exists():
        shutil.rmtree(home)
    with zipfile.ZipFile(dist) as zf:
        zf.extractall(root)
    plugin_dir = home / "plugins" / "opensearch-knn"
    plugin_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(knn) as zf:
        zf.extractall(plugin_dir)
    descriptor = plugin_dir / "plugin-descriptor.properties"
    text = descriptor.read_text()
    # The integ-test zip has no lang-painless; k-NN only needs it for scripting.
    text = text.replace("extended.plugins=lang-painless\n", "extended.plugins=lang-painless;optional=true\n")
    descriptor.write_text(text)
    for script in (home / "bin").iterdir():
        script.chmod(0o755)
    marker.write_text(f"{OPENSEARCH_VERSION} + k-NN {KNN_VERSION}\n")


def _java_home() -> str:
    for candidate in (os.environ.get("OPENSEARCH_JAVA_HOME"), os.environ.get("JAVA_HOME")):
        if candidate and Path(candidate, "bin", "java").exists():
            return candidate
    java = shutil.which("java")
    if not java:
        raise RuntimeError("OpenSearch needs Java 11-21 (OpenJDK 17 works): no `java` on PATH")
    return str(Path(os.path.realpath(java)).parent.parent)


def start_opensearch(
    service: Service,
    home: Path | None = None,
    root: Path | None = None,
    extra: dict[str, str] | None = None,
    java_options: str = "",
) -> str:
    """Start (or reuse) a node of the install `home` (default: the plain one) with its files under `root`.

    `extra` adds or overrides node settings (the secured node's TLS and security plugin, `secure_stack.py`);
    `java_options` are added to the JVM's.
    """
    if service.healthy():
        return "reused"
    host, port = _check_loopback(service.url)
    home = home or install_opensearch()
    root = root or opensearch_root()
    data, logs, run, tmp = root / "data", root / "logs", root / "run", root / "tmp"
    for path in (data, logs, run, tmp):
        path.mkdir(parents=True, exist_ok=True)
    pid_file = service.pid_file
    pid_file.unlink(missing_ok=True)
    node_settings = {
        "network.host": host,
        "http.port": str(port),
        "transport.port": str(port + 100),
        "discovery.type": "single-node",
        "path.data": str(data),
        "path.logs": str(logs),
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        "node.name": "catsearch-local",
        **(extra or {}),
    }
    cmd = [str(home / "bin" / "opensearch"), "-d", "-p", str(pid_file)]
    for name, value in node_settings.items():
        cmd += ["-E", f"{name}={value}"]
    env = dict(os.environ)
    env["OPENSEARCH_JAVA_HOME"] = _java_home()
    # Its JVM's temporary files in the node's own folder: left to itself, each start makes an
    # opensearch-<number> directory in the machine's /tmp that nothing removes.
    env["OPENSEARCH_TMPDIR"] = str(tmp)
    env.setdefault("OPENSEARCH_JAVA_OPTS", os.environ.get("CATSEARCH_OPENSEARCH_HEAP", "-Xms1g -Xmx1g"))
    env["OPENSEARCH_JAVA_OPTS"] = f"{env['OPENSEARCH_JAVA_OPTS']} {java_options}".strip()
    if _run_as_service_user():
        # OpenSearch refuses to run as root.
        _ensure_service_user()
        subprocess.run(["chown", "-R", f"{SERVICE_USER}:", str(root)], check=True)
        cmd = ["runuser", "-u", SERVICE_USER, "--", *cmd]
    with _open_log(service.log_file) as out:
        result = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        _wait_healthy(service, 0)
    _wait_healthy(service, 180, lambda: _read_pid(service) is not None or not pid_file.exists())
    return "started"


# --- public ----------------------------------------------------------------------
def up() -> dict[str, str]:
    """Start (or reuse) every service; return what happened to each. OpenSearch, the slowest to start (its
    JVM: about 10 s), starts beside moto and the local SageMaker server, which needs moto."""
    moto, opensearch, sagemaker = services()
    with ThreadPoolExecutor(1) as pool:
        search = pool.submit(start_opensearch, opensearch)
        started = {"moto": start_moto(moto)}
        started["sagemaker"] = start_sagemaker(sagemaker, moto)
        started["opensearch"] = search.result()
    return started


def status() -> dict[str, str]:
    out = {}
    for service in services():
        pid = _read_pid(service)
        health = "healthy" if service.healthy() else "down"
        owner = f"started by ./dev, pid {pid}" if pid else "not started by ./dev"
        out[service.name] = f"{health} at {service.url} ({owner})"
        if service.name == "sagemaker" and health == "healthy":
            from catalogue_search_dev.sagemaker_local import describe_model_servers

            out["torchserve"] = describe_model_servers(service.url)
    from catalogue_search_dev import ui_state

    out["airflow"] = ui_state.status()
    return out


def stop(service: Service) -> str:
    """Stop one service if this module started it (by its recorded pid)."""
    pid = _read_pid(service)
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        return "not running (nothing started by ./dev)"
    try:
        # moto and the SageMaker server lead their own process group (with the latter's job runners);
        # an OpenSearch node (plain or secured) daemonizes into a group it does not lead.
        if service.name.startswith("opensearch"):
            os.kill(pid, signal.SIGTERM)
        else:
            os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for _ in range(60):
        try:
            os.waitpid(pid, os.WNOHANG)  # our own child (a test started it): reap it
        except ChildProcessError:
            pass
        if _read_pid(service) is None:
            break
        time.sleep(0.5)
    service.pid_file.unlink(missing_ok=True)
    return f"stopped pid {pid}"


def down() -> dict[str, str]:
    """Stop the services this module started (by recorded pid), and the Airflow of `./dev ui`, nothing else."""
    from catalogue_search_dev import ui_state

    stopped = {"airflow": ui_state.stop_recorded()}
    return {**stopped, **{service.name: stop(service) for service in reversed(services())}}
