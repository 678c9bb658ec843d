"""The query path's errors: what went wrong, the HTTP status the API answers with, and what it may say.

Every error carries two texts. The message (`str(exc)`) is for the operator:
the CLI prints it and the server log keeps it; it may name an alias, a URL or
an endpoint. `public` is what the search API answers: for an error in the
caller's own input it is the message itself (built only from that input and
our limits); for anything else it is a plain sentence, and the answer carries
an error id that leads to the message in the server log. An unexpected
exception is answered the same way, its text never leaves the server.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from catalogue_search import contract
from catalogue_search.settings import Settings, SettingsError


class SearchError(RuntimeError):
    """A query that cannot be answered, with a message an operator can act on.

    `status` is the HTTP status the search API answers with, `code` a stable
    machine-readable name, `public` the API's sentence (None: the message itself).
    """

    status = 500
    code = "search_failed"
    public: str | None = "The search could not be completed."


class InputError(SearchError, ValueError):
    """The caller's own input: the message names only that input and our limits, so the API may show it."""

    status, public = 400, None


class EmptyQueryError(InputError):
    """No text, or no product id."""

    code = "empty_query"


class RejectedQueryError(InputError):
    """The encoder refused the text; its reason goes to the log, not to the API."""

    code, public = "rejected_query", "The query could not be encoded: try other words."


class QueryTooLongError(InputError):
    """More characters, or (BM25) more words, than a query may have: `query.query_text`."""

    code = "query_too_long"


class OutOfRangeError(InputError):
    """k or offset outside what the engine can answer: `query.Page`."""

    code = "out_of_range"


class ImageTooLargeError(InputError):
    """A query image over the cap (`SearchClient.max_image_bytes`), refused before any encoder sees it."""

    code = "image_too_large"


class UnreadableImageError(InputError):
    """An empty image, or one the encoder could not decode; its reason goes to the log, not to the API."""

    code, public = "unreadable_image", "The image could not be read: send a picture file, such as a JPEG or a PNG."


class ProductNotFoundError(InputError, LookupError):
    """ "More like this" for an item id the alias does not hold."""

    status, code = 404, "product_not_found"


class IndexMissingError(SearchError):
    """No index behind the alias (OpenSearch's index_not_found_exception)."""

    status, code = 503, "index_missing"
    public = "The catalogue has not been indexed yet: run the catalogue_ingest DAG."


class EndpointNotDeployedError(SearchError):
    """The query endpoint does not exist, or is not in service."""

    status, code = 503, "endpoint_not_deployed"
    public = "The query encoder is not deployed: trigger the query_endpoints_deploy DAG."


class ModelArtifactMissingError(SearchError):
    """The local encoder finds no model.tar.gz at the artifact URI."""

    status, code, public = 503, "model_artifact_missing", "The query encoder has no model yet: build and upload it."


class NotConfiguredError(SearchError):
    """A setting the query path needs is not set (or a `SettingsError`)."""

    status, code, public = 503, "not_configured", "The search is not configured yet: see the server log."


class OpenSearchUnavailableError(SearchError):
    """OpenSearch does not answer (connection refused, timed out)."""

    status, code = 503, "opensearch_unreachable"
    public = "The search engine cannot be reached at the moment: try again shortly."


class ModelVersionMismatchError(SearchError):
    """The query encoder's model is not the one that encoded the index, or the index records none."""

    status, code = 409, "model_version_mismatch"
    public = (
        "The query encoder runs another model than the one the catalogue was indexed with: deploy the index's "
        "model (query_endpoints_deploy) or re-run catalogue_ingest."
    )


class QueryRefusedError(SearchError):
    """OpenSearch answered the query with an error (any other error type than a missing index)."""

    status, code, public = 502, "query_refused", "The search engine refused the query."


class EncoderResponseError(SearchError, contract.EncoderResponseError):
    """The encoder answered something that is not one vector."""

    status, code = 502, "encoder_response"
    public = "The query encoder answered something that is not a vector."


INTERNAL_ERROR = "Something went wrong on the server while searching; the error id leads to the details in its log."


def error_payload(exc: BaseException) -> tuple[int, dict[str, str]]:
    """The API's answer to an error: (HTTP status, {"error": code, "detail": sentence[, "error_id": id]}).

    An `error_id` is present whenever the detail withholds the message: the
    caller logs the message under that id (`log_line`).
    """
    if isinstance(exc, SettingsError):
        exc = NotConfiguredError(str(exc))
    if not isinstance(exc, SearchError):
        return 500, {"error": "internal_error", "detail": INTERNAL_ERROR, "error_id": new_error_id()}
    if exc.public is None:
        return exc.status, {"error": exc.code, "detail": one_line(str(exc))}
    return exc.status, {"error": exc.code, "detail": exc.public, "error_id": new_error_id()}


def new_error_id() -> str:
    return uuid.uuid4().hex[:12]


def one_line(text: str, limit: int = 400) -> str:
    """A message squeezed onto one line (the CLI prints errors one per line, the API returns them as JSON)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def require_settings(settings: Settings, *names: str) -> None:
    """The query path's own fail-closed check: only the settings a query needs."""
    missing = [f"CATSEARCH_{name.upper()}" for name in names if not str(getattr(settings, name)).strip()]
    if missing:
        raise NotConfiguredError(
            "catalogue-search is not configured: " + ", ".join(missing) + " not set (see docs/settings.md)"
        )


@contextmanager
def opensearch_errors(url: str, alias: str) -> Iterator[None]:
    """OpenSearch's exceptions as search errors, classified by exception class and the answer's error type."""
    from opensearchpy import exceptions as osx

    try:
        yield
    except osx.ConnectionError as exc:
        raise OpenSearchUnavailableError(f"OpenSearch at {url} is unreachable ({_os_reason(exc)})") from exc
    except osx.TransportError as exc:
        kind, reason = _transport_reason(exc)
        if kind == "index_not_found_exception":
            raise IndexMissingError(
                f"index or alias {alias!r} does not exist: run the catalogue_ingest DAG first"
            ) from exc
        status = exc.status_code if isinstance(exc.status_code, int) else "?"
        raise QueryRefusedError(f"OpenSearch refused the query (HTTP {status} {kind}): {reason}") from exc


def _os_reason(exc: BaseException) -> str:
    """The operating system's word for a failed connection ("Connection refused", "timed out"), from the
    exception chain under opensearch-py's ConnectionError; else the innermost exception's class name."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    last = exc
    while todo:
        cur = todo.pop(0)
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        last = cur
        if isinstance(cur, TimeoutError):
            return "timed out"
        if isinstance(cur, OSError) and isinstance(cur.errno, int):
            return os.strerror(cur.errno)
        todo += [getattr(cur, "info", None), getattr(cur, "reason", None), cur.__cause__, cur.__context__, *cur.args]
    return type(last).__name__


def _transport_reason(exc: Any) -> tuple[str, str]:
    """(error type, reason) of an OpenSearch error answer: its root cause's `type`, and the reason of what caused it."""
    info = getattr(exc, "info", None)
    if isinstance(info, dict) and isinstance(info.get("error"), dict):
        err = info["error"]
        root = (err.get("root_cause") or [err])[0]
        caused = err.get("caused_by") or {}
        reason = caused.get("reason") or root.get("reason") or err.get("reason") or ""
        return str(root.get("type") or err.get("type") or exc.error), one_line(str(reason), 240)
    return str(getattr(exc, "error", "error")), one_line(str(info or exc), 240)


def parse_embeddings(raw: bytes, source: str) -> list[float]:
    """The contract's parser, with its errors as search errors."""
    try:
        return contract.parse_embeddings(raw, source)
    except contract.EncoderResponseError as exc:
        raise EncoderResponseError(str(exc)) from exc
    except contract.ErrorRecord as exc:
        raise EncoderResponseError(f"{source} answered an error: {exc}") from exc
