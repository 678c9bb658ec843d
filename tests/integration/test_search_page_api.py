"""The page's own endpoints inside the real Airflow API app (warm-up, status, explanations, hybrid weights,
the login redirect), against the real OpenSearch node and moto, with the tiny model."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest
from search_world import build_world

from catalogue_search import index


@pytest.fixture(scope="module")
def world(tmp_path_factory, moto_url, opensearch_url):
    w = build_world(moto_url, opensearch_url, tmp_path_factory.mktemp("page-api-world"), n=14)
    yield w
    w.cleanup()


@pytest.fixture(scope="module")
def airflow_app(world):
    from airflow.api_fastapi.app import create_app
    from starlette.routing import Mount

    from catalogue_search_web.app import URL_PREFIX, Warm

    app = create_app("core")
    plugin_app = next(r.app for r in app.routes if isinstance(r, Mount) and r.path == URL_PREFIX)
    plugin_app.state.warm = Warm(world.settings)
    return app, plugin_app


@pytest.fixture(scope="module")
def token():
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="reader", role="viewer"))


@pytest.fixture(scope="module")
def http(airflow_app, token):
    """A client that runs the app's lifespan, as `airflow api-server` does: the warm-up starts."""
    from fastapi.testclient import TestClient

    with TestClient(airflow_app[0], base_url="http://127.0.0.1") as client:
        client.cookies.set("_token", token)
        yield client


def test_the_encoders_warm_up_when_the_server_starts(http, airflow_app):
    warmup = airflow_app[1].state.warmup
    first = http.get("/catalogue-search/api/status").json()["warmup"]
    assert first["state"] in {"warming", "ready"}
    assert warmup.wait(timeout=300), "the warm-up did not end in 5 minutes"
    status = http.get("/catalogue-search/api/status").json()["warmup"]
    assert status["state"] == "ready" and status["errors"] == [] and status["seconds"] >= 0
    encoder = airflow_app[1].state.warm.client.encoder
    assert set(encoder._handlers) == {"TEXT", "IMAGE"}  # both loaded before any query
    started = time.monotonic()
    got = http.post(
        "/catalogue-search/api/search/image", files={"image": ("x.jpg", b"\xff\xd8 not a jpeg", "image/jpeg")}
    )
    assert got.status_code == 400 and time.monotonic() - started < 3  # no model load on the request


def test_status_reports_the_index_model_and_quality(http, world):
    got = http.get("/catalogue-search/api/status")
    assert got.status_code == 200, got.text
    status = got.json()
    assert status["index"]["alias"] == world.settings.index_alias and status["index"]["model"] == "tiny-clip"
    assert status["index"]["quality"] is None and status["default_mode"] == "hybrid"
    assert status["fusion"]["rank_constant"] == 60

    client = index.client_from_settings(world.settings)
    meta = client.indices.get_mapping(index=world.index_name)[world.index_name]["mappings"]["_meta"]
    figures = {m: {"recall@1": r, "recall@5": r, "recall@10": r, "mrr": r} for m, r in (("image", 0.2), ("name", 0.6))}
    figures["hybrid"] = {"recall@1": 0.4, "recall@5": 0.5, "recall@10": 0.7, "mrr": 0.5}
    quality = {"model": "tiny-clip", "artifact_version": "v1", "random_weights": False, "modes": figures}
    client.indices.put_mapping(
        index=world.index_name,
        body={
            "_meta": {
                **meta,
                "artifact_version": "v1",
                "weights": {"random": False, "pretrained": "x"},
                "quality": quality,
            }
        },
    )
    status = http.get("/catalogue-search/api/status").json()
    assert status["index"]["artifact_version"] == "v1" and status["index"]["random_weights"] is False
    assert status["index"]["quality"]["modes"]["name"]["mrr"] == 0.6
    assert status["default_mode"] == "name"  # real weights, measured: the best MRR wins
    quality["random_weights"] = True
    client.indices.put_mapping(index=world.index_name, body={"_meta": {**meta, "quality": quality}})
    status = http.get("/catalogue-search/api/status").json()
    assert status["default_mode"] == "hybrid" and "chance" in status["default_mode_reason"]
    client.indices.put_mapping(index=world.index_name, body={"_meta": meta})


def test_status_says_why_when_there_is_no_index(http, airflow_app, world):
    from catalogue_search_web.app import Warm

    plugin_app = airflow_app[1]
    saved = plugin_app.state.warm
    try:
        plugin_app.state.warm = Warm(world.settings.replace(index_alias="no-such-alias-page"))
        status = http.get("/catalogue-search/api/status").json()
    finally:
        plugin_app.state.warm = saved
    assert status["index"] is None and status["index_error"]["error"] == "index_missing"


def test_explain_gives_each_list_rank_of_a_hybrid_hit(http, world):
    target = world.products[4]
    hits = http.get("/catalogue-search/api/search", params={"q": target.item_name, "mode": "hybrid", "k": 5}).json()[
        "hits"
    ]
    assert hits[0]["item_id"] == target.item_id
    why = http.get("/catalogue-search/api/explain", params={"q": target.item_name, "item_id": target.item_id})
    assert why.status_code == 200, why.text
    lists = {entry["list"]: entry for entry in why.json()["lists"]}
    assert lists["lexical"]["rank"] == 1 and lists["name"]["rank"] == 1  # its own title, exactly
    assert why.json()["score"] == pytest.approx(hits[0]["score"], rel=1e-6)  # the fused score, recomputed

    image = http.post(
        "/catalogue-search/api/explain/image",
        params={"item_id": target.item_id},
        files={"image": ("q.jpg", target.image, "image/jpeg")},
    ).json()
    lists = {entry["list"]: entry for entry in image["lists"]}
    assert lists["lexical"]["used"] is False and lists["image"]["rank"] == 1


def test_hybrid_weights_change_the_ranking_and_zero_everywhere_is_refused(http, world):
    query = {"q": "a red ellipse", "mode": "hybrid", "k": 14}
    plain = http.get("/catalogue-search/api/search", params=query).json()["hits"]
    images_only = http.get(
        "/catalogue-search/api/search", params={**query, "lexical_weight": 0, "name_weight": 0}
    ).json()["hits"]
    by_image = http.get("/catalogue-search/api/search", params={**query, "mode": "image"}).json()["hits"]
    assert [h["item_id"] for h in images_only] == [h["item_id"] for h in by_image]
    assert [h["item_id"] for h in images_only] != [h["item_id"] for h in plain]
    zero = {**query, "lexical_weight": 0, "name_weight": 0, "image_weight": 0}
    got = http.get("/catalogue-search/api/search", params=zero)
    assert got.status_code == 400 and got.json()["error"] == "out_of_range"
    assert http.get("/catalogue-search/api/search", params={**query, "image_weight": -1}).status_code == 422


def test_a_logged_out_browser_is_sent_to_the_login_and_the_api_still_says_401(airflow_app):
    from fastapi.testclient import TestClient

    anonymous = TestClient(airflow_app[0], base_url="http://127.0.0.1", follow_redirects=False)
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    got = anonymous.get("/catalogue-search/?q=red%20ball&mode=name", headers=html)
    assert got.status_code == 307, got.text
    location = urlsplit(got.headers["location"])
    assert location.path == "/api/v2/auth/login"
    assert parse_qs(location.query)["next"] == ["/catalogue-search/?q=red%20ball&mode=name"]
    login = anonymous.get(got.headers["location"])  # Airflow's own route accepts it and goes to the form
    assert login.status_code == 307 and "/auth/login" in login.headers["location"]
    assert anonymous.get("/catalogue-search/api/search", params={"q": "x"}, headers=html).status_code == 401
    assert anonymous.get("/catalogue-search/").status_code == 401  # not a browser: the API's answer
