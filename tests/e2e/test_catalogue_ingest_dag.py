"""End to end: `airflow dags test catalogue_ingest` on the sample catalogue (tiny model).

Real Airflow, real OpenSearch, moto for S3 and the SageMaker control plane, the
local SageMaker server for the data plane: the provider's SageMakerTransformOperator
creates the job, defers (Airflow runs its trigger inline in `dags test`), and the
server's local runner writes the outputs. Two runs: the second, with nothing
changed, encodes nothing, builds no index and leaves the alias where it was. A job that fails fails the task. Airflow
runs in the test session's own AIRFLOW_HOME (tests/conftest.py): the user's DB
gets no run, asset event or DAG version from here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path

import boto3
import pytest

from catalogue_search import index
from catalogue_search.s3util import parse_s3_uri
from catalogue_search.search import LocalEncoder, SearchClient
from catalogue_search.settings import Settings
from catalogue_search_dev import demo, prefork, testenv

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


@pytest.fixture(scope="module")
def stack_env(moto_url, sagemaker_url, opensearch_url, aws_env):
    env, settings = tiny_stack_env("e2e", moto_url, sagemaker_url, opensearch_url, aws_env)
    summary, info = demo.prepare(settings, model_cfg_path=TINY)
    assert info["pretrained_loaded"] is False
    return env, settings, summary


@pytest.fixture(scope="module")
def first_run(stack_env):
    env, settings, summary = stack_env
    result = _dags_test(env)
    assert result.returncode == 0, testenv.run_failure(result)
    return result


def test_indexes_every_clean_product_and_none_of_the_dirty_ones(stack_env, first_run):
    _, settings, summary = stack_env
    client = index.client_from_settings(settings)
    assert client.indices.exists_alias(name=settings.index_alias)
    ids = _all_ids(client, settings.index_alias)
    assert len(ids) == len(summary.clean_item_ids) == 773
    assert ids == set(summary.clean_item_ids)
    assert not ids & set(summary.excluded_item_ids)


def test_the_transform_task_deferred_and_the_local_data_plane_wrote_the_outputs(first_run, stack_env):
    _, settings, _ = stack_env
    log = first_run.stdout + first_run.stderr
    assert "running trigger in line" in log  # encode_images deferred; dags test ran its trigger
    assert re.search(r"SageMaker job catsearch-encode-\S+ completed", log)
    import boto3

    sagemaker = boto3.client("sagemaker", **settings.boto3_kwargs("sagemaker"))
    jobs = sagemaker.list_transform_jobs(NameContains="catsearch-encode")["TransformJobSummaries"]
    ours = [j for j in jobs if j["TransformJobName"] in log]
    assert [j["TransformJobStatus"] for j in ours] == ["Completed", "Completed"]  # images, titles


def test_logs_name_what_was_dropped_and_why(first_run, stack_env):
    _, _, summary = stack_env
    log = first_run.stdout + first_run.stderr
    assert "no_title_in_language" in log
    assert summary.image_missing_from_bucket[0] in log  # the missing source image is named
    assert "could not be encoded" in log  # the corrupt JPEG
    assert "documents loaded: 773 / 773" in log


def test_the_run_logs_no_noise(first_run):
    """Pools sized to the worker threads, no 4-character connection extra to mask, graphviz installed."""
    log = first_run.stdout + first_run.stderr
    for noise in ("Connection pool is full", "too short (<", "Could not import graphviz"):
        assert noise not in log, f"{noise!r} in the log"


def test_an_image_finds_its_own_product_first(stack_env, first_run):
    _, settings, summary = stack_env
    import boto3

    s3 = boto3.client("s3", **settings.boto3_kwargs())
    client = SearchClient(settings)
    for item_id in summary.clean_item_ids[:3]:
        doc = client.client.get(index=settings.index_alias, id=item_id)["_source"]
        image = s3.get_object(Bucket=settings.bucket, Key=settings.images_prefix + doc["image_path"])["Body"].read()
        hits = client.search_image(image, 5)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert item_id in {h.item_id for h in hits if h.score >= 0.9999}
        assert all("embedding" not in h.as_dict() for h in hits)


def test_second_run_with_nothing_changed_publishes_nothing_and_leaves_the_alias(stack_env, first_run):
    env, settings, summary = stack_env
    client = index.client_from_settings(settings)
    before_index = list(client.indices.get_alias(name=settings.index_alias))
    before_indices = {i["index"] for i in index.indices_for_alias(client, settings.index_alias)}
    result = _dags_test(env)
    assert result.returncode == 0, testenv.run_failure(result)
    log = result.stdout + result.stderr
    assert "nothing new to encode" in log
    assert f"nothing changed since {before_index[0]}" in log and "nothing is published" in log
    assert "documents loaded" not in log  # no index was built
    assert list(client.indices.get_alias(name=settings.index_alias)) == before_index  # the alias did not move
    assert {i["index"] for i in index.indices_for_alias(client, settings.index_alias)} == before_indices
    assert _all_ids(client, settings.index_alias) == set(summary.clean_item_ids)


def test_every_title_is_encoded_and_finds_its_product(stack_env, first_run):
    _, settings, summary = stack_env
    client = index.client_from_settings(settings)
    with_titles = client.count(
        index=settings.index_alias, body={"query": {"exists": {"field": index.NAME_VECTOR_FIELD}}}
    )["count"]
    assert with_titles == len(summary.clean_item_ids)
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    searcher = SearchClient(settings, encoder=LocalEncoder(settings, s3_client=s3))
    for item_id in summary.clean_item_ids[:3]:
        title = client.get(index=settings.index_alias, id=item_id)["_source"]["item_name"]
        hits = searcher.search_text(title, 5, mode="name")
        assert item_id in {h.item_id for h in hits if h.score >= 0.9999}, (title, hits)
        assert item_id in {h.item_id for h in searcher.search_text(title, 5, mode="hybrid")}


def test_the_duplicate_report_lists_the_products_that_share_a_picture(stack_env, first_run):
    from catalogue_search_dev import sample_index

    _, settings, _ = stack_env
    layout = sample_index.layout_dir()
    identical = sample_index.identical_image_groups(layout, sample_index.sample_products(layout))
    assert identical
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=settings.bucket, Prefix=settings.manifests_prefix).get("Contents", [])
        if o["Key"].endswith("duplicates.json")
    ]
    assert keys
    report = json.loads(s3.get_object(Bucket=settings.bucket, Key=sorted(keys)[0])["Body"].read())
    listed = [set(g["item_ids"]) for g in report["groups"]]
    for group in identical:
        assert any(set(group) <= found for found in listed), (group, report["counts"])
    assert "near-duplicates:" in first_run.stdout + first_run.stderr


def test_a_failed_transform_job_fails_the_task_with_its_reason(stack_env, tmp_path, make_handler_artifact):
    """The artifact's handler cannot load its weights: the job is Failed, encode_images fails with the
    FailureReason, nothing is published."""
    import boto3

    env, settings, _ = stack_env
    broken = {
        **env,
        "CATSEARCH_BUCKET": f"{settings.bucket}-noart",
        "CATSEARCH_INDEX_ALIAS": f"{settings.index_alias}-noart",
        "CATSEARCH_TASK_RETRIES": "0",
    }
    # the catalogue is in the source bucket; the project bucket holds an artifact (with a version,
    # as model_artifact uploads it) whose own handler raises while loading
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    s3.create_bucket(Bucket=broken["CATSEARCH_BUCKET"])
    crashing = make_handler_artifact(
        tmp_path / "model.tar.gz",
        """
        def model_fn(model_dir):
            raise RuntimeError("the weights are corrupt")

        def transform_fn(model, body, content_type, accept):
            raise RuntimeError("unreachable")
        """,
    )
    bucket, key = parse_s3_uri(Settings.from_env({**os.environ, **broken}).artifact_uri)
    s3.upload_file(str(crashing), bucket, key, ExtraArgs={"Metadata": {"artifact-version": "crashing0000"}})

    result = _dags_test(broken)

    log = result.stdout + result.stderr
    assert result.returncode != 0
    failure = [line for line in log.splitlines() if line.startswith("RuntimeError: Error while running transform job")]
    assert failure, log[-5000:]
    assert "'status': 'failed'" in failure[0], failure
    assert "the weights are corrupt" in failure[0], failure
    client = index.client_from_settings(settings)
    assert not client.indices.exists_alias(name=broken["CATSEARCH_INDEX_ALIAS"])  # nothing was published
    # The failure reaches the downstream tasks one level per check of `dags test`, which the fork server
    # makes 0.1 s apart instead of 1 s (prefork.IDLE_POLL_S)
    checks = [line.split()[0] for line in log.splitlines() if "No tasks to run" in line]
    assert len(checks) >= 3, log[-3000:]
    stamps = [datetime.fromisoformat(check.rstrip("Z")) for check in checks]
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(stamps, stamps[1:])]
    assert max(gaps) < (0.6 if prefork.enabled() else 1.6), gaps
