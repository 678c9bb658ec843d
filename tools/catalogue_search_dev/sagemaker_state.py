"""What the local SageMaker server does with each request: moto's control plane, the data planes moto lacks.

- **Runtime** (InvokeEndpoint): the endpoint's model (ModelDataUrl +
  Environment) runs in its container, AWS's serving toolkit on TorchServe
  (`model_server`); the request goes to the container's `/invocations` and
  its answer comes back as SageMaker's runtime returns it: the body and
  Content-Type on a 200; otherwise ModelError (424) carrying the container's
  status and body ("Received client error (400) from AllTraffic with message
  ..."). ValidationError (400) for an unknown endpoint or an oversized payload.
- **Control plane** (`X-Amz-Target: SageMaker.*`): forwarded to moto unchanged,
  except that CreateTransformJob and CreateTrainingJob also run the job
  (`local_jobs`), DescribeTransformJob / ListTransformJobs /
  DescribeTrainingJob report its real status, StopTransformJob and
  StopTrainingJob (which moto lacks) stop it, CreateEndpoint starts the
  endpoint's container and DescribeEndpoint says Creating until it answers
  /ping (moto calls it InService at once), and DeleteModel stops the model's
  container once nothing uses it. An invocation of an endpoint whose container
  is still starting waits for it.
"""

from __future__ import annotations

import http.client
import json
import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from catalogue_search_dev.local_jobs import Jobs, Launch, LocalJob
from catalogue_search_dev.model_server import IDLE_S, ModelServer, ModelServerError, ModelServers

log = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"  # moto's account
MB = 1024 * 1024
# InvokeEndpoint's payload limits: 6 MB, 4 MB for a serverless endpoint; a real-time invocation waits 60 s.
MAX_PAYLOAD = 6 * MB
MAX_SERVERLESS_PAYLOAD = 4 * MB
INVOCATION_TIMEOUT_S = 60.0
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade"}
TARGET_PREFIX = "SageMaker."


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


def model_error(variant: Mapping[str, Any], status: int, message: str) -> ServiceError:
    """InvokeEndpoint's answer when the container answers an error: ModelError (424) carrying it."""
    name = variant.get("VariantName", "primary")
    kind = "client" if 400 <= status < 500 else "server"
    return ServiceError(
        424,
        "ModelError",
        f'Received {kind} error ({status}) from {name} with message "{message}". '
        "See the local SageMaker server's log for more information.",
        OriginalStatusCode=status,
        OriginalMessage=message,
    )


@dataclass
class TransformSteps:
    """One transform job for `Jobs`: the model's container, then the runner process that feeds it."""

    state: LocalSageMaker
    request: dict[str, Any]
    server: ModelServer | None = field(default=None, init=False)

    def prepare(self, job: LocalJob) -> Launch:
        from catalogue_search_dev.local_transform import describe_container, model_environment

        request_path, outcome_path = (job.log_path.with_suffix(s) for s in (".request.json", ".outcome.json"))
        request_path.write_text(json.dumps(self.request))
        outcome_path.unlink(missing_ok=True)
        model_name = self.request["ModelName"]
        container = describe_container(self.state.sagemaker, model_name)
        env = model_environment(self.request, container)
        url = container["ModelDataUrl"]
        try:
            self.server = self.state.servers.get(model_name, url, env, hold=True)
        except ModelServerError as exc:
            raise RuntimeError(f"model {model_name!r} ({url}) cannot serve this job: {exc}") from exc
        with open(job.log_path, "a") as out:
            out.write(
                f"model server: TorchServe {self.server.url} (sagemaker-pytorch-inference), model {model_name}, "
                f"ready in {self.server.ready_s} s, container log {self.server.log_path}\n"
            )
        command = [sys.executable, "-m", "catalogue_search_dev.sagemaker_local", "run-job", str(request_path)]
        command += [str(outcome_path), "--moto-url", self.state.moto_url, "--region", self.state.region]
        return Launch(command + ["--model-url", self.server.url])

    def conclude(self, job: LocalJob, exit_code: int) -> dict[str, Any]:
        try:
            return json.loads(job.log_path.with_suffix(".outcome.json").read_text())
        except (OSError, ValueError):
            return {"status": "Failed", "error": f"the local runner exited with code {exit_code} and left no outcome"}

    def cleanup(self, job: LocalJob) -> None:
        if self.server is not None:
            self.state.servers.unhold(self.server)


class LocalSageMaker:
    """What the HTTP handler calls: moto for the control plane, containers for the data planes."""

    def __init__(
        self,
        moto_url: str,
        region: str,
        cache_dir: str | Path,
        jobs_dir: str | Path,
        container_cpus: int | None = None,
        max_model_servers: int | None = None,
        model_idle_s: float = IDLE_S,
    ) -> None:
        import boto3

        self.moto_url = moto_url.rstrip("/")
        self.region = region
        self.cache_dir = Path(cache_dir)
        self.jobs = Jobs(Path(jobs_dir))
        self.sagemaker = boto3.client("sagemaker", endpoint_url=self.moto_url, region_name=region)
        self.s3 = boto3.client("s3", endpoint_url=self.moto_url, region_name=region)
        self.aws_env = {
            "AWS_ENDPOINT_URL": self.moto_url,  # the containers' boto3 (chunk records, training sources) uses moto
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        self.servers = ModelServers(
            Path(jobs_dir) / "containers",
            self.s3,
            self.aws_env,
            cpus=container_cpus,
            idle_s=model_idle_s,
            max_servers=max_model_servers,
        )
        self.endpoints: dict[str, dict[str, str]] = {}  # the status of the endpoints this server provisions

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
            raise model_error(variant, 500, f"model {variant['ModelName']} of endpoint {endpoint_name} does not exist")
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        if not container.get("ModelDataUrl"):
            raise model_error(variant, 500, f"model {variant['ModelName']} has no ModelDataUrl")
        return variant, container

    def invoke(self, endpoint_name: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """InvokeEndpoint: the container's answer, or the error SageMaker would give."""
        variant, container = self.resolve(endpoint_name, headers.get("X-Amzn-SageMaker-Target-Variant"))
        limit = MAX_SERVERLESS_PAYLOAD if variant.get("ServerlessConfig") else MAX_PAYLOAD
        if len(body) > limit:
            raise ServiceError(
                400,
                "ValidationError",
                f"Request payload of {len(body)} bytes exceeds the {limit // MB} MB limit of endpoint {endpoint_name}.",
            )
        url = container["ModelDataUrl"]
        try:
            # held while the request runs: the server cap never stops a container mid-answer
            server = self.servers.get(variant["ModelName"], url, dict(container.get("Environment") or {}), hold=True)
        except ModelServerError as exc:
            log.warning("endpoint %s: the model at %s cannot be loaded: %s", endpoint_name, url, exc)
            raise model_error(variant, 500, f"the model at {url} cannot be loaded: {exc}") from exc
        content_type = headers.get("Content-Type") or "application/octet-stream"
        try:
            reply = server.endpoint.invoke(body, content_type, headers.get("Accept"), INVOCATION_TIMEOUT_S)
        except OSError as exc:
            raise model_error(
                variant, 500, f"Your invocation timed out or lost its connection to the container: {exc}"
            ) from exc
        finally:
            self.servers.unhold(server)
        log.info(
            "endpoint %s -> %s: %d, %d bytes of %s",
            endpoint_name,
            server.url,
            reply.status,
            len(reply.body),
            reply.content_type,
        )
        if reply.status != 200:
            raise model_error(variant, reply.status, reply.body.decode("utf-8", "replace").strip())
        return Response(
            200,
            {"Content-Type": reply.content_type, "x-Amzn-Invoked-Production-Variant": variant.get("VariantName", "")},
            reply.body,
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
        """A SageMaker control-plane call: moto's answer, with the jobs' real state."""
        action = target.removeprefix(TARGET_PREFIX)
        request = json.loads(body or b"{}")
        kind = "transform" if "TransformJob" in action else "training" if "TrainingJob" in action else ""
        name = request.get("TransformJobName" if kind == "transform" else "TrainingJobName", "")
        if action.startswith("Create") and kind and self.jobs.get(kind, name):
            raise ServiceError(
                400,
                "ValidationException",
                "Job name must be unique within an AWS account and region, and a job with this name already "
                f"exists ({name})",
            )
        if action.startswith("Stop") and kind and self.jobs.get(kind, name):
            self.jobs.stop(kind, name)
            return Response(200, {"Content-Type": "application/x-amz-json-1.1"}, {})
        answer = self.forward(method, path, headers, body)
        if answer.status != 200:
            return answer
        if action == "CreateTransformJob":
            self.jobs.start("transform", name, TransformSteps(self, request))
        elif action == "CreateTrainingJob":
            from catalogue_search_dev.local_training import TrainingSteps

            root = self.jobs.dir / "training" / name
            self.jobs.start("training", name, TrainingSteps(request, root, self.s3, self.aws_env))
        elif action in {"DescribeTransformJob", "DescribeTrainingJob"}:
            answer.body = self.jobs.overlay(kind, json.loads(answer.body))
        elif action in {"ListTransformJobs", "ListTrainingJobs"}:
            listed = json.loads(answer.body)
            key = "TransformJobSummaries" if kind == "transform" else "TrainingJobSummaries"
            summaries = [self.jobs.overlay(kind, s) for s in listed.get(key, [])]
            wanted = request.get("StatusEquals")
            status_key = "TransformJobStatus" if kind == "transform" else "TrainingJobStatus"
            listed[key] = [s for s in summaries if not wanted or s[status_key] == wanted]
            answer.body = listed
        elif action == "DeleteModel":
            self.servers.release(request.get("ModelName", ""))
        elif action in {"CreateEndpoint", "UpdateEndpoint"}:
            endpoint = request.get("EndpointName", "")
            self.endpoints[endpoint] = {"EndpointStatus": "Creating" if action[0] == "C" else "Updating"}
            threading.Thread(target=self._provision, args=(endpoint,), daemon=True).start()
        elif action == "DeleteEndpoint":
            self.endpoints.pop(request.get("EndpointName", ""), None)
        elif action == "DescribeEndpoint":
            answer.body = {**json.loads(answer.body), **self.endpoints.get(request.get("EndpointName", ""), {})}
        return answer

    def _provision(self, endpoint_name: str) -> None:
        """Start the endpoint's container, as CreateEndpoint does: Creating until TorchServe answers /ping.

        moto calls every endpoint InService at once. As on SageMaker, a container
        whose /ping never answers leaves the endpoint Failed; one whose workers
        cannot load the model still answers /ping, so the endpoint is InService
        and the first invocation (the deploy's smoke test) meets the error.
        """
        state = {"EndpointStatus": "InService"}
        try:
            variant, container = self.resolve(endpoint_name)
            self.servers.get(variant["ModelName"], container["ModelDataUrl"], dict(container.get("Environment") or {}))
        except ModelServerError as exc:
            if not exc.pinged:
                name = "AllTraffic"
                state = {
                    "EndpointStatus": "Failed",
                    "FailureReason": f"The primary container for production variant {name} did not pass the ping "
                    f"health check: {exc}"[:1024],
                }
            log.info("endpoint %s: its container cannot serve: %s", endpoint_name, exc)
        except Exception as exc:  # the first invocation meets the same error and answers it
            log.info("endpoint %s: its container did not start: %s", endpoint_name, exc)
        if endpoint_name in self.endpoints:
            self.endpoints[endpoint_name] = state

    def status(self) -> dict[str, Any]:
        """What /ping reports: moto's address and the running model servers."""
        return {"status": "ok", "moto": self.moto_url, "model_servers": self.servers.describe()}

    def close(self) -> None:
        """Stop the jobs still going and every container (the server is going away)."""
        self.jobs.close()
        self.servers.close()
