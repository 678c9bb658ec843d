"""The cluster stack's processes: start one with its own log and pid file, stop it by that pid, Redis.

Everything here acts only on processes whose pid this code recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catalogue_search_dev.cluster import Layout

REDIS = Path("/usr/bin/redis-server")


def start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot): with the pid, names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_pid(path: Path) -> int | None:
    """The live process recorded in `path`, or None. A pid the system has since given to another
    process is not ours: the file holds the start time too (or, written by OpenSearch, the pid of a
    process whose command line is OpenSearch's)."""
    try:
        recorded = path.read_text().split()
        pid = int(recorded[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    if not alive(pid):
        return None
    if len(recorded) > 1:
        return pid if start_time(pid) == recorded[1] else None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"org.opensearch.bootstrap.OpenSearch" in cmdline else None


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
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.2)
        if not alive(pid):
            break
    path.unlink(missing_ok=True)
    return f"stopped pid {pid}"


def alive(pid: int) -> bool:
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
    layout.pid_file(name).write_text(f"{proc.pid} {start_time(proc.pid)}\n")
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
