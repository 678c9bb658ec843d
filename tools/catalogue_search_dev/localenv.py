"""The local stack's environment, printed as shell `export` lines.

`./dev` evaluates this output, so the DAGs, the CLI and the tests all see the
same addresses and Airflow configuration. A variable already set in the
caller's environment wins: point `CATSEARCH_OPENSEARCH_URL` elsewhere and the
stack uses that.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from catalogue_search.settings import SAGEMAKER_SERVICES


def cache_home() -> Path:
    return Path(os.environ.get("CATSEARCH_HOME", Path.home() / ".cache" / "catalogue-search"))


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (made if missing) for the block.

    What is built once into the cache (a download, an unpacked package, an env) is built under one: two
    processes that find it missing, such as the suite's two pytest workers on a fresh machine, take turns,
    and the second finds it done. Check again inside the block. The lock ends with its holder, killed or not.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield


def repo_root() -> Path:
    return Path(os.environ.get("CATSEARCH_REPO", Path(__file__).resolve().parents[2]))


def count_setting(env: dict[str, str] | os._Environ, name: str, default: int, what: str) -> int:
    """The environment's `name`, a whole number of `what` of 1 or more, or `default` when unset."""
    value = env.get(name, "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: give a whole number of {what}, 1 or more")
    return int(value)


def local_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The variables the local stack needs, with caller-set values kept."""
    env = dict(os.environ if env is None else env)
    home = cache_home()
    repo = repo_root()
    defaults: dict[str, str] = {
        # moto: S3, and the SageMaker control plane behind the local SageMaker server.
        "CATSEARCH_AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        # The local SageMaker server (sagemaker_local.py): runtime and batch transform's data plane.
        "CATSEARCH_SAGEMAKER_ENDPOINT_URL": "http://127.0.0.1:5100",
        "CATSEARCH_OPENSEARCH_URL": "http://127.0.0.1:9200",
        "CATSEARCH_QUERY_ENCODER": "local",
        # No model hub here: the local model has random weights, and the stack publishes its index anyway
        # (a deployment leaves this false and refuses such an index; docs/quality.md).
        "CATSEARCH_ALLOW_RANDOM_WEIGHTS": "true",
        # Local transform jobs and endpoints take seconds, not the minutes SageMaker's do: checked every second.
        "CATSEARCH_TRANSFORM_POLL_SECONDS": "1",
        "CATSEARCH_ENDPOINT_POLL_SECONDS": "1",
        "CATSEARCH_BUCKET": "catalogue-search-local",
        # moto accepts any role ARN; a real deployment sets its SageMaker execution role.
        "CATSEARCH_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/catalogue-search-sagemaker",
        "CATSEARCH_MODEL_CACHE_DIR": str(home / "models"),
        # moto accepts any credentials; real ones never reach it.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # A new DAG is ready to run: a trigger from the UI, the CLI or the REST API does not wait in `queued`.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # `./dev ui` (airflow standalone): loopback only.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        **airflow_sizing(os.cpu_count() or 1),
        "TOKENIZERS_PARALLELISM": "false",
    }
    merged = {k: env.get(k, v) for k, v in defaults.items()}
    # Tasks reach the execution API where `./dev ui` serves it (Airflow's default assumes localhost:8080).
    merged["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = env.get(
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{merged['AIRFLOW__API__PORT']}/execution/"
    )
    merged["AIRFLOW_CONN_AWS_DEFAULT"] = env.get(
        "AIRFLOW_CONN_AWS_DEFAULT",
        aws_connection(
            merged["CATSEARCH_AWS_ENDPOINT_URL"],
            merged["CATSEARCH_SAGEMAKER_ENDPOINT_URL"],
            region=merged["AWS_DEFAULT_REGION"],
            login=merged["AWS_ACCESS_KEY_ID"],
            password=merged["AWS_SECRET_ACCESS_KEY"],
        ),
    )
    merged["AIRFLOW_CONN_OPENSEARCH_DEFAULT"] = env.get(
        "AIRFLOW_CONN_OPENSEARCH_DEFAULT",
        opensearch_connection(merged["CATSEARCH_OPENSEARCH_URL"]),
    )
    merged.update(cluster_environment({**env, **merged}))
    return merged


def cluster_environment(env: dict[str, str]) -> dict[str, str]:
    """The cluster stack's variables when it is on (`./dev stack up --cluster`, CATSEARCH_STACK=cluster):
    every OpenSearch node in CATSEARCH_OPENSEARCH_URL (derived from its first port), the CeleryExecutor
    and Redis; a caller's own value of any other variable wins. Empty on the light stack."""
    from catalogue_search_dev import cluster, cluster_airflow

    if not cluster.enabled(env):
        return {}
    wanted = cluster_airflow.environment(cluster.Layout.for_user(env))
    derived = {"CATSEARCH_OPENSEARCH_URL", "AIRFLOW_CONN_OPENSEARCH_DEFAULT", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"}
    return {k: v if k in derived else env.get(k, v) for k, v in wanted.items()}


def airflow_sizing(cpus: int) -> dict[str, str]:
    """Airflow's process counts for a machine with `cpus` cores.

    The LocalExecutor forks `parallelism` workers up front (32 by default: about
    40 processes and 2 GB for an idle `airflow standalone`). Two task slots per
    core keep the I/O-bound tasks (copies, bulk loads) overlapping without
    starving the CPU-bound encode; the DAG processor needs no more than two
    parsers for three DAG files.
    """
    parallelism = max(2, 2 * cpus)
    return {
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": str(min(2, cpus)),
        "AIRFLOW__API__WORKERS": "1",
    }


def aws_connection(endpoint_url: str, sagemaker_url: str, *, region: str, login: str, password: str) -> str:
    """The `aws_default` connection: moto for every service, the local SageMaker server for SageMaker.

    The Amazon provider's `service_config` extra gives one service its own
    `endpoint_url`; every client it builds honours it, the aiobotocore ones of
    deferred triggers included.
    """
    extra: dict = {"region_name": region, "endpoint_url": endpoint_url}
    if sagemaker_url:
        extra["service_config"] = {service: {"endpoint_url": sagemaker_url} for service in SAGEMAKER_SERVICES}
    return json.dumps({"conn_type": "aws", "login": login, "password": password, "extra": extra})


def opensearch_connection(url: str) -> str:
    nodes = [u.strip() for u in url.split(",") if u.strip()]
    parsed = urlsplit(nodes[0])
    conn = {
        "conn_type": "opensearch",
        "host": parsed.hostname,
        "port": parsed.port or (443 if parsed.scheme == "https" else 9200),
        "schema": parsed.scheme or "http",
        # No login: no auth. (An extra {"auth": "none"} would be a 4-character "secret" that
        # Airflow's masker warns it is too short to mask, in every task.)
    }
    if len(nodes) > 1:  # the cluster stack: every node, so a task survives one node's death
        conn["extra"] = {"urls": ",".join(nodes)}
    return json.dumps(conn)


def main() -> None:
    for key, value in local_environment().items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
