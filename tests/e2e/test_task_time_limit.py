"""A hung call ends at its task's execution_timeout: `airflow dags test catalogue_rollback` against an
OpenSearch "node" on loopback that accepts the connection and never answers.

No stack needed: the DAG's one task reaches the silent socket through the
`opensearch_default` connection, and the task's time limit
(`CATSEARCH_TASK_TIMEOUT_S`, 30 s here) must end it long before the client's
own read timeout (60 s) would. Airflow runs in the test session's AIRFLOW_HOME.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from catalogue_search import index
from catalogue_search.settings import Settings

TASK_LIMIT_S = 30


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[float] = []
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            self.accepted.append(time.time())

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def silent_opensearch():
    server = SilentServer()
    yield server
    server.close()


def _timestamp(log: str, marker: str) -> datetime:
    line = next(line for line in log.splitlines() if marker in line)
    return datetime.fromisoformat(re.match(r"(\S+?)Z? ", line).group(1))


def test_a_hung_opensearch_call_ends_at_the_task_time_limit(silent_opensearch, unique):
    assert index.make_client.__kwdefaults__["timeout"] > TASK_LIMIT_S * 1.5  # the limit, not the client, ends it
    env = {
        **os.environ,
        "CATSEARCH_OPENSEARCH_URL": f"http://127.0.0.1:{silent_opensearch.port}",
        "AIRFLOW_CONN_OPENSEARCH_DEFAULT": json.dumps(
            {"conn_type": "opensearch", "host": "127.0.0.1", "port": silent_opensearch.port, "schema": "http"}
        ),
        "CATSEARCH_INDEX_ALIAS": f"hang-{unique}",
        "CATSEARCH_TASK_TIMEOUT_S": str(TASK_LIMIT_S),
        "CATSEARCH_TASK_RETRIES": "0",
    }
    for name in Settings.from_env({}).missing():  # a bare environment: the run needs a complete configuration
        env.setdefault(name, "local" if name.endswith("QUERY_ENCODER") else f"hang-{unique}")
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "catalogue_rollback"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    ended = time.time()
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-4000:]
    assert silent_opensearch.accepted, "the task never reached the silent node:\n" + log[-4000:]
    assert "AirflowTaskTimeout" in log, log[-4000:]
    assert "alias_targets" in log  # the traceback ends in the call that hung: the rollback's first OpenSearch call
    # The limit counts from the task's start; the client's own read timeout (60 s) never came into it.
    held = (_timestamp(log, "Process timed out") - _timestamp(log, "Task started")).total_seconds()
    assert TASK_LIMIT_S <= held < TASK_LIMIT_S + 15, held
    assert ended - silent_opensearch.accepted[0] < index.make_client.__kwdefaults__["timeout"], ended - started
    assert "new_state=failed" in log and "up_for_retry" not in log.lower()
