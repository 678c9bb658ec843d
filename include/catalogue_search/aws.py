"""AWS helpers shared by every module: one "not found" check for SageMaker, one error-code reader."""

from __future__ import annotations

from typing import Any, Callable


def error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def is_not_found(exc: Exception) -> bool:
    """SageMaker's "no such resource": a ValidationException saying `Could not find ...`."""
    message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")) or str(exc)
    return error_code(exc) == "ValidationException" and "could not find" in message.lower()


def describe_or_none(describe: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any] | None:
    try:
        return describe(**kwargs)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise
