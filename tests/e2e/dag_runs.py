"""What the e2e modules share: the tiny model's config, `airflow dags test` through the fork server, and the
environment of a DAG run with the tiny model in buckets, an alias and endpoint names of its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from catalogue_search.settings import Settings
from catalogue_search_dev import prefork, testenv

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny_clip.json"


def _dags_test(env: dict[str, str], conf: str = "{}", dag_id: str = "catalogue_ingest") -> subprocess.CompletedProcess:
    return prefork.dags_test(dag_id, env, conf)


def _all_ids(client, alias: str) -> set[str]:
    resp = client.search(index=alias, body={"size": 10000, "_source": False, "query": {"match_all": {}}})
    return {h["_id"] for h in resp["hits"]["hits"]}


def tiny_stack_env(prefix: str, moto_url, sagemaker_url, opensearch_url, aws_env) -> tuple[dict, Settings]:
    """The variables (and Settings) of a DAG run with the tiny model, in buckets, an index
    alias and endpoint names of its own, named `prefix-...-<session token>`."""
    token = testenv.unique_name_part()
    env = {
        # Its own source bucket too: the user's sample catalogue bucket stays as it is.
        "CATSEARCH_SOURCE_BUCKET": f"{prefix}-abo-{token}",
        "CATSEARCH_BUCKET": f"{prefix}-project-{token}",
        "CATSEARCH_ENDPOINT_PREFIX": f"{prefix}-{token}",
        "CATSEARCH_INDEX_ALIAS": f"{prefix}-products-{token}",
        "CATSEARCH_MODEL_NAME": "tiny-clip",
        "CATSEARCH_MODEL_PRETRAINED": "",
        "CATSEARCH_OPENSEARCH_URL": opensearch_url,
        # The tiny model's random weights put 38% of distinct pictures above 0.98: report identical ones.
        "CATSEARCH_DUPLICATE_COSINE_THRESHOLD": "0.9999",
        "CATSEARCH_TRANSFORM_POLL_SECONDS": "1",
        # The tiny model's weights are random: publish anyway (as the local stack does), and measure the
        # search quality on a smaller sample than a deployment's 1,000 (docs/quality.md).
        "CATSEARCH_ALLOW_RANDOM_WEIGHTS": "true",
        "CATSEARCH_QUALITY_SAMPLE": "200",
    }
    env.update(aws_env(Settings.from_env(aws_endpoint_url=moto_url, sagemaker_endpoint_url=sagemaker_url)))
    return env, Settings.from_env({**os.environ, **env})
