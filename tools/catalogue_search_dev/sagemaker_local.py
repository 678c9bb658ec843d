"""A local SageMaker on 127.0.0.1: moto's control plane plus the data planes moto lacks.

boto3 reaches it as the `sagemaker` and `sagemaker-runtime` endpoint (the
`aws_default` connection's `service_config`, `CATSEARCH_SAGEMAKER_ENDPOINT_URL`).

- **Runtime** (`POST /endpoints/<name>/invocations`, InvokeEndpoint): for an
  endpoint moto reports InService, the model its config names is looked up
  (ModelDataUrl + Environment) and that artifact's own handler answers the
  request, loaded once and cached. The body, content type and error codes are
  SageMaker's: ModelError (424) when the handler fails, ValidationError (400)
  for an unknown endpoint or an oversized payload.
- **Control plane** (`X-Amz-Target: SageMaker.*`): forwarded to moto unchanged.
  CreateTransformJob also starts the local batch-transform runner
  (`local_transform.run_transform_job`) in a process of its own, and
  DescribeTransformJob / ListTransformJobs report the job's real status
  (InProgress until the runner ends, then Completed, or Failed with a
  FailureReason), where moto says Completed at once and writes nothing.
  StopTransformJob, which moto lacks, stops the runner.

Every other request goes to moto as it came. `GET /ping` answers the health check.

    python -m catalogue_search_dev.sagemaker_local serve [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"  # moto's account
MB = 1024 * 1024
# InvokeEndpoint's payload limits: 6 MB, 4 MB for a serverless endpoint.
MAX_PAYLOAD = 6 * MB
MAX_SERVERLESS_PAYLOAD = 4 * MB
MAX_FAILURE_REASON = 1024  # DescribeTransformJob's FailureReason is at most 1024 characters
_INVOKE_PATH = re.compile(r"^/endpoints/([^/]+)/invocations$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade"}
_TARGET_PREFIX = "SageMaker."


class ServiceError(Exception):
    """An error answered the way the AWS service would (status, error code, message, extra fields)."""

    def __init__(self, status: int, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def response(self) -> Response:
        body = {"__type": self.code, "message": self.message, "Message": self.message, **self.fields}
        return Response(self.status, {"Content-Type": "application/json", "x-amzn-ErrorType": self.code}, body)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes | dict[str, Any]

    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


# --- transform jobs ------------------------------------------------------------------
@dataclass
class TransformJob:
    """A transform job the local runner executes; its status overrides moto's."""

    name: str
    log_path: Path
    status: str = "InProgress"
    failure_reason: str = ""
    ended: float | None = None
    process: subprocess.Popen | None = None
    stop_requested: bool = False
    report: dict[str, Any] = field(default_factory=dict)

    def overlay(self, described: dict[str, Any]) -> dict[str, Any]:
        """moto's description of the job, with the runner's status."""
        described = {**described, "TransformJobStatus": self.status}
        described.pop("FailureReason", None)
        if self.failure_reason:
            described["FailureReason"] = self.failure_reason
        if self.ended is None:
            described.pop("TransformEndTime", None)
        else:
            described["TransformEndTime"] = self.ended
        return described


def failure_reason(outcome: dict[str, Any], log_path: Path) -> str:
    """SageMaker-style FailureReason of a runner outcome ("" when the job completed)."""
    if outcome.get("status") == "Completed":
        return ""
    reason = outcome.get("error") or ""
    report = outcome.get("report") or {}
    failed = report.get("failed") or []
    if not reason and failed:
        key, message = (list(failed[0]) + ["", ""])[:2]
        reason = f"{len(failed)} of {report.get('total', '?')} inputs failed; first: {key}: {message}"
    reason = reason or "the transform job failed"
    suffix = f" (log: {log_path})"
    return reason[: MAX_FAILURE_REASON - len(suffix)] + suffix


# --- the server's state ----------------------------------------------------------------
class LocalSageMaker:
    """What the HTTP handler calls: moto for the control plane, the handlers for the data planes."""

    def __init__(self, moto_url: str, region: str, cache_dir: str | Path, jobs_dir: str | Path) -> None:
        import boto3

        self.moto_url = moto_url.rstrip("/")
        self.region = region
        self.cache_dir = Path(cache_dir)
        self.jobs_dir = Path(jobs_dir)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.sagemaker = boto3.client("sagemaker", endpoint_url=self.moto_url, region_name=region)
        self.s3 = boto3.client("s3", endpoint_url=self.moto_url, region_name=region)
        self._handlers: dict[tuple, Any] = {}
        self._loading: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()
        self.jobs: dict[str, TransformJob] = {}

    # --- runtime ---------------------------------------------------------------------
    def _describe(self, describe, **kwargs: Any) -> dict[str, Any] | None:
        from catalogue_search.aws import describe_or_none

        return describe_or_none(describe, **kwargs)

    def resolve(self, endpoint_name: str, target_variant: str | None = None) -> tuple[dict, dict]:
        """The variant (name, serverless or not) and the model container serving `endpoint_name`."""
        endpoint = self._describe(self.sagemaker.describe_endpoint, EndpointName=endpoint_name)
        if endpoint is None:
            raise ServiceError(400, "ValidationError", f"Endpoint {endpoint_name} of account {ACCOUNT_ID} not found.")
        if endpoint.get("EndpointStatus") not in {"InService", "Updating"}:
            raise ServiceError(
                400,
                "ValidationError",
                f"Endpoint {endpoint_name} of account {ACCOUNT_ID} is {endpoint.get('EndpointStatus')}, not InService.",
            )
        config_name = endpoint["EndpointConfigName"]
        config = self._describe(self.sagemaker.describe_endpoint_config, EndpointConfigName=config_name)
        variants = (config or {}).get("ProductionVariants") or []
        if target_variant:
            variants = [v for v in variants if v.get("VariantName") == target_variant]
        if not variants:
            what = f"variant {target_variant}" if target_variant else "a production variant"
            raise ServiceError(
                400, "ValidationError", f"Endpoint {endpoint_name} has no {what} (config {config_name})."
            )
        variant = variants[0]
        model = self._describe(self.sagemaker.describe_model, ModelName=variant["ModelName"])
        if model is None:
            raise _model_error(variant, f"model {variant['ModelName']} of endpoint {endpoint_name} does not exist")
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        if not container.get("ModelDataUrl"):
            raise _model_error(variant, f"model {variant['ModelName']} has no ModelDataUrl")
        return variant, container

    def handler_for(self, container: Mapping[str, Any]):
        """The handler of a model container (ModelDataUrl + Environment), loaded once per artifact version."""
        from catalogue_search.handler import load_handler_from_artifact
        from catalogue_search.s3util import parse_s3_uri

        url = container["ModelDataUrl"]
        env = dict(container.get("Environment") or {})
        version = ""
        if url.startswith("s3://"):
            bucket, key = parse_s3_uri(url)
            version = self.s3.head_object(Bucket=bucket, Key=key)["ETag"]
        key = (url, version, tuple(sorted(env.items())))
        with self._lock:
            if key in self._handlers:
                return self._handlers[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per artifact; other requests for it wait
            if key not in self._handlers:
                started = time.monotonic()
                handler = load_handler_from_artifact(
                    url, env.get("ENCODE_TYPE", "IMAGE"), s3_client=self.s3, cache_dir=self.cache_dir, env=env
                )
                log.info("loaded the handler of %s (%s) in %.1f s", url, env, time.monotonic() - started)
                with self._lock:
                    self._handlers[key] = handler
        return self._handlers[key]

    def invoke(self, endpoint_name: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """InvokeEndpoint: the handler's answer, or the error SageMaker would give."""
        started = time.monotonic()
        variant, container = self.resolve(endpoint_name, headers.get("X-Amzn-SageMaker-Target-Variant"))
        limit = MAX_SERVERLESS_PAYLOAD if variant.get("ServerlessConfig") else MAX_PAYLOAD
        if len(body) > limit:
            raise ServiceError(
                400,
                "ValidationError",
                f"Request payload of {len(body)} bytes exceeds the {limit // MB} MB limit of endpoint {endpoint_name}.",
            )
        try:
            handler = self.handler_for(container)
        except Exception as exc:
            log.exception("endpoint %s: the model %s cannot be loaded", endpoint_name, container["ModelDataUrl"])
            raise _model_error(variant, f"the model at {container['ModelDataUrl']} cannot be loaded: {exc}") from exc
        content_type = headers.get("Content-Type") or "application/octet-stream"
        accept = headers.get("Accept") or "*/*"
        try:
            answer, response_type = handler.module.encode(handler.model, body, content_type, accept)
        except Exception as exc:
            log.warning("endpoint %s: the handler failed: %s: %s", endpoint_name, type(exc).__name__, exc)
            raise _model_error(variant, f"{type(exc).__name__}: {exc}") from exc
        log.info(
            "endpoint %s: %d bytes of %s -> %d bytes of %s in %.0f ms",
            endpoint_name,
            len(body),
            content_type,
            len(answer),
            response_type,
            (time.monotonic() - started) * 1000,
        )
        return Response(
            200,
            {"Content-Type": response_type, "x-Amzn-Invoked-Production-Variant": variant.get("VariantName", "")},
            answer,
        )

    # --- control plane -------------------------------------------------------------------
    def forward(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Send the request to moto as it came; return moto's answer."""
        parts = urlsplit(self.moto_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=120)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            sent["Host"] = parts.netloc
            sent["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=sent)
            answer = conn.getresponse()
            data = answer.read()
            kept = {k: v for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP}
            return Response(answer.status, kept, data)
        finally:
            conn.close()

    def control(self, target: str, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """A SageMaker control-plane call: moto's answer, with the transform jobs' real state."""
        action = target.removeprefix(_TARGET_PREFIX)
        request = json.loads(body or b"{}")
        if action == "CreateTransformJob" and request.get("TransformJobName") in self.jobs:
            raise ServiceError(
                400,
                "ValidationException",
                f"Job name must be unique within an AWS account and region, and a job with this name already "
                f"exists ({request['TransformJobName']})",
            )
        if action == "StopTransformJob" and request.get("TransformJobName") in self.jobs:
            self.stop_transform_job(request["TransformJobName"])
            return Response(200, {"Content-Type": "application/x-amz-json-1.1"}, {})
        answer = self.forward(method, path, headers, body)
        if answer.status != 200:
            return answer
        if action == "CreateTransformJob":
            self.start_transform_job(request)
        elif action == "DescribeTransformJob":
            described = json.loads(answer.body)
            answer.body = self.describe_overlay(described)
        elif action == "ListTransformJobs":
            listed = json.loads(answer.body)
            summaries = [self.describe_overlay(s) for s in listed.get("TransformJobSummaries", [])]
            wanted = request.get("StatusEquals")
            listed["TransformJobSummaries"] = [s for s in summaries if not wanted or s["TransformJobStatus"] == wanted]
            answer.body = listed
        return answer

    def describe_overlay(self, described: dict[str, Any]) -> dict[str, Any]:
        name = described.get("TransformJobName", "")
        job = self.jobs.get(name)
        if job is not None:
            return job.overlay(described)
        # moto says Completed for every job; one this server never ran has no outputs.
        return {
            **described,
            "TransformJobStatus": "Failed",
            "FailureReason": "the local SageMaker server did not run this job: it was created while the server was "
            "down, or the server has restarted since",
        }

    def start_transform_job(self, request: dict[str, Any]) -> TransformJob:
        """Run the job in a process of its own; a thread waits for it and records how it ended."""
        name = request["TransformJobName"]
        request_path = self.jobs_dir / f"{name}.request.json"
        outcome_path = self.jobs_dir / f"{name}.outcome.json"
        log_path = self.jobs_dir / f"{name}.log"
        request_path.write_text(json.dumps(request))
        outcome_path.unlink(missing_ok=True)
        job = TransformJob(name=name, log_path=log_path)
        command = [
            sys.executable,
            "-m",
            "catalogue_search_dev.sagemaker_local",
            "run-job",
            str(request_path),
            str(outcome_path),
            "--moto-url",
            self.moto_url,
            "--region",
            self.region,
            "--cache-dir",
            str(self.cache_dir),
        ]
        with open(log_path, "wb") as out:
            job.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.jobs[name] = job
        log.info("transform job %s: started the local runner, pid %d, log %s", name, job.process.pid, log_path)
        threading.Thread(target=self._wait, args=(job, outcome_path), daemon=True, name=f"job-{name}").start()
        return job

    def _wait(self, job: TransformJob, outcome_path: Path) -> None:
        assert job.process is not None
        code = job.process.wait()
        try:
            outcome = json.loads(outcome_path.read_text())
        except (OSError, ValueError):
            outcome = {"status": "Failed", "error": f"the local runner exited with code {code} and left no outcome"}
        job.report = outcome.get("report") or {}
        if job.stop_requested:
            job.status, job.failure_reason = "Stopped", ""
        else:
            job.failure_reason = failure_reason(outcome, job.log_path)
            job.status = "Completed" if not job.failure_reason else "Failed"
        job.ended = time.time()
        log.info("transform job %s: %s %s", job.name, job.status, job.failure_reason)

    def stop_transform_job(self, name: str) -> None:
        job = self.jobs[name]
        if job.ended is not None or job.process is None:
            return
        job.stop_requested = True
        job.status = "Stopping"
        try:
            os.killpg(job.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Stop the runners still going (the server is going away)."""
        for name, job in list(self.jobs.items()):
            if job.ended is None:
                self.stop_transform_job(name)


def _model_error(variant: Mapping[str, Any], message: str) -> ServiceError:
    """What InvokeEndpoint answers when the container fails: ModelError (424) carrying the container's 500."""
    name = variant.get("VariantName", "primary")
    return ServiceError(
        424,
        "ModelError",
        f'Received server error (500) from {name} with message "{message}". '
        "See the local SageMaker server's log for more information.",
        OriginalStatusCode=500,
        OriginalMessage=message,
    )


# --- HTTP --------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s " + format, self.address_string(), *args)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, response: Response) -> None:
        payload = response.payload()
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _dispatch(self) -> None:
        body = self._body()
        state = self.server.state
        headers = {k: v for k, v in self.headers.items()}
        try:
            path = urlsplit(self.path).path
            if self.command == "GET" and path == "/ping":
                response = Response(200, {"Content-Type": "application/json"}, {"status": "ok", "moto": state.moto_url})
            elif (match := _INVOKE_PATH.match(path)) and self.command == "POST":
                response = state.invoke(unquote(match.group(1)), body, self.headers)
            elif (target := self.headers.get("X-Amz-Target", "")).startswith(_TARGET_PREFIX):
                response = state.control(target, self.command, self.path, headers, body)
            else:
                response = state.forward(self.command, self.path, headers, body)
        except ServiceError as exc:
            response = exc.response()
        except Exception as exc:  # a bug here must still answer, as AWS does with a 500
            log.exception("%s %s failed", self.command, self.path)
            response = ServiceError(500, "InternalFailure", f"{type(exc).__name__}: {exc}").response()
        self._send(response)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch  # noqa: N815 (http.server's names)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: LocalSageMaker


def make_server(state: LocalSageMaker, host: str = "127.0.0.1", port: int = 5100) -> _Server:
    """An HTTP server for `state`, bound but not yet serving (port 0 picks a free one)."""
    server = _Server((host, port), _Handler)
    server.state = state
    return server


def serve_in_thread(state: LocalSageMaker, host: str = "127.0.0.1", port: int = 0) -> tuple[_Server, str]:
    """Start a server in a daemon thread; returns it and its URL (tests, notebooks)."""
    server = make_server(state, host, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="local-sagemaker").start()
    return server, f"http://{host}:{server.server_address[1]}"


# --- the job process ---------------------------------------------------------------------
def run_job(request_path: Path, outcome_path: Path, moto_url: str, region: str, cache_dir: str) -> int:
    """Run one CreateTransformJob request with the local runner; write how it ended to `outcome_path`."""
    import boto3

    from catalogue_search_dev.local_transform import run_transform_job

    request = json.loads(Path(request_path).read_text())
    job_log = logging.getLogger(f"transform.{request.get('TransformJobName', 'job')}")
    try:
        report = run_transform_job(
            request,
            s3_client=boto3.client("s3", endpoint_url=moto_url, region_name=region),
            sagemaker_client=boto3.client("sagemaker", endpoint_url=moto_url, region_name=region),
            cache_dir=cache_dir,
            log=job_log,
        )
    except Exception as exc:
        job_log.exception("the transform job failed")
        outcome: dict[str, Any] = {"status": "Failed", "error": f"{type(exc).__name__}: {exc}"}
    else:
        summary = report.as_dict()
        outcome = {"status": summary.get("status") or report.status, "report": summary}
    Path(outcome_path).write_text(json.dumps(outcome, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    from catalogue_search.settings import Settings

    settings = Settings.from_env()
    default = urlsplit(settings.sagemaker_endpoint_url or "http://127.0.0.1:5100")
    parser = argparse.ArgumentParser(prog="sagemaker_local", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the local SageMaker")
    serve.add_argument("--host", default=default.hostname or "127.0.0.1")
    serve.add_argument("--port", type=int, default=default.port or 5100)
    job = sub.add_parser("run-job", help="run one transform job (the server starts these)")
    job.add_argument("request")
    job.add_argument("outcome")
    for command in (serve, job):
        command.add_argument("--moto-url", default=settings.aws_endpoint_url or "http://127.0.0.1:5000")
        command.add_argument("--region", default=settings.region)
        command.add_argument("--cache-dir", default=str(settings.model_cache))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "run-job":
        return run_job(Path(args.request), Path(args.outcome), args.moto_url, args.region, args.cache_dir)

    from catalogue_search_dev.localenv import cache_home

    state = LocalSageMaker(args.moto_url, args.region, args.cache_dir, cache_home() / "stack" / "transform-jobs")
    server = make_server(state, args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("local SageMaker on http://%s:%d (control plane: moto at %s)", args.host, args.port, args.moto_url)
    try:
        server.serve_forever()
    finally:
        state.close()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
