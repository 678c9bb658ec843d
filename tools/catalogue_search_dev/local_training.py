"""Training jobs' data plane: AWS's training toolkit runs the entry point, as in SageMaker's training images.

For a CreateTrainingJob (script mode, as the SageMaker SDK sends it: the
hyperparameters `sagemaker_program` and `sagemaker_submit_directory`, an
s3:// URI of the source tarball) `TrainingSteps`:
1. lays out the job's /opt/ml under its own directory (`SAGEMAKER_BASE_DIR`):
   `input/config/hyperparameters.json`, `inputdataconfig.json` and
   `resourceconfig.json`, and each channel's objects (S3Prefix or
   ManifestFile, File mode) under `input/data/<channel>/`, from S3;
2. starts the `sagemaker-training` toolkit's `train` in a container of its own
   (`containers`), with the job's Environment and no package index, and with
   the PyTorch training image's framework module (`sagemaker-pytorch-training`,
   `SAGEMAKER_TRAINING_MODULE`): the toolkit fetches the source from S3, runs the entry point with the
   hyperparameters as arguments and the `SM_*` variables, and writes
   `output/failure` when it fails;
3. when the entry point succeeded, uploads /opt/ml/model as `model.tar.gz`
   (and /opt/ml/output/data as `output.tar.gz`, when not empty) to
   `<S3OutputPath>/<job name>/output/`; when it failed, the job's
   FailureReason is the failure file's text.

With a `CheckpointConfig`, the job starts with the objects under its `S3Uri`
in its `LocalPath` (default /opt/ml/checkpoints), and whatever the job left
there goes back to the `S3Uri` when it ends, however it ended (completed,
failed, stopped or killed): what SageMaker's checkpoint sync gives a job
restarted after a spot interruption. SageMaker also uploads during the job;
here the upload happens once, at the end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalogue_search.s3util import parse_s3_uri
from catalogue_search_dev import containers
from catalogue_search_dev.local_jobs import Launch, LocalJob
from catalogue_search_dev.model_archive import write_deterministic_tar

HOST = "algo-1"
TRAINING_MODULE = "sagemaker_pytorch_container.training:main"


def _channel_objects(s3_client: Any, source: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(bucket, key, path relative to the channel) of a channel's S3 data source."""
    bucket, key = parse_s3_uri(source["S3Uri"])
    if source.get("S3DataType", "S3Prefix") == "ManifestFile":
        manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
        prefix_bucket, prefix = parse_s3_uri(manifest[0]["prefix"])
        return [(prefix_bucket, prefix + relative, relative) for relative in manifest[1:]]
    base = key[: key.rfind("/") + 1]
    found = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        found += [(bucket, o["Key"], o["Key"][len(base) :]) for o in page.get("Contents", []) if o["Key"][-1] != "/"]
    return found


def stage(request: Mapping[str, Any], root: Path, s3_client: Any) -> None:
    """The job's /opt/ml: configuration files and the channels' data (File mode)."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    for name in ("model", "output/data", "code"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(request.get("HyperParameters") or {}))
    resources = request.get("ResourceConfig") or {}
    instance_type = resources.get("InstanceType", "ml.m5.xlarge")
    (config / "resourceconfig.json").write_text(
        json.dumps(
            {
                "current_host": HOST,
                "current_instance_type": instance_type,
                "current_group_name": "homogeneousCluster",
                "hosts": [HOST],
                "instance_groups": [
                    {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": [HOST]}
                ],
                "network_interface_name": "eth0",
            }
        )
    )
    channels: dict[str, Any] = {}
    for channel in request.get("InputDataConfig") or []:
        source = channel["DataSource"]["S3DataSource"]
        channels[channel["ChannelName"]] = {
            "ContentType": channel.get("ContentType", ""),
            "TrainingInputMode": channel.get("InputMode") or "File",
            "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": channel.get("RecordWrapperType", "None"),
        }
        target = root / "input" / "data" / channel["ChannelName"]
        target.mkdir(parents=True, exist_ok=True)
        for bucket, key, relative in _channel_objects(s3_client, source):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            s3_client.download_file(bucket, key, str(target / relative))
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    checkpoints = checkpoint_place(request, root)
    if checkpoints is not None:
        folder, bucket, prefix = checkpoints
        folder.mkdir(parents=True, exist_ok=True)
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for found in page.get("Contents", []):
                target = folder / found["Key"][len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3_client.download_file(bucket, found["Key"], str(target))


def checkpoint_place(request: Mapping[str, Any], root: Path) -> tuple[Path, str, str] | None:
    """(local folder, bucket, key prefix) of the job's CheckpointConfig, or None without one."""
    config = request.get("CheckpointConfig")
    if not config:
        return None
    local = config.get("LocalPath") or "/opt/ml/checkpoints"
    if not local.startswith("/opt/ml/"):
        raise ValueError(f"CheckpointConfig.LocalPath {local!r}: the local runner maps only paths under /opt/ml/")
    bucket, prefix = parse_s3_uri(config["S3Uri"])
    return root / local.removeprefix("/opt/ml/"), bucket, prefix if prefix.endswith("/") or not prefix else prefix + "/"


def save_checkpoints(request: Mapping[str, Any], root: Path, s3_client: Any) -> int:
    """Upload the job's checkpoint folder to its CheckpointConfig.S3Uri; returns the files uploaded."""
    checkpoints = checkpoint_place(request, root)
    if checkpoints is None or not checkpoints[0].is_dir():
        return 0
    folder, bucket, prefix = checkpoints
    files = [path for path in sorted(folder.rglob("*")) if path.is_file()]
    for path in files:
        s3_client.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())
    return len(files)


@dataclass
class TrainingSteps:
    """One training job for `local_jobs.Jobs`: stage, run the toolkit, upload the model or report the failure."""

    request: dict[str, Any]
    root: Path
    s3_client: Any
    aws_env: Mapping[str, str]

    def prepare(self, job: LocalJob) -> Launch:
        bin_dir = containers.new_container(self.root)
        stage(self.request, self.root, self.s3_client)
        env = containers.base_environment(self.root, bin_dir, self.aws_env)
        env.update(self.request.get("Environment") or {})
        env["TRAINING_JOB_NAME"] = job.name
        env["SAGEMAKER_TRAINING_MODULE"] = TRAINING_MODULE  # the PyTorch training image's ENV
        # The toolkit waits until every host name ("algo-1") resolves, which SageMaker's /etc/hosts makes
        # true; its own switch for local runs skips the wait (this machine has no algo-1).
        env["SM_STUDIO_LOCAL_MODE"] = "true"
        with open(job.log_path, "a") as out:
            out.write(f"training container: sagemaker-training in {self.root} (SAGEMAKER_BASE_DIR)\n")
        limit = (self.request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds", 86400)
        return Launch(containers.command(bin_dir, "train"), env=env, cwd=self.root, max_runtime_s=float(limit))

    def conclude(self, job: LocalJob, exit_code: int) -> dict[str, Any]:
        if exit_code != 0:
            failure = self.root / "output" / "failure"
            reason = failure.read_text(errors="replace").strip() if failure.exists() else ""
            return {"status": "Failed", "error": reason or f"the training container exited with code {exit_code}"}
        out = self.request["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{job.name}/output/"
        bucket, prefix = parse_s3_uri(out)
        uploads = {"model.tar.gz": self.root / "model"}
        if any((self.root / "output" / "data").iterdir()):
            uploads["output.tar.gz"] = self.root / "output" / "data"
        for name, folder in uploads.items():
            archive = self.root / name
            write_deterministic_tar(archive, folder)
            self.s3_client.upload_file(str(archive), bucket, prefix + name)
        return {"status": "Completed", "model_artifacts": out + "model.tar.gz"}

    def cleanup(self, job: LocalJob) -> None:
        """However the job ended, its checkpoints go back to S3; its directory stays for inspection, as its log."""
        try:
            saved = save_checkpoints(self.request, self.root, self.s3_client)
        except Exception as exc:  # noqa: BLE001 (reported in the job's log; the job's outcome stands)
            note = f"checkpoints: not uploaded: {type(exc).__name__}: {exc}\n"
        else:
            note = f"checkpoints: {saved} file(s) to {self.request['CheckpointConfig']['S3Uri']}\n" if saved else ""
        if note:
            with open(job.log_path, "a") as out:
                out.write(note)
