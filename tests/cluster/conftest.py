"""The cluster tests' own cluster: three OpenSearch nodes, Redis, Airflow with two Celery workers.

It runs on the ports after the user's (`cluster.Layout.for_tests`), in this
session's AIRFLOW_HOME, with buckets and an alias named with the session's
token, and is stopped (its data removed) when the module ends: the user's
stack, light or cluster, is left as it was.

These tests need about 4 GiB of memory and several cores. They are their own
command, `./dev test -m cluster` (a plain `./dev test` deselects them); pytest
run on them without that marker runs them only on a machine with at least 4
cores and 12 GiB available, and skips them elsewhere (docs/cluster.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from catalogue_search import index
from catalogue_search.settings import Settings
from catalogue_search_dev import abo_generator, cluster, cluster_airflow, demo
from catalogue_search_dev.sample_catalogue import ensure_bucket

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from dag_runs import TINY, tiny_stack_env  # noqa: E402

LISTINGS = 2_000
MIN_CPUS, MIN_AVAILABLE_GIB = 4, 12
# Short enough for a test: a task whose worker died is failed (and retried) 30 s after its last heartbeat,
# a message a dead worker held comes back after 60 s (every task here takes far less).
HEARTBEAT_TIMEOUT_S, VISIBILITY_TIMEOUT_S = 30, 60


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def machine_allows() -> bool:
    return (os.cpu_count() or 1) >= MIN_CPUS and _available_gib() >= MIN_AVAILABLE_GIB


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = "cluster" in (config.option.markexpr or "")
    if asked or machine_allows():
        return
    skip = pytest.mark.skip(
        reason=f"the cluster tests need {MIN_CPUS} cores and {MIN_AVAILABLE_GIB} GiB available "
        f"(here {os.cpu_count()} and {_available_gib():.1f}): run them with `./dev test -m cluster`"
    )
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(skip)


@dataclass
class ClusterWorld:
    layout: cluster.Layout
    env: dict[str, str]  # the Airflow processes' environment
    settings: Settings
    expected_products: int
    db: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def client(self):
        return index.make_client(self.settings.opensearch_url, timeout=30)

    def query(self, sql: str, *args) -> list[tuple]:
        """Read the Airflow DB (the test's own); a moment of lock contention is waited out."""
        for _ in range(20):
            try:
                with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as con:
                    return con.execute(sql, args).fetchall()
            except sqlite3.OperationalError:
                time.sleep(0.5)
        raise RuntimeError(f"the Airflow DB {self.db} stayed locked")

    def airflow(self, *args: str, timeout: float = 180):
        import subprocess

        return subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def wait_run(self, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.query("select state from dag_run where run_id = ?", run_id)
            if rows and rows[0][0] in ("success", "failed"):
                return rows[0][0]
            time.sleep(2)
        raise AssertionError(f"run {run_id} did not finish within {timeout:.0f} s: {self.task_states(run_id)}")

    def unfinished(self, run_id: str) -> list[tuple]:
        """The run's tasks that did not succeed (what a failed run's assertion shows first)."""
        return [s for s in self.task_states(run_id) if s[2] not in ("success", "skipped")]

    def task_states(self, run_id: str) -> list[tuple]:
        return self.query(
            "select task_id, map_index, state, try_number, pid from task_instance where run_id = ? order by task_id",
            run_id,
        )


@pytest.fixture(scope="module")
def cluster_world(moto_url, sagemaker_url, aws_env, tmp_path_factory):
    """The generated ABO catalogue (its vectors precomputed, so nothing but the dirt is encoded) in moto,
    and the test cluster running with the DAG's environment."""
    layout = cluster.Layout.for_tests()
    env, settings = tiny_stack_env("clu", moto_url, sagemaker_url, layout.opensearch_url, aws_env)
    env.update(
        cluster_airflow.environment(
            layout, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, visibility_timeout_s=VISIBILITY_TIMEOUT_S
        )
    )
    # Small bulk requests, one at a time per part: a load part lasts long enough to be killed mid-way.
    env.update(CATSEARCH_BULK_CHUNK_SIZE="50", CATSEARCH_BULK_THREADS="1", CATSEARCH_RETRY_DELAY_SECONDS="2")
    settings = Settings.from_env({**os.environ, **env})
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    out_dir = tmp_path_factory.mktemp("abo")
    gen = abo_generator.generate(LISTINGS, seed=5)
    ensure_bucket(s3, settings.bucket)
    demo.prepare_model(settings, s3, TINY)
    # Vectors of the tiny model's width: evaluate_index encodes the titles with it and refuses an index
    # of another width.
    width = json.loads(Path(TINY).read_text())["embed_dim"]
    abo_generator.stage_seeded(gen, out_dir, s3, settings, seed=5, chunk=64, dim=width)
    full_env = {**os.environ, **env}
    db = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    world = ClusterWorld(layout, full_env, settings, gen.summary.expected_products, db)
    started = time.monotonic()
    try:
        cluster.up(layout, full_env)
        world.timings["cluster_up_s"] = time.monotonic() - started
        yield world
    finally:
        cluster.down(layout)
        shutil.rmtree(layout.data, ignore_errors=True)
        shutil.rmtree(layout.state, ignore_errors=True)
