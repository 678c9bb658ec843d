"""Shared fixtures: the real local stand-ins (moto server, OpenSearch node).

`./dev test` starts the local stack before pytest runs and exports its
addresses; the fixtures only connect to them. Each test gets its own buckets
and index names, so tests never see each other's data.

The stack and the Airflow DB are the user's too, so a test session:
- runs Airflow in its own AIRFLOW_HOME (a temporary directory with a migrated
  DB, removed at the end): `airflow dags test` never writes into the user's DB;
- names everything it creates with its token (`unique` starts with it) and,
  when it ends, deletes from moto and OpenSearch whatever still holds the token
  (`catalogue_search_dev.testenv`). `./dev test` then checks that the user's
  Airflow DB, moto and OpenSearch hold what they held before the run.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO / "tools"))

from catalogue_search.settings import Settings  # noqa: E402
from catalogue_search_dev import testenv  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
TINY_MODEL_CONFIG = FIXTURES / "tiny_clip.json"


def pytest_configure(config: pytest.Config) -> None:
    """This session's token and its own AIRFLOW_HOME, before anything imports Airflow."""
    if "airflow.configuration" in sys.modules:
        raise pytest.UsageError("Airflow was imported before tests/conftest.py could give the tests their AIRFLOW_HOME")
    testenv.session_token()
    home = testenv.fresh_airflow_home()
    config.stash[AIRFLOW_HOME_KEY] = home
    os.environ.pop("AIRFLOW_CONFIG", None)
    os.environ.update(testenv.airflow_home_env(home))


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(AIRFLOW_HOME_KEY, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


AIRFLOW_HOME_KEY = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def sweep_what_the_session_created():
    """At the end, delete from moto and OpenSearch what still holds this session's token."""
    yield
    if os.environ.get("CATSEARCH_AWS_ENDPOINT_URL") or os.environ.get("CATSEARCH_OPENSEARCH_URL"):
        testenv.sweep(testenv.session_token())


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
    """A short unique token for bucket, index and job names; it starts with the session's token."""
    return testenv.unique_name_part()


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
