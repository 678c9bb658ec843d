"""Clients for tasks, built from Airflow connections (imported only inside tasks).

AWS clients come from the Amazon provider's hooks, so `aws_default` decides
credentials, region and (locally) the moto endpoint. OpenSearch comes from the
`opensearch_default` connection: host, port, schema http/https, login and
password for basic auth, or `{"auth": "sigv4", "region": "..."}` in its extra
for Amazon OpenSearch Service. Without that connection the settings' URL is used.
"""

from __future__ import annotations

import logging

from catalogue_search import index
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)


def s3(settings: Settings):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=settings.aws_conn_id).get_conn()


def sagemaker(settings: Settings):
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return SageMakerHook(aws_conn_id=settings.aws_conn_id).get_conn()


def opensearch(settings: Settings):
    from airflow.sdk import Connection

    try:
        conn = Connection.get(settings.opensearch_conn_id)
    except Exception:  # no such connection: fall back to the settings
        log.info("no Airflow connection %r: using %s", settings.opensearch_conn_id, settings.opensearch_url)
        return index.client_from_settings(settings)
    extra = conn.extra_dejson or {}
    scheme = conn.schema or ("https" if conn.port == 443 else "http")
    url = f"{scheme}://{conn.host}:{conn.port or (443 if scheme == 'https' else 9200)}"
    auth = extra.get("auth") or ("basic" if conn.login else "none")
    return index.make_client(
        url,
        auth=auth,
        user=conn.login or "",
        password=conn.password or "",
        region=extra.get("region", settings.region),
    )
