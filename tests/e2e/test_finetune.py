"""End to end: `airflow dags test catalogue_finetune` on the local stack with the tiny model.

One module-scoped sequence: `catalogue_ingest` publishes the sample catalogue
(tiny model, random weights), then two fine-tune runs on it, each through the
provider's SageMakerTrainingOperator, the local SageMaker server and AWS's
training toolkit (the entry point in its own container env, open_clip
installed from the artifact's wheels with no package index):

1. learning rate 0: the weights do not move, the held-out figures are equal,
   the gate refuses, and nothing changes (artifact, no model Asset event);
2. a learning rate that learns: the fine-tuned model finds held-out products
   beyond the noise of the sample, is promoted (the configured artifact is the
   new version, with its lineage; the previous one kept), and the model Asset's
   event queues `catalogue_ingest` (the re-index).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import tarfile

import pytest
from dag_runs import TINY, _dags_test, tiny_stack_env

from catalogue_search import finetune, index
from catalogue_search.model_artifact import read_artifact_metadata
from catalogue_search.s3util import parse_s3_uri
from catalogue_search.settings import Settings
from catalogue_search_dev import demo, testenv

LEARNS = {"lr": 3e-3, "epochs": 8, "batch_size": 64}


def _log(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


class World:
    def __init__(self, env, settings) -> None:
        import boto3

        self.env, self.settings = env, settings
        self.s3 = boto3.client("s3", **settings.boto3_kwargs())
        self.sagemaker = boto3.client("sagemaker", **settings.boto3_kwargs("sagemaker"))
        self.os = index.client_from_settings(settings)

    def run(self, conf: dict) -> subprocess.CompletedProcess:
        return _dags_test(self.env, json.dumps(conf), dag_id="catalogue_finetune")

    def json(self, uri: str) -> dict:
        bucket, key = parse_s3_uri(uri)
        return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def jsonl(self, uri: str) -> list[dict]:
        bucket, key = parse_s3_uri(uri)
        body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def reports(self) -> dict[str, dict]:
        """The fine-tune runs' reports, by S3 key."""
        listed = self.s3.list_objects_v2(Bucket=self.settings.bucket, Prefix=self.settings.manifests_prefix)
        keys = [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith("/finetune/report.json")]
        return {key: self.json(f"s3://{self.settings.bucket}/{key}") for key in keys}

    def db(self, query: str) -> list[tuple]:
        conn = sqlite3.connect(self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()

    def model_events(self) -> list[dict]:
        rows = self.db(
            "SELECT e.extra, e.source_dag_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'catalogue-search-model/tiny-clip' ORDER BY e.id"
        )
        return [{"extra": json.loads(extra), "dag_id": dag_id} for extra, dag_id in rows]

    def queued_for_model(self) -> set[str]:
        rows = self.db(
            "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id "
            "WHERE a.name = 'catalogue-search-model/tiny-clip'"
        )
        return {row[0] for row in rows}


@pytest.fixture(scope="module")
def world(moto_url, sagemaker_url, opensearch_url, aws_env, tmp_path_factory):
    env, _ = tiny_stack_env("e2eft", moto_url, sagemaker_url, opensearch_url, aws_env)
    env.update(testenv.airflow_home_env(testenv.fresh_airflow_home(tmp_path_factory.mktemp("airflow"))))
    env["CATSEARCH_TRAINING_INSTANCE_TYPE"] = "ml.m5.xlarge"
    env["CATSEARCH_TRAINING_IMAGE_URI"] = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-cpu-py312"
    settings = Settings.from_env({**os.environ, **env})
    demo.prepare(settings, model_cfg_path=TINY)
    published = _dags_test(env)
    assert published.returncode == 0, testenv.run_failure(published)
    w = World(env, settings)
    w.base = read_artifact_metadata(w.s3, settings.artifact_uri)
    return w


@pytest.fixture(scope="module")
def refused(world):
    result = world.run({"lr": 0, "epochs": 1})
    return result, world.reports()


@pytest.fixture(scope="module")
def promoted(world, refused):
    _, before = refused
    result = world.run(LEARNS)
    new = {k: v for k, v in world.reports().items() if k not in before}
    return result, next(iter(new.values())) if len(new) == 1 else new


def test_the_split_is_by_product_seeded_and_stratified(world, refused):
    result, reports = refused
    assert result.returncode == 0, testenv.run_failure(result)
    report = next(iter(reports.values()))
    data = report["tuned"]["lineage"]["data"]
    parts = {part: world.jsonl(f"{data}{part}/{part}.jsonl") for part in finetune.data.PARTS}
    ids = {part: {p["item_id"] for p in pairs} for part, pairs in parts.items()}
    assert not ids["test"] & (ids["train"] | ids["validation"]) and not ids["train"] & ids["validation"]
    _, published = finetune.data.published_products(world.os, world.settings.index_alias)
    assert len(published) == world.os.count(index=world.settings.index_alias)["count"] > 700
    assert ids["train"] | ids["validation"] | ids["test"] == {p["item_id"] for p in published}
    again = finetune.split(published, seed=0, test=0.2, validation=0.1)  # the DAG's defaults: the same split
    assert {part: {p["item_id"] for p in again[part]} for part in again} == ids
    for kind in {p["product_type"] for p in published}:  # each type is in test in its share (rounded)
        of_kind = [p for p in published if p["product_type"] == kind]
        assert sum(p["product_type"] == kind for p in parts["test"]) == round(len(of_kind) * 0.2), kind
    pair = parts["train"][0]
    assert pair["image"] == f"s3://{world.settings.bucket}/{world.settings.images_prefix}{pair['path']}"
    assert report["tuned"]["lineage"]["data_snapshot"] and report["figures"]["test_products"] >= len(parts["test"]) - 5


def test_learning_rate_zero_is_refused_with_both_figures_and_nothing_changes(world, refused):
    result, reports = refused
    assert result.returncode == 0, testenv.run_failure(result)
    (report,) = reports.values()
    figures, decision = report["figures"], report["decision"]
    assert figures["base"] == figures["tuned"]  # lr 0: the same weights answer the same queries
    assert decision["promote"] is False and decision["gain"] == 0
    log = _log(result)
    assert "fine-tune gate: refused" in log and f"{figures['base']['recall@10']:.4f}" in log
    assert "nothing changes" in log
    assert read_artifact_metadata(world.s3, world.settings.artifact_uri).version == world.base.version
    assert world.model_events() == []
    # the training job ran through the toolkit: Completed, its per-epoch record in the lineage
    job = world.sagemaker.describe_training_job(TrainingJobName=report["tuned"]["lineage"]["training_job"])
    assert job["TrainingJobStatus"] == "Completed"
    training = report["tuned"]["lineage"]["training"]
    assert training["device"] == "cpu" and training["mixed_precision"] is None
    assert [e["epoch"] for e in training["epochs"]] == [1] and training["epochs"][0]["images_per_s"] > 0


def test_a_model_that_learns_is_promoted_with_its_lineage_and_queues_the_reindex(world, promoted):
    result, report = promoted
    assert result.returncode == 0, testenv.run_failure(result)
    figures, decision = report["figures"], report["decision"]
    assert decision["promote"] is True and decision["gain"] > decision["noise"] > 0
    assert figures["tuned"]["recall@10"] > figures["chance"]["recall@10"] + decision["noise"]
    assert "fine-tune gate: promoted" in _log(result)
    now = read_artifact_metadata(world.s3, world.settings.artifact_uri)
    assert now.version == report["tuned"]["version"] != world.base.version and now.random_weights is False
    bucket, key = parse_s3_uri(world.settings.artifact_uri)
    body = world.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        config = json.loads(tar.extractfile("clip_config.json").read())
        assert tar.extractfile("artifact_version.txt").read().decode().strip() == now.version
    lineage = config["lineage"]
    assert lineage["base_version"] == world.base.version
    assert lineage["hyperparameters"] == {"lr": 3e-3, "epochs": 8, "batch_size": 64, "unfreeze": "both", "seed": 0}
    assert lineage["data_snapshot"] == report["tuned"]["lineage"]["data_snapshot"]
    assert len(lineage["training"]["epochs"]) == 8
    previous = f"{world.settings.models_prefix}{world.settings.model_slug}/previous/{world.base.version}/model.tar.gz"
    assert read_artifact_metadata(world.s3, f"s3://{bucket}/{previous}").version == world.base.version
    (event,) = world.model_events()
    assert event["dag_id"] == "catalogue_finetune" and event["extra"]["version"] == now.version
    assert "catalogue_ingest" in world.queued_for_model()  # the scheduler would start the re-index
