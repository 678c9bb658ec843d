"""The cluster stack's OpenSearch nodes: three from the one Maven install, each with its own ports,
data, logs and copy of the config, discovering each other on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from typing import TYPE_CHECKING

from catalogue_search_dev.cluster_procs import alive, http_json, read_pid, wait_until

if TYPE_CHECKING:
    from catalogue_search_dev.cluster import Layout

NODES = 3


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
    for path in (folder / "data", folder / "logs", folder / "tmp", layout.data / "run"):
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
    env["OPENSEARCH_TMPDIR"] = str(folder / "tmp")  # not an opensearch-<number> directory left in /tmp
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
    wait_until(lambda: not alive(pid), 30, f"the end of {node_name(node)}")
    return pid
