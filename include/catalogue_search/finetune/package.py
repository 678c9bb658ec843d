"""The fine-tuned model as a new artifact: the base artifact with the trained weights and its lineage.

The training job's `model.tar.gz` holds `model.pt` (the trained state_dict)
and `training.json`. The new artifact is the base one (its handler code,
vendored wheels, model config and preprocessing) with those weights, and in
`clip_config.json` a `lineage` record: base version, data snapshot,
hyperparameters, training job and per-epoch figures. Its version is computed
as for any build (`model_package.artifact_version`), so embeddings and indices
of the new weights never mix with the base's. It is uploaded beside the run,
not where `catalogue_ingest` reads it: only the gate's promotion puts it there.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from catalogue_search.contract import GZIP
from catalogue_search.errors import PermanentError
from catalogue_search.handler import fetch_model_dir, sha256_file
from catalogue_search.model_artifact import RANDOM_WEIGHTS_METADATA, VERSION_FILE, VERSION_METADATA
from catalogue_search.model_package import artifact_version, write_deterministic_tar
from catalogue_search.s3util import parse_s3_uri

log = logging.getLogger(__name__)

CONFIG_FILE = "clip_config.json"
TRAINED_FILES = ("model.pt", "training.json")


def package_model(
    settings,
    s3,
    *,
    base_uri: str,
    trained_uri: str,
    out_uri: str,
    lineage: dict[str, Any],
    logger: logging.Logger = log,
) -> dict[str, Any]:
    """Build and upload the fine-tuned model.tar.gz to `out_uri`; returns its uri, version and lineage."""
    base_dir = fetch_model_dir(base_uri, s3, settings.model_cache)
    with tempfile.TemporaryDirectory(prefix="finetuned-") as tmp:
        work = Path(tmp)
        bucket, key = parse_s3_uri(trained_uri)
        s3.download_file(bucket, key, str(work / "trained.tar.gz"))
        with tarfile.open(work / "trained.tar.gz") as tar:
            tar.extractall(work / "trained", filter="data")
        missing = [name for name in TRAINED_FILES if not (work / "trained" / name).is_file()]
        if missing:
            raise PermanentError(f"{trained_uri} lacks {', '.join(missing)}: not the fine-tune entry point's output")
        model_dir = work / "model"
        shutil.copytree(base_dir, model_dir, ignore=shutil.ignore_patterns(".complete", VERSION_FILE))
        shutil.copy(work / "trained" / "model.pt", model_dir / "model.pt")
        training = json.loads((work / "trained" / "training.json").read_text())
        config = json.loads((model_dir / CONFIG_FILE).read_text())
        base_version = lineage["base_version"]
        config.update(random_weights=False, pretrained=f"finetuned-from-{base_version}")
        config["lineage"] = {**lineage, "training": training}
        (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        version = artifact_version(model_dir)
        (model_dir / VERSION_FILE).write_text(version + "\n")
        archive = work / "model.tar.gz"
        write_deterministic_tar(archive, model_dir)
        metadata = {
            "sha256": sha256_file(archive),
            VERSION_METADATA: version,
            RANDOM_WEIGHTS_METADATA: "false",
            "base-version": base_version,
            "data-snapshot": str(lineage.get("data_snapshot", "")),
        }
        out_bucket, out_key = parse_s3_uri(out_uri)
        s3.upload_file(str(archive), out_bucket, out_key, ExtraArgs={"Metadata": metadata, "ContentType": GZIP})
    epochs = training.get("epochs") or []
    logger.info(
        "fine-tuned artifact %s (version %s, from base %s): %d epochs, last %s",
        out_uri,
        version,
        base_version,
        len(epochs),
        json.dumps(epochs[-1]) if epochs else "-",
    )
    return {"uri": out_uri, "version": version, "lineage": config["lineage"]}


def copy_artifact(s3, source: str, target: str) -> None:
    """Copy a model.tar.gz with its metadata, through a local file: a fresh upload has checksums of its own
    (a server-side copy of a multipart upload carries the source's, which some S3 implementations get wrong)."""
    src_bucket, src_key = parse_s3_uri(source)
    head = s3.head_object(Bucket=src_bucket, Key=src_key)
    extra = {"Metadata": head.get("Metadata") or {}, "ContentType": head.get("ContentType") or GZIP}
    with tempfile.TemporaryDirectory(prefix="artifact-copy-") as tmp:
        local = f"{tmp}/model.tar.gz"
        s3.download_file(src_bucket, src_key, local)
        dst_bucket, dst_key = parse_s3_uri(target)
        s3.upload_file(local, dst_bucket, dst_key, ExtraArgs=extra)
