"""What `./dev ui` started, for `./dev stack status` and `./dev stack down`.

`./dev ui` records its own pid, Airflow's session and the API server's port
in `<CATSEARCH_HOME>/stack/airflow.json`, and removes the record once nothing
it started is left. `status()` does not trust the record alone: it looks for
live processes of that session and for whoever listens on the port, so a
supervisor killed with SIGKILL, or an Airflow that someone else started on
the port, is reported as what it is.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from catalogue_search_dev import procs
from catalogue_search_dev.stack import state_dir


@dataclass(frozen=True)
class Record:
    supervisor: int  # the `./dev ui` process
    airflow: int  # `airflow standalone`, leader of the session every component runs in
    port: int
    url: str


def record_file() -> Path:
    return state_dir() / "airflow.json"


def log_file() -> Path:
    return state_dir() / "airflow-ui.log"


def api_port(env: dict[str, str] | None = None) -> int:
    return int((os.environ if env is None else env).get("AIRFLOW__API__PORT", "8080"))


def record(airflow_pid: int, env: dict[str, str]) -> Record:
    port = api_port(env)
    rec = Record(os.getpid(), airflow_pid, port, f"http://127.0.0.1:{port}")
    record_file().write_text(json.dumps(rec.__dict__) + "\n")
    return rec


def read() -> Record | None:
    try:
        return Record(**json.loads(record_file().read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def forget() -> None:
    record_file().unlink(missing_ok=True)


def _holders(port: int) -> str:
    found = procs.port_holders(port)
    if not found:
        return f"port {port} is free"
    who = sorted({pid for _, pid in found if pid is not None})
    named = ", ".join(f"pid {pid} ({procs.cmdline(pid)[:60]})" for pid in who) or "a process this user cannot see"
    return f"port {port} is held ({', '.join(sorted({a for a, _ in found}))}) by {named}"


def status() -> str:
    """One line: is an Airflow of `./dev ui` running, by its processes and its port, not by the record alone."""
    rec = read()
    if rec is None:
        port = api_port()
        if not procs.listeners(port):
            return f"not running (no Airflow started by ./dev ui; port {port} is free)"
        return f"not started by ./dev ui, but {_holders(port)}"
    members = procs.session_members(rec.airflow)
    supervisor = procs.alive(rec.supervisor)
    if supervisor and members:
        listening = "answering" if procs.listeners(rec.port) else "not listening yet"
        return (
            f"running at {rec.url} (started by ./dev ui, pid {rec.airflow}, {len(members)} processes; "
            f"port {rec.port} {listening})"
        )
    if members or procs.listeners(rec.port):
        state = "still runs" if supervisor else "is gone"
        return (
            f"NOT stopped: ./dev ui (pid {rec.supervisor}) {state}, but {len(members)} processes of its Airflow "
            f"(session {rec.airflow}) run: {members[:12]}; {_holders(rec.port)}. `./dev stack down` stops them"
        )
    return f"not running (./dev ui, pid {rec.supervisor}, has exited; port {rec.port} is free)"


def stop_recorded(wait: float = 60.0, term: float = 10.0) -> str:
    """Stop what `./dev ui` started: ask its supervisor (SIGTERM) if it runs, else kill what is left of its session
    (SIGTERM, and SIGKILL for what is left `term` seconds later)."""
    rec = read()
    if rec is None:
        return "not running (nothing started by ./dev ui)"
    stopped_supervisor = procs.alive(rec.supervisor)
    if stopped_supervisor:
        os.kill(rec.supervisor, signal.SIGTERM)  # it stops Airflow as on Ctrl-C
        deadline = time.monotonic() + wait
        while procs.alive(rec.supervisor) and time.monotonic() < deadline:
            time.sleep(0.5)
    members = procs.session_members(rec.airflow)
    if not members and not stopped_supervisor:
        forget()
        return f"not running (./dev ui, pid {rec.supervisor}, had exited and left nothing)"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in members:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + term
        while (members := procs.session_members(rec.airflow)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not members:
            break
    if members:
        return f"could not stop pids {members} of ./dev ui's Airflow (session {rec.airflow})"
    forget()
    return f"stopped the Airflow of ./dev ui (session {rec.airflow})"
