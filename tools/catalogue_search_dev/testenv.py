"""A test run that leaves the user's Airflow, moto and OpenSearch as it found them.

- Every test session has a token (`tst` + 5 hex digits, in `CATSEARCH_TEST_TOKEN`);
  every bucket, index, alias, model, endpoint config and endpoint a test creates
  has it in its name (the `unique` fixture starts with it).
- `sweep(token)` deletes everything in moto and OpenSearch whose name holds the
  token: what a test left behind when it failed halfway. SageMaker has no
  delete for transform jobs; they are only listed.
- Each session gets its own AIRFLOW_HOME, a temporary directory with a copy of
  a metadata DB migrated once per Airflow version (`airflow_home_for_tests`),
  so `airflow dags test` never writes runs, asset events or DAG versions into
  the user's DB.
- `snapshot()` before and after the run, `compare()` names every difference:
  `./dev test` fails on any.
- `StackGate`: `./dev test` starts pytest while it brings the stack up; each
  pytest process collects its tests, then waits at the gate until the stack
  is up and the "before" snapshot is taken.

Only a local stack is touched: without `CATSEARCH_AWS_ENDPOINT_URL` (real AWS)
moto is neither swept nor listed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalogue_search_dev.cluster_procs import alive
from catalogue_search_dev.localenv import cache_home, exclusive

TOKEN_ENV = "CATSEARCH_TEST_TOKEN"
TOKEN_PATTERN = re.compile(r"tst[0-9a-f]{5}")
# Set to 1 when other programs use the same moto/OpenSearch during a test run.
SHARED_ENV = "CATSEARCH_TEST_SHARED_STACK"
# Airflow tables a test run must not write into the user's DB.
AIRFLOW_TABLES = ("dag_run", "task_instance", "asset_event", "dag_version")


def new_token() -> str:
    return "tst" + secrets.token_hex(3)[:5]


def session_token() -> str:
    """This session's token (set once, inherited by every subprocess)."""
    token = os.environ.get(TOKEN_ENV) or new_token()
    if not TOKEN_PATTERN.fullmatch(token):
        raise ValueError(f"{TOKEN_ENV}={token!r} is not `tst` and 5 hex digits")
    os.environ[TOKEN_ENV] = token
    return token


def unique_name_part() -> str:
    """A short unique name part that starts with the session's token (12 characters)."""
    return session_token() + secrets.token_hex(2)


# --- the stack gate ---------------------------------------------------------------
STACK_GATE_ENV = "CATSEARCH_STACK_GATE"


class StackGate:
    """A file that `./dev test` creates once the stack is up and the snapshot is taken; pytest waits for it.

    Pytest's start and collection (imports, the Airflow home: 5 to 15 s) then overlap the stack's start
    (OpenSearch's JVM, and on a fresh machine its download and chromium's install). The gate is passed to
    pytest as `STACK_GATE_ENV` = "<pid of ./dev>:<file>".
    """

    def __init__(self, folder: Path) -> None:
        self.file = folder / "stack-ready"

    def env(self) -> dict[str, str]:
        return {STACK_GATE_ENV: f"{os.getpid()}:{self.file}"}

    def open(self) -> None:
        self.file.touch()


def wait_at_stack_gate(poll_s: float = 0.1) -> None:
    """In a pytest process started by `./dev test`: return once the stack is up (at once without a gate).

    If `./dev` ends first (the stack did not come up: it stops pytest and says why), or this process's
    parent does (pytest-xdist's controller, for one of its workers), this process ends at once.
    """
    gate = os.environ.get(STACK_GATE_ENV)
    if not gate:
        return
    pid, _, path = gate.partition(":")
    parent = os.getppid()
    while not Path(path).exists():
        if os.getppid() != parent or not alive(int(pid)):
            os._exit(1)
        time.sleep(poll_s)


# --- Airflow home -----------------------------------------------------------------
def run_failure(result: subprocess.CompletedProcess) -> str:
    """Why an `airflow dags test` run failed: its error and traceback lines first (the log is long), then its end."""
    log = (result.stdout or "") + (result.stderr or "")
    why = [line for line in log.splitlines() if re.search(r"Error\b|Exception\b|exception|new_state=failed", line)]
    return "\n".join(dict.fromkeys(why))[-6000:] + "\n--- the log's end ---\n" + log[-3000:]


def _migrated_template() -> Path:
    """A metadata DB migrated once per Airflow version, under the cache (file-locked while built)."""
    from importlib.metadata import version

    template = cache_home() / "airflow-test-template" / version("apache-airflow-core")
    db = template / "airflow.db"
    marker = template / ".migrated"
    if marker.exists():
        return db
    with exclusive(template / ".lock"):
        if not marker.exists():
            db.unlink(missing_ok=True)
            env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONFIG"}
            env.update(AIRFLOW_HOME=str(template), AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{db}")
            subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            marker.touch()
    return db


def fresh_airflow_home(parent: Path | None = None) -> Path:
    """A new temporary AIRFLOW_HOME holding a migrated, empty metadata DB (a copy of the template)."""
    template = _migrated_template()
    home = Path(tempfile.mkdtemp(prefix="catsearch-test-airflow-", dir=parent))
    src, dst = sqlite3.connect(template), sqlite3.connect(home / "airflow.db")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return home


def airflow_home_env(home: Path) -> dict[str, str]:
    """The variables that point Airflow at `home` and its DB (whatever the user's environment says)."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }


# --- moto and OpenSearch -----------------------------------------------------------
def _boto(service: str):
    import boto3

    from catalogue_search.settings import Settings

    settings = Settings.from_env()
    return boto3.client(service, **settings.boto3_kwargs())


def _moto_url() -> str:
    return os.environ.get("CATSEARCH_AWS_ENDPOINT_URL", "")


def _opensearch_url() -> str:
    return os.environ.get("CATSEARCH_OPENSEARCH_URL", "").rstrip("/")


def _os_request(method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        _opensearch_url() + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3):
            return True
    except Exception:
        return False


def _paged(call, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    out, token = [], None
    while True:
        page = call(**kwargs, **({"NextToken": token} if token else {}))
        out.extend(page.get(key, []))
        token = page.get("NextToken")
        if not token:
            return out


@dataclass
class Snapshot:
    """Names of what the shared services and the user's Airflow DB hold."""

    buckets: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    endpoint_configs: set[str] = field(default_factory=set)
    endpoints: set[str] = field(default_factory=set)
    transform_jobs: set[str] = field(default_factory=set)
    indices: set[str] = field(default_factory=set)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    airflow: dict[str, int] = field(default_factory=dict)
    airflow_db: str = ""


def snapshot(airflow_home: str | None = None) -> Snapshot:
    snap = Snapshot()
    if _moto_url():
        s3, sm = _boto("s3"), _boto("sagemaker")
        snap.buckets = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        snap.models = {m["ModelName"] for m in _paged(sm.list_models, "Models")}
        snap.endpoint_configs = {c["EndpointConfigName"] for c in _paged(sm.list_endpoint_configs, "EndpointConfigs")}
        snap.endpoints = {e["EndpointName"] for e in _paged(sm.list_endpoints, "Endpoints")}
        snap.transform_jobs = {j["TransformJobName"] for j in _paged(sm.list_transform_jobs, "TransformJobSummaries")}
    if _opensearch_url():
        snap.indices = {i["index"] for i in _os_request("GET", "/_cat/indices?format=json&h=index")}
        snap.indices = {i for i in snap.indices if not i.startswith(".")}
        aliases: dict[str, list[str]] = {}
        for index_name, info in _os_request("GET", "/_alias").items():
            for alias in info.get("aliases", {}):
                if not alias.startswith("."):
                    aliases.setdefault(alias, []).append(index_name)
        snap.aliases = {a: sorted(v) for a, v in aliases.items()}
    snap.airflow_db, snap.airflow = _airflow_counts(airflow_home or os.environ.get("AIRFLOW_HOME", ""))
    return snap


def _airflow_db_path(home: str) -> Path | None:
    conn = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if conn.startswith("sqlite:///"):
        return Path(conn.removeprefix("sqlite:///"))
    if conn:  # Postgres or MySQL: not read here
        return None
    return Path(home) / "airflow.db" if home else None


def _airflow_counts(home: str) -> tuple[str, dict[str, int]]:
    """Row counts of the tables a run writes to, read-only; {} when there is no DB yet."""
    path = _airflow_db_path(home)
    if path is None or not path.exists():
        return str(path or ""), {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return str(path), {
            t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in AIRFLOW_TABLES if t in names
        }
    finally:
        db.close()


def compare(before: Snapshot, after: Snapshot, token: str, shared: bool | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes): problems fail the run, notes are only shown.

    Always a problem: something named with this session's token is left, or the
    user's Airflow DB changed. A change that names no test token (a bucket, model,
    endpoint or index added or deleted, an alias moved) is a problem too, unless
    the stack is shared: `CATSEARCH_TEST_SHARED_STACK=1`, or another test session's
    resources came or went during the run. Then it cannot be pinned on this run
    and is only shown.
    """
    if shared is None:
        shared = os.environ.get(SHARED_ENV) == "1"
    mine, unattributed, notes = [], [], []
    for kind in ("buckets", "models", "endpoint_configs", "endpoints", "indices"):
        was, now = getattr(before, kind), getattr(after, kind)
        new, gone = sorted(now - was), sorted(was - now)
        what = kind.replace("_", " ")
        if ours := [n for n in new if token in n]:
            mine.append(f"{what} left by this test run: {ours}")
        if others := [n for n in new + gone if token not in n and TOKEN_PATTERN.search(n)]:
            shared = True
            notes.append(f"{what} of another test session running at the same time: {others}")
        if strangers := [n for n in new if not TOKEN_PATTERN.search(n)]:
            unattributed.append(f"{what} created during the test run, not named with a test token: {strangers}")
        if lost := [n for n in gone if not TOKEN_PATTERN.search(n)]:
            unattributed.append(f"{what} deleted during the test run: {lost}")
    for alias in sorted(set(before.aliases) | set(after.aliases)):
        if TOKEN_PATTERN.search(alias):
            if token in alias and alias in after.aliases:
                mine.append(f"alias left by this test run: {alias} -> {after.aliases[alias]}")
            continue
        if before.aliases.get(alias) != after.aliases.get(alias):
            unattributed.append(f"alias {alias} changed: {before.aliases.get(alias)} -> {after.aliases.get(alias)}")
    if new_jobs := sorted(after.transform_jobs - before.transform_jobs):
        notes.append(f"transform jobs recorded in moto during the run (SageMaker cannot delete them): {new_jobs}")
    if before.airflow != after.airflow:
        changed = {
            t: f"{before.airflow.get(t, 0)} -> {after.airflow.get(t, 0)}"
            for t in sorted(set(before.airflow) | set(after.airflow))
            if before.airflow.get(t, 0) != after.airflow.get(t, 0)
        }
        mine.append(f"the user's Airflow DB {after.airflow_db} changed: {changed or 'created'}")
    if shared:
        notes.extend(f"{u} (the stack is shared: not pinned on this run)" for u in unattributed)
        return mine, notes
    if unattributed:
        unattributed.append(
            "(a test that does not name what it creates with the `unique` fixture, or another program using "
            f"the stack at the same time: set {SHARED_ENV}=1 when the stack is shared)"
        )
    return mine + unattributed, notes


INDICES_PER_DELETE = 50  # a DELETE names this many indices at most: well under a URL's length limit


def sweep(token: str) -> dict[str, list[str]]:
    """Delete what holds `token` in its name from moto and OpenSearch; return what was deleted."""
    if not TOKEN_PATTERN.fullmatch(token):
        raise ValueError(f"refusing to sweep by {token!r}: not a test token")
    done: dict[str, list[str]] = {}
    if _moto_url() and _reachable(_moto_url() + "/moto-api/"):
        s3, sm = _boto("s3"), _boto("sagemaker")
        # Names are filtered here: moto ignores NameContains for some listings.
        for e in _paged(sm.list_endpoints, "Endpoints"):
            if token in e["EndpointName"]:
                sm.delete_endpoint(EndpointName=e["EndpointName"])
                done.setdefault("endpoints", []).append(e["EndpointName"])
        for c in _paged(sm.list_endpoint_configs, "EndpointConfigs"):
            if token in c["EndpointConfigName"]:
                sm.delete_endpoint_config(EndpointConfigName=c["EndpointConfigName"])
                done.setdefault("endpoint configs", []).append(c["EndpointConfigName"])
        for m in _paged(sm.list_models, "Models"):
            if token in m["ModelName"]:
                sm.delete_model(ModelName=m["ModelName"])
                done.setdefault("models", []).append(m["ModelName"])
        buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", []) if token in b["Name"]]
        # A suite leaves about a hundred buckets (one per test's settings): four at a time keep moto busy.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda bucket: _delete_bucket(s3, bucket), buckets))
        if buckets:
            done["buckets"] = buckets
    if _opensearch_url() and _reachable(_opensearch_url()):
        removals = [
            {"remove": {"index": index_name, "alias": alias}}
            for index_name, info in _os_request("GET", "/_alias").items()
            for alias in info.get("aliases", {})
            if token in alias
        ]
        if removals:  # one request, one change of the cluster state
            _os_request("POST", "/_aliases", {"actions": removals})
            done["aliases"] = [action["remove"]["alias"] for action in removals]
        indices = [i["index"] for i in _os_request("GET", "/_cat/indices?format=json&h=index") if token in i["index"]]
        for start in range(0, len(indices), INDICES_PER_DELETE):
            _os_request("DELETE", "/" + ",".join(indices[start : start + INDICES_PER_DELETE]))
        if indices:
            done["indices"] = indices
    return done


def _delete_bucket(s3, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


def report(problems: list[str], notes: list[str]) -> str:
    lines = [f"  - {p}" for p in problems] + [f"  (note) {n}" for n in notes]
    return "\n".join(lines)
