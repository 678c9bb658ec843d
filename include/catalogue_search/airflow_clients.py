"""Clients for tasks, built from Airflow connections (imported only inside tasks).

AWS clients come from the Amazon provider's hooks, so `aws_default` decides
credentials, region and (locally) the moto endpoint. OpenSearch comes from the
`opensearch_default` connection: host, port, schema http/https, login and
password for basic auth, or `{"auth": "sigv4", "region": "..."}` in its extra
for Amazon OpenSearch Service; `{"urls": "http://a:9200,http://b:9201"}` in the
extra names every node of a cluster without a load balancer. Without that connection the settings' URL is used.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

from catalogue_search import index
from catalogue_search.errors import is_permanent
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


@contextmanager
def fail_fast() -> Iterator[None]:
    """An error no retry can fix (`errors.is_permanent`) becomes AirflowFailException: no retries, the message shown."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except Exception as exc:
        if not is_permanent(exc):
            raise
        raise AirflowFailException(f"{exc} (a retry cannot fix this: {type(exc).__name__})") from exc


def s3(settings: Settings):
    """An S3 client whose connection pool fits the tasks' worker threads (copy, embedding reads)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from catalogue_search.s3util import client_config

    config = client_config(settings.copy_workers, settings.aws_max_attempts)
    return _client(S3Hook(aws_conn_id=settings.aws_conn_id, config=config))


def sagemaker(settings: Settings):
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return _client(SageMakerHook(aws_conn_id=settings.aws_conn_id))


def _client(hook) -> Any:
    """The hook's boto3 client, built once per process for the same connection and client settings.

    Building one parses the service's model and walks the call stack (the provider's user agent): about
    0.3 CPU seconds, paid by each task of a run that `airflow dags test` runs in one process. A client is
    thread-safe and refreshes its connection's credentials itself; another connection, endpoint or client
    setting is another client."""
    wrapper = hook.conn_config  # the connection, read once per hook
    connection = {f.name: getattr(wrapper, f.name) for f in fields(wrapper) if f.name != "botocore_config"}
    key = json.dumps([hook.client_type, connection, hook.config._user_provided_options], sort_keys=True, default=repr)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = hook.get_conn()
    return client


def opensearch(settings: Settings):
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import Connection

    try:
        conn = Connection.get(settings.opensearch_conn_id)
    except AirflowNotFoundException:  # no such connection: the settings' URL and auth
        log.info("no Airflow connection %r: using %s", settings.opensearch_conn_id, settings.opensearch_url)
        return index.client_from_settings(settings.check())
    except Exception as exc:  # it exists but cannot be read: never fall back to another cluster
        raise ValueError(f"the Airflow connection {settings.opensearch_conn_id!r} cannot be read: {exc}") from exc
    extra = conn.extra_dejson or {}
    scheme = conn.schema or ("https" if conn.port == 443 else "http")
    url = f"{scheme}://{conn.host}:{conn.port or (443 if scheme == 'https' else 9200)}"
    # A cluster reached node by node (the local cluster stack) names every node in the extra's "urls".
    url = extra.get("urls") or url
    auth = extra.get("auth") or ("basic" if conn.login else "none")
    return index.make_client(
        url,
        auth=auth,
        user=conn.login or "",
        password=conn.password or "",
        region=extra.get("region", settings.region),
        credentials=_aws_credentials(settings) if auth == "sigv4" else None,
        ca_certs=settings.opensearch_ca_certs,
    )


def _aws_credentials(settings: Settings):
    """The credentials of `aws_conn_id`, so SigV4 signs as the connection, not as the worker."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=settings.aws_conn_id, client_type="sts").get_session().get_credentials()
