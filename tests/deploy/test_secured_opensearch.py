"""The fine-grained access roles of deploy/aws/opensearch_roles.py, enforced by the real security plugin.

A local node runs OpenSearch's security plugin (the one Amazon OpenSearch Service
runs) with TLS, and the roles and role mappings applied as the guide applies
them (`catalogue_search_dev.secure_stack`). Internal users stand for the IAM
roles through backend roles. The pipeline runs as the Airflow role (the writer),
search runs as the search role (the reader):

- a whole `catalogue_ingest` run (filter, copy, encode, load, validate, swap,
  report_duplicates, clean-up) as the writer, then a second run and a rollback;
- an incremental run as the writer after one title changed: the served index
  write-blocked, `_clone`d, the clone waited for, its `_meta` replaced, the delta upserted;
- CLI and API search as the reader, and a write as the reader, refused.

The node is started if it is not running (and stopped again at the end); the
indices made here are deleted as the admin; moto's buckets go with the session's sweep.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import boto3
import pytest

from catalogue_search import index
from catalogue_search.settings import Settings
from catalogue_search_dev import demo, prefork, sample_catalogue, secure_stack, stack, testenv

pytestmark = pytest.mark.secure

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny_clip.json"
PRODUCTS = 40  # max_products of each run: enough for the validation sample, quick to encode


STARTED_HERE: list[bool] = []


@pytest.fixture(scope="module")
def secured():
    """The secured node with the roles applied for the settings' alias (the test aliases start with it)."""
    was_up = secure_stack.service().healthy()
    STARTED_HERE.append(secure_stack.up().startswith("started"))
    yield Settings.from_env().index_alias
    if not was_up:
        secure_stack.down()


def _python(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    assert args[0] == "-m", args
    return prefork.run_module(args[1], args[2:], env, timeout)


@pytest.fixture(scope="module")
def world(secured, moto_url, sagemaker_url, aws_env):
    """Buckets, model and sample catalogue in moto; the env of each role; indices removed at the end."""
    token = testenv.unique_name_part()
    alias = f"{secured}-sec-{token}"  # the roles cover `<settings' alias>*`
    base = {
        "CATSEARCH_SOURCE_BUCKET": f"sec-abo-{token}",
        "CATSEARCH_BUCKET": f"sec-project-{token}",
        "CATSEARCH_ENDPOINT_PREFIX": f"sec-{token}",
        "CATSEARCH_INDEX_ALIAS": alias,
        "CATSEARCH_MODEL_NAME": "tiny-clip",
        "CATSEARCH_MODEL_PRETRAINED": "",
        "CATSEARCH_DUPLICATE_COSINE_THRESHOLD": "0.9999",
        "CATSEARCH_TRANSFORM_POLL_SECONDS": "1",
        "CATSEARCH_QUERY_ENCODER": "local",
        "CATSEARCH_TASK_RETRIES": "0",  # a refusal fails the run at once
        **aws_env(Settings.from_env(aws_endpoint_url=moto_url, sagemaker_endpoint_url=sagemaker_url)),
    }
    env = {user: {**base, **secure_stack.client_env(user)} for user in ("admin", *secure_stack.USERS)}
    # The runs publish to the trial alias (max_products is refused on the configured one).
    settings = {user: Settings.from_env({**os.environ, **e}, index_alias=_trial(alias)) for user, e in env.items()}
    demo.prepare(settings["admin"], model_cfg_path=TINY)
    yield env, settings
    admin = index.client_from_settings(settings["admin"])
    admin.indices.delete(index=f"{alias}*", expand_wildcards="all", ignore_unavailable=True)


def _trial(alias: str) -> str:
    return f"{alias}-trial"


def _ingest(env: dict[str, str], **params) -> subprocess.CompletedProcess:
    conf = json.dumps({"max_products": PRODUCTS, "alias": _trial(env["CATSEARCH_INDEX_ALIAS"]), **params})
    return _python(["-m", "airflow", "dags", "test", "catalogue_ingest", "--conf", conf], env, timeout=900)


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory):
    """Two catalogue_ingest runs as the writer (the session form of the Airflow role's ARN); the second
    rebuilds in full (`full_rebuild`: nothing changed, so it would otherwise publish nothing)."""
    env, _ = world
    out = []
    for n in range(2):
        result = _ingest(env["airflow"], **({"full_rebuild": True} if n else {}))
        log = result.stdout + result.stderr
        path = tmp_path_factory.getbasetemp() / f"secured-ingest-{n}.log"
        path.write_text(log)
        assert result.returncode == 0, f"{testenv.run_failure(result)}\n(the whole log: {path})"
        out.append(log)
    return out


def _served(settings: Settings) -> list[str]:
    return list(index.client_from_settings(settings).indices.get_alias(name=settings.index_alias))


def test_the_node_keeps_its_temporary_files_in_its_own_folder(secured):
    """Not an opensearch-<number> directory in the machine's /tmp, left behind by every start."""
    if not STARTED_HERE[-1]:
        pytest.skip("the secured node was already running: started by another checkout's code")
    pid = stack._read_pid(secure_stack.service())
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert [a.split("=", 1)[1] for a in arguments if a.startswith("-Djava.io.tmpdir=")] == [
        str(secure_stack.root() / "tmp")
    ]


def test_both_forms_of_the_airflow_roles_arn_are_the_writer(world):
    """An assumed-role session carries the role's ARN without its path: the mapping must match either form."""
    for user in ("airflow", "airflow-path"):
        info = secure_stack.request("GET", "/_plugins/_security/authinfo", user=user)
        assert info["roles"] == ["catalogue_search_writer"], (user, info["backend_roles"])
    info = secure_stack.request("GET", "/_plugins/_security/authinfo", user="search")
    assert info["roles"] == ["catalogue_search_reader"]


def _loaded(log: str) -> int:
    (loaded, total) = re.search(r"documents loaded: (\d+) / (\d+)", log).groups()
    assert loaded == total
    return int(loaded)


def test_a_whole_ingest_run_as_the_writer_publishes_the_catalogue(world, runs):
    _, settings = world
    admin = index.client_from_settings(settings["admin"])
    # max_products picks PRODUCTS listings; a listing whose image cannot be read is dropped with its reason.
    assert PRODUCTS - 3 <= _loaded(runs[0]) == admin.count(index=settings["admin"].index_alias)["count"]
    assert "nothing new to encode" in runs[1] and _loaded(runs[1]) == _loaded(runs[0])


def test_report_duplicates_runs_to_the_end_as_the_writer(world, runs):
    """helpers.scan clears its scroll at the end: the writer must be allowed to (a cluster action)."""
    _, settings = world
    s = settings["admin"]
    s3 = boto3.client("s3", **s.boto3_kwargs())
    listed = s3.list_objects_v2(Bucket=s.bucket, Prefix=s.manifests_prefix).get("Contents", [])
    reports = [o["Key"] for o in listed if o["Key"].endswith("duplicates.json")]
    assert len(reports) == 2, reports  # one per run
    assert all("near-duplicates:" in log for log in runs)


def test_rollback_as_the_writer_moves_the_alias_back(world, runs):
    env, settings = world
    before = _served(settings["admin"])
    alias = settings["airflow"].index_alias
    result = _python(["-m", "catalogue_search_dev.dev", "rollback", "--alias", alias], env["airflow"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    after = _served(settings["admin"])
    assert after != before and f"-> {after[0]}" in result.stdout


def test_cli_search_as_the_reader(world, runs):
    env, settings = world
    admin = index.client_from_settings(settings["admin"])
    hit = admin.search(index=settings["admin"].index_alias, body={"size": 1})["hits"]["hits"][0]
    title = hit["_source"]["item_name"]
    result = _python(
        ["-m", "catalogue_search.cli", "search", title, "-k", "3", "--mode", "hybrid", "--json"]
        + ["--alias", settings["search"].index_alias],
        env["search"],
    )
    assert result.returncode == 0, result.stderr
    assert hit["_id"] in {json.loads(line)["item_id"] for line in result.stdout.splitlines() if line.strip()}


def test_api_search_as_the_reader(world, runs):
    """The search page's API in Airflow's API app, its OpenSearch client signed in as the search role."""
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient
    from starlette.routing import Mount

    from catalogue_search_web.app import URL_PREFIX, Warm

    _, settings = world
    app = create_app("core")
    (plugin,) = [r.app for r in app.routes if isinstance(r, Mount) and r.path == URL_PREFIX]
    plugin.state.warm = Warm(settings["search"])
    http = TestClient(app, base_url="http://127.0.0.1")
    http.cookies.set("_token", get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="u", role="viewer")))
    resp = http.get(f"{URL_PREFIX}/api/search", params={"q": "a stamp", "k": 3})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["hits"]) == 3


def test_a_write_as_the_reader_is_refused(world, runs):
    from opensearchpy.exceptions import AuthorizationException

    _, settings = world
    reader = index.client_from_settings(settings["search"])
    alias = settings["search"].index_alias
    (served,) = _served(settings["admin"])
    admin = index.client_from_settings(settings["admin"])
    before = admin.count(index=alias)["count"]
    kept = admin.search(index=alias, body={"size": 1})["hits"]["hits"][0]["_id"]
    writes = [
        lambda: reader.index(index=alias, id="intruder", body={"item_id": "intruder"}),
        lambda: reader.delete(index=served, id=kept),
        lambda: reader.update(index=served, id=kept, body={"doc": {"item_name": "changed"}}),
        lambda: reader.indices.delete(index=served),
        lambda: reader.indices.update_aliases(body={"actions": [{"remove": {"index": served, "alias": alias}}]}),
        lambda: reader.indices.create(index=f"{alias}-new"),
    ]
    for write in writes:
        with pytest.raises(AuthorizationException):
            write()
    assert admin.count(index=alias)["count"] == before
    assert admin.get(index=alias, id=kept)["_source"]["item_name"] != "changed"


def _rename(settings: Settings, item_id: str, title: str) -> None:
    """Give one product of the source catalogue another en_US title (in whichever shard lists it)."""
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    for n in range(16):
        rows = sample_catalogue.source_listings(s3, settings, f"{n:x}")
        if any(r["item_id"] == item_id for r in rows):
            title_field = [{"language_tag": "en_US", "value": title}]
            rows = [{**r, "item_name": title_field} if r["item_id"] == item_id else r for r in rows]
            sample_catalogue.put_source_listings(s3, settings, f"{n:x}", rows)
            return
    raise AssertionError(f"{item_id} is in no listing shard")


@pytest.fixture(scope="module")
def incremental(world, runs):
    """One indexed product renamed, then a run as the writer: it builds from a clone of the served index."""
    env, settings = world
    admin = index.client_from_settings(settings["admin"])
    (base,) = _served(settings["admin"])
    item_id = admin.search(index=base, body={"size": 1, "sort": [{"item_id": "asc"}]})["hits"]["hits"][0]["_id"]
    _rename(settings["admin"], item_id, "A title changed between runs")
    result = _ingest(env["airflow"])
    assert result.returncode == 0, testenv.run_failure(result)
    return {"log": result.stdout + result.stderr, "base": base, "item_id": item_id}


def test_an_incremental_run_as_the_writer_builds_from_a_clone_of_the_served_index(world, incremental):
    """The incremental path's requests (write block, `_clone`, waiting for the clone, `_meta`, the upsert)
    are all allowed to the writer role: none of them is a cluster action outside its grants."""
    _, settings = world
    assert "build: incremental (only products changed): 0 added, 1 updated, 0 removed" in incremental["log"]
    admin = index.client_from_settings(settings["admin"])
    (served,) = _served(settings["admin"])
    assert served != incremental["base"]
    resize = admin.indices.get_settings(index=served, name="index.resize.source.name", flat_settings=True)
    assert resize[served]["settings"]["index.resize.source.name"] == incremental["base"]
    assert admin.get(index=served, id=incremental["item_id"])["_source"]["item_name"] == "A title changed between runs"
    # The served index got its write block back as it was (none), so a rollback to it can write again.
    block = admin.indices.get_settings(index=incremental["base"], name="index.blocks.write", flat_settings=True)
    assert block.get(incremental["base"], {}).get("settings", {}).get("index.blocks.write") in (None, "false")
