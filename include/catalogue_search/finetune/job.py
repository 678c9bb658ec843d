"""The fine-tune's training job: its source directory and its CreateTrainingJob request.

The request is what the SageMaker SDK's PyTorch estimator sends in script
mode (`sagemaker_program`, `sagemaker_submit_directory`), built here so the
DAG hands it to the Amazon provider's `SageMakerTrainingOperator`. The source
directory (`sourcedir.tar.gz`) holds `training_code/train.py` and, from the
base artifact's `code/`, its `requirements.txt` and vendored `wheels/`: the
training container installs open_clip from them with no package index, as the
inference container does. The base artifact is copied under the run's prefix
first, so the job trains on the version the run recorded even if the
configured artifact changes meanwhile.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from catalogue_search.contract import GZIP
from catalogue_search.errors import PermanentError
from catalogue_search.finetune.package import copy_artifact
from catalogue_search.handler import fetch_model_dir
from catalogue_search.model_artifact import pytorch_image_uri, read_artifact_metadata
from catalogue_search.s3util import parse_s3_uri, put_bytes
from catalogue_search.settings import Settings

TRAINING_CODE_DIR = Path(__file__).resolve().parents[3] / "training_code"
ENTRY_POINT = "train.py"
TOWERS = ("image", "text", "both")


@dataclass(frozen=True)
class Hyperparameters:
    """What the entry point learns with (checked once, here)."""

    lr: float = 1e-5
    epochs: int = 2
    batch_size: int = 64
    unfreeze: str = "both"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr < 0 or self.epochs < 1 or self.batch_size < 2 or self.unfreeze not in TOWERS:
            raise PermanentError(
                f"bad hyperparameters {asdict(self)}: lr >= 0, epochs >= 1, batch_size >= 2, "
                f"unfreeze one of {', '.join(TOWERS)}"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def arguments(self) -> dict[str, str]:
        """The job's HyperParameters: JSON-encoded values, as the SDK sends them."""
        values = {"lr": self.lr, "epochs": self.epochs, "batch-size": self.batch_size}
        values.update({"unfreeze": self.unfreeze, "seed": self.seed})
        return {key: json.dumps(value) for key, value in values.items()}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def source_tarball(base_model_dir: Path, code_dir: Path = TRAINING_CODE_DIR) -> bytes:
    """sourcedir.tar.gz: the entry point, and the base artifact's requirements and wheels."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        _add(tar, ENTRY_POINT, (code_dir / ENTRY_POINT).read_bytes())
        _add(tar, "requirements.txt", (base_model_dir / "code" / "requirements.txt").read_bytes())
        wheels = base_model_dir / "code" / "wheels"
        for wheel in sorted(wheels.glob("*.whl")) if wheels.is_dir() else []:
            _add(tar, f"wheels/{wheel.name}", wheel.read_bytes())
    return out.getvalue()


def training_image_uri(settings: Settings) -> str:
    """The training image: the configured one, else SageMaker's PyTorch training image."""
    if settings.training_image_uri:
        return settings.training_image_uri
    return pytorch_image_uri(settings, "training", settings.training_instance_type)


def job_name(settings: Settings, run_key: str) -> str:
    """At most 63 characters, unique per run (the operator adds a timestamp on a rerun)."""
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:10]
    return f"{settings.endpoint_prefix[:30]}-finetune-{digest}"


def prepare_job(
    settings: Settings, s3, *, prefix: str, run_key: str, hyper: Hyperparameters, image_uri: str
) -> dict[str, Any]:
    """Copy the base artifact, upload the source directory; return the base's facts and the job request."""
    base = read_artifact_metadata(s3, settings.artifact_uri)
    _, run = parse_s3_uri(prefix)
    base_key = f"{run}base/model.tar.gz"
    copy_artifact(s3, settings.artifact_uri, f"s3://{settings.bucket}/{base_key}")
    copied = read_artifact_metadata(s3, f"s3://{settings.bucket}/{base_key}")
    if copied.version != base.version:
        raise RuntimeError(f"the artifact changed while it was copied ({base.version} -> {copied.version}): retry")
    model_dir = fetch_model_dir(f"s3://{settings.bucket}/{base_key}", s3, settings.model_cache)
    if not (model_dir / "code" / "requirements.txt").is_file():
        raise PermanentError(f"{settings.artifact_uri} has no code/requirements.txt: rebuild the artifact")
    put_bytes(s3, settings.bucket, f"{run}source/sourcedir.tar.gz", source_tarball(model_dir), GZIP)

    def channel(name: str, uri: str, kind: str = "S3Prefix") -> dict[str, Any]:
        source = {"S3DataType": kind, "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        return {"ChannelName": name, "DataSource": {"S3DataSource": source}, "InputMode": "File"}

    where = f"s3://{settings.bucket}/{run}"
    request: dict[str, Any] = {
        "TrainingJobName": job_name(settings, run_key),
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File"},
        "RoleArn": settings.sagemaker_role_arn,
        "HyperParameters": {
            **hyper.arguments(),
            "sagemaker_program": json.dumps(ENTRY_POINT),
            "sagemaker_submit_directory": json.dumps(f"{where}source/sourcedir.tar.gz"),
            "sagemaker_region": json.dumps(settings.region),
        },
        "InputDataConfig": [
            channel("model", f"{where}base/model.tar.gz"),
            channel("train", f"{where}data/train/"),
            channel("validation", f"{where}data/validation/"),
            channel("images", f"{where}data/images.manifest", "ManifestFile"),
        ],
        "OutputDataConfig": {"S3OutputPath": f"{where}output/"},
        "ResourceConfig": {"InstanceType": settings.training_instance_type, "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.training_timeout_s},
        "CheckpointConfig": {"S3Uri": f"{where}checkpoints/", "LocalPath": "/opt/ml/checkpoints"},
    }
    if settings.training_use_spot:
        request["EnableManagedSpotTraining"] = True
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = 2 * settings.training_timeout_s
    return {"base": {**base.as_dict(), "uri": f"{where}base/model.tar.gz"}, "config": request}
