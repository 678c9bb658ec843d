"""The search page in a real browser: headless Chromium (Debian's package) driven by Playwright, against
`airflow api-server` on 127.0.0.1 with a private AIRFLOW_HOME, the simple auth manager and 40 products of
the sample catalogue (tiny test model, random weights).

The S3 server is reached through a gate (`page_world.Gate`) that holds the model artifact's download until
the first test has seen the page say "warming up the model". The tests run in file order and share one
server: the first one is the server's first minutes (logged-out visit, login, warm-up). Screenshots of
each state, and axe-core's findings, go to build/screenshots/.

Why hybrid puts "A dog." first for "dog" here: BM25 finds only that title, and with 40 products every
product is in both vector lists, so a BM25 hit scores at least 1/61 + 2/100, more than the 2/61 a product
first in both vector lists (and absent from BM25) can reach. The image mode's order is the random
weights' and differs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import time
import urllib.request
import zlib
from pathlib import Path

import pytest
from page_world import DOG, Gate, build_sample_world

from catalogue_search_dev import containers, testkinds

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CATSEARCH_CHROMIUM", "/usr/bin/chromium")
SHOTS = REPO / "build" / "screenshots"
AXE_DIR = REPO / "tests" / "browser"
AXE = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WAIT_MS = 60_000  # any single wait; the whole module stays within a few minutes
# ... but the model's load: importing torch alone took 74 s wall on this 2-core machine at load average 16
MODEL_LOAD_MS = 240_000
DEVELOPER_WORDS = ("PIL", "MAX_IMAGE_PIXELS", "decompression", "Traceback", "Errno", "Exception", "opensearch")


def _free_port() -> int:
    return containers.free_ports(1)[0]  # below the ephemeral range: no client's connection takes it meanwhile


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"airflow api-server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except Exception:
            time.sleep(0.5)
    pytest.fail(f"airflow api-server did not answer {url} in {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def world(tmp_path_factory, moto_url, opensearch_url):
    w = build_sample_world(moto_url, opensearch_url, tmp_path_factory.mktemp("page-world"))
    yield w
    w.cleanup()


@pytest.fixture(scope="module")
def gate(moto_url):
    g = Gate(moto_url)
    yield g
    g.close()


@pytest.fixture(scope="module")
def api_server(world, gate, tmp_path_factory):
    """`airflow api-server` with our plugins folder, a private home, one viewer user, S3 behind the gate."""
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
        "CATSEARCH_AWS_ENDPOINT_URL": gate.url,
        "CATSEARCH_BUCKET": s.bucket,
        "CATSEARCH_INDEX_ALIAS": s.index_alias,
        "CATSEARCH_MODEL_NAME": s.model_name,
        "CATSEARCH_QUERY_ENCODER": "local",
        "CATSEARCH_MODEL_CACHE_DIR": str(home / "models"),  # empty: the artifact must come through the gate
    }
    log = home / "api-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [shutil.which("airflow") or "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)]
            + ["--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", proc, log)
        base = f"http://127.0.0.1:{port}"
        yield {"url": base, "page": base + "/catalogue-search/", "user": "reader", "password": password, "log": log}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, SHOTS / "api-server.log")  # beside the screenshots, for a failure's story


@pytest.fixture(scope="module")
def axe_source() -> str:
    """axe-core from npm (tests/browser/package-lock.json), installed on first use; never served by the app."""
    if not AXE.exists():
        npm = shutil.which("npm")
        if not npm:
            pytest.fail("npm is missing: install Node.js (Debian's nodejs and npm) for the accessibility check")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=AXE_DIR, check=True, timeout=300)
    return AXE.read_text()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def context(browser):
    """One browser profile for the module: cookies (the login) and local storage carry from test to test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context, api_server):
    """A new tab, logged in (through the login form if this profile is not yet)."""
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    if not any(c["name"] == "_token" for c in context.cookies()):
        tab.goto(api_server["page"])
        _log_in(tab, api_server)
    yield tab
    tab.close()
    assert errors == [], errors


def _log_in(tab, server) -> None:
    tab.wait_for_selector("input[name=username]")
    tab.fill("input[name=username]", server["user"])
    tab.fill("input[name=password]", server["password"])
    tab.click("button[type=submit]")


def _shot(tab, name: str) -> None:
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _cards(frame) -> list[dict]:
    return frame.eval_on_selector_all(
        "#results .card",
        """cards => cards.map(c => ({
            item_id: c.dataset.itemId,
            name: c.querySelector('.name').textContent,
            similarity: parseFloat(c.querySelector('.similarity').dataset.similarity),
            rank: parseInt(c.querySelector('.similarity').textContent.slice(1)),
            alt: c.querySelector('img').alt,
        }))""",
    )


def _wait_results(frame, status_pattern: str, timeout_ms: int = WAIT_MS) -> list[dict]:
    try:
        frame.wait_for_function(
            "p => new RegExp(p).test(document.getElementById('status').textContent)",
            arg=status_pattern,
            timeout=timeout_ms,
        )
    except Exception:
        shown = frame.evaluate("() => ['status', 'error'].map(i => document.getElementById(i).textContent)")
        pytest.fail(f"no {status_pattern!r} on the page; status and error: {shown}, at {frame.url}")
    frame.wait_for_function(
        "() => [...document.querySelectorAll('#results .card img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    return _cards(frame)


def _ids(cards: list[dict]) -> list[str]:
    return [c["item_id"] for c in cards]


def _search(frame, text: str) -> None:
    frame.fill("#q", text)
    frame.press("#q", "Enter")


def _assert_accessible(frame, axe_source: str, state: str) -> None:
    """axe-core in the page: no serious or critical violation (all findings saved beside the screenshots)."""
    if not frame.evaluate("() => typeof window.axe === 'object'"):
        frame.add_script_tag(content=axe_source)
    found = frame.evaluate("() => axe.run(document, {resultTypes: ['violations']}).then(r => r.violations)")
    (SHOTS / f"axe-{state}.json").write_text(json.dumps(found, indent=1))
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]])
        for v in found
        if v["impact"] in {"serious", "critical"}
    ]
    assert bad == [], f"axe-core, {state}: {bad}"


def _bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header claims 400 million pixels: the handler refuses it before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _contrast(png: bytes) -> float:
    """WCAG contrast ratio of the lightest and darkest pixels of a screenshot."""
    from PIL import Image

    def luminance(rgb) -> float:
        c = [v / 255 for v in rgb]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    data = Image.open(io.BytesIO(png)).convert("RGB").tobytes()
    values = [luminance(data[i : i + 3]) for i in range(0, len(data), 3)]
    return (max(values) + 0.05) / (min(values) + 0.05)


def test_a_logged_out_visit_logs_in_comes_back_and_waits_for_the_warm_up(context, api_server, gate, axe_source):
    assert not gate.is_open, "run this module in file order: this test needs the API server's first minutes"
    tab = context.new_page()
    wanted = api_server["page"] + "?q=dog&mode=hybrid"
    tab.goto(wanted)
    tab.wait_for_selector("input[name=username]")  # Airflow's login form, not {"detail":"Not authenticated"}
    assert "/auth/login" in tab.url and "next=" in tab.url, tab.url
    assert "Not authenticated" not in tab.content()
    _shot(tab, "01-logged-out-redirected-to-login")
    _log_in(tab, api_server)
    tab.wait_for_url(wanted)  # back to the shared link, query string and all

    # The model is still on its way (the gate holds the artifact): the page says so, the search waits.
    tab.wait_for_selector("#warmup:not([hidden])")
    assert "Warming up the model" in tab.inner_text("#warmup")
    tab.wait_for_function("() => /warming up/.test(document.getElementById('status').textContent)")
    _shot(tab, "02-warming-up")
    _assert_accessible(tab, axe_source, "warming-up")
    deadline = time.monotonic() + WAIT_MS / 1000
    while not gate.held and time.monotonic() < deadline:  # the warm-up imports torch, then asks for the artifact
        time.sleep(0.2)
    assert gate.held >= 1, "the warm-up never asked S3 for the model artifact"
    assert tab.is_visible("#warmup") and "warming up" in tab.inner_text("#status")  # still waiting, both
    gate.open()
    cards = _wait_results(tab, "“dog” in hybrid mode: results 1–12", MODEL_LOAD_MS)
    assert cards[0]["name"] == DOG
    tab.wait_for_selector("#warmup", state="hidden")
    status = tab.request.get(api_server["page"] + "api/status").json()
    assert status["warmup"]["state"] == "ready", status["warmup"]
    _shot(tab, "03-first-results-after-warm-up")

    # The first queries after the warm-up answer quickly: text, then an image (both encoders are loaded).
    started = time.monotonic()
    _search(tab, "a red apple")
    _wait_results(tab, "“a red apple” in hybrid mode: results 1–12")
    text_s = time.monotonic() - started
    started = time.monotonic()
    tab.set_input_files("#file", files=[{"name": "q.jpg", "mimeType": "image/jpeg", "buffer": _product(tab, 3)}])
    _wait_results(tab, "the picture q.jpg in hybrid mode: results 1–12")
    image_s = time.monotonic() - started
    print(f"first text query after warm-up {text_s:.2f}s, first image query {image_s:.2f}s")
    assert text_s < 3 and image_s < 3, (text_s, image_s)
    tab.close()


def _product(tab, i: int) -> bytes:
    """The picture of the i-th card shown, as the server sends it."""
    url = tab.eval_on_selector_all("#results .card img", "imgs => imgs.map(i => i.src)")[i]
    return tab.request.get(url).body()


def test_a_mode_switch_changes_the_results_and_the_url_keeps_the_search(page, api_server):
    page.goto(api_server["page"] + "?q=dog")  # a link without a mode: the server's default
    page.evaluate("() => localStorage.clear()")
    page.reload()
    hybrid = _wait_results(page, "“dog” in hybrid mode: results 1–12")
    assert hybrid[0]["name"] == DOG and page.is_checked("input[name=mode][value=hybrid]")

    page.check("input[name=mode][value=image]")
    image = _wait_results(page, "“dog” in images mode: results 1–12")
    assert _ids(image) != _ids(hybrid)
    assert "mode=image" in page.url and "q=dog" in page.url
    _shot(page, "04-image-mode")

    page.reload()  # the URL holds the search
    assert _ids(_wait_results(page, "“dog” in images mode: results 1–12")) == _ids(image)
    assert page.input_value("#q") == "dog" and page.is_checked("input[name=mode][value=image]")
    page.go_back()
    assert _ids(_wait_results(page, "“dog” in hybrid mode")) == _ids(hybrid)
    page.go_forward()
    assert _ids(_wait_results(page, "“dog” in images mode")) == _ids(image)

    page.check("#fold")  # folding is part of the search and of the URL
    _wait_results(page, "“dog” in images mode: results 1–")
    assert "fold=1" in page.url
    page.reload()
    _wait_results(page, "“dog” in images mode: results 1–")
    assert page.is_checked("#fold")
    page.uncheck("#fold")
    _wait_results(page, "“dog” in images mode: results 1–12")

    page.goto(api_server["page"] + "?q=dog")  # the user's choice is remembered
    _wait_results(page, "“dog” in images mode")
    page.goto(api_server["page"] + "?q=dog&mode=name&type=ANIMALS")  # a shared link's own choice wins
    cards = _wait_results(page, r"“dog” in names mode: results 1–\d+ \(product type ANIMALS\)")
    assert page.get_attribute(".chip[data-value=ANIMALS]", "aria-pressed") == "true"
    assert cards and all(c["alt"] == c["name"] for c in cards)  # alt text from the titles


def test_the_pager_appears_with_results_stops_at_the_ends_and_after_an_error(page, api_server, world, axe_source):
    page.goto(api_server["page"] + "?mode=hybrid")
    page.wait_for_selector(".chip")
    assert page.is_hidden("#pager")  # nothing searched: no pager
    _search(page, "a")
    _wait_results(page, "“a” in hybrid mode: results 1–12")
    assert page.is_visible("#pager") and page.is_disabled("#prev") and page.is_enabled("#next")
    page.click("#next")
    _wait_results(page, "results 13–24")
    assert "page=2" in page.url and page.is_enabled("#prev") and page.is_enabled("#next")
    last = (len(world.products) - 1) // 12 + 1
    page.goto(api_server["page"] + f"?q=a&mode=hybrid&page={last}")
    cards = _wait_results(page, f"results {12 * (last - 1) + 1}–{len(world.products)}")
    assert page.is_enabled("#prev") and page.is_disabled("#next")
    assert [c["rank"] for c in cards] == list(range(12 * (last - 1) + 1, len(world.products) + 1))
    _shot(page, "05-last-page")

    # Errors: plain sentences, and the pager leads nowhere.
    for name, data in (("notes.jpg", b"this is not a picture"), ("huge.png", _bomb_png())):
        page.set_input_files("#file", files=[{"name": name, "mimeType": "image/png", "buffer": data}])
        page.wait_for_selector("#error:not([hidden])")
        message = page.inner_text("#error")
        assert "picture" in message and not any(w.lower() in message.lower() for w in DEVELOPER_WORDS), message
        assert page.is_disabled("#prev") and page.is_disabled("#next")
    _shot(page, "06-error")
    _assert_accessible(page, axe_source, "error")

    # A long query (900 characters, within what the API takes): the status line shows its start only.
    long_query = "red " * 225
    page.check("input[name=mode][value=image]")
    _search(page, long_query)
    _wait_results(page, "in images mode: results 1–12")
    status = page.inner_text("#status")
    assert len(status) < 120 and "…" in status, status
    assert page.get_attribute("#status", "title") == long_query
    assert page.locator("#results").bounding_box()["y"] < 600  # the results are on the first screen
    _shot(page, "07-long-query")


def test_drag_and_drop_an_image_shows_it_and_finds_its_product(page, api_server, world):
    page.goto(api_server["page"] + "?mode=image")
    page.wait_for_selector(".chip")
    dog = next(p for p in world.products if p.item_name == DOG)
    page.evaluate(
        """({b64, name}) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            window.dropped = new DataTransfer();
            window.dropped.items.add(new File([bytes], name, {type: 'image/jpeg'}));
            document.body.dispatchEvent(new DragEvent('dragenter', {dataTransfer: dropped, bubbles: true}));
        }""",
        {"b64": base64.b64encode(dog.image).decode(), "name": "my-dog.jpg"},
    )
    assert page.is_visible("#drop-overlay")
    _shot(page, "08-dragging")
    page.evaluate(
        """() => document.body.dispatchEvent(
            new DragEvent('drop', {dataTransfer: window.dropped, bubbles: true, cancelable: true}))"""
    )
    cards = _wait_results(page, "the picture my-dog.jpg in images mode: results 1–12")
    assert page.is_hidden("#drop-overlay")
    assert cards[0]["item_id"] == dog.item_id and cards[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    thumb = page.wait_for_selector("#query-image img")
    assert thumb.evaluate("i => i.complete && i.naturalWidth > 0") and "my-dog.jpg" in thumb.get_attribute("alt")
    _shot(page, "09-dropped-image")
    page.click("#clear-image")
    assert page.is_hidden("#query-image") and page.is_hidden("#pager")


def test_why_a_hybrid_hit_matched_and_the_model_line(page, api_server, world, axe_source):
    page.goto(api_server["page"] + "?q=dog&mode=hybrid")
    cards = _wait_results(page, "“dog” in hybrid mode: results 1–12")
    assert cards[0]["name"] == DOG
    line = page.inner_text("#model-line")
    assert "tiny-clip" in line and "quality not measured" in line, line
    why = page.locator("#results .card").first.locator("button.why")
    assert why.get_attribute("aria-expanded") == "false"
    why.click()
    lexical = page.wait_for_selector("#results .card >> nth=0 >> .why-panel li[data-list=lexical]")
    assert lexical.get_attribute("data-rank") == "1" and "rank 1" in lexical.inner_text()
    ranks = page.eval_on_selector_all(
        "#results .card >> nth=0 >> .why-panel li", "lis => lis.map(l => [l.dataset.list, l.dataset.rank])"
    )
    assert [name for name, _ in ranks] == ["lexical", "name", "image"] and all(r for _, r in ranks)  # 40 < 100
    _shot(page, "10-why-it-matched")
    _assert_accessible(page, axe_source, "results-hybrid")
    page.emulate_media(color_scheme="dark")
    _shot(page, "10-why-it-matched-dark")
    _assert_accessible(page, axe_source, "results-hybrid-dark")
    page.emulate_media(color_scheme="light")

    # The quality step's figures in the index _meta (the shared contract's shape) reach the line.
    from catalogue_search import index

    client = index.client_from_settings(world.settings)
    meta = client.indices.get_mapping(index=world.index_name)[world.index_name]["mappings"]["_meta"]
    figures = {"recall@1": 0.2, "recall@5": 0.4, "recall@10": 0.55, "mrr": 0.31}
    chance = {"recall@1": 0.025, "recall@5": 0.125, "recall@10": 0.25, "mrr": 0.1}
    quality = {
        "model": "tiny-clip",
        "artifact_version": "v-test",
        "random_weights": True,
        "sample_size": len(world.products),
        "seed": 1,
        "chance": chance,
        "modes": {m: figures for m in ("image", "name", "hybrid")},
        "per_product_type": {},
        "duplicates": None,
    }
    meta = {**meta, "weights": {"random": True, "pretrained": None}, "quality": quality}
    client.indices.put_mapping(index=world.index_name, body={"_meta": meta})
    page.reload()
    _wait_results(page, "“dog” in hybrid mode")
    line = page.inner_text("#model-line")
    assert "random weights" in line and "recall@10 0.550" in line and "MRR 0.310" in line, line


def test_keyboard_moves_through_results_and_chips(page, api_server):
    page.goto(api_server["page"] + "?mode=image")
    page.wait_for_selector(".chip")
    page.click("h1")
    page.keyboard.press("/")  # focuses the search box
    page.keyboard.type("dog")
    page.keyboard.press("Enter")
    cards = _wait_results(page, "“dog” in images mode: results 1–12")
    page.focus("#results .card")
    page.keyboard.press("ArrowRight")
    focused = page.evaluate("() => document.activeElement.dataset.itemId")
    assert focused == cards[1]["item_id"]
    page.keyboard.press("End")
    assert page.evaluate("() => document.activeElement.dataset.itemId") == cards[-1]["item_id"]
    page.keyboard.press("Home")
    page.keyboard.press("Enter")  # a card's Enter: more like it
    _wait_results(page, f"products like “{cards[0]['name']}”")

    chips = page.locator(".facet[data-facet=product_type] .chip")
    chips.first.focus()
    page.keyboard.press("ArrowRight")
    second = chips.nth(1).get_attribute("data-value")
    assert page.evaluate("() => document.activeElement.dataset.value") == second
    page.keyboard.press("Space")
    _wait_results(page, rf"\(product type {second}\)")
    assert page.locator(f".chip[data-value={second}]").get_attribute("aria-pressed") == "true"


def test_the_nav_entry_and_the_address_bar_inside_airflow(page, api_server):
    page.goto(api_server["url"] + "/")
    link = page.get_by_role("link", name=re.compile(r"^Search$"))
    link.wait_for()
    label_fits = link.evaluate(
        "a => [...a.querySelectorAll('*')].concat(a).every(e => e.scrollWidth <= e.clientWidth + 1)"
    )
    assert label_fits, "the nav label is cut"
    link.click()
    page.wait_for_url(re.compile(r"/plugin/catalogue-search"))
    frame = page.wait_for_selector("iframe").content_frame()
    frame.wait_for_selector(".chip")
    _shot(page, "11-inside-airflow")
    icon = page.get_by_role("link", name=re.compile(r"^Search$")).locator("img")
    assert _contrast(icon.screenshot()) >= 4.5, "the selected nav item's icon does not stand out"
    frame.check("input[name=mode][value=hybrid]")
    _search(frame, "dog")
    _wait_results(frame, "“dog” in hybrid mode")
    page.wait_for_function("() => location.search.includes('q=dog')")  # the address bar follows the search
    page.reload()  # ... so a reload or a copied link of the Airflow page opens it again
    frame = page.wait_for_selector("iframe").content_frame()
    cards = _wait_results(frame, "“dog” in hybrid mode: results 1–12")
    assert cards[0]["name"] == DOG
    _shot(page, "12-inside-airflow-after-reload")
    page.screenshot(path=str(testkinds.screenshot_path("search-page.png")))  # build/, or the docs with --update-docs
