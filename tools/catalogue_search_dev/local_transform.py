"""Local batch-transform runner: SageMaker's transform agent for the local stack.

moto records a CreateTransformJob and marks it Completed without writing any
output. `run_transform_job` takes the very request Airflow's
`SageMakerTransformOperator` sent and does what SageMaker's transform agent
does with the model's container: read every input (`transform_input`), send
each request to the container's `/invocations` over HTTP (at most
`MaxConcurrentTransforms` at a time, with the job's invocation timeout and
retries) and write `<S3OutputPath>/<input key relative to the prefix>.out`
from the answers. An input that fails gets no `.out` and is named in the
report; the other inputs go on.

The container is the model's TorchServe (`model_server`, started by the local
SageMaker server). Its first answer is checked before anything else is sent:
a model that cannot answer fails the job at once, naming why. Tests that need
the speed pass an `InProcessModel` instead (`inprocess`).

The pipeline's own jobs send JSON Lines chunks of image records
(`application/x-image-chunk`, SplitType None: one chunk = one request) and
get one `.npz` per chunk; the handler fetches the images from S3 itself, and
the records it could not encode come back as error records, counted in
`report.record_errors`.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from catalogue_search_dev.model_server import Reply
from catalogue_search_dev.transform_input import (
    Input,
    JobSpec,
    TransformJobError,
    TransformReport,
    fetch,
    list_inputs,
    parse_job,
    requests_of,
)

logger = logging.getLogger(__name__)

__all__ = ["TransformJobError", "TransformReport", "model_environment", "run_transform_job"]
RETRY_DELAY_S = 1.0


class Model(Protocol):
    def invoke(self, body: bytes, content_type: str, accept: str | None, timeout: float) -> Reply: ...


def model_environment(request: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The Environment of a transform job's containers: the model's, the job's, and SageMaker's own."""
    job, _ = parse_job(request)
    return {**(container.get("Environment") or {}), **(request.get("Environment") or {}), **job.environment()}


def describe_container(sagemaker_client: Any, model_name: str) -> dict[str, Any]:
    """The model's primary container (Image, ModelDataUrl, Environment)."""
    try:
        described = sagemaker_client.describe_model(ModelName=model_name)
    except Exception as exc:
        raise TransformJobError(f"SageMaker model {model_name!r} cannot be described: {exc}") from exc
    container = described.get("PrimaryContainer") or (described.get("Containers") or [{}])[0]
    if not container.get("ModelDataUrl"):
        raise TransformJobError(f"SageMaker model {model_name!r} has no ModelDataUrl")
    return container


def _invoke(model: Model, body: bytes, job: JobSpec, report: TransformReport, lock: threading.Lock) -> Reply:
    """One request, retried as SageMaker retries: on a 5xx, a timeout or a lost connection, not on a 4xx."""
    for attempt in range(job.max_retries + 1):
        with lock:
            report.requests += 1
        try:
            reply = model.invoke(body, job.content_type, job.accept or None, job.timeout_s)
        except OSError as exc:  # timeout, refused, reset
            reply = Reply(599, "text/plain", f"no answer from the model: {type(exc).__name__}: {exc}".encode())
        if reply.status < 500 or attempt == job.max_retries:
            return reply
        time.sleep(RETRY_DELAY_S * (attempt + 1))
    raise AssertionError("unreachable")


def _message(reply: Reply) -> str:
    text = reply.body.decode("utf-8", "replace").strip()
    return f"HTTP {reply.status}: {text.splitlines()[0] if text else '(empty body)'}"


def _error_record(reply: Reply) -> str | None:
    """The reason of an ERROR_MODE=record answer (`{"error": ...}`), else None."""
    if not reply.body.startswith(b'{"error"'):
        return None
    try:
        doc = json.loads(reply.body.splitlines()[0])
    except ValueError:
        return None
    return str(doc["error"]) if isinstance(doc, dict) and set(doc) == {"error"} else None


def _records_in(reply: Reply, report: TransformReport, lock: threading.Lock) -> int:
    """Vectors in one answer; a chunk's error records are added to `report.record_errors`."""
    kind = reply.content_type.split(";")[0].strip()
    if kind == "application/x-npz":
        import numpy as np

        with np.load(io.BytesIO(reply.body), allow_pickle=False) as npz:
            with lock:
                report.record_errors.extend(zip(map(str, npz["error_ids"]), map(str, npz["errors"])))
            return len(npz["ids"])
    if kind == "application/json":
        return len(json.loads(reply.body).get("embeddings", []))
    return sum(1 for line in reply.body.splitlines() if line.strip())


def _run_input(model: Model, item: Input, job: JobSpec, s3_client: Any, report: TransformReport, lock) -> int:
    """Fetch one object, send its requests in order, write its `.out`; record how it ended.

    Returns the HTTP status of the model's last answer (0 when none was asked).
    """
    try:
        payloads = requests_of(fetch(s3_client, item, job), job)
    except Exception as exc:
        _record(report, lock, item, "failed", f"{type(exc).__name__}: {exc}")
        return 0
    replies: list[Reply] = []
    for number, payload in enumerate(payloads, start=1):
        reply = _invoke(model, payload, job, report, lock)
        if reply.status != 200:  # SageMaker writes nothing for an object with a failed request
            where = f"request {number} of {len(payloads)}: " if len(payloads) > 1 else ""
            _record(report, lock, item, "failed", where + _message(reply))
            return reply.status
        replies.append(reply)
    errors = [reason for reason in map(_error_record, replies) if reason is not None]
    body = b"".join(r.body + (b"\n" if job.assemble == "Line" else b"") for r in replies)
    try:
        s3_client.put_object(
            Bucket=job.out_bucket,
            Key=f"{job.out_prefix}{item.relative}.out",
            Body=body,
            ContentType=replies[0].content_type or "application/octet-stream",
        )
    except Exception as exc:
        _record(report, lock, item, "failed", f"writing the output failed: {exc}")
    else:
        if errors:
            _record(report, lock, item, "error_record", errors[0])
        else:
            _record(report, lock, item, "ok", None, sum(_records_in(reply, report, lock) for reply in replies))
    return 200


def _record(report: TransformReport, lock, item: Input, status: str, message: str | None, records: int = 0) -> None:
    with lock:
        if status == "failed":
            report.failed.append((item.key, message or "failed"))
        elif status == "error_record":
            report.error_records.append((item.key, message or "error"))
        else:
            report.succeeded += 1
            report.records += records


def _check_first_answer(model: Model, inputs: list[Input], job: JobSpec, s3_client: Any, report, lock) -> None:
    """Run the first input alone: a model that cannot answer (a 5xx, no answer) fails the job now."""
    if _run_input(model, inputs[0], job, s3_client, report, lock) >= 500:
        raise TransformJobError(f"the model did not answer the job's first request: {report.failed[-1][1]}")


def run_transform_job(
    request: dict[str, Any],
    *,
    s3_client: Any,
    sagemaker_client: Any,
    model: Model | None = None,
    cache_dir: str | Path | None = None,
    log: logging.Logger | logging.LoggerAdapter = logger,
) -> TransformReport:
    """Execute a CreateTransformJob request against `model`, as SageMaker batch transform would.

    `model` is the job's container (`model_server.ModelEndpoint`); without one,
    the handler runs in process (`InProcessModel`, for tests). Raises
    `TransformJobError` when the job cannot run at all; per-input failures are
    recorded in the returned report instead.
    """
    started = time.monotonic()
    job, source = parse_job(request)
    container = describe_container(sagemaker_client, request["ModelName"])
    if model is None:
        from catalogue_search_dev.inprocess import InProcessModel

        try:
            model = InProcessModel.from_artifact(
                container["ModelDataUrl"], model_environment(request, container), s3_client, cache_dir
            )
        except Exception as exc:
            raise TransformJobError(f"model {request['ModelName']!r} cannot be loaded: {exc}") from exc
    try:
        inputs = list_inputs(source, s3_client)
    except TransformJobError:
        raise
    except Exception as exc:  # a missing manifest or bucket
        raise TransformJobError(f"the inputs at {source.get('S3Uri')} cannot be listed: {exc}") from exc
    report = TransformReport(
        job_name=job.name,
        model_name=request["ModelName"],
        output_path=f"s3://{job.out_bucket}/{job.out_prefix}",
        total=len(inputs),
    )
    log.info(
        "transform %s: %d inputs, model %s at %s, %s split, %s, %d concurrent, writing to %s",
        job.name,
        len(inputs),
        request["ModelName"],
        getattr(model, "url", "in process"),
        job.split,
        job.strategy,
        job.concurrency,
        report.output_path,
    )
    lock = threading.Lock()
    _check_first_answer(model, inputs, job, s3_client, report, lock)
    progress = _Progress(job.name, len(inputs), log)
    with ThreadPoolExecutor(max_workers=job.concurrency, thread_name_prefix="transform") as pool:
        futures = [pool.submit(_run_input, model, item, job, s3_client, report, lock) for item in inputs[1:]]
        for future in futures:
            future.result()
            progress.update(report)
    report.seconds = round(time.monotonic() - started, 3)
    for what, items in (("inputs failed", report.failed), ("records answered with an error", report.record_errors)):
        if items:
            log.warning("transform %s: %d %s, first: %s", job.name, len(items), what, items[0])
    log.info("transform %s: %s in %.1f s, %d requests", job.name, report.status, report.seconds, report.requests)
    return report


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
