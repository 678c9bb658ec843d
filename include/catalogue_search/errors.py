"""One classification of errors: what a retry can fix, and what it cannot.

A task that raises `PermanentError` (or a subclass) fails at once, on its first
try, with the message (every task body runs inside `airflow_clients.fail_fast`,
which turns it into Airflow's `AirflowFailException`): a bad Param or setting, a
shard that does not exist, an index that failed validation, a catalogue that
would shrink too much, a missing model artifact, an embedding store or transform
output that is not what the pipeline wrote. Anything else (a timeout, a 503, a
throttled request) is retried with back-off.

Errors raised by a client library are classified by their service code, never by
their message text (`is_permanent`).
"""

from __future__ import annotations

# AWS error codes no retry can fix: the bucket does not exist, the credentials are not valid.
# (AccessDenied is left retryable: an IAM change can take a minute to reach every endpoint.)
PERMANENT_AWS_CODES = frozenset(
    {
        "NoSuchBucket",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
# OpenSearch answers no retry can fix: wrong user name or password. (A 400 is not one of them:
# `resource_already_exists_exception` is a 400 that a retry, which reuses the index, gets past.)
PERMANENT_HTTP_STATUSES = frozenset({401})


class PermanentError(Exception):
    """A deterministic failure: retrying the same task with the same inputs gives the same result."""


class InvalidValueError(PermanentError, ValueError):
    """A value the code cannot use: a setting out of range, a file that does not parse, a bad URI."""


def is_permanent(exc: BaseException) -> bool:
    """True for a `PermanentError`, or a client error whose service code says a retry cannot help."""
    if isinstance(exc, PermanentError):
        return True
    response = getattr(exc, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) in PERMANENT_AWS_CODES
    status = getattr(exc, "status_code", None)  # opensearch-py's TransportError ("N/A" for a connection error)
    return isinstance(status, int) and status in PERMANENT_HTTP_STATUSES
