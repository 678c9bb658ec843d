"""`./dev ui`: `airflow standalone`, and everything it started stopped on Ctrl-C, SIGTERM or SIGHUP.

`airflow standalone` runs the scheduler (with the LocalExecutor's workers and
a log server), the DAG processor, the API server and the triggerer (with its
log server) as its children. It stops them itself on SIGINT, but dies at once
on SIGTERM, and the children of its children can outlive it. So:

- it runs in a session of its own, with this process as the subreaper of
  everything below it: a terminal's signals reach only this process, and an
  orphan is re-parented here, not to init, and stays findable;
- its output comes through a pipe that this process reads and copies to its
  own stdout and to `<CATSEARCH_HOME>/stack/airflow-ui.log`. When stdout goes
  away (`./dev ui | tee` and Ctrl-C kills tee; a closed terminal), the copy
  to it stops and Airflow never writes into a dead pipe; the log keeps all;
- Ctrl-C, SIGTERM or SIGHUP here is forwarded to it as SIGINT, and Airflow
  gets `GRACE_SECONDS` to shut down by itself (`STRAGGLER_SECONDS` once
  standalone itself has exited); then whatever is left of its session and below
  this process gets SIGTERM, after `TERM_SECONDS` SIGKILL, and is reaped. A
  second signal skips the grace period.

The log servers bind 127.0.0.1 (`airflow_loopback`). The pids are recorded in
`<CATSEARCH_HOME>/stack/airflow.json` for `./dev stack status` and
`./dev stack down` (`ui_state`).
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable

from catalogue_search_dev import airflow_loopback, procs, ui_state
from catalogue_search_dev.stack import state_dir

GRACE_SECONDS = 30.0
TERM_SECONDS = 10.0
STRAGGLER_SECONDS = 5.0  # after standalone has exited, before what it left behind gets SIGTERM
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_CHILD_SUBREAPER = 36


class Console:
    """Where `./dev ui` writes: its stdout and stderr, which may go away, and a log file that keeps all.

    One writer thread does every write to the descriptors, so the supervisor
    never blocks on a reader that stopped reading. A write that fails (EPIPE
    from a closed pipe, EIO from a hung-up terminal) points that descriptor at
    /dev/null: nothing is written to it again, and the exit flush cannot fail.
    """

    QUEUE_LINES = 10_000  # beyond this, lines for a stalled reader are dropped (the log has them)

    def __init__(self, log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w", encoding="utf-8", errors="replace")
        self._lock = threading.Lock()
        self._fds = {fd for fd, stream in ((1, sys.stdout), (2, sys.stderr)) if stream is not None}
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(self.QUEUE_LINES)
        self._writer = threading.Thread(target=self._write_all, daemon=True)
        self._writer.start()

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            fd, data = item
            if fd not in self._fds:
                continue
            try:
                while data:
                    data = data[os.write(fd, data) :]
            except OSError:
                self._fds.discard(fd)
                _point_at_devnull(fd)

    def _emit(self, fd: int, log_text: str, text: str) -> None:
        with self._lock:
            self._log.write(log_text)
            self._log.flush()
        try:
            self._queue.put_nowait((fd, text.encode(errors="replace")))
        except queue.Full:
            pass

    def out(self, text: str) -> None:
        self._emit(1, text, text)

    def say(self, msg: str) -> None:
        self._emit(2, f"[dev] {msg}\n", f"\033[1m[dev]\033[0m {msg}\n")

    def close(self, timeout: float = 2.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._writer.join(timeout)
        self._log.close()


def _point_at_devnull(fd: int) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


class _Signals:
    """Stop signals recorded as flags instead of a KeyboardInterrupt in the middle of anything."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, lambda signum, frame: self.received.append(signum))
        self._old[signal.SIGPIPE] = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # EPIPE, handled, not death
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init; the session kill still applies
        pass


def _relay(pipe: IO[bytes], console: Console) -> None:
    for line in iter(pipe.readline, b""):
        console.out(line.decode(errors="replace"))


def run(cmd: list[str], env: dict[str, str], *, grace: float = GRACE_SECONDS, term: float = TERM_SECONDS) -> int:
    """Run `cmd` (airflow standalone) until it exits or a stop signal arrives; then stop all of it."""
    _become_subreaper()
    console = Console(ui_state.log_file())
    env = airflow_loopback.environment(env, state_dir() / "bin")
    before = set(procs.descendants(os.getpid()))  # e.g. the moto server this `./dev ui` started: not Airflow's
    left: list[int] = []
    with _Signals() as signals:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        relay = threading.Thread(target=_relay, args=(proc.stdout, console), daemon=True)
        relay.start()
        ui_state.record(proc.pid, env)
        try:
            while proc.poll() is None and not signals.received:
                time.sleep(0.2)
        finally:
            if signals.received:
                name = signal.Signals(signals.received[0]).name
                console.say(f"{name}: stopping Airflow (session {proc.pid}), up to {grace:.0f} s for its own shutdown")
            left = stop(proc, signals.received, console.say, grace=grace, term=term, keep=before)
            relay.join(timeout=5)
            if not left:
                ui_state.forget()
    if left:
        console.say(f"processes that would not die (still recorded for ./dev stack status): {left}")
        code = 1
    elif signals.received:
        console.say("Airflow stopped: no process it started is left")
        code = 0
    else:
        code = proc.returncode or 0
    console.close()
    return code


def stop(
    proc: subprocess.Popen,
    received: list[int],
    say: Callable[[str], None],
    *,
    grace: float = GRACE_SECONDS,
    term: float = TERM_SECONDS,
    keep: set[int] = frozenset(),
) -> list[int]:
    """SIGINT to `proc`, a wait, then SIGTERM and SIGKILL to its session and every new descendant.

    Returns the pids still alive at the end (none, unless a process ignores SIGKILL).
    """
    me, sid = os.getpid(), proc.pid

    def left() -> list[int]:
        return sorted((set(procs.session_members(sid)) | set(procs.descendants(me, keep))) - {me})

    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGINT)  # standalone's own shutdown: it stops its components
        except ProcessLookupError:
            pass
    asked = len(received)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and len(received) <= asked:
        if proc.poll() is not None:  # standalone is done: what it left gets a few seconds, not the whole grace
            deadline = min(deadline, time.monotonic() + STRAGGLER_SECONDS)
        procs.reap()
        if not left():
            return []
        time.sleep(0.2)
    for sig, wait in ((signal.SIGTERM, term), (signal.SIGKILL, 5.0)):
        pids = left()
        if not pids:
            return []
        say(f"{len(pids)} Airflow processes still running: sending {signal.Signals(sig).name}")
        _signal_all(pids, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and left():
            proc.poll()
            procs.reap()
            time.sleep(0.2)
    proc.poll()
    procs.reap()
    return left()


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
