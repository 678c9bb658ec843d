"""The session-end sweep and the leftover check against the real moto server and OpenSearch node."""

from __future__ import annotations

import boto3
import pytest

from catalogue_search import index
from catalogue_search.settings import Settings
from catalogue_search_dev import testenv


def _create_everything(settings: Settings, client, token: str, part: str = "") -> dict[str, str]:
    """One bucket (with an object), model, endpoint config, endpoint, index and alias named by `token`."""
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    sm = boto3.client("sagemaker", **settings.boto3_kwargs())
    names = {
        "bucket": f"sweep-{token}{part}",
        "model": f"sweep-{token}{part}-model",
        "config": f"sweep-{token}{part}-cfg",
        "endpoint": f"sweep-{token}{part}-ep",
        "index": f"sweep-{token}{part}-v1",
        "alias": f"sweep-{token}{part}",
    }
    s3.create_bucket(Bucket=names["bucket"])
    s3.put_object(Bucket=names["bucket"], Key="a/b.txt", Body=b"x")
    sm.create_model(
        ModelName=names["model"],
        ExecutionRoleArn="arn:aws:iam::123456789012:role/test",
        PrimaryContainer={"Image": "pytorch-inference:2.6-cpu-py312"},
    )
    sm.create_endpoint_config(
        EndpointConfigName=names["config"],
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": names["model"],
                "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 1},
            }
        ],
    )
    sm.create_endpoint(EndpointName=names["endpoint"], EndpointConfigName=names["config"])
    client.indices.create(index=names["index"], body={"aliases": {names["alias"]: {}}})
    return names


@pytest.fixture
def other_token():
    """A second, made-up session token; whatever it names is swept at the end whatever happens."""
    token = testenv.new_token()
    yield token
    testenv.sweep(token)


def test_a_sweep_deletes_what_holds_its_token_and_nothing_else(
    moto_url, opensearch_url, other_token, unique, monkeypatch
):
    settings = Settings.from_env(aws_endpoint_url=moto_url, opensearch_url=opensearch_url)
    client = index.make_client(opensearch_url)
    mine = testenv.new_token()
    while mine == other_token:
        mine = testenv.new_token()
    ours = [_create_everything(settings, client, mine, part) for part in ("", "-2", "-3")]
    theirs = _create_everything(settings, client, other_token)
    monkeypatch.setattr(testenv, "INDICES_PER_DELETE", 2)  # the indices go in more than one request
    deleted = testenv.sweep(mine)

    after = testenv.snapshot()
    for kind, key in [("buckets", "bucket"), ("models", "model"), ("endpoint configs", "config")]:
        assert sorted(deleted[kind]) == sorted(names[key] for names in ours), kind
    for kind, key in [("endpoints", "endpoint"), ("indices", "index"), ("aliases", "alias")]:
        assert sorted(deleted[kind]) == sorted(names[key] for names in ours), kind
    gone = {name for names in ours for name in names.values()}
    for kind in ("buckets", "models", "endpoint_configs", "endpoints", "indices"):
        assert not gone & getattr(after, kind), kind
    assert not gone & set(after.aliases)
    assert after.aliases[theirs["alias"]] == [theirs["index"]]
    assert theirs["bucket"] in after.buckets and theirs["endpoint"] in after.endpoints


def test_the_check_names_a_leftover_of_this_session(moto_url, unique):
    """What `./dev test` does around pytest: a bucket this session leaves behind is a named failure."""
    settings = Settings.from_env(aws_endpoint_url=moto_url)
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    before = testenv.snapshot()
    bucket = f"leftover-{unique}"
    s3.create_bucket(Bucket=bucket)
    try:
        problems, _ = testenv.compare(before, testenv.snapshot(), testenv.session_token())
        assert any("left by this test run" in p and bucket in p for p in problems), problems
    finally:
        s3.delete_bucket(Bucket=bucket)
    problems, _ = testenv.compare(before, testenv.snapshot(), testenv.session_token())
    assert not [p for p in problems if bucket in p]
