"""S3 clients shared by the copy's worker threads have a connection for each: no "pool is full" discards."""

from __future__ import annotations

import logging

import boto3
import pytest
from botocore.config import Config

from catalogue_search import airflow_clients
from catalogue_search.s3util import S3_WORKERS, copy_images

FULL = "Connection pool is full"


def _copy_all(s3, settings, n: int = 48) -> None:
    source = f"{settings.bucket}-src"
    s3.create_bucket(Bucket=source)
    products = [{"item_id": f"B{i:04d}", "path": f"{i % 7}/{i}.jpg"} for i in range(n)]
    for p in products:
        s3.put_object(Bucket=source, Key=f"images/small/{p['path']}", Body=b"\xff\xd8" + bytes(2000))
    kept, report = copy_images(
        s3,
        products,
        source_bucket=source,
        source_prefix="",
        dest_bucket=settings.bucket,
        dest_prefix="images/small/",
        workers=S3_WORKERS,
    )
    assert report.copied == n and len(kept) == n


@pytest.mark.parametrize("build", ["settings", "airflow_clients"])
def test_the_copy_never_discards_a_connection(settings, caplog, build):
    s3 = boto3.client("s3", **settings.boto3_kwargs()) if build == "settings" else airflow_clients.s3(settings)
    with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"):
        _copy_all(s3, settings)
    assert FULL not in caplog.text


def test_botocore_default_pool_would_discard(settings, caplog):
    """The control: botocore's default of 10 connections against 16 threads."""
    kwargs = {**settings.boto3_kwargs(), "config": Config(max_pool_connections=10)}
    with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"):
        _copy_all(boto3.client("s3", **kwargs), settings)
    assert FULL in caplog.text


def test_a_process_builds_one_client_per_connection_and_client_settings(settings, monkeypatch):
    """The tasks of one process (`airflow dags test` runs every task in one) share a client while the
    connection and the client's settings are the same; another endpoint, another pool or other credentials
    get a client of their own, which talks to what the connection now says."""
    import json
    import os

    first = airflow_clients.s3(settings)
    assert airflow_clients.s3(settings) is first
    wider = airflow_clients.s3(settings.replace(copy_workers=settings.copy_workers + 1))
    assert wider is not first and wider.meta.config.max_pool_connections > first.meta.config.max_pool_connections

    connection = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps({**connection, "extra": {**connection["extra"], "endpoint_url": "http://127.0.0.1:9"}}),
    )
    elsewhere = airflow_clients.s3(settings)
    assert elsewhere is not first and elsewhere.meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({**connection, "password": "another-secret"}))
    assert airflow_clients.s3(settings) not in (first, elsewhere)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    assert airflow_clients.s3(settings) is first
    assert airflow_clients.sagemaker(settings) is airflow_clients.sagemaker(settings) is not first
