"""AWS helpers shared by every module: the error-code reader and the one "not found" check per service.

Errors are classified by their service code, never by their message text,
except where the service gives no code of its own (SageMaker's "Could not find").
"""

from __future__ import annotations

from typing import Any, Callable

# S3's "no such object": NoSuchKey (GET), 404 / NotFound (HEAD, whose error has no body).
S3_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def error_code(exc: BaseException) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def is_s3_missing(exc: BaseException, *, bucket: bool = False) -> bool:
    """S3 answered that the object does not exist (with `bucket`: or its bucket does not)."""
    code = error_code(exc)
    return code in S3_MISSING_CODES or (bucket and code == "NoSuchBucket")


def is_not_found(exc: BaseException) -> bool:
    """SageMaker's "no such resource": a ValidationException saying `Could not find ...` (it has no own code)."""
    message = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Message", "")) or str(exc)
    return error_code(exc) == "ValidationException" and "could not find" in message.lower()


def describe_or_none(describe: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any] | None:
    try:
        return describe(**kwargs)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise
