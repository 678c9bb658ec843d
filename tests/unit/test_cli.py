"""The search CLI's errors: one line on stderr, a non-zero exit, never a traceback (issue 10 item 4)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from catalogue_search import cli, search
from catalogue_search.settings import Settings, SettingsError


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


def test_a_page_checks_the_engine_limits_when_made():
    assert (search.Page(5).k, search.Page(5).offset) == (5, 0)
    assert search.Page(10, 9990).end == 10_000
    with pytest.raises(search.OutOfRangeError):
        search.Page(10, 9991)
    with pytest.raises(search.OutOfRangeError, match="at most 50"):
        search.Page(10, 41).within(50)
    with pytest.raises(search.OutOfRangeError):
        search.Page(True, 0)
    with pytest.raises(search.OutOfRangeError, match="digits"):
        search.Page(1, 10**40)
    # One hit more tells whether a next page exists, where the alias's window leaves room for it.
    assert search.Page(10, 30).within(50).probe() == search.Page(11, 30, limit=50)
    assert search.Page(10, 40).within(50).probe() == search.Page(10, 40, limit=50)
    assert search.Page(100).within(50_000).ceiling == search.KNN_MAX_K
    assert search.Page(5, 10).fetch(4) == 60 and search.Page(5, 10, limit=50).fetch(4) == 50


def test_filters_ignore_blanks_and_leave_the_case_to_the_index():
    assert search.Filters().clauses() == []
    both = search.Filters(product_type=" Food ", brand="")
    assert both == search.Filters(product_type="Food") and both.clauses() == [{"term": {"product_type": "Food"}}]
    pair = search.Filters(product_type="TOY", brand="Acme")
    assert pair.clauses(without="brand") == [{"term": {"product_type": "TOY"}}]


@pytest.mark.parametrize(
    ("text", "lexical", "needle"),
    [
        ("   ", False, "empty"),
        ("x" * 10_000, True, "10,000 characters long"),
        ("x" * 1_001, False, "1,001 characters long"),
        (" ".join(chr(97 + i // 26) + chr(97 + i % 26) for i in range(257)), True, "257 words"),
    ],
)
def test_text_queries_the_engine_would_refuse_are_refused_in_plain_words(text, lexical, needle):
    from catalogue_search.search.query import query_text

    with pytest.raises(search.InputError, match=needle) as err:
        query_text(text, lexical=lexical)
    assert search.error_payload(err.value)[0] == 400 and "error_id" not in search.error_payload(err.value)[1]


def test_what_the_vector_modes_and_bm25_accept():
    from catalogue_search.search.query import lexical_terms, query_text

    words = " ".join(chr(97 + i // 26) + chr(97 + i % 26) for i in range(257))
    assert query_text(words, lexical=False) == words  # CLIP reads the first 77 tokens; nothing reaches BM25
    assert query_text("  a red ball ", lexical=True) == "a red ball"
    assert lexical_terms("ZX-200 1.7 litre") >= 4 and lexical_terms("日本語") == 3 and lexical_terms("😀😁 ok") == 3


def test_a_query_image_is_at_most_the_serverless_payload():
    from catalogue_search.search.query import query_image

    assert query_image(b"x" * 4_000_000, search.SERVERLESS_MAX_PAYLOAD) == b"x" * 4_000_000
    with pytest.raises(search.ImageTooLargeError, match="4,000,000 bytes"):
        query_image(b"x" * 4_000_001, search.SERVERLESS_MAX_PAYLOAD)
    assert search.SERVERLESS_MAX_PAYLOAD == 4_000_000 == Settings().max_query_image_bytes


def test_a_long_hybrid_query_is_refused_before_opensearch_is_asked(unreachable, capsys):
    """A 10,000-character hybrid query: a plain one-line refusal, though the (unreachable) engine is never asked."""
    code, out, err = _run(["search", "red " * 2499 + "ball", "--hybrid"], capsys)
    _assert_one_line_error(code, err, "the text query is 10,000 characters long; a query may have at most 1,000")
    assert code == 1 and out == "" and "unreachable" not in err


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
        (search.EmptyQueryError("x"), 400, "empty_query"),
        (search.OutOfRangeError("x"), 400, "out_of_range"),
        (search.QueryTooLongError("x"), 400, "query_too_long"),
        (search.ImageTooLargeError("x"), 400, "image_too_large"),
        (search.ProductNotFoundError("x"), 404, "product_not_found"),
    ],
)
def test_an_error_in_the_callers_input_is_answered_as_it_is(exc, status, code):
    assert search.error_payload(exc) == (status, {"error": code, "detail": "x"})


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (search.UnreadableImageError("s3://secret-bucket/x"), 400, "unreadable_image"),
        (search.IndexMissingError("s3://secret-bucket/x"), 503, "index_missing"),
        (search.EndpointNotDeployedError("s3://secret-bucket/x"), 503, "endpoint_not_deployed"),
        (search.OpenSearchUnavailableError("s3://secret-bucket/x"), 503, "opensearch_unreachable"),
        (search.QueryRefusedError("s3://secret-bucket/x"), 502, "query_refused"),
        (search.ModelVersionMismatchError("s3://secret-bucket/x"), 409, "model_version_mismatch"),
        (SettingsError("s3://secret-bucket/x"), 503, "not_configured"),
        (KeyError("s3://secret-bucket/x"), 500, "internal_error"),
    ],
)
def test_any_other_error_is_a_plain_sentence_and_an_id(exc, status, code):
    got_status, body = search.error_payload(exc)
    assert (got_status, body["error"]) == (status, code)
    assert "secret-bucket" not in json.dumps(body) and len(body["error_id"]) == 12
    assert body["detail"].endswith(".") and "\n" not in body["detail"]


def test_index_mapping_normalises_filter_fields():
    from catalogue_search import index

    body = index.index_body(Settings(), alias="a", dimension=4, run_key="r")
    props = body["mappings"]["properties"]
    for name in ("product_type", "brand"):
        assert props[name]["normalizer"] == index.LOWERCASE_NORMALIZER
        assert props[name]["fields"]["raw"] == {"type": "keyword"}
    normalizer = body["settings"]["index"]["analysis"]["normalizer"][index.LOWERCASE_NORMALIZER]
    assert normalizer["filter"] == ["lowercase"]
