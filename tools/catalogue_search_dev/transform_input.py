"""What a CreateTransformJob asks for: its settings, its input objects, and the requests each becomes.

SageMaker batch transform reads every input object (S3Prefix or
ManifestFile), splits it (`SplitType` None: the whole object is one record;
Line: one record a line), batches the records (`BatchStrategy` SingleRecord:
one a request; MultiRecord: as many as fit in `MaxPayloadInMB`) and sends
each request to the model's `/invocations`, at most `MaxConcurrentTransforms`
at a time, waiting `ModelClientConfig.InvocationsTimeoutInSeconds` and
retrying `InvocationsMaxRetries` times.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from catalogue_search.s3util import parse_s3_uri

MB = 1024 * 1024
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_INVOCATION_TIMEOUT_S = 600
DEFAULT_MAX_RETRIES = 3
_ALLOWED = {
    "S3DataType": {"S3Prefix", "ManifestFile"},
    "SplitType": {"None", "Line"},
    "BatchStrategy": {"SingleRecord", "MultiRecord"},
    "CompressionType": {"None", "Gzip"},
    "AssembleWith": {"None", "Line"},
}


class TransformJobError(RuntimeError):
    """The job as a whole cannot run: bad request, unknown model, no input, a model that does not answer."""


@dataclass
class TransformReport:
    """What a local transform job did; `as_dict()` is JSON-serialisable.

    total = succeeded + len(failed) + len(error_records). `failed` inputs have
    no `.out`; `error_records` inputs have an `.out` holding `{"error": ...}`
    (ERROR_MODE=record). `records` counts the vectors written, `requests` the
    invocations sent to the model.
    """

    job_name: str
    model_name: str
    output_path: str
    total: int = 0
    succeeded: int = 0
    records: int = 0
    requests: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    error_records: list[tuple[str, str]] = field(default_factory=list)
    # Records inside a successful input (a chunk) answered with an error: (record id, reason).
    record_errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """SageMaker marks a job Failed when any input failed."""
        return "Failed" if self.failed else "Completed"

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for name in ("failed", "error_records", "record_errors"):
            doc[name] = [list(item) for item in getattr(self, name)]
        doc["status"] = self.status
        return doc


@dataclass(frozen=True)
class Input:
    bucket: str
    key: str
    relative: str


@dataclass(frozen=True)
class JobSpec:
    """The request's settings, validated."""

    name: str
    content_type: str
    accept: str
    split: str
    strategy: str
    compression: str
    assemble: str
    max_payload: int  # bytes
    concurrency: int
    timeout_s: float
    max_retries: int
    out_bucket: str
    out_prefix: str

    def environment(self) -> dict[str, str]:
        """What SageMaker adds to the model's Environment in a transform job's containers."""
        return {
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.max_payload // MB),
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(self.concurrency),
        }


def _choice(name: str, value: Any, default: str) -> str:
    value = default if value in (None, "") else str(value)
    if value not in _ALLOWED[name]:
        raise TransformJobError(
            f"{name}={value!r} is not supported by the local runner (use {', '.join(sorted(_ALLOWED[name]))})"
        )
    return value


def parse_job(request: dict[str, Any]) -> tuple[JobSpec, dict[str, Any]]:
    """The job's settings and its S3 data source, or `TransformJobError` naming what is wrong."""
    try:
        tin = request["TransformInput"]
        source = tin["DataSource"]["S3DataSource"]
        tout = request["TransformOutput"]
        output_path = tout["S3OutputPath"]
        request["ModelName"]
    except (KeyError, TypeError) as exc:
        raise TransformJobError(f"the CreateTransformJob request lacks {exc}") from exc
    processing = request.get("DataProcessing") or {}
    if (
        processing.get("InputFilter", "$") != "$"
        or processing.get("OutputFilter", "$") != "$"
        or (processing.get("JoinSource", "None") != "None")
    ):
        raise TransformJobError(f"DataProcessing {processing} is not supported by the local runner")
    out_bucket, out_prefix = parse_s3_uri(output_path)
    if out_prefix and not out_prefix.endswith("/"):
        out_prefix += "/"
    client = request.get("ModelClientConfig") or {}
    job = JobSpec(
        name=request.get("TransformJobName", "local-transform"),
        content_type=tin.get("ContentType") or "",
        accept=tout.get("Accept") or "",
        split=_choice("SplitType", tin.get("SplitType"), "None"),
        strategy=_choice("BatchStrategy", request.get("BatchStrategy"), "SingleRecord"),
        compression=_choice("CompressionType", tin.get("CompressionType"), "None"),
        assemble=_choice("AssembleWith", tout.get("AssembleWith"), "None"),
        max_payload=int(request.get("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB)) * MB,
        concurrency=max(1, int(request.get("MaxConcurrentTransforms") or 1)),
        timeout_s=float(client.get("InvocationsTimeoutInSeconds", DEFAULT_INVOCATION_TIMEOUT_S)),
        max_retries=int(client.get("InvocationsMaxRetries", DEFAULT_MAX_RETRIES)),
        out_bucket=out_bucket,
        out_prefix=out_prefix,
    )
    _choice("S3DataType", source.get("S3DataType"), "S3Prefix")
    return job, source


def list_inputs(source: dict[str, Any], s3_client: Any) -> list[Input]:
    """The input objects, as SageMaker defines S3Prefix and ManifestFile."""
    uri = source.get("S3Uri", "")
    bucket, key = parse_s3_uri(uri)
    if source.get("S3DataType", "S3Prefix") == "S3Prefix":
        base = key[: key.rfind("/") + 1]
        inputs = []
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    inputs.append(Input(bucket, obj["Key"], obj["Key"][len(base) :]))
        if not inputs:
            raise TransformJobError(f"no S3 objects found under {uri}")
        return inputs

    try:
        manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except json.JSONDecodeError as exc:
        raise TransformJobError(f"manifest {uri} is not JSON: {exc}") from exc
    if (
        not isinstance(manifest, list)
        or not manifest
        or not isinstance(manifest[0], dict)
        or not isinstance(manifest[0].get("prefix"), str)
        or not all(isinstance(item, str) for item in manifest[1:])
    ):
        raise TransformJobError(f'manifest {uri} must be [{{"prefix": "s3://bucket/path/"}}, "key", ...]')
    prefix_bucket, prefix = parse_s3_uri(manifest[0]["prefix"])
    relatives = list(dict.fromkeys(manifest[1:]))  # a key listed twice is encoded once
    if not relatives:
        raise TransformJobError(f"manifest {uri} lists no objects")
    return [Input(prefix_bucket, prefix + relative, relative) for relative in relatives]


def fetch(s3_client: Any, item: Input, job: JobSpec) -> bytes:
    data = s3_client.get_object(Bucket=item.bucket, Key=item.key)["Body"].read()
    return gzip.decompress(data) if job.compression == "Gzip" else data


def requests_of(data: bytes, job: JobSpec) -> list[bytes]:
    """The request payloads SageMaker sends for one object (`ValueError` when one cannot be sent)."""
    limit = job.max_payload // MB
    if job.split == "None":
        if len(data) > job.max_payload:
            raise ValueError(f"object is {len(data)} bytes, above MaxPayloadInMB={limit}")
        return [data]
    records = [line for line in data.split(b"\n") if line.strip()]
    if not records:
        raise ValueError("object has no records (no non-empty lines)")
    payloads: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for number, record in enumerate(records, start=1):
        if len(record) > job.max_payload:
            raise ValueError(f"record {number} is {len(record)} bytes, above MaxPayloadInMB={limit}")
        full = size + 1 + len(record) > job.max_payload
        if batch and (job.strategy == "SingleRecord" or full):
            payloads.append(b"\n".join(batch))
            batch, size = [], 0
        batch.append(record)
        size += len(record) + (1 if len(batch) > 1 else 0)
    payloads.append(b"\n".join(batch))
    return payloads
