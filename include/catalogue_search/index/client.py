"""The OpenSearch client: one place that builds it, from a URL and an auth mode or from the settings."""

from __future__ import annotations

from typing import Any

from catalogue_search.errors import InvalidValueError
from catalogue_search.settings import Settings

RETRY_STATUSES = (429, 500, 502, 503, 504)


def make_client(
    url: str,
    *,
    auth: str = "none",
    user: str = "",
    password: str = "",
    region: str = "us-east-1",
    timeout: int = 60,
    credentials: Any = None,
):
    """An opensearch-py client; `auth` is "none", "basic" or "sigv4".

    SigV4 signs with `credentials` (botocore credentials, e.g. those of the
    Airflow AWS connection); without them, with the process's default chain.
    """
    from urllib.parse import urlsplit

    from opensearchpy import OpenSearch, RequestsHttpConnection

    parts = urlsplit(url if "://" in url else f"http://{url}")
    use_ssl = parts.scheme == "https"
    kwargs: dict[str, Any] = {
        "hosts": [{"host": parts.hostname, "port": parts.port or (443 if use_ssl else 9200)}],
        "use_ssl": use_ssl,
        "verify_certs": use_ssl,
        "timeout": timeout,
        "max_retries": 5,
        "retry_on_timeout": True,
        "retry_on_status": RETRY_STATUSES,
        "connection_class": RequestsHttpConnection,
    }
    if auth == "basic":
        if not user:
            raise InvalidValueError("OpenSearch basic auth needs a user name")
        kwargs["http_auth"] = (user, password)
    elif auth == "sigv4":
        import boto3
        from opensearchpy import AWSV4SignerAuth

        credentials = credentials or boto3.Session().get_credentials()
        if credentials is None:
            raise InvalidValueError("OpenSearch SigV4 auth needs AWS credentials, and none were found")
        kwargs["http_auth"] = AWSV4SignerAuth(credentials, region, "es")
    elif auth != "none":
        raise InvalidValueError(f"unknown OpenSearch auth {auth!r}: use none, basic or sigv4")
    return OpenSearch(**kwargs)


def client_from_settings(settings: Settings):
    return make_client(
        settings.opensearch_url,
        auth=settings.opensearch_auth,
        user=settings.opensearch_user,
        password=settings.opensearch_password,
        region=settings.region,
    )
