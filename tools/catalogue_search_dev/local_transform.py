"""Local batch-transform runner: SageMaker's data plane for the local stack.

moto records a CreateTransformJob and marks it Completed without writing any
output. `run_transform_job` takes the very request Airflow's
`SageMakerTransformOperator` sent and does what SageMaker batch transform
would: look the model up (ModelDataUrl + Environment), load the same
`inference.py` handler in-process, read every input (S3Prefix or
ManifestFile), split it (SplitType None or Line), batch it (BatchStrategy,
MaxPayloadInMB) and write `<S3OutputPath>/<input key relative to the
prefix>.out`. An input that fails gets no `.out` and is named in the report;
the other inputs go on.

The pipeline's own jobs send JSON Lines chunks of image records
(`application/x-image-chunk`, SplitType None: one chunk = one request) and
get one `.npz` per chunk; the handler fetches the images through the S3
client this runner was given (moto locally), and the records it could not
encode come back as error records, counted in `report.record_errors`.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from catalogue_search.handler import Answer, LoadedHandler, load_handler_from_artifact
from catalogue_search.s3util import parse_s3_uri

logger = logging.getLogger(__name__)

MB = 1024 * 1024
IO_WORKERS = 8
LINES_PER_SLICE = 8  # mini-batches of one Line-split object answered per invoke_many call


class TransformJobError(RuntimeError):
    """The job as a whole cannot run: bad request, unknown model, no input."""


@dataclass
class TransformReport:
    """What a local transform job did; `as_dict()` is JSON-serialisable.

    total = succeeded + len(failed) + len(error_records). `failed` inputs have
    no `.out`; `error_records` inputs have an `.out` holding `{"error": ...}`
    (ERROR_MODE=record). `records` counts the vectors written, `requests` the
    handler calls (mini-batches) made.
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
        doc["failed"] = [list(item) for item in self.failed]
        doc["error_records"] = [list(item) for item in self.error_records]
        doc["record_errors"] = [list(item) for item in self.record_errors]
        doc["status"] = self.status
        return doc


@dataclass(frozen=True)
class _Input:
    bucket: str
    key: str
    relative: str


@dataclass(frozen=True)
class _Job:
    """The request's settings, validated."""

    name: str
    content_type: str
    accept: str
    split: str
    strategy: str
    compression: str
    assemble: str
    max_payload: int  # bytes; 0 = no limit
    out_bucket: str
    out_prefix: str


_ALLOWED = {
    "S3DataType": {"S3Prefix", "ManifestFile"},
    "SplitType": {"None", "Line"},
    "BatchStrategy": {"SingleRecord", "MultiRecord"},
    "CompressionType": {"None", "Gzip"},
    "AssembleWith": {"None", "Line"},
}


def _choice(name: str, value: Any, default: str) -> str:
    value = default if value in (None, "") else str(value)
    if value not in _ALLOWED[name]:
        raise TransformJobError(
            f"{name}={value!r} is not supported by the local runner (use {', '.join(sorted(_ALLOWED[name]))})"
        )
    return value


def _parse_request(request: dict[str, Any]) -> tuple[_Job, dict[str, Any]]:
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
    max_payload_mb = int(request.get("MaxPayloadInMB", 6))
    job = _Job(
        name=request.get("TransformJobName", "local-transform"),
        content_type=tin.get("ContentType") or "",
        accept=tout.get("Accept") or "application/json",
        split=_choice("SplitType", tin.get("SplitType"), "None"),
        strategy=_choice("BatchStrategy", request.get("BatchStrategy"), "SingleRecord"),
        compression=_choice("CompressionType", tin.get("CompressionType"), "None"),
        assemble=_choice("AssembleWith", tout.get("AssembleWith"), "None"),
        max_payload=max_payload_mb * MB,
        out_bucket=out_bucket,
        out_prefix=out_prefix,
    )
    _choice("S3DataType", source.get("S3DataType"), "S3Prefix")
    return job, source


def _list_inputs(source: dict[str, Any], s3_client: Any) -> list[_Input]:
    """The input objects, as SageMaker defines S3Prefix and ManifestFile."""
    uri = source.get("S3Uri", "")
    bucket, key = parse_s3_uri(uri)
    if source.get("S3DataType", "S3Prefix") == "S3Prefix":
        base = key[: key.rfind("/") + 1]
        inputs = []
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    inputs.append(_Input(bucket, obj["Key"], obj["Key"][len(base) :]))
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
    return [_Input(prefix_bucket, prefix + relative, relative) for relative in relatives]


class _Progress:
    """Logs inputs done / total about every tenth of the job or every 30 seconds."""

    def __init__(self, job: str, total: int, log: logging.Logger | logging.LoggerAdapter) -> None:
        self.job, self.total, self.log = job, total, log
        self.start = self.last = time.monotonic()
        self.step = max(1, total // 10)
        self.next_at = self.step

    def update(self, report: TransformReport) -> None:
        done = report.succeeded + len(report.failed) + len(report.error_records)
        now = time.monotonic()
        if done >= self.next_at or now - self.last >= 30 or done == self.total:
            elapsed = max(now - self.start, 1e-9)
            self.log.info(
                "transform %s: %d / %d inputs done (%d failed), %d records, %.1f records/s",
                self.job,
                done,
                self.total,
                len(report.failed),
                report.records,
                report.records / elapsed,
            )
            self.last = now
            while self.next_at <= done:
                self.next_at += self.step


def _fetch(s3_client: Any, item: _Input, job: _Job) -> bytes:
    data = s3_client.get_object(Bucket=item.bucket, Key=item.key)["Body"].read()
    if job.compression == "Gzip":
        data = gzip.decompress(data)
    return data


def _mini_batches(data: bytes, job: _Job, max_records: int) -> list[bytes]:
    """Split an object into the request payloads SageMaker would send."""
    if job.split == "None":
        if job.max_payload and len(data) > job.max_payload:
            raise ValueError(f"object is {len(data)} bytes, above MaxPayloadInMB={job.max_payload // MB}")
        return [data]
    records = [line for line in data.split(b"\n") if line.strip()]
    if not records:
        raise ValueError("object has no records (no non-empty lines)")
    limit = max_records if job.strategy == "MultiRecord" else 1
    payloads: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for number, record in enumerate(records, start=1):
        if job.max_payload and len(record) > job.max_payload:
            raise ValueError(f"record {number} is {len(record)} bytes, above MaxPayloadInMB={job.max_payload // MB}")
        if batch and (len(batch) >= limit or (job.max_payload and size + 1 + len(record) > job.max_payload)):
            payloads.append(b"\n".join(batch))
            batch, size = [], 0
        batch.append(record)
        size += len(record) + (1 if len(batch) > 1 else 0)
    payloads.append(b"\n".join(batch))
    return payloads


def _assemble(bodies: Sequence[bytes], job: _Job) -> bytes:
    if job.assemble == "Line":
        return b"".join(body + b"\n" for body in bodies)
    return b"".join(bodies)


def _records_in(body: bytes, accept: str, report: TransformReport | None = None) -> int:
    """Vectors in one answer; a chunk's error records are added to `report.record_errors`."""
    if accept == "application/x-npz":
        import io

        import numpy as np

        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            if report is not None:
                report.record_errors.extend(zip(map(str, npz["error_ids"]), map(str, npz["errors"])))
            return len(npz["ids"])
    if accept == "application/json":
        return len(json.loads(body).get("embeddings", []))
    return sum(1 for line in body.splitlines() if line.strip())


def _outcome(answers: Sequence[Answer]) -> tuple[str, str | None]:
    """("ok" | "error_record" | "failed", message) for one input's answers."""
    for index, answer in enumerate(answers):
        if answer.body is None:
            where = f"mini-batch {index + 1} of {len(answers)}: " if len(answers) > 1 else ""
            return "failed", f"{where}{type(answer.error).__name__}: {answer.error}"
    for answer in answers:
        if answer.is_error_record:
            return "error_record", str(answer.error)
    return "ok", None


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_transform_job(
    request: dict[str, Any],
    *,
    s3_client: Any,
    sagemaker_client: Any,
    cache_dir: str | Path | None = None,
    log: logging.Logger | logging.LoggerAdapter = logger,
) -> TransformReport:
    """Execute a CreateTransformJob request locally, as SageMaker batch transform would.

    Raises `TransformJobError` when the job cannot run at all; per-input
    failures are recorded in the returned report instead.
    """
    started = time.monotonic()
    job, source = _parse_request(request)
    model_name = request["ModelName"]
    try:
        described = sagemaker_client.describe_model(ModelName=model_name)
    except Exception as exc:
        raise TransformJobError(f"SageMaker model {model_name!r} cannot be described: {exc}") from exc
    container = described.get("PrimaryContainer") or (described.get("Containers") or [{}])[0]
    model_data_url = container.get("ModelDataUrl")
    if not model_data_url:
        raise TransformJobError(f"SageMaker model {model_name!r} has no ModelDataUrl")
    env = {**(container.get("Environment") or {}), **(request.get("Environment") or {})}
    try:
        handler = load_handler_from_artifact(
            model_data_url, env.get("ENCODE_TYPE", "IMAGE"), s3_client=s3_client, cache_dir=cache_dir, env=env
        )
        response_type = handler.module.negotiate_accept(job.accept)
    except Exception as exc:
        raise TransformJobError(f"model {model_name!r} ({model_data_url}) cannot serve this job: {exc}") from exc
    # The container fetches chunk records with its own role; here, with the client we were given.
    handler.model.s3_client = s3_client

    try:
        inputs = _list_inputs(source, s3_client)
    except TransformJobError:
        raise
    except Exception as exc:  # a missing manifest or bucket
        raise TransformJobError(f"the inputs at {source.get('S3Uri')} cannot be listed: {exc}") from exc
    report = TransformReport(
        job_name=job.name,
        model_name=model_name,
        output_path=f"s3://{job.out_bucket}/{job.out_prefix}",
        total=len(inputs),
    )
    log.info(
        "transform %s: %d inputs, model %s (%s, %s), %s split, %s, writing to %s",
        job.name,
        len(inputs),
        model_name,
        handler.model_name,
        handler.encode_type,
        job.split,
        job.strategy,
        report.output_path,
    )
    progress = _Progress(job.name, len(inputs), log)
    with ThreadPoolExecutor(max_workers=IO_WORKERS) as pool:
        run = _run_whole_objects if job.split == "None" else _run_line_split
        run(job, handler, inputs, s3_client, pool, report, progress, response_type)
    report.seconds = round(time.monotonic() - started, 3)
    if report.failed:
        log.warning(
            "transform %s: %d of %d inputs failed, first: %s",
            job.name,
            len(report.failed),
            report.total,
            report.failed[0],
        )
    if report.record_errors:
        log.warning(
            "transform %s: %d records answered with an error record, first: %s",
            job.name,
            len(report.record_errors),
            report.record_errors[0],
        )
    log.info("transform %s: %s in %.1f s", job.name, report.status, report.seconds)
    return report


def _write(s3_client: Any, job: _Job, item: _Input, body: bytes, content_type: str) -> None:
    s3_client.put_object(
        Bucket=job.out_bucket, Key=f"{job.out_prefix}{item.relative}.out", Body=body, ContentType=content_type
    )


def _record_result(report: TransformReport, item: _Input, status: str, message: str | None, records: int) -> None:
    if status == "failed":
        report.failed.append((item.key, message or "failed"))
    elif status == "error_record":
        report.error_records.append((item.key, message or "error"))
    else:
        report.succeeded += 1
        report.records += records


def _run_whole_objects(
    job: _Job,
    handler: LoadedHandler,
    inputs: list[_Input],
    s3_client: Any,
    pool: ThreadPoolExecutor,
    report: TransformReport,
    progress: _Progress,
    response_type: str,
) -> None:
    """SplitType None: one request per object; small objects share forward passes."""

    def fetch(item: _Input) -> bytes | Exception:
        try:
            data = _fetch(s3_client, item, job)
            _mini_batches(data, job, handler.max_batch_size)  # the payload-size check
            return data
        except Exception as exc:
            return exc

    for group in _chunks(inputs, handler.max_batch_size):
        fetched = list(pool.map(fetch, group))
        ready = [(item, data) for item, data in zip(group, fetched) if not isinstance(data, Exception)]
        answers = handler.invoke_many([data for _, data in ready], job.content_type, job.accept)
        report.requests += len(ready)
        by_key = {item.key: answer for (item, _), answer in zip(ready, answers)}
        writes: list[tuple[_Input, bytes, str, str | None, int]] = []
        for item, data in zip(group, fetched):
            if isinstance(data, Exception):
                _record_result(report, item, "failed", f"{type(data).__name__}: {data}", 0)
                continue
            answer = by_key[item.key]
            status, message = _outcome([answer])
            if status == "failed":
                _record_result(report, item, status, message, 0)
                continue
            assert answer.body is not None
            records = _records_in(answer.body, response_type, report) if status == "ok" else 0
            writes.append((item, _assemble([answer.body], job), status, message, records))
        _upload(s3_client, job, pool, writes, report, response_type)
        progress.update(report)


def _run_line_split(
    job: _Job,
    handler: LoadedHandler,
    inputs: list[_Input],
    s3_client: Any,
    pool: ThreadPoolExecutor,
    report: TransformReport,
    progress: _Progress,
    response_type: str,
) -> None:
    """SplitType Line: each object's lines go out in mini-batches; one `.out` per object."""
    for group in _chunks(inputs, IO_WORKERS):
        fetched = list(pool.map(lambda item: _safe(lambda: _fetch(s3_client, item, job)), group))
        writes: list[tuple[_Input, bytes, str, str | None, int]] = []
        for item, data in zip(group, fetched):
            try:
                if isinstance(data, Exception):
                    raise data
                payloads = _mini_batches(data, job, handler.max_batch_size)
            except Exception as exc:
                _record_result(report, item, "failed", f"{type(exc).__name__}: {exc}", 0)
                continue
            answers: list[Answer] = []
            for part in _chunks(payloads, LINES_PER_SLICE):
                answers.extend(handler.invoke_many(part, job.content_type, job.accept))
                report.requests += len(part)
                if any(answer.body is None for answer in answers):
                    break  # SageMaker writes nothing for an object with a failed mini-batch
            status, message = _outcome(answers)
            if status == "failed":
                _record_result(report, item, status, message, 0)
                continue
            bodies = [answer.body for answer in answers if answer.body is not None]
            records = sum(_records_in(body, response_type) for body in bodies) if status == "ok" else 0
            writes.append((item, _assemble(bodies, job), status, message, records))
        _upload(s3_client, job, pool, writes, report, response_type)
        progress.update(report)


def _safe(fn: Callable[[], bytes]) -> bytes | Exception:
    try:
        return fn()
    except Exception as exc:
        return exc


def _upload(
    s3_client: Any,
    job: _Job,
    pool: ThreadPoolExecutor,
    writes: list[tuple[_Input, bytes, str, str | None, int]],
    report: TransformReport,
    content_type: str,
) -> None:
    """Write the `.out` objects in parallel, then count each input by how it ended."""

    def put(write: tuple[_Input, bytes, str, str | None, int]) -> Exception | None:
        try:
            _write(s3_client, job, write[0], write[1], content_type)
        except Exception as exc:
            return exc
        return None

    for (item, _, status, message, records), error in zip(writes, pool.map(put, writes)):
        if error is not None:
            _record_result(report, item, "failed", f"writing the output failed: {error}", 0)
        else:
            _record_result(report, item, status, message, records)
