"""`airflow`, with the log servers of the scheduler and the triggerer on 127.0.0.1 only.

Airflow 3.3's log server (`airflow.utils.serve_logs.core.serve_logs`, started
by the scheduler for the LocalExecutor's workers on
`[logging] worker_log_server_port` and by the triggerer on
`trigger_log_server_port`) calls `uvicorn.run(..., host="")`: every
interface, IPv4 and IPv6, with no setting to change it. `./dev ui` puts a
directory first on PATH whose `airflow` runs this module, so the components
that `airflow standalone` starts (it runs them as `airflow <component>`) bind
their log servers to 127.0.0.1, like everything else of the local stack.

The API server fetches a running task's log from
`http://<task's hostname>:<port>/log/...`; `hostname` (the
`[core] hostname_callable` `./dev ui` sets) makes that address 127.0.0.1.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable

LOOPBACK = "127.0.0.1"
LOG_SERVER_APP = "airflow.utils.serve_logs.log_server:get_app"
HOSTNAME_CALLABLE = f"{__name__}.hostname"


def hostname() -> str:
    """The host name tasks record, which the API server uses to reach the log servers: loopback."""
    return LOOPBACK


def bind_log_server_to_loopback(run: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `uvicorn.run` so that Airflow's log server app listens on 127.0.0.1 instead of every interface."""

    @functools.wraps(run)
    def wrapper(app: Any, *args: Any, **kwargs: Any) -> Any:
        if app == LOG_SERVER_APP and not kwargs.get("host"):
            kwargs["host"] = LOOPBACK
        return run(app, *args, **kwargs)

    return wrapper


def shim_dir(root: Path) -> Path:
    """A directory holding an `airflow` that runs this module with this interpreter; put it first on PATH."""
    root.mkdir(parents=True, exist_ok=True)
    shim = root / "airflow"
    text = f'#!/bin/sh\nexec "{sys.executable}" -m {__name__} "$@"\n'
    if not shim.exists() or shim.read_text() != text:
        shim.write_text(text)
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def environment(env: dict[str, str], root: Path) -> dict[str, str]:
    """`env` with the shim first on PATH and task host names on loopback (a caller's own setting wins)."""
    out = dict(env)
    out["PATH"] = os.pathsep.join([str(shim_dir(root)), env.get("PATH", os.defpath)])
    out.setdefault("AIRFLOW__CORE__HOSTNAME_CALLABLE", HOSTNAME_CALLABLE)
    return out


def main() -> int:
    import uvicorn

    uvicorn.run = bind_log_server_to_loopback(uvicorn.run)
    from airflow.__main__ import main as airflow_main

    sys.argv[0] = "airflow"
    return airflow_main() or 0


if __name__ == "__main__":
    sys.exit(main())
