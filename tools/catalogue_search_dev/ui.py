"""`./dev ui`: `airflow standalone`, stopped with everything it started on Ctrl-C or SIGTERM.

`airflow standalone` runs the scheduler (with the LocalExecutor's worker
processes), the DAG processor, the API server and the triggerer as its
children. It stops them itself on SIGINT, but dies at once on SIGTERM, and its
children's children (executor workers, task processes in their own process
groups) can outlive them. So:

- it runs in its own process group, with this process as the subreaper of
  everything below it (an orphan is re-parented here, not to init, and stays
  findable);
- Ctrl-C or SIGTERM here is forwarded to it as SIGINT, and Airflow gets
  `GRACE_SECONDS` to shut down by itself;
- then whatever is left below this process (its group and every descendant)
  gets SIGTERM, and after `TERM_SECONDS` SIGKILL, and is reaped.

A second Ctrl-C skips the grace period. The pid is recorded so that
`./dev stack status` says whether an Airflow started by `./dev ui` still runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

GRACE_SECONDS = 30.0
TERM_SECONDS = 10.0
PR_SET_CHILD_SUBREAPER = 36


def pid_file() -> Path:
    from catalogue_search_dev.stack import state_dir

    return state_dir() / "airflow.pid"


# --- /proc ------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int, int, str] | None:
    """(ppid, pgid, sid, state) of a live process, None when it is gone (or a zombie already reaped)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[3]), fields[0]


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Processes (zombies excluded) whose process group is `pgid`."""
    out = []
    for pid in _all_pids():
        st = _stat(pid)
        if st and st[1] == pgid and st[3] != "Z":
            out.append(pid)
    return out


def descendants(root: int) -> list[int]:
    """Every live process below `root` (by parent pid), zombies excluded."""
    children: dict[int, list[int]] = {}
    state: dict[int, str] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st:
            children.setdefault(st[0], []).append(pid)
            state[pid] = st[3]
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if state.get(pid) != "Z":
            out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init; the group kill still applies
        pass


def _reap() -> None:
    """Collect exited children (re-parented orphans included) so no zombie is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# --- running and stopping -----------------------------------------------------------
class _Signals:
    """Ctrl-C / SIGTERM recorded as flags instead of a KeyboardInterrupt in the middle of anything."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, lambda signum, frame: self.received.append(signum))
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run(
    cmd: list[str],
    env: dict[str, str],
    *,
    say: Callable[[str], None] = print,
    grace: float = GRACE_SECONDS,
    term: float = TERM_SECONDS,
) -> int:
    """Run `cmd` (airflow standalone) until it exits or a signal arrives; then stop all of it."""
    _become_subreaper()
    with _Signals() as signals:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, process_group=0)
        port = env.get("AIRFLOW__API__PORT", "8080")
        pid_file().write_text(f"{proc.pid} http://127.0.0.1:{port}\n")
        try:
            while proc.poll() is None and not signals.received:
                time.sleep(0.2)
            if signals.received:
                say(f"stopping Airflow (pid {proc.pid}): waiting up to {grace:.0f} s for its own shutdown")
            stop(proc, signals.received, say=say, grace=grace, term=term)
        finally:
            pid_file().unlink(missing_ok=True)
    if signals.received:
        say("Airflow stopped: no process it started is left")
        return 0
    return proc.returncode or 0


def stop(
    proc: subprocess.Popen,
    received: list[int],
    *,
    say: Callable[[str], None] = print,
    grace: float = GRACE_SECONDS,
    term: float = TERM_SECONDS,
) -> None:
    """Ask `proc` to shut down (SIGINT), wait, then SIGTERM and SIGKILL its group and every descendant."""
    me, pgid = os.getpid(), proc.pid

    def left() -> list[int]:
        return sorted((set(group_members(pgid)) | set(descendants(me))) - {me})

    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGINT)  # standalone's own shutdown: it stops its components
        except ProcessLookupError:
            pass
    asked = len(received)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and len(received) <= asked:
        proc.poll()
        _reap()
        if not left():
            return
        time.sleep(0.2)
    for sig, wait in ((signal.SIGTERM, term), (signal.SIGKILL, 5.0)):
        pids = left()
        if not pids:
            return
        say(f"{len(pids)} Airflow processes still running: sending {signal.Signals(sig).name}")
        _signal_all(pids, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and left():
            proc.poll()
            _reap()
            time.sleep(0.2)
    proc.poll()
    _reap()
    if left():
        say(f"processes that would not die: {left()}")


# --- status -----------------------------------------------------------------------------
def status() -> str:
    """Whether an Airflow started by `./dev ui` is running, by its recorded pid and process group."""
    path = pid_file()
    try:
        pid_text, url = (path.read_text().split() + [""])[:2]
        pid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return "not running (no Airflow started by ./dev ui)"
    members = group_members(pid)
    if pid in members:
        return f"running at {url} (started by ./dev ui, pid {pid}, {len(members)} processes)"
    if members:
        return f"pid {pid} has exited but {len(members)} processes of its group still run: {members}"
    return f"not running (pid {pid}, started by ./dev ui, has exited)"
