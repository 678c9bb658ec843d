"""Batch-transform plumbing: the SageMaker model and the CreateTransformJob request.

One transform request carries one chunk of entries: a JSON Lines object of
`{"id": <ABO path>, "s3_uri": ...}` image records or `{"id", "text"}` title
records (see `encoding`), sent whole (`SplitType=None`), answered with one
`.npz` (`<chunk>.out`) of ids and a float32 matrix. The handler fetches the
images itself with the container's role and runs forward passes of
`MAX_BATCH_SIZE` over them. Why this shape,
and the SageMaker limits behind it, are in the README ("Encoding at scale").
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from catalogue_search import contract
from catalogue_search.errors import InvalidValueError
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

IMAGE = contract.IMAGE
TEXT = contract.TEXT
# SageMaker's documented limits (CreateTransformJob, ModelClientConfig).
MAX_PAYLOAD_MB = 100
MAX_INVOCATION_TIMEOUT_S = 3600
FETCH_WORKERS = 8


def job_name(settings: Settings, run_key: str) -> str:
    """A SageMaker-valid transform job name, stable for a run (<= 63 chars)."""
    digest = hashlib.sha1(run_key.encode()).hexdigest()[:10]
    return f"catsearch-encode-{settings.model_slug}"[:52] + f"-{digest}"


def model_request(settings: Settings, encode_type: str, image_uri: str, artifact_version: str) -> dict[str, Any]:
    """The CreateModel request for one encode type (same artifact, different environment).

    `ARTIFACT_VERSION` names the model.tar.gz's version: the handler refuses
    to start on another artifact, and the search client compares it with the
    index's before encoding a query with an endpoint.
    """
    if not artifact_version:
        raise ValueError("model_request needs the artifact version (model_artifact.read_artifact_version)")
    return {
        "ModelName": settings.sagemaker_model_name(encode_type),
        "ExecutionRoleArn": settings.sagemaker_role_arn,
        "PrimaryContainer": {
            "Image": image_uri,
            "ModelDataUrl": settings.artifact_uri,
            "Environment": {
                "MODEL_NAME": settings.model_name,
                "ENCODE_TYPE": encode_type,
                "ARTIFACT_VERSION": artifact_version,
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                # TorchServe's own per-request limit: at least one chunk's invocation timeout.
                "TS_DEFAULT_RESPONSE_TIMEOUT": str(max(300, settings.transform_invocation_timeout_s)),
            },
        },
    }


def ensure_model(sagemaker, request: dict[str, Any]) -> str:
    """Create the SageMaker model, or replace it if its container changed. Idempotent."""
    from catalogue_search.aws import describe_or_none

    name = request["ModelName"]
    current = describe_or_none(sagemaker.describe_model, ModelName=name)
    if current is not None:
        container = current.get("PrimaryContainer", {})
        wanted = request["PrimaryContainer"]
        if (
            container.get("Image") == wanted["Image"]
            and container.get("ModelDataUrl") == wanted["ModelDataUrl"]
            and container.get("Environment", {}) == wanted["Environment"]
        ):
            return "unchanged"
        sagemaker.delete_model(ModelName=name)
        sagemaker.create_model(**request)
        return "replaced"
    sagemaker.create_model(**request)
    return "created"


def transform_request(
    settings: Settings, *, job: str, manifest_uri: str, output_uri: str, encode_type: str = IMAGE
) -> dict[str, Any]:
    """The CreateTransformJob request that SageMakerTransformOperator sends.

    The manifest lists the run's chunk objects; each is one request
    (`SplitType=None`: the whole object is the payload, so `BatchStrategy` is
    `SingleRecord`, a record being the whole chunk) and gets one
    `<chunk>.out` under `output_uri`.
    """
    if not 1 <= settings.transform_max_payload_mb <= MAX_PAYLOAD_MB:
        raise InvalidValueError(f"CATSEARCH_TRANSFORM_MAX_PAYLOAD_MB must be 1..{MAX_PAYLOAD_MB}")
    if not 1 <= settings.transform_invocation_timeout_s <= MAX_INVOCATION_TIMEOUT_S:
        raise InvalidValueError(f"CATSEARCH_TRANSFORM_INVOCATION_TIMEOUT_S must be 1..{MAX_INVOCATION_TIMEOUT_S}")
    return {
        "TransformJobName": job,
        "ModelName": settings.sagemaker_model_name(encode_type),
        "BatchStrategy": "SingleRecord",
        "MaxConcurrentTransforms": settings.transform_max_concurrent,
        "MaxPayloadInMB": settings.transform_max_payload_mb,
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": settings.transform_invocation_timeout_s,
            # A retried chunk is re-encoded whole and overwrites its own `.out`: idempotent.
            "InvocationsMaxRetries": 2,
        },
        "Environment": {
            "MAX_BATCH_SIZE": str(settings.transform_batch_size),
            "FETCH_WORKERS": str(FETCH_WORKERS),
        },
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest_uri}},
            "ContentType": contract.CHUNK_CONTENT_TYPES[encode_type],
            "SplitType": "None",
            "CompressionType": "None",
        },
        "TransformOutput": {
            "S3OutputPath": output_uri,
            "Accept": contract.NPZ,
            "AssembleWith": "None",
        },
        "TransformResources": {
            "InstanceType": settings.transform_instance_type,
            "InstanceCount": settings.transform_instance_count,
        },
    }
