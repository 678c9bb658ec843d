"""The search page's API inside the real Airflow API app (plugins loaded from plugins/, Airflow's auth
manager), against the real OpenSearch node and moto, with the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from search_world import build_world

from catalogue_search import search
from catalogue_search.settings import boto3_client
from catalogue_search_dev import testenv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory, moto_url, opensearch_url, tiny_artifact):
    w = build_world(moto_url, opensearch_url, tmp_path_factory.mktemp("api-world"), n=14, artifact=tiny_artifact)
    yield w
    w.cleanup()


@pytest.fixture(scope="module")
def airflow_app(world):
    """Airflow's API app as `airflow api-server` builds it: our plugin mounted under /catalogue-search."""
    from airflow.api_fastapi.app import create_app
    from starlette.routing import Mount

    from catalogue_search_web.app import URL_PREFIX, Warm

    app = create_app("core")
    mounts = [r for r in app.routes if isinstance(r, Mount) and r.path == URL_PREFIX]
    assert mounts, "the catalogue search plugin is not mounted by the Airflow API app"
    plugin_app = mounts[0].app
    plugin_app.state.warm = Warm(world.settings)  # the world's bucket and alias, same code path
    return app, plugin_app


@pytest.fixture(scope="module")
def tokens():
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = get_auth_manager()
    return {
        "viewer": manager.generate_jwt(SimpleAuthManagerUser(username="reader", role="viewer")),
        "no-role": manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None)),
    }


@pytest.fixture(scope="module")
def http(airflow_app, tokens):
    from fastapi.testclient import TestClient

    client = TestClient(airflow_app[0], base_url="http://127.0.0.1")
    client.cookies.set("_token", tokens["viewer"])  # what the UI's login leaves in the browser
    return client


def _routes(plugin_app) -> list[tuple[str, str]]:
    from fastapi.routing import APIRoute

    fill = {"{item_id}": "B0X", "{path:path}": "ab/abc.jpg", "{name}": "app.js"}
    out = []
    for route in plugin_app.routes:
        if isinstance(route, APIRoute):
            path = route.path
            for key, value in fill.items():
                path = path.replace(key, value)
            out.extend((method, "/catalogue-search" + path) for method in sorted(route.methods))
    return out


def test_every_plugin_endpoint_refuses_a_request_without_a_valid_login(airflow_app, tokens):
    from fastapi.testclient import TestClient

    routes = _routes(airflow_app[1])
    assert {p for _, p in routes} >= {
        "/catalogue-search/",
        "/catalogue-search/api/search",
        "/catalogue-search/api/search/image",
        "/catalogue-search/api/products/B0X/similar",
        "/catalogue-search/api/facets",
        "/catalogue-search/images/ab/abc.jpg",
        "/catalogue-search/static/app.js",
        "/catalogue-search/openapi.json",
    }
    anonymous = TestClient(airflow_app[0], base_url="http://127.0.0.1")
    forged = tokens["viewer"][:-4] + ("AAAA" if not tokens["viewer"].endswith("AAAA") else "BBBB")
    for method, path in routes:
        assert anonymous.request(method, path, params={"q": "x"}).status_code == 401, (method, path)
        for token in (forged, tokens["no-role"]):
            for how in ({"headers": {"Authorization": f"Bearer {token}"}}, {"cookies": {"_token": token}}):
                got = TestClient(airflow_app[0], base_url="http://127.0.0.1").request(method, path, **how)
                assert got.status_code == 403, (method, path, how)


def test_text_query_returns_cards_data_with_cosine_similarity(http, world):
    got = http.get("/catalogue-search/api/search", params={"q": "a red ellipse", "k": 5})
    assert got.status_code == 200, got.text
    page = got.json()
    assert page["kind"] == "text" and page["k"] == 5 and len(page["hits"]) == 5
    assert page["next_offset"] == 5 and page["prev_offset"] is None
    hit = page["hits"][0]
    assert set(hit) >= {"item_id", "item_name", "product_type", "brand", "similarity", "image_url"}
    assert hit["similarity"] == pytest.approx(2 * hit["score"] - 1, abs=1e-6)
    assert hit["image_url"] == f"/catalogue-search/images/{hit['image_path']}"
    image = http.get(hit["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == next(p.image for p in world.products if p.item_id == hit["item_id"])
    assert "max-age" in image.headers["cache-control"] and image.headers["etag"]
    again = http.get(hit["image_url"], headers={"If-None-Match": image.headers["etag"]})
    assert again.status_code == 304


def test_search_modes_and_folding_through_the_api(http, world):
    target = world.products[3]
    by_name = http.get("/catalogue-search/api/search", params={"q": target.item_name, "k": 3, "mode": "name"})
    assert by_name.status_code == 200, by_name.text
    first = by_name.json()["hits"][0]
    assert first["item_id"] == target.item_id and first["similarity"] == pytest.approx(1.0, abs=1e-4)
    # An exact title is first in BM25 and in the title vectors: first in hybrid, whatever the images say.
    hybrid = http.get("/catalogue-search/api/search", params={"q": target.item_name, "k": 3, "mode": "hybrid"})
    assert hybrid.status_code == 200, hybrid.text
    assert hybrid.json()["hits"][0]["item_id"] == target.item_id
    assert hybrid.json()["hits"][0]["score"] >= 2 / 61
    folded = http.get("/catalogue-search/api/search", params={"q": "a red ellipse", "k": 3, "fold": "true"})
    assert folded.status_code == 200 and {"duplicates", "duplicate_ids"} <= set(folded.json()["hits"][0])
    bad = http.get("/catalogue-search/api/search", params={"q": "x", "mode": "psychic"})
    assert bad.status_code == 422


def test_image_upload_finds_its_product_first_and_pages(http, world):
    target = world.products[5]
    got = http.post(
        "/catalogue-search/api/search/image",
        params={"k": 4},
        files={"image": ("photo.jpg", target.image, "image/jpeg")},
    )
    assert got.status_code == 200, got.text
    first = got.json()
    assert first["hits"][0]["item_id"] == target.item_id
    assert first["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    last = http.post(
        "/catalogue-search/api/search/image",
        params={"k": 4, "offset": 12},
        files={"image": ("photo.jpg", target.image, "image/jpeg")},
    ).json()
    assert [h["rank"] for h in last["hits"]] == [13, 14] and last["next_offset"] is None
    assert last["prev_offset"] == 8


def test_filters_facets_and_more_like_this(http, world):
    facets = http.get("/catalogue-search/api/facets").json()
    types = {f["value"]: f["count"] for f in facets["product_type"]}
    assert types == {t: sum(p.product_type == t for p in world.products) for t in ("TOY", "FOOD")}
    food = http.get("/catalogue-search/api/search", params={"q": "a shape", "product_type": "food", "k": 14}).json()
    assert {h["product_type"] for h in food["hits"]} == {"FOOD"} and len(food["hits"]) == types["FOOD"]
    target = world.products[0]
    similar = http.get(f"/catalogue-search/api/products/{target.item_id}/similar", params={"k": 3}).json()
    assert similar["kind"] == "similar" and target.item_id not in {h["item_id"] for h in similar["hits"]}
    assert len(similar["hits"]) == 3


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/api/search", {"params": {"q": "   "}}, 400, "empty_query"),
        ("GET", "/api/search", {"params": {"q": "x", "k": 100000}}, 400, "out_of_range"),
        ("GET", "/api/search", {"params": {"q": "x", "offset": 100000000}}, 400, "out_of_range"),
        ("GET", "/api/search", {"params": {"q": "x", "offset": str(2**64)}}, 400, "out_of_range"),
        ("GET", "/api/search", {"params": {"q": "x", "k": 0}}, 400, "out_of_range"),
        (
            "POST",
            "/api/search/image",
            {"files": {"image": ("x.jpg", b"\xff\xd8 not a jpeg", "image/jpeg")}},
            400,
            "unreadable_image",
        ),
        ("POST", "/api/search/image", {"files": {"image": ("x.jpg", b"", "image/jpeg")}}, 400, "unreadable_image"),
        ("GET", "/api/products/B0NOSUCH/similar", {}, 404, "product_not_found"),
    ],
)
def test_errors_are_json_with_a_status(http, method, path, kwargs, status, code):
    got = http.request(method, "/catalogue-search" + path, **kwargs)
    assert got.status_code == status, got.text
    body = got.json()
    assert body["error"] == code and body["detail"] and "\n" not in body["detail"]


def test_missing_alias_and_undeployed_endpoint(airflow_app, http, world):
    from catalogue_search_web.app import Warm

    plugin_app = airflow_app[1]
    saved = plugin_app.state.warm
    try:
        plugin_app.state.warm = Warm(world.settings.replace(index_alias=f"missing-{uuid.uuid4().hex[:6]}"))
        got = http.get("/catalogue-search/api/search", params={"q": "x"})
        assert got.status_code == 503 and got.json()["error"] == "index_missing"
        assert "catalogue_ingest" in got.json()["detail"]
        plugin_app.state.warm = Warm(
            world.settings.replace(query_encoder="endpoint", endpoint_prefix=f"never-{uuid.uuid4().hex[:6]}")
        )
        got = http.get("/catalogue-search/api/search", params={"q": "x"})
        assert got.status_code == 503 and got.json()["error"] == "endpoint_not_deployed"
        assert "query_endpoints_deploy" in got.json()["detail"]
    finally:
        plugin_app.state.warm = saved


def test_openapi_schema_is_fastapis(http):
    schema = http.get("/catalogue-search/openapi.json").json()
    assert schema["info"]["title"] == "Catalogue search"
    assert {"/api/search", "/api/search/image", "/api/products/{item_id}/similar", "/api/facets"} <= set(
        schema["paths"]
    )
    hit = schema["components"]["schemas"]["HitOut"]["properties"]
    assert {"item_id", "item_name", "product_type", "brand", "similarity", "image_url"} <= set(hit)


def test_the_encoder_is_loaded_once_and_shared(airflow_app, http):
    warm = airflow_app[1].state.warm
    http.get("/catalogue-search/api/search", params={"q": "first"})
    encoder = warm.client.encoder
    handler = encoder._handlers["TEXT"]
    for q in ("second", "third"):
        assert http.get("/catalogue-search/api/search", params={"q": q}).status_code == 200
    assert warm.client.encoder is encoder and encoder._handlers["TEXT"] is handler


def _deploy_text_endpoint(settings) -> str:
    """Model, serverless config and endpoint through the local SageMaker server, which answers with the handler."""
    sm = boto3_client("sagemaker", settings)
    name = settings.endpoint_name(search.TEXT)
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=settings.sagemaker_role_arn or "arn:aws:iam::123456789012:role/r",
        PrimaryContainer={
            "Image": "pytorch-inference:2.6-cpu-py312",
            "ModelDataUrl": settings.artifact_uri,
            "Environment": {"ENCODE_TYPE": search.TEXT},
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-cfg",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 1},
            }
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")
    return name


def test_endpoint_encoder_api_server_imports_no_torch(world, tmp_path):
    """The plugin module, imported as Airflow does, answers a text query through the endpoint encoder
    (the local SageMaker server's runtime) in a fresh interpreter that never imports torch."""
    settings = world.settings.replace(endpoint_prefix=testenv.unique_name_part())
    name = _deploy_text_endpoint(settings)
    query = "a blue rectangle"
    local = search.SearchClient(settings, encoder=search.LocalEncoder(settings, s3_client=world.s3))
    expected = [h.item_id for h in local.search_text(query, 3)]
    script = textwrap.dedent(
        """
        import importlib.util, json, sys
        from fastapi.testclient import TestClient
        from airflow.api_fastapi.app import init_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        spec = importlib.util.spec_from_file_location("catalogue_search_page", sys.argv[1])
        plugin = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(plugin)  # what Airflow's plugin loader does
        token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="r", role="viewer"))
        client = TestClient(plugin.app)
        got = client.get("/api/search", params={"q": sys.argv[2], "k": 3}, headers={"Authorization": "Bearer " + token})
        print(json.dumps({"status": got.status_code, "body": got.json(),
                          "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                          "open_clip": "open_clip" in sys.modules}))
        """
    )
    env = {
        **os.environ,
        "CATSEARCH_QUERY_ENCODER": "endpoint",
        "CATSEARCH_OPENSEARCH_URL": settings.opensearch_url,
        "CATSEARCH_AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "CATSEARCH_BUCKET": settings.bucket,
        "CATSEARCH_INDEX_ALIAS": settings.index_alias,
        "CATSEARCH_MODEL_NAME": settings.model_name,
        "CATSEARCH_ENDPOINT_PREFIX": settings.endpoint_prefix,
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script, str(REPO / "plugins" / "catalogue_search_page.py"), query],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        sm = boto3_client("sagemaker", settings)
        sm.delete_endpoint(EndpointName=name)
        sm.delete_endpoint_config(EndpointConfigName=f"{name}-cfg")
        sm.delete_model(ModelName=name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == 200, result
    assert [h["item_id"] for h in result["body"]["hits"]] == expected  # the endpoint's vector is the local one's
    assert result["torch"] == [] and result["open_clip"] is False
