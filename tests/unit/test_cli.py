"""The search CLI's errors: one line on stderr, a non-zero exit, never a traceback (issue 10 item 4)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from catalogue_search import cli, search


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable(monkeypatch) -> str:
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("CATSEARCH_OPENSEARCH_URL", url)
    monkeypatch.setenv("CATSEARCH_QUERY_ENCODER", "local")
    return url


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["search", "a dog", "-k", "100000"], ["k + offset must be at most 10000", "k=100000"]),
        (["search", "a dog", "--offset", "100000000"], ["k + offset must be at most 10000", "offset=100000000"]),
        (["search", "a dog", "--offset", str(2**63 + 1)], ["k + offset must be at most", f"offset={2**63 + 1}"]),
        (["search", "a dog", "--offset", "-1"], ["offset must be 0 or more"]),
        (["search", "a dog", "-k", "0"], ["k must be at least 1"]),
        (["search", "--image", "/no/such/file.jpg", "-k", "100000"], ["k + offset must be at most"]),
    ],
)
def test_k_and_offset_past_the_engine_limit_are_one_line_errors(argv, needles, unreachable, capsys):
    """Refused before any query: the (unreachable) engine is never asked, no model is loaded."""
    code, out, err = _run(argv, capsys)
    _assert_one_line_error(code, err, *needles)
    assert out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "a dog"],
        ["search", "--like", "B000000001"],
        ["search", "--list", "product-types"],
        ["search", "--image", __file__],
    ],
)
def test_unreachable_opensearch_is_one_line(argv, unreachable, capsys):
    code, _, err = _run(argv, capsys)
    _assert_one_line_error(code, err, f"OpenSearch at {unreachable} is unreachable", "refused")
    assert code == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["search", "a dog", "-k", "abc"], "invalid int value"),
        (["search"], "give one of"),
        (["search", "a dog", "--image", "x.jpg"], "give one of"),
        (["search", "--list", "colours"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_command_line_mistakes_are_one_line_with_status_2(argv, needle, unreachable, capsys):
    code, _, err = _run(argv, capsys)
    _assert_one_line_error(code, err, needle)
    assert code == 2


def test_missing_setting_is_one_line(monkeypatch, capsys):
    monkeypatch.delenv("CATSEARCH_OPENSEARCH_URL", raising=False)
    code, _, err = _run(["search", "a dog"], capsys)
    _assert_one_line_error(code, err, "CATSEARCH_OPENSEARCH_URL")


def test_the_real_command_prints_no_traceback_when_opensearch_is_down(unreachable):
    """The module as `./dev search` runs it, in a fresh interpreter."""
    import os

    env = dict(os.environ, CATSEARCH_OPENSEARCH_URL=unreachable)
    proc = subprocess.run(
        [sys.executable, "-m", "catalogue_search.cli", "search", "a red flower"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: OpenSearch at")


def test_check_page_limits():
    assert search.check_page(5, 0) == (5, 0)
    assert search.check_page(10, 9990) == (10, 9990)
    with pytest.raises(search.OutOfRangeError):
        search.check_page(10, 9991)
    with pytest.raises(search.OutOfRangeError, match="at most 50"):
        search.check_page(10, 41, limit=50)
    with pytest.raises(search.OutOfRangeError):
        search.check_page(True, 0)
    with pytest.raises(search.OutOfRangeError, match="digits"):
        search.check_page(1, 10**40)


def test_cosine_similarity_from_the_engine_score():
    assert search.cosine_similarity(1.0) == 1.0
    assert search.cosine_similarity(0.5) == 0.0
    assert search.cosine_similarity(0.0) == -1.0
    assert search.cosine_similarity(0.75) == pytest.approx(0.5)
    hit = search.Hit(rank=1, score=0.9, item_id="a", item_name="b", image_path="c")
    assert hit.similarity == pytest.approx(0.8) and hit.as_dict()["similarity"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (search.IndexMissingError("x"), 503, "index_missing"),
        (search.EndpointNotDeployedError("x"), 503, "endpoint_not_deployed"),
        (search.EmptyQueryError("x"), 400, "empty_query"),
        (search.UnreadableImageError("x"), 400, "unreadable_image"),
        (search.OutOfRangeError("x"), 400, "out_of_range"),
        (search.ProductNotFoundError("x"), 404, "product_not_found"),
        (search.OpenSearchUnavailableError("x"), 503, "opensearch_unreachable"),
        (search.QueryRefusedError("x"), 502, "query_refused"),
    ],
)
def test_error_payloads(exc, status, code):
    assert search.error_payload(exc) == (status, {"error": code, "detail": "x"})


def test_index_mapping_normalises_filter_fields():
    from catalogue_search import index
    from catalogue_search.settings import Settings

    body = index.index_body(Settings(), alias="a", dimension=4, run_key="r")
    props = body["mappings"]["properties"]
    for name in ("product_type", "brand"):
        assert props[name]["normalizer"] == index.LOWERCASE_NORMALIZER
        assert props[name]["fields"]["raw"] == {"type": "keyword"}
    normalizer = body["settings"]["index"]["analysis"]["normalizer"][index.LOWERCASE_NORMALIZER]
    assert normalizer["filter"] == ["lowercase"]
