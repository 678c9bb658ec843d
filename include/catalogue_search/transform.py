"""Batch-transform plumbing: which images need encoding, the job request, the outputs.

Embeddings live at `s3://{bucket}/{embeddings_prefix}{model}/{path}.out`, the
exact place SageMaker batch transform writes the output for the input
`s3://{bucket}/{images_prefix}{path}` of a ManifestFile job. So "has this
image an embedding for this model" is one listing, and a weekly re-index
encodes only what is new.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

from catalogue_search import contract
from catalogue_search.s3util import S3_WORKERS, Progress, get_bytes, list_objects
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

IMAGE = contract.IMAGE
TEXT = contract.TEXT


def job_name(settings: Settings, run_key: str) -> str:
    """A SageMaker-valid transform job name, stable for a run (<= 63 chars)."""
    digest = hashlib.sha1(run_key.encode()).hexdigest()[:10]
    return f"catsearch-encode-{settings.model_slug}"[:52] + f"-{digest}"


def embedding_key(settings: Settings, path: str) -> str:
    return f"{settings.embeddings_prefix}{settings.model_slug}/{path}.out"


def encoded_paths(s3, settings: Settings) -> dict[str, Any]:
    """Image paths (ABO `path`) that have an embedding for the model -> when it was written."""
    prefix = f"{settings.embeddings_prefix}{settings.model_slug}/"
    return {
        key[len(prefix) : -len(".out")]: meta["modified"]
        for key, meta in list_objects(s3, settings.bucket, prefix).items()
        if key.endswith(".out")
    }


def image_paths(s3, settings: Settings) -> dict[str, Any]:
    """Image paths in the project bucket -> when each was last written."""
    prefix = settings.images_prefix
    return {key[len(prefix) :]: meta["modified"] for key, meta in list_objects(s3, settings.bucket, prefix).items()}


def pending_paths(
    products: Iterable[dict[str, Any]],
    encoded: dict[str, Any],
    images: dict[str, Any],
    force: bool = False,
) -> list[str]:
    """Image paths to encode: all with `force`, else those with no embedding yet
    or whose image was replaced after its embedding was written."""
    paths = sorted({p["path"] for p in products})
    if force:
        return paths
    return [p for p in paths if p not in encoded or (p in images and images[p] > encoded[p])]


def manifest(settings: Settings, paths: list[str]) -> bytes:
    """A SageMaker ManifestFile: the prefix first, then keys relative to it."""
    body: list[Any] = [{"prefix": f"s3://{settings.bucket}/{settings.images_prefix}"}, *paths]
    return json.dumps(body, indent=0).encode()


def model_request(settings: Settings, encode_type: str, image_uri: str) -> dict[str, Any]:
    """The CreateModel request for one encode type (same artifact, different environment)."""
    return {
        "ModelName": settings.sagemaker_model_name(encode_type),
        "ExecutionRoleArn": settings.sagemaker_role_arn,
        "PrimaryContainer": {
            "Image": image_uri,
            "ModelDataUrl": settings.artifact_uri,
            "Environment": {
                "MODEL_NAME": settings.model_name,
                "ENCODE_TYPE": encode_type,
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                "TS_DEFAULT_RESPONSE_TIMEOUT": "300",
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


def transform_request(settings: Settings, *, job: str, manifest_uri: str) -> dict[str, Any]:
    """The CreateTransformJob request that SageMakerTransformOperator sends."""
    return {
        "TransformJobName": job,
        "ModelName": settings.sagemaker_model_name(IMAGE),
        "BatchStrategy": "MultiRecord",
        "MaxConcurrentTransforms": settings.transform_max_concurrent,
        "MaxPayloadInMB": settings.transform_max_payload_mb,
        # Per-image failures become error records instead of failing the whole job.
        "Environment": {"ERROR_MODE": "record"},
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest_uri}},
            "ContentType": "application/x-image",
            "SplitType": "None",
            "CompressionType": "None",
        },
        "TransformOutput": {
            "S3OutputPath": settings.embeddings_uri(),
            "Accept": "application/json",
            "AssembleWith": "None",
        },
        "TransformResources": {
            "InstanceType": settings.transform_instance_type,
            "InstanceCount": settings.transform_instance_count,
        },
    }


@dataclass
class Embeddings:
    vectors: dict[str, list[float]]
    errors: dict[str, str]
    missing: list[str]


def parse_output(raw: bytes) -> list[float]:
    """One `.out` object -> its vector; an error record or a bad shape raises ValueError with its message."""
    try:
        return contract.parse_embeddings(raw, "the transform output")
    except contract.EncoderResponseError as exc:
        raise ValueError(str(exc)) from exc


def read_embeddings(
    s3, settings: Settings, paths: list[str], workers: int = S3_WORKERS, logger: logging.Logger = log
) -> Embeddings:
    """Read the `.out` of every image path in parallel."""
    present = set(encoded_paths(s3, settings))
    out = Embeddings(vectors={}, errors={}, missing=sorted(set(paths) - present))
    todo = sorted(set(paths) & present)
    progress = Progress("embeddings read", len(todo), logger)

    def one(path: str) -> tuple[str, list[float] | None, str | None]:
        try:
            vec = parse_output(get_bytes(s3, settings.bucket, embedding_key(settings, path)))
            return path, vec, None
        except ValueError as exc:
            return path, None, str(exc)
        finally:
            progress.tick()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, vec, err in pool.map(one, todo):
            if vec is not None:
                out.vectors[path] = vec
            else:
                out.errors[path] = err or "unknown error"
    return out
