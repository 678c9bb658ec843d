"""The OpenSearch client: one place that builds it, from a URL and an auth mode or from the settings.

A URL may name several nodes of one cluster, comma-separated
(`http://127.0.0.1:9200,http://127.0.0.1:9201`): requests go round-robin, and
a node that stops answering is marked dead and the request retried on another
(docs/cluster.md). A managed domain has one URL, its load balancer.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

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
    ca_certs: str = "",
):
    """An opensearch-py client; `auth` is "none", "basic" or "sigv4".

    SigV4 signs with `credentials` (botocore credentials, e.g. those of the
    Airflow AWS connection); without them, with the process's default chain.
    `ca_certs` names the CA bundle an https node's certificate is checked against.
    """
    from opensearchpy import OpenSearch, RequestsHttpConnection

    hosts = parse_hosts(url)
    use_ssl = urlsplit(node_urls(url)[0]).scheme == "https"
    kwargs: dict[str, Any] = {
        "hosts": hosts,
        "use_ssl": use_ssl,
        "verify_certs": use_ssl,
        "timeout": timeout,
        "max_retries": 5,
        "retry_on_timeout": True,
        "retry_on_status": RETRY_STATUSES,
        "connection_class": RequestsHttpConnection,
    }
    if use_ssl and ca_certs:
        kwargs.update(ca_certs=ca_certs, connection_class=_own_ca_connection())
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


@functools.cache
def _own_ca_connection():
    """A requests connection that checks the node against its own CA bundle only.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's bundle
    on every request (opensearch-py merges the environment's settings), so a
    node signed by a private CA would fail verification wherever those are set.
    """
    from opensearchpy import RequestsHttpConnection

    class OwnCaConnection(RequestsHttpConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.session.trust_env = False

    return OwnCaConnection


def node_urls(url: str) -> list[str]:
    """The node URLs of a (possibly comma-separated) OpenSearch URL, each with a scheme."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise InvalidValueError("no OpenSearch URL given")
    urls = [u if "://" in u else f"http://{u}" for u in urls]
    if len({urlsplit(u).scheme for u in urls}) > 1:
        raise InvalidValueError(f"the nodes of {url!r} mix http and https")
    return urls


def parse_hosts(url: str) -> list[dict[str, Any]]:
    """opensearch-py's `hosts`: one {"host", "port"} per node of `url`."""
    hosts = []
    for node in node_urls(url):
        parts = urlsplit(node)
        hosts.append({"host": parts.hostname, "port": parts.port or (443 if parts.scheme == "https" else 9200)})
    return hosts


def client_from_settings(settings: Settings):
    return make_client(
        settings.opensearch_url,
        auth=settings.opensearch_auth,
        user=settings.opensearch_user,
        password=settings.opensearch_password,
        region=settings.region,
        ca_certs=settings.opensearch_ca_certs,
    )
