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
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from catalogue_search_dev import cluster_airflow
from catalogue_search_dev.cluster_nodes import (  # noqa: F401  (the cluster's public names)
    NODES,
    health,
    kill_node,
    node_name,
    node_up,
    start_node,
    wait_for_nodes,
)
from catalogue_search_dev.cluster_procs import read_pid, redis_ping, start_redis, stop_pid  # noqa: F401
from catalogue_search_dev.localenv import cache_home

WORKERS = 2
REDIS_BASE_PORT = 6379
OPENSEARCH_BASE_PORT = 9200


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
