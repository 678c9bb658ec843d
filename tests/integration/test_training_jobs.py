"""Training jobs on the local SageMaker: moto's control plane, AWS's training toolkit as the data plane.

The job is created as the SageMaker SDK creates a script-mode job (the entry
point's source as a tarball in S3, `sagemaker_program` and
`sagemaker_submit_directory` among the hyperparameters); the toolkit runs it
with the job's hyperparameters and channels, and the model lands in moto S3.
"""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
import time

import pytest

from catalogue_search.settings import Settings, boto3_client

IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-cpu-py312"
ENTRY_POINT = """
import argparse, json, os

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
parser.add_argument("--greeting")
args, _ = parser.parse_known_args()
with open(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "pairs.jsonl")) as f:
    pairs = [json.loads(line) for line in f if line.strip()]
if not pairs:
    raise ValueError("no pairs to learn from")
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as f:
    json.dump({"epochs": args.epochs, "greeting": args.greeting, "pairs": len(pairs)}, f)
"""


def source_tarball(code: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        data = textwrap.dedent(code).encode()
        info = tarfile.TarInfo("train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def training_request(settings: Settings, name: str) -> dict:
    """A CreateTrainingJob request as the SageMaker SDK's PyTorch estimator sends it (script mode)."""
    bucket = settings.bucket
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        "RoleArn": settings.sagemaker_role_arn or "arn:aws:iam::123456789012:role/r",
        "HyperParameters": {
            "epochs": "3",
            "greeting": '"hello"',
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": f'"s3://{bucket}/{name}/source/sourcedir.tar.gz"',
            "sagemaker_region": f'"{settings.region}"',
        },
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{bucket}/{name}/train/",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/{name}/output/"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }


def wait_for(sagemaker, name: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sagemaker.describe_training_job(TrainingJobName=name)
        if described["TrainingJobStatus"] not in {"InProgress", "Stopping"}:
            return described
        time.sleep(0.25)
    raise AssertionError(f"training job {name} still running after {timeout}s")


@pytest.fixture
def sagemaker(settings: Settings):
    return boto3_client("sagemaker", settings)


def stage_job(s3, settings: Settings, name: str, pairs: list[dict]) -> None:
    s3.put_object(Bucket=settings.bucket, Key=f"{name}/source/sourcedir.tar.gz", Body=source_tarball(ENTRY_POINT))
    body = "".join(json.dumps(p) + "\n" for p in pairs).encode()
    s3.put_object(Bucket=settings.bucket, Key=f"{name}/train/pairs.jsonl", Body=body)


def test_a_training_job_runs_the_entry_point_and_its_model_lands_in_s3(settings: Settings, s3, sagemaker, unique):
    name = f"train-{unique}"
    stage_job(s3, settings, name, [{"title": "red shoe"}, {"title": "oak table"}])

    sagemaker.create_training_job(**training_request(settings, name))
    assert sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"
    done = wait_for(sagemaker, name)

    assert done["TrainingJobStatus"] == "Completed", done.get("FailureReason")
    assert "FailureReason" not in done and done["TrainingEndTime"] >= done["CreationTime"]
    artifact = done["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == f"s3://{settings.bucket}/{name}/output/{name}/output/model.tar.gz"
    body = s3.get_object(Bucket=settings.bucket, Key=artifact.split("/", 3)[3])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        model = json.loads(tar.extractfile("model.json").read())
    assert model == {"epochs": 3, "greeting": "hello", "pairs": 2}  # hyperparameters and the channel reached it


def test_a_failing_entry_point_reports_failed_with_the_toolkits_reason(settings: Settings, s3, sagemaker, unique):
    name = f"trainfail-{unique}"
    stage_job(s3, settings, name, [])

    sagemaker.create_training_job(**training_request(settings, name))
    done = wait_for(sagemaker, name)

    assert done["TrainingJobStatus"] == "Failed"
    assert "no pairs to learn from" in done["FailureReason"] and len(done["FailureReason"]) <= 1024
    listed = s3.list_objects_v2(Bucket=settings.bucket, Prefix=f"{name}/output/").get("KeyCount", 0)
    assert listed == 0  # no model from a failed job


CHECKPOINTED = """
import argparse, json, os, signal

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
parser.add_argument("--lost-after", type=int, default=0)
args, _ = parser.parse_known_args()
# /opt/ml/checkpoints (SAGEMAKER_BASE_DIR stands for /opt/ml in the local containers)
state_file = os.path.join(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"), "checkpoints", "state.json")
done = json.load(open(state_file))["epochs_done"] if os.path.exists(state_file) else []
resumed_after = len(done)
for epoch in range(len(done) + 1, args.epochs + 1):
    done.append(epoch)
    os.makedirs(os.path.dirname(state_file), exist_ok=True)
    json.dump({"epochs_done": done}, open(state_file, "w"))
    if epoch == args.lost_after:
        os.kill(os.getpid(), signal.SIGKILL)  # the instance is gone: no clean-up, no exit code of its own
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as f:
    json.dump({"epochs_done": done, "resumed_after": resumed_after}, f)
"""


def test_a_job_lost_mid_training_leaves_its_checkpoints_and_the_next_job_resumes_from_them(
    settings: Settings, s3, sagemaker, unique
):
    """SageMaker's checkpoint sync (CheckpointConfig): what a job left in /opt/ml/checkpoints is in S3 when it
    ends, however it ends, and a job with the same S3Uri starts with it: a spot interruption resumes."""
    checkpoints = f"s3://{settings.bucket}/ckpt-{unique}/checkpoints/"

    def job(name: str, **hyper: str) -> dict:
        s3.put_object(Bucket=settings.bucket, Key=f"{name}/source/sourcedir.tar.gz", Body=source_tarball(CHECKPOINTED))
        s3.put_object(Bucket=settings.bucket, Key=f"{name}/train/pairs.jsonl", Body=b"{}\n")
        request = training_request(settings, name)
        request["HyperParameters"].update(hyper)
        request["CheckpointConfig"] = {"S3Uri": checkpoints, "LocalPath": "/opt/ml/checkpoints"}
        sagemaker.create_training_job(**request)
        return wait_for(sagemaker, name)

    lost = job(f"lost-{unique}", epochs="3", **{"lost-after": "1"})
    assert lost["TrainingJobStatus"] == "Failed"  # killed after epoch 1's checkpoint
    key = f"ckpt-{unique}/checkpoints/state.json"
    assert json.loads(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()) == {"epochs_done": [1]}

    resumed = job(f"resumed-{unique}", epochs="3")
    assert resumed["TrainingJobStatus"] == "Completed", resumed.get("FailureReason")
    artifact = resumed["ModelArtifacts"]["S3ModelArtifacts"].split("/", 3)[3]
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=settings.bucket, Key=artifact)["Body"].read())) as tar:
        model = json.loads(tar.extractfile("model.json").read())
    assert model == {"epochs_done": [1, 2, 3], "resumed_after": 1}  # epochs 2 and 3 trained here
    assert json.loads(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()) == {"epochs_done": [1, 2, 3]}
