"""Runs the real-AWS system test DAG (example_catalogue_search_aws.py), or says why it does not.

It creates SageMaker transform jobs and serverless endpoints and so costs money
(see docs/aws.md): it runs only when asked with CATSEARCH_SYSTEM_TEST=1, with
real AWS credentials, the settings of a deployed stack, and no local stand-in.
It never runs against moto.
"""

from __future__ import annotations

import os

import pytest

from catalogue_search.settings import Settings

OPT_IN = "CATSEARCH_SYSTEM_TEST"
STAND_INS = ("127.0.0.1", "localhost", "moto", ":5000")


def why_skip(env: dict[str, str] | None = None) -> str | None:
    """The reason the system test cannot run here, or None when it can."""
    env = dict(os.environ if env is None else env)
    if env.get(OPT_IN) != "1":
        return f"real-AWS system test: set {OPT_IN}=1 (with a deployed stack's settings, see docs/aws.md) to run it"
    settings = Settings.from_env(env)
    for name in sorted(f for f in Settings.__dataclass_fields__ if f.endswith("_endpoint_url")):
        if getattr(settings, name):  # a local stand-in (moto, the local SageMaker server)
            url = getattr(settings, name)
            return f"CATSEARCH_{name.upper()}={url} is a stand-in: the system test runs on real AWS only (set it empty)"
    connection = env.get("AIRFLOW_CONN_AWS_DEFAULT", "")
    if "endpoint_url" in connection or any(s in connection for s in STAND_INS):
        return "AIRFLOW_CONN_AWS_DEFAULT points at a stand-in: set it from deploy/aws/stack_env.py"
    if any(s in settings.opensearch_url for s in ("127.0.0.1", "localhost")) or not settings.opensearch_url:
        return "CATSEARCH_OPENSEARCH_URL is not an Amazon OpenSearch Service domain"
    if env.get("AWS_ACCESS_KEY_ID") == "testing":
        return "AWS_ACCESS_KEY_ID is moto's 'testing': unset it (or set real credentials) to run on real AWS"
    missing = settings.missing()
    if missing:
        return f"settings missing: {', '.join(missing)}"
    import boto3

    if boto3.Session().get_credentials() is None:
        return "no AWS credentials found"
    return None


def test_skip_reasons_name_what_is_missing():
    assert OPT_IN in why_skip({})
    local = {OPT_IN: "1", "CATSEARCH_AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}
    assert "stand-in" in why_skip(local)
    moto_conn = {OPT_IN: "1", "AIRFLOW_CONN_AWS_DEFAULT": '{"extra": {"endpoint_url": "http://127.0.0.1:5000"}}'}
    assert "AIRFLOW_CONN_AWS_DEFAULT" in why_skip(moto_conn)


def test_catalogue_search_on_aws():
    reason = why_skip()
    if reason:
        pytest.skip(reason)
    from example_catalogue_search_aws import dag

    dag_run = dag.test()
    assert dag_run.state == "success", f"system test DAG run ended {dag_run.state}: see the task logs above"


def test_system_test_dag_has_set_up_body_and_all_done_tear_down():
    """Checked here without AWS: the DAG's shape, so a broken system test is not found only on AWS."""
    from example_catalogue_search_aws import bucket_prefixes, dag, isolated_env

    teardown = {"run_query_endpoints_teardown", "delete_transform_model", "delete_indices", "delete_s3_objects"}
    rules = {t.task_id: getattr(t.trigger_rule, "value", t.trigger_rule) for t in dag.tasks}
    assert all(rules[t] == "all_done" for t in teardown), rules
    assert rules["watcher"] == "one_failed"
    assert dag.get_task("watcher").upstream_task_ids == set(rules) - {"watcher"}
    body = ["build_and_upload_model", "run_catalogue_ingest", "run_query_endpoints_deploy", "check_index"]
    for before, after in zip(body, body[1:] + ["run_query_endpoints_teardown"]):
        assert before in dag.get_task(after).upstream_task_ids
    env = isolated_env("abc123")
    s = Settings()
    assert {"images_prefix", "manifests_prefix", "embeddings_prefix", "models_prefix"} <= set(bucket_prefixes(s))
    for name in bucket_prefixes(s):  # nested under the stack's prefixes, so its IAM permissions cover them
        value = env[f"CATSEARCH_{name.upper()}"]
        assert value.startswith(getattr(s, name)) and "systest-abc123" in value
    assert env["CATSEARCH_ENDPOINT_PREFIX"].startswith(f"{s.endpoint_prefix}-")
    assert env["CATSEARCH_INDEX_ALIAS"].startswith(s.index_alias)
