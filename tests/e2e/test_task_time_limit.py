"""A hung call ends at its task's execution_timeout, through `airflow dags test`, against a
server on loopback that accepts connections and never answers.

- `catalogue_rollback` against such an OpenSearch "node": the DAG's one task
  reaches it through the `opensearch_default` connection, and the task's time
  limit (`CATSEARCH_TASK_TIMEOUT_S`, 12 s here) ends it long before the client's
  own read timeout (60 s) would.
- A task body of the same helper whose hung calls run in a thread pool (as the
  copy, the bulk load and the store reads do): the limit ends it too, although
  the pool would wait for every call in flight and every call queued.

No stack needed. Airflow runs in the test session's AIRFLOW_HOME.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from datetime import datetime

import pytest

from catalogue_search import index
from catalogue_search.settings import Settings
from catalogue_search_dev import prefork

TASK_LIMIT_S = 12  # time enough to reach the call that hangs; far under the client's own read timeout


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte."""

    def __init__(self, hold_s: float | None = None, most: int | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hold_s = hold_s  # close each connection after this long (None: never)
        self.most = most  # stop listening after this many connections (None: never)
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
            if self.hold_s is not None:
                threading.Timer(self.hold_s, conn.close).start()
            if self.most is not None and len(self.accepted) >= self.most:
                self.sock.close()  # later connections are refused
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def silent_opensearch():
    server = SilentServer()
    yield server
    server.close()


def _dags_test_with_a_time_limit(dag_id: str, limit_s: int, unique: str, **env: str) -> subprocess.CompletedProcess:
    """`airflow dags test dag_id` with every task limited to `limit_s` and no retries."""
    env = {**os.environ, **env, "CATSEARCH_TASK_TIMEOUT_S": str(limit_s), "CATSEARCH_TASK_RETRIES": "0"}
    for name in Settings.from_env({}).missing():  # a bare environment: the run needs a complete configuration
        env.setdefault(name, "local" if name.endswith("QUERY_ENCODER") else f"hang-{unique}")
    return prefork.dags_test(dag_id, env, timeout=600)


def _timestamp(log: str, marker: str) -> datetime:
    line = next(line for line in log.splitlines() if marker in line)
    return datetime.fromisoformat(re.match(r"(\S+?)Z? ", line).group(1))


def test_a_hung_opensearch_call_ends_at_the_task_time_limit(silent_opensearch, unique):
    assert index.make_client.__kwdefaults__["timeout"] > TASK_LIMIT_S * 1.5  # the limit, not the client, ends it
    started = time.time()
    result = _dags_test_with_a_time_limit(
        "catalogue_rollback",
        TASK_LIMIT_S,
        unique,
        CATSEARCH_OPENSEARCH_URL=f"http://127.0.0.1:{silent_opensearch.port}",
        AIRFLOW_CONN_OPENSEARCH_DEFAULT=json.dumps(
            {"conn_type": "opensearch", "host": "127.0.0.1", "port": silent_opensearch.port, "schema": "http"}
        ),
        CATSEARCH_INDEX_ALIAS=f"hang-{unique}",
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


HUNG_POOL_DAG = """
import os
import socket
from concurrent.futures import ThreadPoolExecutor

from airflow.sdk import dag

from catalogue_search.airflow_tasks import TaskEnv, catalogue_task


@dag(dag_id="hung_pool", schedule=None, tags=["test"])
def hung_pool():
    @catalogue_task()
    def read_in_a_pool(env: TaskEnv) -> None:
        def read(_):
            with socket.create_connection(("127.0.0.1", int(os.environ["SILENT_PORT"]))) as conn:
                return conn.recv(1)

        with ThreadPoolExecutor(2) as pool:  # two calls in flight, two queued behind them
            list(pool.map(read, range(4)))

    read_in_a_pool()


hung_pool()
"""


def test_hung_calls_in_a_thread_pool_end_at_the_task_time_limit(tmp_path, unique):
    # Two calls hang for 18 s, then the two queued ones are refused: without the helper the
    # task would end when the pool has drained, at 18 s (the run's process still waits for them at its end).
    limit, hold = 5, 18
    server = SilentServer(hold_s=hold, most=2)
    (tmp_path / "hung_pool.py").write_text(HUNG_POOL_DAG)
    try:
        result = _dags_test_with_a_time_limit(
            "hung_pool", limit, unique, AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path), SILENT_PORT=str(server.port)
        )
    finally:
        server.close()
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-4000:]
    assert len(server.accepted) >= 2, log[-4000:]
    assert "AirflowTaskTimeout" in log and "past its time limit" in log, log[-4000:]
    ended = (_timestamp(log, "new_state=failed") - _timestamp(log, "Task started")).total_seconds()
    assert limit <= ended < limit + 12 < hold, ended
