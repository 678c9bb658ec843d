"""The search page's server-side decisions that need no stack: the default mode, the hybrid weights, the
login redirect (on a real Starlette app) and a warm-up that cannot start."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from catalogue_search import search
from catalogue_search.settings import Settings
from catalogue_search_web import page_api
from catalogue_search_web.app import Warm
from catalogue_search_web.login import LoginRedirect
from catalogue_search_web.warmup import WarmUp

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def _info(quality):
    return page_api.IndexInfo(
        alias="products", model="m", artifact_version="v", random_weights=None, pretrained=None, quality=quality
    )


def _modes(**mrr):
    return {m: {"recall@1": 0, "recall@5": 0, "recall@10": 0, "mrr": v} for m, v in mrr.items()}


@pytest.mark.parametrize(
    ("quality", "mode"),
    [
        (None, "hybrid"),  # nothing measured: the benchmark's choice
        ({"random_weights": True, "modes": _modes(image=0.1, name=0.9, hybrid=0.5)}, "hybrid"),  # chance level
        ({"random_weights": False, "modes": _modes(image=0.1, name=0.9, hybrid=0.5)}, "name"),
        ({"random_weights": False, "modes": _modes(image=0.7, name=0.2, hybrid=0.5)}, "image"),
        ({"random_weights": False, "modes": _modes(image=0.5, name=0.5, hybrid=0.5)}, "hybrid"),  # a tie
        ({"modes": _modes(name=0.9)}, "hybrid"),  # weights unknown: not trusted
    ],
)
def test_default_mode_is_measured(quality, mode):
    assert page_api.default_mode(_info(quality))[0] == mode
    assert page_api.default_mode(None)[0] == "hybrid"


def test_hybrid_weights_from_the_query():
    assert page_api.fusion_params() is None
    fusion = page_api.fusion_params(image_weight=0.0)
    assert (fusion.lexical_weight, fusion.name_weight, fusion.image_weight) == (1.0, 1.0, 0.0)
    with pytest.raises(search.OutOfRangeError, match="cannot all be 0"):
        page_api.fusion_params(lexical_weight=0.0, name_weight=0.0, image_weight=0.0)


def _app(status: int) -> TestClient:
    """A page mounted under /search-app as Airflow mounts plugins, answering `status` to everything."""

    async def answer(request):
        return JSONResponse({"detail": "Not authenticated"}, status_code=status)

    inner = Starlette(routes=[Route("/", answer, methods=["GET", "POST"]), Route("/api/search", answer)])
    inner.add_middleware(LoginRedirect, url_prefix="/search-app")
    outer = Starlette(routes=[Mount("/airflow/search-app", app=inner)])
    return TestClient(outer, follow_redirects=False)


def test_a_browser_opening_the_page_logged_out_goes_to_the_login_and_back():
    got = _app(401).get("/airflow/search-app/?q=red%20ball&page=2", headers=HTML)
    assert got.status_code == 307 and "Not authenticated" not in got.text
    location = urlsplit(got.headers["location"])
    assert location.path == "/airflow/api/v2/auth/login"  # under Airflow's own base path
    assert parse_qs(location.query)["next"] == ["/airflow/search-app/?q=red%20ball&page=2"]


@pytest.mark.parametrize(
    ("status", "path", "headers", "method"),
    [
        (401, "/airflow/search-app/", {"Accept": "*/*"}, "GET"),  # a script, not a browser
        (401, "/airflow/search-app/api/search", HTML, "GET"),  # the API keeps its 401
        (401, "/airflow/search-app/", HTML, "POST"),
        (403, "/airflow/search-app/", HTML, "GET"),  # logged in, not allowed: not a login problem
    ],
)
def test_everything_else_keeps_its_answer(status, path, headers, method):
    got = _app(status).request(method, path, headers=headers)
    assert got.status_code == status and got.json() == {"detail": "Not authenticated"}


def test_a_warm_up_without_settings_fails_and_says_why():
    warmup = WarmUp()
    warmup.start(Warm(Settings.from_env(opensearch_url="", query_encoder="local")))
    assert warmup.wait(timeout=30)
    snap = warmup.snapshot()
    assert snap["state"] == "failed" and snap["errors"][0]["error"] == "not_configured"
    warmup.start(None)  # once per process: a second start does nothing
    assert warmup.snapshot()["state"] == "failed"
