"""model.tar.gz as bytes: a deterministic tar, what it records, and its upload with the metadata workers read.

The upload stores the archive's facts in the object's S3 user metadata
(`artifact-version`, `random-weights`, `sha256`), so a worker learns them with
one HEAD (`catalogue_search.model_artifact.read_artifact_metadata`).
"""

from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalogue_search.aws import is_s3_missing
from catalogue_search.contract import GZIP
from catalogue_search.handler import sha256_file
from catalogue_search.model_artifact import (
    RANDOM_WEIGHTS_METADATA,
    VERSION_FILE,
    VERSION_METADATA,
    ArtifactVersionError,
)
from catalogue_search.model_package import write_deterministic_tar  # noqa: F401 (re-exported)
from catalogue_search.s3util import parse_s3_uri
from catalogue_search.settings import Settings

logger = logging.getLogger(__name__)

CONFIG_FILE = "clip_config.json"


@dataclass(frozen=True)
class ArchiveFacts:
    """What a model.tar.gz records about itself."""

    version: str
    random_weights: bool
    pretrained: str | None


def archive_facts(path: str | Path) -> ArchiveFacts:
    """The version (`artifact_version.txt`) and weights (`clip_config.json`) inside a model.tar.gz."""
    with tarfile.open(path, "r:*") as tar:
        members = {m.name: m for m in tar.getmembers()}
        if VERSION_FILE not in members:
            raise ArtifactVersionError(f"{path} has no {VERSION_FILE}: rebuild it (`model_build build --force`)")
        version = tar.extractfile(members[VERSION_FILE]).read().decode().strip()  # type: ignore[union-attr]
        config: dict[str, Any] = {}
        if CONFIG_FILE in members:
            config = json.loads(tar.extractfile(members[CONFIG_FILE]).read())  # type: ignore[union-attr]
    # An archive that does not say counts as random weights (the contract's safe side).
    random_weights = bool(config.get("random_weights", True))
    return ArchiveFacts(version=version, random_weights=random_weights, pretrained=config.get("pretrained") or None)


def archive_version(path: str | Path) -> str:
    """The artifact version recorded inside a model.tar.gz."""
    return archive_facts(path).version


def upload_model_artifact(settings: Settings, s3_client: Any, path: str | Path) -> str:
    """Upload model.tar.gz to `settings.artifact_uri` (skipped when the same bytes are there).

    The object's metadata carries `sha256`, the artifact version
    (`artifact-version`) and whether the weights are random (`random-weights`).
    """
    uri = settings.artifact_uri
    bucket, key = parse_s3_uri(uri)
    sha256 = sha256_file(Path(path))
    facts = archive_facts(path)
    metadata = {
        "sha256": sha256,
        VERSION_METADATA: facts.version,
        RANDOM_WEIGHTS_METADATA: "true" if facts.random_weights else "false",
    }
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        if head.get("Metadata", {}) == metadata:
            logger.info("%s already holds this artifact (sha256 %s): not uploading", uri, sha256[:12])
            return uri
    except Exception as exc:
        if not is_s3_missing(exc):
            raise
    s3_client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": metadata, "ContentType": GZIP})
    logger.info("Uploaded %s to %s (version %s, random weights: %s)", path, uri, facts.version, facts.random_weights)
    return uri
