"""The search page in a real browser: headless Chromium (Debian's package) driven by Playwright, against
`airflow api-server` on 127.0.0.1 with a private AIRFLOW_HOME and the simple auth manager.

Logs in, opens "Catalogue search" from Airflow's navigation, runs a text query (cards whose images
loaded), uploads a catalogue image (its product first, similarity 1.0), applies a filter chip, pages
forward and clicks "more like this". Saves a screenshot in build/screenshots/search-page.png, or over
the README's docs/search-page.png when asked (`./dev test --update-docs`, CATSEARCH_UPDATE_DOCS=1).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from search_world import build_world

from catalogue_search_dev import testkinds

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CATSEARCH_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = testkinds.screenshot_path("search-page.png")  # build/screenshots/, or docs/ with --update-docs
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
N_PRODUCTS = 30  # 20 TOY, 10 FOOD: two pages of 12 even after the TOY filter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"airflow api-server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except Exception:
            time.sleep(1)
    pytest.fail(f"airflow api-server did not answer {url} in {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def world(tmp_path_factory, moto_url, opensearch_url, tiny_artifact):
    w = build_world(
        moto_url, opensearch_url, tmp_path_factory.mktemp("page-world"), n=N_PRODUCTS, artifact=tiny_artifact
    )
    yield w
    w.cleanup()


@pytest.fixture(scope="module")
def api_server(world, tmp_path_factory):
    """`airflow api-server` with our plugins folder, a private home and one viewer user."""
    from airflow.configuration import conf

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `./dev test` installs Debian's chromium package")
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    password = secrets.token_urlsafe(12)
    passwords = home / "simple_auth_manager_passwords.json.generated"
    passwords.write_text(json.dumps({"reader": password}))
    port = _free_port()
    s = world.settings
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        # the metadata DB `./dev test` migrated; the API server only reads it
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conf.get("database", "sql_alchemy_conn"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "reader:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
        "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]),
        "CATSEARCH_OPENSEARCH_URL": s.opensearch_url,
        "CATSEARCH_AWS_ENDPOINT_URL": s.aws_endpoint_url,
        "CATSEARCH_BUCKET": s.bucket,
        "CATSEARCH_INDEX_ALIAS": s.index_alias,
        "CATSEARCH_MODEL_NAME": s.model_name,
        "CATSEARCH_QUERY_ENCODER": "local",
        "CATSEARCH_MODEL_CACHE_DIR": str(s.model_cache),
    }
    log = home / "api-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                shutil.which("airflow") or "airflow",
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", proc, log)
        yield {"url": f"http://127.0.0.1:{port}", "user": "reader", "password": password, "log": log}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _cards(frame) -> list[dict]:
    return frame.eval_on_selector_all(
        "#results .card",
        """cards => cards.map(c => ({
            item_id: c.dataset.itemId,
            similarity: parseFloat(c.querySelector('.similarity').dataset.similarity),
            product_type: c.querySelector('.tag[data-facet=product_type]')?.textContent,
            rank: parseInt(c.querySelector('.similarity').textContent.slice(1)),
            loaded: c.querySelector('img').complete && c.querySelector('img').naturalWidth > 0,
        }))""",
    )


def _wait_results(frame, status_pattern: str) -> list[dict]:
    frame.wait_for_function(
        "p => new RegExp(p).test(document.getElementById('status').textContent)", arg=status_pattern, timeout=120_000
    )
    frame.wait_for_function(
        "() => [...document.querySelectorAll('#results .card img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )
    return _cards(frame)


def test_search_page_in_the_airflow_ui(world, api_server, browser):
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(120_000)

    # Log in through Airflow's own login page.
    page.goto(api_server["url"] + "/")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", api_server["user"])
    page.fill("input[name=password]", api_server["password"])
    page.click("button[type=submit]")

    # Open "Catalogue search" from the navigation.
    nav = page.get_by_role("link", name=re.compile("Catalogue search"))
    nav.first.click()
    page.wait_for_url(re.compile(r"/plugin/catalogue-search"))
    iframe = page.wait_for_selector("iframe")
    frame = iframe.content_frame()
    frame.wait_for_selector("#q")
    frame.wait_for_selector(".chip[data-facet=product_type]")  # chips from the terms aggregation

    # A text query, from the keyboard: "/" focuses the search box, Enter runs it.
    frame.click("h1")
    frame.press("body", "/")
    page.keyboard.type("a red ellipse")
    page.keyboard.press("Enter")
    cards = _wait_results(frame, "results 1–12")
    assert len(cards) == 12 and all(c["loaded"] for c in cards)

    # Upload one of the catalogue's images: its product first, similarity 1.0.
    target = world.products[7]
    frame.set_input_files("#file", files=[{"name": "query.jpg", "mimeType": "image/jpeg", "buffer": target.image}])
    cards = _wait_results(frame, "the image query.jpg")
    assert cards[0]["item_id"] == target.item_id and cards[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert frame.inner_text(f".card[data-item-id={target.item_id}] .similarity").endswith("similarity 1.000")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    # A filter chip: only that product type.
    toy = frame.locator(".chip[data-facet=product_type][data-value=TOY]")
    assert toy.locator(".count").inner_text() == str(sum(p.product_type == "TOY" for p in world.products))
    toy.click()
    cards = _wait_results(frame, r"results 1–12 \(product type TOY\)")
    assert {c["product_type"] for c in cards} == {"TOY"} and len(cards) == 12
    assert toy.get_attribute("aria-pressed") == "true"

    # Page forward: the next 8 TOY products, ranks 13..20.
    frame.click("#next")
    cards = _wait_results(frame, r"results 13–20 \(product type TOY\)")
    assert [c["rank"] for c in cards] == list(range(13, 21)) and {c["product_type"] for c in cards} == {"TOY"}
    assert frame.is_disabled("#next") and not frame.is_disabled("#prev")

    # More like this on the first card (keyboard: focus the button, press Enter).
    first = cards[0]["item_id"]
    frame.focus(f".card[data-item-id={first}] button.more")
    page.keyboard.press("Enter")
    cards = _wait_results(frame, "products like")
    assert cards and first not in {c["item_id"] for c in cards}
    assert {c["product_type"] for c in cards} == {"TOY"}  # the filter still applies
    assert errors == []
