"""The local SageMaker's jobs: transform and training jobs that really run, with their real status.

moto records CreateTransformJob and CreateTrainingJob and calls them
Completed at once, having run nothing. `Jobs` runs each in a process of its
own (a transform job's runner, a training job's container), logging to
`<jobs dir>/<name>.log`, and lays its real status over moto's
descriptions: InProgress until the process ends, then Completed, or Failed
with a FailureReason (at most 1,024 characters, ending with the log's path),
or Stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_FAILURE_REASON = 1024  # DescribeTransformJob's / DescribeTrainingJob's FailureReason is at most 1024 characters
KINDS = {
    "transform": ("TransformJobName", "TransformJobStatus", "TransformEndTime"),
    "training": ("TrainingJobName", "TrainingJobStatus", "TrainingEndTime"),
}


def failure_reason(outcome: dict[str, Any], log_path: Path) -> str:
    """SageMaker-style FailureReason of a job's outcome ("" when the job completed)."""
    if outcome.get("status") == "Completed":
        return ""
    reason = outcome.get("error") or ""
    report = outcome.get("report") or {}
    failed = report.get("failed") or []
    if not reason and failed:
        key, message = (list(failed[0]) + ["", ""])[:2]
        reason = f"{len(failed)} of {report.get('total', '?')} inputs failed; first: {key}: {message}"
    reason = reason or "the job failed"
    suffix = f" (log: {log_path})"
    return reason[: MAX_FAILURE_REASON - len(suffix)] + suffix


@dataclass
class LocalJob:
    """A job the local server runs; its status overrides moto's."""

    kind: str
    name: str
    log_path: Path
    status: str = "InProgress"
    failure_reason: str = ""
    ended: float | None = None
    process: subprocess.Popen | None = None
    stop_requested: bool = False
    outcome: dict[str, Any] = field(default_factory=dict)

    def overlay(self, described: dict[str, Any]) -> dict[str, Any]:
        """moto's description of the job, with the runner's status."""
        _, status_key, end_key = KINDS[self.kind]
        described = {**described, status_key: self.status}
        described.pop("FailureReason", None)
        if self.failure_reason:
            described["FailureReason"] = self.failure_reason
        if self.ended is None:
            described.pop(end_key, None)
        else:
            described[end_key] = self.ended
        if self.kind == "training":
            secondary = self.outcome.get("secondary") or {"InProgress": "Training"}.get(self.status, self.status)
            described["SecondaryStatus"] = secondary
            if self.outcome.get("model_artifacts"):
                described["ModelArtifacts"] = {"S3ModelArtifacts": self.outcome["model_artifacts"]}
        return described


@dataclass
class Launch:
    """How a job's process runs: its command line, environment (None: this process's) and directory."""

    command: list[str]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    max_runtime_s: float | None = None  # StoppingCondition.MaxRuntimeInSeconds: stopped when it runs longer


class JobSteps(Protocol):
    """What one kind of job does around its process."""

    def prepare(self, job: LocalJob) -> Launch:
        """Stage what the process needs (runs in the job's thread; raising fails the job with the message)."""

    def conclude(self, job: LocalJob, exit_code: int) -> dict[str, Any]:
        """The outcome once the process ended: {"status": "Completed" | "Failed", "error": ..., ...}."""

    def cleanup(self, job: LocalJob) -> None:
        """Whatever happened: let go of what `prepare` took."""


class Jobs:
    """The jobs this server started, by kind and name."""

    def __init__(self, jobs_dir: Path) -> None:
        self.dir = Path(jobs_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[tuple[str, str], LocalJob] = {}

    def get(self, kind: str, name: str) -> LocalJob | None:
        return self.jobs.get((kind, name))

    def start(self, kind: str, name: str, steps: JobSteps) -> LocalJob:
        """Prepare and run the job in a thread of its own; its process logs to `<jobs dir>/<name>.log`."""
        job = LocalJob(kind=kind, name=name, log_path=self.dir / f"{name}.log")
        job.log_path.write_text("")
        self.jobs[(kind, name)] = job
        threading.Thread(target=self._run, args=(job, steps), daemon=True, name=f"{kind}-{name}").start()
        return job

    def _run(self, job: LocalJob, steps: JobSteps) -> None:
        try:
            launch = steps.prepare(job)
            if job.stop_requested:
                raise InterruptedError("stopped before it started")
            with open(job.log_path, "ab") as out:
                job.process = subprocess.Popen(
                    launch.command,
                    cwd=launch.cwd,
                    env=launch.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            log.info("%s job %s: started, pid %d, log %s", job.kind, job.name, job.process.pid, job.log_path)
            try:
                code = job.process.wait(timeout=launch.max_runtime_s)
            except subprocess.TimeoutExpired:
                self.stop(job.kind, job.name)
                job.process.wait()
                raise TimeoutError(f"the job ran longer than its MaxRuntimeInSeconds ({launch.max_runtime_s:.0f} s)")
            outcome = steps.conclude(job, code)
        except InterruptedError:
            outcome = {"status": "Stopped"}
        except TimeoutError as exc:  # as SageMaker does at MaxRuntimeInSeconds: Stopped, MaxRuntimeExceeded
            outcome = {"status": "Stopped", "secondary": "MaxRuntimeExceeded", "error": str(exc)}
        except Exception as exc:  # the model server did not start, the inputs could not be staged
            log.warning("%s job %s cannot run: %s", job.kind, job.name, exc)
            with open(job.log_path, "a") as out:
                out.write(f"the job cannot run: {exc}\n")
            outcome = {"status": "Failed", "error": str(exc)}
        finally:
            steps.cleanup(job)
        job.outcome = outcome
        if job.stop_requested or outcome.get("status") == "Stopped":
            job.status, job.failure_reason = "Stopped", ""
        else:
            job.failure_reason = failure_reason(outcome, job.log_path)
            job.status = "Completed" if not job.failure_reason else "Failed"
        job.ended = time.time()
        log.info("%s job %s: %s %s", job.kind, job.name, job.status, job.failure_reason)

    def stop(self, kind: str, name: str) -> None:
        job = self.jobs[(kind, name)]
        if job.ended is not None:
            return
        job.stop_requested = True
        job.status = "Stopping"
        if job.process is not None:
            try:
                os.killpg(job.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def overlay(self, kind: str, described: dict[str, Any]) -> dict[str, Any]:
        """moto's description with the job's real status; a job this server never ran is not Completed."""
        name_key, status_key, _ = KINDS[kind]
        job = self.jobs.get((kind, described.get(name_key, "")))
        if job is not None:
            return job.overlay(described)
        return {
            **described,
            status_key: "Failed",
            "FailureReason": "the local SageMaker server did not run this job: it was created while the server was "
            "down, or the server has restarted since",
        }

    def close(self) -> None:
        """Stop the jobs still going (the server is going away)."""
        for kind, name in list(self.jobs):
            self.stop(kind, name)
