"""What the workers need to know about the model artifact: one HEAD of `model.tar.gz`.

The artifact (built and uploaded by `python -m catalogue_search_dev.model_build
build`, see `docs/sagemaker-local.md`) carries two facts in the uploaded
object's S3 user metadata, so a worker learns both with the one HEAD it does
anyway:
- `artifact-version`: a digest of the weights, the model config and the
  handler code (`code/`). Stored embeddings and indices are keyed by it.
- `random-weights`: "true" when the archive holds randomly initialised weights
  instead of a pretrained checkpoint. An artifact without the key counts as
  random weights.

Inside the archive, `clip_config.json` records the same (`random_weights`,
`pretrained`) and `artifact_version.txt` the version.

    python -m catalogue_search.model_artifact describe   # the configured artifact's version and weights
    python -m catalogue_search.model_artifact image-uri  # the inference image SageMaker pulls
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from catalogue_search.aws import is_s3_missing
from catalogue_search.errors import PermanentError
from catalogue_search.s3util import parse_s3_uri
from catalogue_search.settings import Settings, boto3_client

VERSION_FILE = "artifact_version.txt"
VERSION_METADATA = "artifact-version"  # S3 user metadata key (x-amz-meta-artifact-version)
RANDOM_WEIGHTS_METADATA = "random-weights"  # "true" | "false" (x-amz-meta-random-weights)


class ArtifactVersionError(PermanentError, RuntimeError):
    """The model artifact's version cannot be read; the message says what to do."""


@dataclass(frozen=True)
class ArtifactMetadata:
    """The artifact facts one HEAD gives: its version and whether its weights are random."""

    uri: str
    version: str
    random_weights: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_artifact_metadata(s3_client: Any, uri: str) -> ArtifactMetadata:
    """Version and weights of the model.tar.gz at `uri`: one HEAD (its S3 user metadata).

    Raises `ArtifactVersionError` when the object is missing or was uploaded
    without a version (built before versions existed): rebuild and upload it.
    """
    bucket, key = parse_s3_uri(uri)
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if is_s3_missing(exc, bucket=True):
            raise ArtifactVersionError(
                f"no model artifact at {uri}: build and upload it first "
                "(`./dev demo` or `python -m catalogue_search_dev.model_build build --upload`)"
            ) from exc
        raise
    metadata = head.get("Metadata") or {}
    version = metadata.get(VERSION_METADATA, "")
    if not version:
        raise ArtifactVersionError(
            f"the model artifact at {uri} has no {VERSION_METADATA!r} metadata (built by an older version of this "
            "project): rebuild and upload it with `python -m catalogue_search_dev.model_build build --upload`"
        )
    random_weights = metadata.get(RANDOM_WEIGHTS_METADATA, "true").strip().lower() != "false"
    return ArtifactMetadata(uri=uri, version=version, random_weights=random_weights)


def read_artifact_version(s3_client: Any, uri: str) -> str:
    """The artifact version of the model.tar.gz at `uri` (see `read_artifact_metadata`)."""
    return read_artifact_metadata(s3_client, uri).version


def inference_image_uri(settings: Settings, instance_type: str | None = None) -> str:
    """The serving image: the configured one, else SageMaker's PyTorch inference image.

    Its framework and Python versions are `settings.framework_version` and
    `settings.py_version`, the one place that names the container the artifact
    targets (the build vendors the handler's packages for that Python).
    """
    if settings.inference_image_uri:
        return settings.inference_image_uri
    return pytorch_image_uri(settings, "inference", instance_type or settings.transform_instance_type)


def pytorch_image_uri(settings: Settings, scope: str, instance_type: str) -> str:
    """SageMaker's PyTorch image for `scope` ("inference" or "training") at the settings' versions."""
    from sagemaker.core import image_uris  # slow import: only when needed

    return image_uris.retrieve(
        framework="pytorch",
        region=settings.region,
        version=settings.framework_version,
        py_version=settings.py_version,
        image_scope=scope,
        instance_type=instance_type,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `describe` the configured artifact, or print the `image-uri`."""
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m catalogue_search.model_artifact",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser("describe", help="print the artifact's version and whether its weights are random")
    describe.add_argument("--uri", default=None, help="s3:// URI of model.tar.gz (default: the settings' artifact)")
    image = commands.add_parser("image-uri", help="print the inference container image URI")
    image.add_argument("--instance-type", default=None)
    args = parser.parse_args(argv)
    if args.command == "image-uri":
        print(inference_image_uri(settings, args.instance_type))
        return 0
    uri = args.uri or settings.artifact_uri
    try:
        metadata = read_artifact_metadata(boto3_client("s3", settings), uri)
    except ArtifactVersionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(metadata.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
