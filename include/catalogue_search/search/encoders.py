"""The query encoders: the SageMaker endpoints, or the same handler run in this process.

`CATSEARCH_QUERY_ENCODER=endpoint` calls the serverless endpoints the
`query_endpoints_deploy` DAG creates (on the local stack, the local SageMaker
server); `local` loads the model.tar.gz the endpoints serve and runs its
handler here. Both send the same bytes with the same content types to the same
handler code, so they give the same vectors (within `contract.VECTOR_ATOL`).
Each says which artifact version it runs, so the client can refuse to mix models.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from catalogue_search.aws import error_code, is_s3_missing
from catalogue_search.contract import IMAGE, JSON
from catalogue_search.search.errors import (
    EndpointNotDeployedError,
    ModelArtifactMissingError,
    RejectedQueryError,
    SearchError,
    UnreadableImageError,
    parse_embeddings,
)
from catalogue_search.settings import Settings, boto3_client

log = logging.getLogger(__name__)


class QueryEncoder(Protocol):
    def encode(self, encode_type: str, payload: bytes, content_type: str) -> list[float]: ...

    def artifact_version(self, encode_type: str) -> str:
        """The version of the model.tar.gz it runs (the client compares it with the index's)."""
        ...


class LocalEncoder:
    """Runs the SageMaker handler in-process, from the same model.tar.gz the endpoints use."""

    def __init__(self, settings: Settings, s3_client=None, cache_dir=None) -> None:
        self.settings = settings
        self.s3 = s3_client
        self.cache_dir = cache_dir or settings.model_cache
        self._handlers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._executor = None

    def _runner(self):
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catsearch-encoder")
        return self._executor

    def _handler(self, encode_type: str):
        handler = self._handlers.get(encode_type)
        if handler is not None:
            return handler
        with self._lock:  # concurrent first queries load the model once
            if encode_type not in self._handlers:
                self._handlers[encode_type] = self._load(encode_type)
        return self._handlers[encode_type]

    def _load(self, encode_type: str):
        from catalogue_search.handler import load_handler_from_artifact

        s3 = self.s3 or boto3_client("s3", self.settings)
        try:
            return load_handler_from_artifact(
                self.settings.artifact_uri, encode_type, s3_client=s3, cache_dir=self.cache_dir
            )
        except Exception as exc:
            if isinstance(exc, FileNotFoundError) or is_s3_missing(exc, bucket=True):
                raise ModelArtifactMissingError(
                    f"no model artifact at {self.settings.artifact_uri}: run `./dev demo` or build it with "
                    "`python -m catalogue_search.model_artifact build --upload`"
                ) from exc
            raise

    def artifact_version(self, encode_type: str) -> str:
        """The loaded artifact's version (the file inside model.tar.gz)."""
        return self._handler(encode_type).artifact_version

    def encode(self, encode_type: str, payload: bytes, content_type: str) -> list[float]:
        handler = self._handler(encode_type)
        try:
            # One thread runs every forward pass: a server's many request threads would each start their own
            # OpenMP team, and on a small machine those teams spin against each other.
            raw = self._runner().submit(handler.invoke, payload, content_type, JSON).result()
        except ValueError as exc:  # the handler's InputError
            raise _input_error(encode_type, str(exc)) from exc
        return parse_embeddings(raw, f"the local {encode_type.lower()} encoder")


class EndpointEncoder:
    """Calls the serverless endpoints through the SageMaker runtime."""

    def __init__(self, settings: Settings, runtime_client=None, sagemaker_client=None) -> None:
        self.settings = settings
        self.runtime = runtime_client or boto3_client("sagemaker-runtime", settings)
        self.control = sagemaker_client or boto3_client("sagemaker", settings)
        self._versions: dict[str, str] = {}  # endpoint -> ARTIFACT_VERSION, for the endpoints seen InService

    def _check_deployed(self, name: str) -> None:
        """One DescribeEndpoint per endpoint and client: a clear error beats a cryptic invoke failure."""
        if name in self._versions:
            return
        from catalogue_search.aws import describe_or_none

        described = describe_or_none(self.control.describe_endpoint, EndpointName=name)
        if described is None:
            raise EndpointNotDeployedError(f"endpoint {name} is not deployed: trigger the query_endpoints_deploy DAG")
        status = described["EndpointStatus"]
        if status not in {"InService", "Updating"}:
            raise EndpointNotDeployedError(f"endpoint {name} is {status}, not InService")
        self._versions[name] = self._model_version(described)

    def _model_version(self, described: dict[str, Any]) -> str:
        """ARTIFACT_VERSION in the environment of the model the endpoint serves ("" if none)."""
        config = self.control.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
        variants = config.get("ProductionVariants") or [{}]
        model = self.control.describe_model(ModelName=variants[0]["ModelName"])
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        return (container.get("Environment") or {}).get("ARTIFACT_VERSION", "")

    def artifact_version(self, encode_type: str) -> str:
        """The endpoint model's ARTIFACT_VERSION (DescribeEndpoint -> config -> DescribeModel, once)."""
        name = self.settings.endpoint_name(encode_type)
        self._check_deployed(name)
        return self._versions[name]

    def encode(self, encode_type: str, payload: bytes, content_type: str) -> list[float]:
        name = self.settings.endpoint_name(encode_type)
        self._check_deployed(name)
        try:
            response = self.runtime.invoke_endpoint(
                EndpointName=name, ContentType=content_type, Accept=JSON, Body=payload
            )
        except Exception as exc:
            code = error_code(exc)
            if code == "ModelError":
                # The handler failed on this input. The serving container answers a refused input with a 500
                # today (issue 28), so a ModelError counts as the input's fault whatever its original status.
                reason = getattr(exc, "response", {}).get("OriginalMessage") or str(exc)
                raise _input_error(encode_type, str(reason)) from exc
            if code == "ValidationError":
                # The endpoint seen InService may be gone since: look again, and say so if it is.
                self._versions.pop(name, None)
                self._check_deployed(name)
            raise
        return parse_embeddings(response["Body"].read(), f"endpoint {name}")


def _input_error(encode_type: str, reason: str) -> SearchError:
    """The handler's refusal of a query: the reason stays in the message (CLI, log), not in the API's answer."""
    if encode_type == IMAGE:
        return UnreadableImageError(f"the image could not be read: {reason}")
    return RejectedQueryError(f"the query was rejected: {reason}")


def make_encoder(settings: Settings) -> QueryEncoder:
    if settings.query_encoder == "local":
        return LocalEncoder(settings)
    if settings.query_encoder == "endpoint":
        return EndpointEncoder(settings)
    raise ValueError(f"CATSEARCH_QUERY_ENCODER={settings.query_encoder!r}: use local or endpoint")
