"""Shared fixtures: the real local stand-ins (moto server, OpenSearch node).

`./dev test` starts the local stack before pytest runs and exports its
addresses; the fixtures only connect to them. Each test gets its own buckets
and index names, so tests never see each other's data.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO / "tools"))

from catalogue_search.settings import Settings  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
TINY_MODEL_CONFIG = FIXTURES / "tiny_clip.json"


def _reachable(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def moto_url() -> str:
    """URL of the running moto server (started by `./dev test`)."""
    url = os.environ.get("CATSEARCH_AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    if not _reachable(url + "/moto-api/"):
        pytest.fail(f"moto server is not reachable at {url}: run the tests with `./dev test`")
    return url


@pytest.fixture(scope="session")
def opensearch_url() -> str:
    """URL of the running OpenSearch node (started by `./dev test`)."""
    url = os.environ.get("CATSEARCH_OPENSEARCH_URL", "http://127.0.0.1:9200")
    if not _reachable(url + "/_cluster/health"):
        pytest.fail(f"OpenSearch is not reachable at {url}: run the tests with `./dev test`")
    return url


@pytest.fixture
def unique() -> str:
    """A short unique token for bucket, index and job names."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def settings(moto_url: str, unique: str) -> Settings:
    """Settings pointing at moto with a fresh project bucket (created) for this test."""
    s = Settings.from_env(
        aws_endpoint_url=moto_url,
        bucket=f"test-project-{unique}",
        index_alias=f"test-products-{unique}",
    )
    s3 = s3_client_for(s)
    s3.create_bucket(Bucket=s.bucket)
    return s


def s3_client_for(settings: Settings):
    import boto3

    return boto3.client("s3", **settings.boto3_kwargs())


@pytest.fixture
def s3(settings: Settings):
    return s3_client_for(settings)


@pytest.fixture
def sagemaker_client(settings: Settings):
    import boto3

    return boto3.client("sagemaker", **settings.boto3_kwargs())
