"""Serverless query endpoints: the requests that deploy them, the clean-up that removes them, the smoke check.

One endpoint per encode type (TEXT, IMAGE), each serving the same model.tar.gz
with a different `ENCODE_TYPE` (the CreateModel request is
`transform.model_request`, shared with batch transform). Models and endpoint
configs are immutable, so each is named `<endpoint>-<digest>`, the digest of
what it deploys (container, artifact version, serverless sizing): deploying the
same thing again reuses them and leaves the endpoint alone; a change gets a new
model and config and the endpoint is updated to them, never duplicated. The
previous ones stay (a rollback is one UpdateEndpoint) until the tear-down.

The endpoint models are not batch transform's model (`settings.sagemaker_model_name`):
serverless endpoints run on CPU and need the CPU image, batch transform runs the
GPU one, and a tear-down must not delete what the ingestion uses.

Deleting something that is already gone counts as done, so a tear-down can be
run any number of times. Nothing here imports Airflow: `dags/query_endpoints.py`
calls these functions from its tasks.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

from catalogue_search.aws import describe_or_none, error_code, is_not_found  # noqa: F401  (re-exported)
from catalogue_search.contract import ENCODE_TYPES, IMAGE, JSON, TEXT, X_IMAGE  # noqa: F401  (re-exported)
from catalogue_search.errors import InvalidValueError, PermanentError
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

VARIANT_NAME = "AllTraffic"
# Serverless endpoints have no GPU: the container image is looked up for a CPU instance type.
SERVERLESS_IMAGE_INSTANCE_TYPE = "ml.m5.large"
# SageMaker serverless: memory in 1 GB steps from 1 to 6 GB, concurrency 1..200 per endpoint.
SERVERLESS_MEMORY_SIZES = (1024, 2048, 3072, 4096, 5120, 6144)
MAX_CONCURRENCY = 200
MAX_NAME_LENGTH = 63
DIGEST_LENGTH = 10
_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

# Endpoint states the deploy must not act on until they settle (SageMakerHook.endpoint_non_terminal_states).
BUSY_STATES = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}

SMOKE_TEXT = "a red flower"


class EndpointError(Exception):
    """A deploy, tear-down or smoke step cannot go on; the message says what to do."""


class ArtifactMissingError(EndpointError, PermanentError):
    pass


class EndpointBusyError(EndpointError):
    pass


class SmokeTestError(EndpointError, PermanentError):
    pass


# --- Requests ----------------------------------------------------------------
def check_resource_name(name: str) -> str:
    """SageMaker names: letters, digits and hyphens, at most 63 characters."""
    if len(name) > MAX_NAME_LENGTH or not _NAME_PATTERN.match(name):
        raise InvalidValueError(
            f"{name!r} is not a valid SageMaker name (letters, digits and single hyphens, at most "
            f"{MAX_NAME_LENGTH} characters): shorten CATSEARCH_ENDPOINT_PREFIX"
        )
    return name


def serverless_config(settings: Settings) -> dict[str, int]:
    if settings.endpoint_memory_mb not in SERVERLESS_MEMORY_SIZES:
        raise InvalidValueError(
            f"CATSEARCH_ENDPOINT_MEMORY_MB={settings.endpoint_memory_mb}: serverless endpoints take one of "
            f"{', '.join(map(str, SERVERLESS_MEMORY_SIZES))}"
        )
    if not 1 <= settings.endpoint_max_concurrency <= MAX_CONCURRENCY:
        raise InvalidValueError(
            f"CATSEARCH_ENDPOINT_MAX_CONCURRENCY={settings.endpoint_max_concurrency}: must be 1..{MAX_CONCURRENCY}"
        )
    return {"MemorySizeInMB": settings.endpoint_memory_mb, "MaxConcurrency": settings.endpoint_max_concurrency}


def resource_prefix(settings: Settings, encode_type: str) -> str:
    """Every endpoint model and config of one encode type starts with this (the tear-down deletes them all)."""
    base = settings.endpoint_name(encode_type)
    if len(base) > MAX_NAME_LENGTH - DIGEST_LENGTH - 1:
        raise InvalidValueError(
            f"endpoint name {base!r} is longer than {MAX_NAME_LENGTH - DIGEST_LENGTH - 1} characters, leaving no room "
            "for the digest of its models and configs: shorten CATSEARCH_ENDPOINT_PREFIX"
        )
    return f"{check_resource_name(base)}-"


def resource_name(settings: Settings, encode_type: str, model: dict[str, Any], artifact_version: str) -> str:
    """`<endpoint>-<digest>`: the same inputs give the same name, any change a new one."""
    what = {"model": model, "serverless": serverless_config(settings), "artifact_version": artifact_version}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:DIGEST_LENGTH]
    return check_resource_name(resource_prefix(settings, encode_type) + digest)


def endpoint_config_request(settings: Settings, config_name: str, model_name: str) -> dict[str, Any]:
    """The CreateEndpointConfig request: one serverless variant serving `model_name`."""
    return {
        "EndpointConfigName": config_name,
        "ProductionVariants": [
            {"VariantName": VARIANT_NAME, "ModelName": model_name, "ServerlessConfig": serverless_config(settings)}
        ],
    }


def endpoint_request(settings: Settings, encode_type: str, config_name: str) -> dict[str, Any]:
    """The CreateEndpoint (or UpdateEndpoint) request."""
    return {"EndpointName": check_resource_name(settings.endpoint_name(encode_type)), "EndpointConfigName": config_name}


@dataclass
class DeployPlan:
    """Everything one encode type's deploy sends to SageMaker."""

    encode_type: str
    endpoint_name: str
    model: dict[str, Any]
    endpoint_config: dict[str, Any]
    endpoint: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy_plan(settings: Settings, encode_type: str, image_uri: str, artifact_version: str) -> DeployPlan:
    """The CreateModel, CreateEndpointConfig and CreateEndpoint requests of one encode type."""
    from catalogue_search.transform import model_request  # pulls numpy: only when a plan is built

    if encode_type not in ENCODE_TYPES:
        raise ValueError(f"encode type {encode_type!r}: use one of {ENCODE_TYPES}")
    model = model_request(settings, encode_type, image_uri, artifact_version)
    name = resource_name(settings, encode_type, model, artifact_version)
    endpoint = endpoint_request(settings, encode_type, name)
    return DeployPlan(
        encode_type=encode_type,
        endpoint_name=endpoint["EndpointName"],
        model={**model, "ModelName": name},
        endpoint_config=endpoint_config_request(settings, name, name),
        endpoint=endpoint,
    )


def artifact_version(s3, settings: Settings) -> str:
    """The model.tar.gz's artifact version (its S3 metadata, one HEAD): what the endpoints encode with."""
    from catalogue_search.model_artifact import ArtifactVersionError, read_artifact_version

    try:
        return read_artifact_version(s3, settings.artifact_uri)
    except ArtifactVersionError as exc:
        raise ArtifactMissingError(str(exc)) from exc


# --- What is there -----------------------------------------------------------
def model_exists(sagemaker, name: str) -> bool:
    return describe_or_none(sagemaker.describe_model, ModelName=name) is not None


def endpoint_config_exists(sagemaker, name: str) -> bool:
    return describe_or_none(sagemaker.describe_endpoint_config, EndpointConfigName=name) is not None


def endpoint_action(sagemaker, request: dict[str, Any], *, wait_delay: int = 15, logger: logging.Logger = log) -> str:
    """What the deploy does to the endpoint: "create", "update" or "unchanged".

    A Failed endpoint cannot be updated: it is deleted and created again. One still
    busy with another config raises EndpointBusyError (a retry later finds it settled).
    """
    name, wanted = request["EndpointName"], request["EndpointConfigName"]
    current = describe_or_none(sagemaker.describe_endpoint, EndpointName=name)
    if current is None:
        return "create"
    status, config = current.get("EndpointStatus"), current.get("EndpointConfigName")
    if status == "Failed":
        logger.warning("endpoint %s is Failed (%s): deleting it to create it again", name, current.get("FailureReason"))
        delete_endpoint(sagemaker, name, wait_delay=wait_delay, logger=logger)
        return "create"
    if config == wanted:
        return "unchanged"
    if status in BUSY_STATES:
        raise EndpointBusyError(f"endpoint {name} is {status} (config {config}): deploy again once it has settled")
    return "update"


def endpoint_up_to_date(sagemaker, request: dict[str, Any]) -> bool:
    """The endpoint exists, is not Failed and already uses the requested config."""
    current = describe_or_none(sagemaker.describe_endpoint, EndpointName=request["EndpointName"])
    return (
        current is not None
        and current.get("EndpointStatus") != "Failed"
        and current.get("EndpointConfigName") == request["EndpointConfigName"]
    )


# --- Tear-down ---------------------------------------------------------------
def _delete(kind: str, name: str, delete: Callable[..., Any], logger: logging.Logger, **kwargs: Any) -> bool:
    try:
        delete(**kwargs)
    except Exception as exc:
        if is_not_found(exc):
            logger.info("%s %s is already gone", kind, name)
            return False
        raise
    logger.info("deleted %s %s", kind, name)
    return True


def delete_endpoint(
    sagemaker, name: str, *, wait_delay: int = 15, wait_attempts: int = 120, logger: logging.Logger = log
) -> bool:
    """Delete the endpoint and wait until it is gone (a deploy right after then starts clean)."""
    deleted = _delete("endpoint", name, sagemaker.delete_endpoint, logger, EndpointName=name)
    if deleted:
        sagemaker.get_waiter("endpoint_deleted").wait(
            EndpointName=name, WaiterConfig={"Delay": wait_delay, "MaxAttempts": wait_attempts}
        )
    return deleted


# What the tear-down lists and deletes by name prefix: (list operation, page key, name field, delete, kind).
_BY_PREFIX = {
    "configs": (
        "list_endpoint_configs",
        "EndpointConfigs",
        "EndpointConfigName",
        "delete_endpoint_config",
        "endpoint config",
    ),
    "models": ("list_models", "Models", "ModelName", "delete_model", "model"),
}


def _list(sagemaker, what: str, prefix: str) -> list[str]:
    operation, key, field, _, _ = _BY_PREFIX[what]
    names: list[str] = []
    for page in sagemaker.get_paginator(operation).paginate(NameContains=prefix):
        names += [item[field] for item in page.get(key, [])]
    return sorted(n for n in names if n.startswith(prefix))


def _delete_all(sagemaker, what: str, prefix: str, logger: logging.Logger) -> list[str]:
    _, _, field, operation, kind = _BY_PREFIX[what]
    delete = getattr(sagemaker, operation)
    return [name for name in _list(sagemaker, what, prefix) if _delete(kind, name, delete, logger, **{field: name})]


def list_endpoint_configs(sagemaker, prefix: str) -> list[str]:
    """Names of the endpoint configs starting with `prefix`."""
    return _list(sagemaker, "configs", prefix)


def delete_endpoint_configs(sagemaker, prefix: str, logger: logging.Logger = log) -> list[str]:
    """Delete every endpoint config starting with `prefix`; returns those deleted now."""
    return _delete_all(sagemaker, "configs", prefix, logger)


def list_models(sagemaker, prefix: str) -> list[str]:
    """Names of the models starting with `prefix`."""
    return _list(sagemaker, "models", prefix)


def delete_models(sagemaker, prefix: str, logger: logging.Logger = log) -> list[str]:
    """Delete every model starting with `prefix`; returns those deleted now."""
    return _delete_all(sagemaker, "models", prefix, logger)


def leftovers(sagemaker, settings: Settings) -> list[str]:
    """What of the query endpoints is still there: endpoints, then their configs and models."""
    left = []
    for encode_type in ENCODE_TYPES:
        name = settings.endpoint_name(encode_type)
        if describe_or_none(sagemaker.describe_endpoint, EndpointName=name) is not None:
            left.append(f"endpoint {name}")
        prefix = resource_prefix(settings, encode_type)
        left += [f"endpoint config {n}" for n in list_endpoint_configs(sagemaker, prefix)]
        left += [f"model {n}" for n in list_models(sagemaker, prefix)]
    return left


# --- Smoke invocation --------------------------------------------------------
def smoke_jpeg(size: int = 32) -> bytes:
    """A small generated JPEG: a red disc on a green field."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (40, 140, 60))
    ImageDraw.Draw(img).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(210, 30, 40))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def smoke_payload(encode_type: str) -> tuple[bytes, str]:
    """The request body and Content-Type of a smoke invocation of the endpoint of `encode_type`:
    a text in `{"inputs": [...]}` JSON, or an image as raw JPEG bytes (`application/x-image`)."""
    if encode_type == TEXT:
        return json.dumps({"inputs": [SMOKE_TEXT]}).encode(), JSON
    if encode_type == IMAGE:
        return smoke_jpeg(), X_IMAGE
    raise ValueError(f"encode type {encode_type!r}: use one of {ENCODE_TYPES}")


def check_embeddings(body: bytes, endpoint_name: str) -> list[float]:
    """The one vector of `{"embeddings": [[floats]]}`; any other shape raises SmokeTestError naming the endpoint."""
    from catalogue_search.contract import EncoderResponseError, ErrorRecord, parse_embeddings

    try:
        return parse_embeddings(body, f"endpoint {endpoint_name}")
    except EncoderResponseError as exc:
        raise SmokeTestError(str(exc)) from exc
    except ErrorRecord as exc:
        raise SmokeTestError(f"endpoint {endpoint_name} answered an error: {exc}") from exc


def smoke_test(
    runtime, endpoint_name: str, payload: bytes, content_type: str, inference_id: str | None = None
) -> dict[str, Any]:
    """Invoke the endpoint once through the SageMaker runtime and check it answers one embedding.

    `inference_id` tags the request in SageMaker's data capture and logs.
    """
    extra = {"InferenceId": inference_id} if inference_id else {}
    try:
        response = runtime.invoke_endpoint(
            EndpointName=endpoint_name, ContentType=content_type, Accept=JSON, Body=payload, **extra
        )
    except Exception as exc:
        if "ModelError" in type(exc).__name__ or error_code(exc) == "ModelError":
            raise SmokeTestError(f"endpoint {endpoint_name} rejected the {content_type} smoke request: {exc}") from exc
        raise
    vector = check_embeddings(response["Body"].read(), endpoint_name)
    return {"endpoint": endpoint_name, "content_type": content_type, "dimensions": len(vector)}


def smoke_inference_id(run_id: str, encode_type: str, try_number: int) -> str:
    """A short id for one smoke request, distinct per run, encode type and try."""
    digest = hashlib.sha1(f"{run_id}/{encode_type}".encode()).hexdigest()[:16]
    return f"smoke-{encode_type.lower()}-{digest}-{try_number}"
