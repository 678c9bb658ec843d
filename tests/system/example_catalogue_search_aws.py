"""System test on real AWS, in the shape of the Amazon provider's system tests (example_sagemaker.py).

An environment id keeps everything this run creates apart from a deployment's
own data: the index alias, the S3 prefixes (nested under the stack's prefixes,
so the stack's IAM permissions cover them) and the SageMaker names (under the
stack's endpoint prefix). Then:

    set-up     build the model artifact with pretrained weights and upload it
    the DAGs   catalogue_ingest (SageMaker batch transform) on 20 products of ABO's listings_0,
               query_endpoints_deploy (serverless text and image endpoints)
    check      the index holds the 20 products; an image finds itself, a text query answers
    tear-down  query_endpoints_teardown, the batch-transform model, the indices, the S3 objects
               (all versions), each with trigger_rule ALL_DONE so they run whatever happened

The pipeline DAGs run as they do in production, each in its own
`airflow dags test` process with the isolated settings. With
CATSEARCH_SYSTEM_TEST_ROLE_ARN set, those processes run as that role (assumed
with STS), e.g. a copy of the Airflow workers' role, so the stack's
least-privilege policy is what is exercised. Run it with
tests/system/test_catalogue_search_aws.py (see docs/aws.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, TriggerRule, chain, task
from airflow.sdk.exceptions import AirflowException

DAG_ID = "example_catalogue_search_aws"
ENV_ID_KEY = "SYSTEM_TESTS_ENV_ID"
REPO = Path(__file__).resolve().parents[2]
PRODUCTS = 20
SHARD = "0"
DAG_TIMEOUT_S = 90 * 60


def bucket_prefixes(settings) -> list[str]:
    """The settings naming prefixes of the project bucket (images, manifests, embeddings, models, ...)."""
    from dataclasses import fields

    return [f.name for f in fields(settings) if f.name.endswith("_prefix") and f.name not in NOT_BUCKET_PREFIXES]


# `source_prefix` is in the ABO bucket, `endpoint_prefix` names SageMaker resources.
NOT_BUCKET_PREFIXES = {"source_prefix", "endpoint_prefix"}


def isolated_env(env_id: str) -> dict[str, str]:
    """The settings that keep this run's data, names and index apart (all under the stack's own prefixes)."""
    from catalogue_search.settings import Settings

    s = Settings.from_env()
    tag = f"systest-{env_id}"
    env = {f"CATSEARCH_{name.upper()}": f"{getattr(s, name)}{tag}/" for name in bucket_prefixes(s)}
    env.update(
        {
            "CATSEARCH_INDEX_ALIAS": f"{s.index_alias}-{tag}",
            "CATSEARCH_ENDPOINT_PREFIX": f"{s.endpoint_prefix}-st{env_id}",
            "CATSEARCH_QUERY_ENCODER": "endpoint",
        }
    )
    return env


def settings_for(env: dict[str, str]):
    from catalogue_search.settings import Settings

    return Settings.from_env({**os.environ, **env})


def trial_settings_for(env: dict[str, str]):
    """The run is a trial (max_products), so it publishes to `<alias>-trial`, never to the default alias."""
    s = settings_for(env)
    return s.replace(index_alias=f"{s.index_alias}-trial")


def _pipeline_credentials() -> dict[str, str]:
    """Credentials of CATSEARCH_SYSTEM_TEST_ROLE_ARN for the pipeline processes (none: the runner's own)."""
    role = os.environ.get("CATSEARCH_SYSTEM_TEST_ROLE_ARN", "")
    if not role:
        return {}
    import boto3

    creds = boto3.client("sts").assume_role(RoleArn=role, RoleSessionName="catalogue-search-system-test")
    c = creds["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
        "AWS_SESSION_TOKEN": c["SessionToken"],
    }


def run(args: list[str], env: dict[str, str], *, as_pipeline: bool = False) -> str:
    """Run a command with the isolated settings; fail with the tail of its output."""
    full_env = {**os.environ, **env, **(_pipeline_credentials() if as_pipeline else {})}
    result = subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=DAG_TIMEOUT_S, cwd=REPO)
    output = result.stdout + result.stderr
    print(output[-20000:])
    if result.returncode != 0:
        raise AirflowException(f"{' '.join(args[:5])} failed (exit {result.returncode}): {output[-3000:]}")
    return output


def dags_test(dag_id: str, env: dict[str, str], conf: dict | None = None) -> str:
    args = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
    if conf:
        args += ["--conf", json.dumps(conf)]
    return run(args, env, as_pipeline=True)


with DAG(dag_id=DAG_ID, schedule="@once", start_date=datetime(2026, 1, 1), catchup=False, tags=["system-test"]) as dag:

    @task
    def system_test_context() -> dict:
        env_id = os.environ.get(ENV_ID_KEY) or uuid.uuid4().hex[:8]
        return {"env_id": env_id, "env": isolated_env(env_id)}

    @task
    def build_and_upload_model(context: dict) -> None:
        s = settings_for(context["env"])
        run(
            [
                sys.executable,
                "-m",
                "catalogue_search_dev.model_build",
                "build",
                "--model",
                s.model_name,
                "--pretrained",
                s.model_pretrained or "openai",
                "--upload",
            ],
            context["env"],
        )

    @task
    def run_catalogue_ingest(context: dict) -> None:
        s = trial_settings_for(context["env"])
        dags_test(
            "catalogue_ingest", context["env"], {"shards": [SHARD], "max_products": PRODUCTS, "alias": s.index_alias}
        )

    @task
    def run_query_endpoints_deploy(context: dict) -> None:
        dags_test("query_endpoints_deploy", context["env"])

    @task
    def check_index(context: dict) -> None:
        from catalogue_search import index
        from catalogue_search.search import SearchClient

        s = trial_settings_for(context["env"])
        client = index.client_from_settings(s)
        count = client.count(index=s.index_alias)["count"]
        if count != PRODUCTS:
            raise AirflowException(f"alias {s.index_alias} holds {count} documents, expected {PRODUCTS}")
        hit = client.search(index=s.index_alias, body={"size": 1, "query": {"match_all": {}}})["hits"]["hits"][0]
        import boto3

        image = (
            boto3.client("s3", region_name=s.region)
            .get_object(Bucket=s.bucket, Key=f"{s.images_prefix}{hit['_source']['image_path']}")["Body"]
            .read()
        )
        search = SearchClient(s)
        first = search.search_image(image, 1)[0]
        if first.item_id != hit["_id"]:
            raise AirflowException(f"image of {hit['_id']} found {first.item_id} first")
        if len(search.search_text("a chair", 5)) == 0:
            raise AirflowException("a text query through the TEXT endpoint found nothing")

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def run_query_endpoints_teardown(context: dict) -> None:
        dags_test("query_endpoints_teardown", context["env"])

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def delete_transform_model(context: dict) -> None:
        import boto3

        from catalogue_search import endpoints

        s = settings_for(context["env"])
        endpoints.delete_models(boto3.client("sagemaker", region_name=s.region), f"{s.endpoint_prefix}-")

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def delete_indices(context: dict) -> None:
        from catalogue_search import index

        s = trial_settings_for(context["env"])
        client = index.client_from_settings(s)
        for name in [i["index"] for i in index.indices_for_alias(client, s.index_alias)]:
            client.indices.delete(index=name)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def delete_s3_objects(context: dict) -> None:
        import boto3

        s = settings_for(context["env"])
        s3 = boto3.client("s3", region_name=s.region)
        for prefix in [getattr(s, name) for name in bucket_prefixes(s)]:
            assert "systest-" in prefix, prefix  # never anything of the deployment's own
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=s.bucket, Prefix=prefix):
                doomed = [
                    {"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                ]
                for i in range(0, len(doomed), 1000):
                    s3.delete_objects(Bucket=s.bucket, Delete={"Objects": doomed[i : i + 1000], "Quiet": True})

    @task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
    def watcher() -> None:
        """Teardowns succeed whatever happened: this fails the run when anything upstream failed."""
        raise AirflowException("a task of the system test failed")

    test_context = system_test_context()
    chain(
        # TEST SETUP
        test_context,
        build_and_upload_model(test_context),
        # TEST BODY
        run_catalogue_ingest(test_context),
        run_query_endpoints_deploy(test_context),
        check_index(test_context),
        # TEST TEARDOWN
        run_query_endpoints_teardown(test_context),
        [delete_transform_model(test_context), delete_indices(test_context), delete_s3_objects(test_context)],
    )
    list(dag.tasks) >> watcher()
