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
from catalogue_search_dev import testenv, testkinds  # noqa: E402

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


# --- markers: what a test needs, from where it lives (testkinds.kind_markers; registered in pyproject.toml) ---
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = REPO / "tests"
    for item in items:
        try:
            relative = item.path.relative_to(tests)
        except ValueError:
            continue
        explicit = {mark.name for mark in item.iter_markers()}
        for name in sorted(testkinds.kind_markers(relative, set(item.fixturenames), explicit) - explicit):
            item.add_marker(name)
    if hasattr(config, "workerinput"):  # pytest-xdist's processes: the heaviest files first, each file whole
        rank: dict[Path, int] = {}
        for item in items:
            kind = testkinds.run_rank({mark.name for mark in item.iter_markers()})
            rank[item.path] = min(kind, rank.get(item.path, kind))
        items.sort(key=lambda item: rank[item.path])


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under `./dev test`, the tests start once the stack is up (pytest started and collected meanwhile)."""
    testenv.wait_at_stack_gate()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """At the end, delete from moto and OpenSearch what still holds this session's token.

    In one process only: the run's only one, or pytest-xdist's controller once every worker has ended (the
    workers share the token, so a worker that swept would delete what the others still use)."""
    if hasattr(session.config, "workerinput"):
        return
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


@pytest.fixture(scope="session")
def local_sagemaker(moto_url: str, tmp_path_factory):
    """The local SageMaker server's state (jobs, model servers) running this checkout's code.

    One CPU per container: one TorchServe worker per model; the model servers are shared by every test. At
    most four run at once (the least recently used stops, and starts again when asked for): the suite runs
    two of these side by side (`testkinds.test_workers`), and each container takes about 1.5 GB. An idle one
    stays for 15 minutes, not 3: the next test file on this process may use the same model, and each start
    costs 8 to 20 s.
    """
    from catalogue_search_dev.sagemaker_local import LocalSageMaker

    settings = Settings.from_env()
    jobs = tmp_path_factory.mktemp("sagemaker-jobs")
    state = LocalSageMaker(
        moto_url, settings.region, settings.model_cache, jobs, container_cpus=1, max_model_servers=4, model_idle_s=900
    )
    yield state
    state.close()


@pytest.fixture(scope="session")
def sagemaker_url(local_sagemaker):
    """A local SageMaker server running this checkout's code, in front of the moto server, on a free port.

    Not the stack's shared one (127.0.0.1:5100), which may run another checkout's code.
    """
    from catalogue_search_dev.sagemaker_local import serve_in_thread

    server, url = serve_in_thread(local_sagemaker)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def aws_env():
    """`aws_env(settings)`: the environment that points a DAG run (a subprocess) at `settings`' moto and
    SageMaker servers, the AWS connection included."""
    return _aws_env


def _aws_env(settings: Settings) -> dict[str, str]:
    from catalogue_search_dev import localenv

    env = {
        "CATSEARCH_AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "CATSEARCH_SAGEMAKER_ENDPOINT_URL": settings.sagemaker_endpoint_url,
    }
    env["AIRFLOW_CONN_AWS_DEFAULT"] = localenv.aws_connection(
        settings.aws_endpoint_url,
        settings.sagemaker_endpoint_url,
        region=settings.region,
        login=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        password=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    return env


@pytest.fixture
def unique() -> str:
    """A short unique token for bucket, index and job names; it starts with the session's token."""
    return testenv.unique_name_part()


@pytest.fixture
def settings(moto_url: str, sagemaker_url: str, unique: str) -> Settings:
    """Settings pointing at moto and this checkout's SageMaker server, with a fresh project bucket (created)."""
    s = Settings.from_env(
        aws_endpoint_url=moto_url,
        sagemaker_endpoint_url=sagemaker_url,
        bucket=f"test-project-{unique}",
        index_alias=f"test-products-{unique}",
        # SageMaker models (batch transform's too) are named with this prefix: the session's sweep finds them
        endpoint_prefix=f"t{unique}",
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

    return boto3.client("sagemaker", **settings.boto3_kwargs("sagemaker"))


# --- the tiny model: built once per session, shared by every test that encodes -----------------------------
@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    """model.tar.gz of the tiny CLIP config (random weights, saved: every load gives the same vectors).

    The one build of the session: tests read it, upload it, or unpack it (`tiny_model_dir`), never change it.
    """
    from catalogue_search_dev.model_build import build_model_artifact

    path = tmp_path_factory.mktemp("tiny-artifact") / "model.tar.gz"
    build_model_artifact(path, "tiny-clip", "", TINY_MODEL_CONFIG)
    return path


@pytest.fixture(scope="session")
def tiny_artifact_info(tiny_artifact: Path):
    """The `ArtifactInfo` of `tiny_artifact` (read back from the record of its build: nothing is built again)."""
    from catalogue_search_dev.model_build import build_model_artifact

    return build_model_artifact(tiny_artifact, "tiny-clip", "", TINY_MODEL_CONFIG)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_artifact: Path, tmp_path_factory) -> Path:
    """`tiny_artifact` unpacked, as SageMaker unpacks model.tar.gz into /opt/ml/model: what `load_handler` takes."""
    import tarfile

    path = tmp_path_factory.mktemp("tiny-model")
    with tarfile.open(tiny_artifact) as tar:
        tar.extractall(path, filter="data")
    return path


def handler_artifact(path: Path, source: str) -> Path:
    """A model.tar.gz that ships only its own handler (`code/inference.py` = `source`), as SageMaker allows:
    for handlers that misbehave on purpose."""
    import tarfile
    import textwrap

    code = path.parent / f"{path.name}.inference.py"
    code.write_text(textwrap.dedent(source))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(code, arcname="code/inference.py")
    return path


@pytest.fixture(scope="session")
def make_handler_artifact():
    """`make_handler_artifact(path, source)`: see `handler_artifact`."""
    return handler_artifact
