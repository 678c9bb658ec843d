"""The fine-tune DAG's steps that join the pieces: hyperparameters from Params, packaging, the gate's verdict."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from catalogue_search import quality
from catalogue_search.finetune import gate
from catalogue_search.finetune.job import Hyperparameters
from catalogue_search.finetune.package import package_model
from catalogue_search.s3util import parse_s3_uri

log = logging.getLogger(__name__)


def hyperparameters(params: Mapping[str, Any]) -> Hyperparameters:
    return Hyperparameters(
        lr=float(params["lr"]),
        epochs=int(params["epochs"]),
        batch_size=int(params["batch_size"]),
        unfreeze=str(params["unfreeze"]),
        seed=int(params["seed"]),
    )


def package_trained(
    settings, s3, snapshot: dict, base: dict, trained: dict, params: Mapping[str, Any], logger=log
) -> dict[str, Any]:
    """The training job's output as a new artifact beside the run, with its lineage."""
    job = trained["Training"]
    lineage = {
        "base_version": base["version"],
        "base_uri": settings.artifact_uri,
        "data_snapshot": snapshot["digest"],
        "data": snapshot["prefix"] + "data/",
        "catalogue_index": snapshot["index"],
        "split": {"seed": snapshot["seed"], **snapshot["counts"]},
        "hyperparameters": hyperparameters(params).as_dict(),
        "training_job": job["TrainingJobName"],
    }
    out = f"{snapshot['prefix']}model/model.tar.gz"
    return package_model(
        settings,
        s3,
        base_uri=base["uri"],
        trained_uri=job["ModelArtifacts"]["S3ModelArtifacts"],
        out_uri=out,
        lineage=lineage,
        logger=logger,
    )


def _table(figures: dict[str, Any]) -> list[str]:
    lines = [f"{'text -> image':<16}" + "".join(f"{m:>11}" for m in quality.METRICS)]
    for name in ("base", "tuned", "chance"):
        lines.append(f"{name:<16}" + "".join(f"{figures[name][m]:>11.4f}" for m in quality.METRICS))
    return lines


def evaluate_and_decide(settings, s3, snapshot: dict, base: dict, tuned: dict, logger=log) -> dict[str, Any] | None:
    """Measure both models on the test products, report, and return the promotion's input (None: refused)."""
    figures = gate.measure_both(settings, s3, base["uri"], tuned["uri"], snapshot["prefix"] + "data/test/test.jsonl")
    decision = gate.decide(figures)
    _, prefix = parse_s3_uri(snapshot["prefix"])
    report = {
        "base": {"uri": base["uri"], "version": base["version"]},
        "tuned": {"uri": tuned["uri"], "version": tuned["version"], "lineage": tuned["lineage"]},
        "figures": figures,
        "decision": decision.as_dict(),
    }
    where = gate.write_report(settings, s3, f"{prefix}report.json", report)
    logger.info("held-out text -> image figures on %d test products:", figures["test_products"])
    for line in _table(figures):
        logger.info("%s", line)
    logger.info("fine-tune gate: %s. Report: %s", decision.reason, where)
    if not decision.promote:
        logger.info("nothing changes: %s stays the artifact catalogue_ingest uses", settings.artifact_uri)
        return None
    return {
        "tuned": tuned["uri"],
        "version": tuned["version"],
        "base_version": base["version"],
        "figures": json.loads(json.dumps(figures)),
        "report": where,
    }
