"""The cluster stack: three OpenSearch nodes, Redis, and Airflow with the CeleryExecutor and two workers.

`./dev stack up --cluster` (or `CATSEARCH_STACK=cluster`) starts, beside moto
and the local SageMaker server of the light stack, on loopback only:

- three OpenSearch nodes from the one Maven install (`stack.install_opensearch`),
  each with its own HTTP and transport port, data and log directory, and its
  own copy of the config, discovering each other through `discovery.seed_hosts`;
  the first node takes the port of `CATSEARCH_OPENSEARCH_URL`, the others the
  two after it (transport: HTTP + 100);
- Redis from Debian (`apt-get install redis-server` when it is missing; the
  system service is never started), on its own port and directory;
- Airflow's API server, scheduler, DAG processor, triggerer and two Celery
  workers, each a process with its own log.

Every process is recorded by pid in the layout's state directory; `down()` stops
those and nothing else. `Layout.for_tests()` is the same shape on the next ports,
for the cluster tests, so they never touch the user's cluster (docs/cluster.md).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from catalogue_search_dev import cluster_airflow
from catalogue_search_dev.localenv import cache_home

NODES = 3
WORKERS = 2
REDIS_BASE_PORT = 6379
OPENSEARCH_BASE_PORT = 9200
REDIS = Path("/usr/bin/redis-server")


@dataclass(frozen=True)
class Layout:
    """Where one cluster lives: its ports and directories."""

    name: str
    http_ports: tuple[int, ...]
    redis_port: int
    api_port: int
    state: Path  # pids, logs, Redis's directory
    data: Path  # the nodes' data, logs and config (the OpenSearch user must reach it)

    @classmethod
    def for_user(cls, env: dict[str, str] | None = None) -> Layout:
        """The user's cluster: the first node on the port of CATSEARCH_OPENSEARCH_URL, Redis on 6379 + the
        same offset from 9200 (so helpers with their own OpenSearch port get their own Redis port)."""
        env = dict(os.environ if env is None else env)
        base = base_port(env)
        return cls(
            name="cluster",
            http_ports=tuple(base + i for i in range(NODES)),
            redis_port=REDIS_BASE_PORT + base - OPENSEARCH_BASE_PORT,
            api_port=int(env.get("AIRFLOW__API__PORT", "8080")),
            state=_state_root() / "cluster",
            data=_opensearch_root() / "cluster",
        )

    @classmethod
    def for_tests(cls, env: dict[str, str] | None = None) -> Layout:
        """The cluster tests' own: the three HTTP ports after the user's nodes, Redis on the next port, the
        API server on the seventh port after the base (every port within base..base+9)."""
        env = dict(os.environ if env is None else env)
        base = base_port(env)
        return cls(
            name="test-cluster",
            http_ports=tuple(base + NODES + i for i in range(NODES)),
            redis_port=REDIS_BASE_PORT + base - OPENSEARCH_BASE_PORT + 1,
            api_port=base + 2 * NODES,
            state=_state_root() / "test-cluster",
            data=_opensearch_root() / "test-cluster",
        )

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.http_ports]

    @property
    def opensearch_url(self) -> str:
        """Every node, comma-separated: what CATSEARCH_OPENSEARCH_URL holds on the cluster."""
        return ",".join(self.urls)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}"

    def transport_port(self, node: int) -> int:
        return self.http_ports[node] + 100

    def node_dir(self, node: int) -> Path:
        return self.data / f"node-{node + 1}"

    def pid_file(self, name: str) -> Path:
        """A process's pid; the nodes' under `data` (OpenSearch writes them as its own user)."""
        if name.startswith("node-"):
            return self.data / "run" / f"{name}.pid"
        return self.state / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state / f"{name}.log"


def base_port(env: dict[str, str]) -> int:
    first = env.get("CATSEARCH_OPENSEARCH_URL", "http://127.0.0.1:9200").split(",")[0]
    return urlsplit(first if "://" in first else f"http://{first}").port or OPENSEARCH_BASE_PORT


def _state_root() -> Path:
    from catalogue_search_dev.stack import state_dir

    return state_dir()


def _opensearch_root() -> Path:
    from catalogue_search_dev.stack import opensearch_root

    return opensearch_root()


def mode_file() -> Path:
    return cache_home() / "stack" / "mode"


def enabled(env: dict[str, str] | None = None) -> bool:
    """Whether `./dev` runs the cluster stack: CATSEARCH_STACK=cluster, or `./dev stack up --cluster` said so."""
    env = os.environ if env is None else env
    if env.get("CATSEARCH_STACK"):
        return env["CATSEARCH_STACK"] == "cluster"
    return mode_file().exists() and mode_file().read_text().strip() == "cluster"


# --- processes ------------------------------------------------------------------------
def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    except PermissionError:
        pass
    return pid


def stop_pid(path: Path, *, group: bool, sig: int = signal.SIGTERM, wait: float = 30.0) -> str:
    """Stop the process recorded in `path` (and its process group with `group`): `sig`, then SIGKILL."""
    pid = read_pid(path)
    if pid is None:
        path.unlink(missing_ok=True)
        return "not running"
    for signum in (sig, signal.SIGKILL):
        try:
            os.killpg(pid, signum) if group else os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if not _alive(pid):
            break
    path.unlink(missing_ok=True)
    return f"stopped pid {pid}"


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child: reap it
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def spawn(layout: Layout, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    """Start `cmd` in its own session, output to the layout's `<name>.log`, pid recorded."""
    layout.state.mkdir(parents=True, exist_ok=True)
    with open(layout.log_file(name), "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )
    layout.pid_file(name).write_text(f"{proc.pid}\n")
    return proc.pid


def wait_until(check, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    tail = ""
    if log and log.exists():
        tail = "\nlast log lines:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s{tail}")


def http_json(url: str, timeout: float = 3.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


# --- Redis ------------------------------------------------------------------------------
def ensure_redis() -> Path:
    """Debian's redis-server, installed once if missing (the package's service is not started here)."""
    if REDIS.exists():
        return REDIS
    if not shutil.which("apt-get"):
        raise RuntimeError(f"{REDIS} is missing and there is no apt-get: install Redis for the cluster stack")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env, stdout=subprocess.DEVNULL
    )
    return REDIS


def redis_ping(layout: Layout) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", layout.redis_port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(layout: Layout) -> str:
    if redis_ping(layout):
        return f"reused at {layout.redis_url}"
    exe = ensure_redis()
    folder = layout.state / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [str(exe), "--bind", "127.0.0.1", "--port", str(layout.redis_port), "--dir", str(folder)]
    cmd += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    spawn(layout, "redis", cmd, dict(os.environ))
    wait_until(lambda: redis_ping(layout), 30, "Redis", layout.log_file("redis"))
    return f"started at {layout.redis_url}"


# --- OpenSearch nodes -----------------------------------------------------------------------
def node_name(node: int) -> str:
    return f"node-{node + 1}"


def node_up(layout: Layout, node: int) -> bool:
    """Whether this cluster's node `node` answers at its port (not some other node there)."""
    try:
        found = http_json(layout.urls[node])
    except Exception:
        return False
    return found.get("name") == node_name(node) and found.get("cluster_name") == f"catsearch-{layout.name}"


def health(layout: Layout, timeout: float = 3.0) -> dict:
    """The cluster's health as any live node reports it ({"status": "down"} when none answers)."""
    for url in layout.urls:
        try:
            return http_json(url + "/_cluster/health", timeout)
        except Exception:
            continue
    return {"status": "down", "number_of_nodes": 0}


def start_node(layout: Layout, node: int) -> str:
    """Start node `node` (0-based) as a daemon; returns at once (see `wait_for_nodes`)."""
    from catalogue_search_dev import stack

    if node_up(layout, node):
        return "reused"
    home = stack.install_opensearch()
    folder = layout.node_dir(node)
    config = folder / "config"
    if not config.exists():  # each node its own config: logs and GC files never shared
        shutil.copytree(home / "config", config)
    for path in (folder / "data", folder / "logs", layout.data / "run"):
        path.mkdir(parents=True, exist_ok=True)
    pid_file = layout.pid_file(node_name(node))
    pid_file.unlink(missing_ok=True)
    seeds = ",".join(f"127.0.0.1:{layout.transport_port(i)}" for i in range(NODES))
    settings = {
        "cluster.name": f"catsearch-{layout.name}",
        "node.name": node_name(node),
        "network.host": "127.0.0.1",
        "http.port": layout.http_ports[node],
        "transport.port": layout.transport_port(node),
        "discovery.seed_hosts": seeds,
        "cluster.initial_cluster_manager_nodes": ",".join(node_name(i) for i in range(NODES)),
        "path.data": folder / "data",
        "path.logs": folder / "logs",
        "cluster.routing.allocation.disk.threshold_enabled": "false",
    }
    cmd = [str(home / "bin" / "opensearch"), "-d", "-p", str(pid_file)]
    for key, value in settings.items():
        cmd += ["-E", f"{key}={value}"]
    env = dict(os.environ, OPENSEARCH_PATH_CONF=str(config), OPENSEARCH_JAVA_HOME=stack._java_home())
    heap = os.environ.get("CATSEARCH_OPENSEARCH_HEAP", "-Xms512m -Xmx512m")
    # Heap pages touched when used, not at start; GC logging to stderr (the node's log), not to a shared file.
    env["OPENSEARCH_JAVA_OPTS"] = f"{heap} -XX:-AlwaysPreTouch -Xlog:disable -Xlog:all=warning:stderr"
    layout.state.mkdir(parents=True, exist_ok=True)
    if stack._run_as_service_user():  # OpenSearch refuses to run as root
        stack._ensure_service_user()
        subprocess.run(["chown", "-R", f"{stack.SERVICE_USER}:", str(layout.data)], check=True)
        cmd = ["runuser", "-u", stack.SERVICE_USER, "--", *cmd]
    with open(layout.log_file(node_name(node)), "ab") as out:
        result = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"OpenSearch {node_name(node)} did not start; see {layout.log_file(node_name(node))}")
    return "started"


def wait_for_nodes(layout: Layout, status: tuple[str, ...] = ("green",), timeout: float = 240) -> None:
    def ready() -> bool:
        h = health(layout)
        return h.get("number_of_nodes") == NODES and h.get("status") in status

    wait_until(
        ready, timeout, f"the {NODES} OpenSearch nodes", layout.node_dir(0) / "logs" / f"catsearch-{layout.name}.log"
    )


def kill_node(layout: Layout, node: int) -> int:
    """kill -9 one node (the fault tests); returns its pid."""
    pid = read_pid(layout.pid_file(node_name(node)))
    if pid is None:
        raise RuntimeError(f"{node_name(node)} of {layout.name} is not running")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _alive(pid), 30, f"the end of {node_name(node)}")
    return pid


# --- the whole cluster ------------------------------------------------------------------------
def up(layout: Layout, env: dict[str, str]) -> dict[str, str]:
    """Start (or reuse) Redis, the nodes, then Airflow's components; `env` is the Airflow processes' environment."""
    started = {"redis": start_redis(layout)}
    for node in range(NODES):
        started[node_name(node)] = start_node(layout, node)
    wait_for_nodes(layout, ("green", "yellow"))
    for node in range(NODES):
        started[node_name(node)] += f" at {layout.urls[node]}"
    started.update(cluster_airflow.start(layout, env))
    return started


def down(layout: Layout) -> dict[str, str]:
    stopped = cluster_airflow.stop(layout)
    for node in reversed(range(NODES)):
        stopped[node_name(node)] = stop_pid(layout.pid_file(node_name(node)), group=False, wait=60)
    stopped["redis"] = stop_pid(layout.pid_file("redis"), group=True)
    return stopped


def status(layout: Layout) -> dict[str, str]:
    out = {}
    h = health(layout)
    out["cluster"] = f"{h.get('status')} ({h.get('number_of_nodes', 0)} of {NODES} nodes)"
    for node in range(NODES):
        pid = read_pid(layout.pid_file(node_name(node)))
        state = "up" if node_up(layout, node) else "down"
        out[node_name(node)] = f"{state} at {layout.urls[node]} (pid {pid or '-'}, data {layout.node_dir(node)})"
    pid = read_pid(layout.pid_file("redis"))
    out["redis"] = f"{'up' if redis_ping(layout) else 'down'} at {layout.redis_url} (pid {pid or '-'})"
    out.update(cluster_airflow.status(layout))
    return out


def new_secret() -> str:
    return secrets.token_urlsafe(32)


if __name__ == "__main__":  # python -m catalogue_search_dev.cluster status
    print(json.dumps(status(Layout.for_user()), indent=1), file=sys.stdout)
