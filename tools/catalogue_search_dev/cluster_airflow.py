"""Airflow on the cluster stack: the CeleryExecutor's settings and its six processes.

The API server, the scheduler, the DAG processor, the triggerer and two Celery
workers (`worker-1@<host>`, `worker-2@<host>`) run as separate processes, each
in its own session with its own log (`<state>/<name>.log`). Workers and the
triggerer serve no logs (`--skip-serve-logs`): they share this machine's log
folder with the API server, which reads task logs from there, and no log server
listens beyond loopback.

Celery delivers with late acks (a task's message is acknowledged when it ends),
so a message held by a worker that dies comes back after the broker's
visibility timeout; a task that was running there is failed by the scheduler
when its heartbeats stop (`task_instance_heartbeat_timeout`) and retried on a
live worker. The visibility timeout must outlast the longest task, or Redis
hands a running task's message to a second worker (docs/cluster.md).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from typing import TYPE_CHECKING

from catalogue_search_dev.cluster_procs import read_pid, spawn, stop_pid, wait_until

if TYPE_CHECKING:
    from catalogue_search_dev.cluster import Layout

WORKER_CONCURRENCY = 2
# The longest task time limit (copy and load: 3 h) plus a margin: a running task's message is never redelivered.
VISIBILITY_TIMEOUT_S = 4 * 3600
HEARTBEAT_TIMEOUT_S = 120
SPLIT_PARTS = 2 * WORKER_CONCURRENCY
INDEX_SHARDS = 3


def workers() -> list[str]:
    from catalogue_search_dev.cluster import WORKERS

    return [f"worker-{i + 1}" for i in range(WORKERS)]


def components() -> list[str]:
    return ["api-server", "scheduler", "dag-processor", "triggerer", *workers()]


def secrets_for(layout: Layout) -> dict[str, str]:
    """The secrets every component of one cluster shares (the API server signs the tasks' tokens)."""
    from catalogue_search_dev.cluster import new_secret

    path = layout.state / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    layout.state.mkdir(parents=True, exist_ok=True)
    found = {"AIRFLOW__API_AUTH__JWT_SECRET": new_secret(), "AIRFLOW__API__SECRET_KEY": new_secret()}
    path.write_text(json.dumps(found))
    path.chmod(0o600)
    return found


def environment(
    layout: Layout,
    *,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
    visibility_timeout_s: int = VISIBILITY_TIMEOUT_S,
) -> dict[str, str]:
    """What the cluster changes in the local environment (`localenv` applies it in cluster mode); the
    components' shared secrets are added when they start (`start`)."""
    from catalogue_search_dev.localenv import opensearch_connection

    api = f"http://127.0.0.1:{layout.api_port}"
    return {
        "CATSEARCH_OPENSEARCH_URL": layout.opensearch_url,
        # Tasks take OpenSearch from this connection before the URL: it names every node too.
        "AIRFLOW_CONN_OPENSEARCH_DEFAULT": opensearch_connection(layout.opensearch_url),
        "CATSEARCH_INDEX_REPLICAS": "1",
        "CATSEARCH_INDEX_SHARDS": str(INDEX_SHARDS),
        "CATSEARCH_SPLIT_PARTS": str(SPLIT_PARTS),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"{layout.redis_url}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"{layout.redis_url}/1",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(visibility_timeout_s),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(heartbeat_timeout_s),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(layout.api_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
    }


def _command(layout: Layout, name: str) -> list[str]:
    airflow = [sys.executable, "-m", "airflow"]
    if name.startswith("worker-"):
        pid = layout.state / f"{name}.celery.pid"
        return [
            *airflow,
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",
            "--pid",
            str(pid),
            "--concurrency",
            str(WORKER_CONCURRENCY),
            "--skip-serve-logs",
            "--without-mingle",
            "--without-gossip",
        ]
    if name == "api-server":
        return [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(layout.api_port)]
    if name in ("scheduler", "triggerer"):
        return [*airflow, name, "--skip-serve-logs"]
    return [*airflow, name]


def api_ready(layout: Layout) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{layout.api_port}/api/v2/monitor/health", timeout=3) as r:
            return r.status == 200
    except Exception:
        return False


def worker_ready(layout: Layout, name: str) -> bool:
    return "ready." in layout.log_file(name).read_text(errors="replace") if layout.log_file(name).exists() else False


def start(layout: Layout, env: dict[str, str], only: list[str] | None = None) -> dict[str, str]:
    """Start (or keep) each component with `env`; wait until the API server answers and the workers are ready."""
    out = {}
    env = {**env, **secrets_for(layout)}
    for name in only or components():
        pid = read_pid(layout.pid_file(name))
        if pid:
            out[name] = f"running (pid {pid})"
            continue
        if name.startswith("worker-"):  # a fresh log: "ready." below is this start's
            layout.log_file(name).unlink(missing_ok=True)
        out[name] = f"started (pid {spawn(layout, name, _command(layout, name), env)})"
        if name == "api-server":
            wait_until(lambda: api_ready(layout), 180, "the Airflow API server", layout.log_file(name))
    for name in only or components():
        if name.startswith("worker-"):
            wait_until(lambda n=name: worker_ready(layout, n), 180, f"Celery {name}", layout.log_file(name))
    return out


def stop(layout: Layout, names: list[str] | None = None) -> dict[str, str]:
    return {name: stop_pid(layout.pid_file(name), group=True) for name in reversed(names or components())}


def status(layout: Layout) -> dict[str, str]:
    out = {}
    for name in components():
        pid = read_pid(layout.pid_file(name))
        extra = f", log {layout.log_file(name)}"
        if name == "api-server" and pid:
            extra = f", {'answering' if api_ready(layout) else 'not answering'} at http://127.0.0.1:{layout.api_port}"
        out[f"airflow {name}"] = (f"running (pid {pid})" if pid else "not running") + extra
    return out


def _parents() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def worker_of(layout: Layout, pid: int) -> str | None:
    """The worker a process (a task's) runs under, by its chain of parents; None when none."""
    mains = {read_pid(layout.pid_file(name)): name for name in workers()}
    parents = _parents()
    while pid and pid not in mains:
        pid = parents.get(pid, 0)
    return mains.get(pid)


def kill_worker(layout: Layout, name: str) -> list[int]:
    """kill -9 a worker and every process below it, as a machine that dies would (the fault tests)."""
    import signal

    main = read_pid(layout.pid_file(name))
    if main is None:
        raise RuntimeError(f"{name} of {layout.name} is not running")
    parents = _parents()
    tree, todo = [], [main]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    layout.pid_file(name).unlink(missing_ok=True)
    return tree
