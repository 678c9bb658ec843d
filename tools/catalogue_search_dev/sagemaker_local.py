"""A local SageMaker on 127.0.0.1: moto's control plane plus the data planes moto lacks.

boto3 reaches it as the `sagemaker` and `sagemaker-runtime` endpoint (the
`aws_default` connection's `service_config`, `CATSEARCH_SAGEMAKER_ENDPOINT_URL`).
Endpoints and transform jobs run the model as SageMaker's PyTorch inference
container does: AWS's serving toolkit on TorchServe, one server per model
(`model_server`); training jobs run AWS's training toolkit (`local_training`).
What each request does is in `sagemaker_state`; every request it does not
handle goes to moto as it came. `GET /ping` answers the health check with the
running model servers.

    python -m catalogue_search_dev.sagemaker_local serve [--host H] [--port P]

See docs/sagemaker-local.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from catalogue_search_dev.sagemaker_state import TARGET_PREFIX, LocalSageMaker, Response, ServiceError

__all__ = ["LocalSageMaker", "make_server", "serve_in_thread"]
log = logging.getLogger(__name__)

_INVOKE_PATH = re.compile(r"^/endpoints/([^/]+)/invocations$")


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
                response = Response(200, {"Content-Type": "application/json"}, state.status())
            elif (match := _INVOKE_PATH.match(path)) and self.command == "POST":
                response = state.invoke(unquote(match.group(1)), body, self.headers)
            elif (target := self.headers.get("X-Amz-Target", "")).startswith(TARGET_PREFIX):
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
def run_job(request_path: Path, outcome_path: Path, moto_url: str, region: str, model_url: str) -> int:
    """Run one CreateTransformJob request against the model server at `model_url`; write how it ended."""
    import boto3

    from catalogue_search_dev.local_transform import run_transform_job
    from catalogue_search_dev.model_server import ModelEndpoint

    request = json.loads(Path(request_path).read_text())
    job_log = logging.getLogger(f"transform.{request.get('TransformJobName', 'job')}")
    try:
        report = run_transform_job(
            request,
            s3_client=boto3.client("s3", endpoint_url=moto_url, region_name=region),
            sagemaker_client=boto3.client("sagemaker", endpoint_url=moto_url, region_name=region),
            model=ModelEndpoint(model_url),
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


def describe_model_servers(url: str) -> str:
    """One line on the model servers of the local SageMaker at `url` (for `./dev stack status`)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=3) as resp:
            servers = json.load(resp).get("model_servers") or []
    except Exception:
        return "unknown (the local SageMaker server does not answer)"
    if not servers:
        return "no model server running (one starts with the first endpoint invocation or transform job)"
    parts = [
        f"TorchServe {s['url']} for {', '.join(s['models']) or '-'} ({'up' if s['alive'] else 'exited'}, "
        f"pid {s['pid']}, log {s['log']})"
        for s in servers
    ]
    return f"{len(servers)} model server(s): " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from catalogue_search.settings import Settings

    settings = Settings.from_env()
    default = urlsplit(settings.sagemaker_endpoint_url or "http://127.0.0.1:5100")
    parser = argparse.ArgumentParser(prog="sagemaker_local", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the local SageMaker")
    serve.add_argument("--host", default=default.hostname or "127.0.0.1")
    serve.add_argument("--port", type=int, default=default.port or 5100)
    serve.add_argument("--container-cpus", type=int, default=None, help="CPUs of each container (default: all)")
    job = sub.add_parser("run-job", help="run one transform job (the server starts these)")
    job.add_argument("request")
    job.add_argument("outcome")
    job.add_argument("--model-url", required=True, help="the model server's address")
    for command in (serve, job):
        command.add_argument("--moto-url", default=settings.aws_endpoint_url or "http://127.0.0.1:5000")
        command.add_argument("--region", default=settings.region)
        command.add_argument("--cache-dir", default=str(settings.model_cache))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "run-job":
        return run_job(Path(args.request), Path(args.outcome), args.moto_url, args.region, args.model_url)

    from catalogue_search_dev.localenv import cache_home

    jobs_dir = cache_home() / "stack" / "sagemaker-jobs"
    state = LocalSageMaker(args.moto_url, args.region, args.cache_dir, jobs_dir, container_cpus=args.container_cpus)
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
