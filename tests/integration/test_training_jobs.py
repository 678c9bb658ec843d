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
        time.sleep(1)
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
