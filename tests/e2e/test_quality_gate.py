"""End to end: search quality measured on every run, and the publication gates (`airflow dags test`).

First, on another alias, an artifact with random weights is refused without
CATSEARCH_ALLOW_RANDOM_WEIGHTS, and nothing is published. Then one module-scoped
sequence on one alias, each step building on the one before:

1. the tiny model trained on the sample catalogue (text -> image recall far above
   chance, `tiny_training`) publishes index A, its figures in `_meta`, the run
   report and the log;
2. the same weights with the text projection's dimensions shuffled (text -> image
   at chance, titles still find their title vectors): evaluate_index refuses it
   with the measured drop, and the alias stays on A;
3. the same run with `allow_quality_drop` publishes B.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from dag_runs import TINY, _dags_test, tiny_stack_env

from catalogue_search import index, quality
from catalogue_search_dev import demo, sample_index, testenv, tiny_training
from catalogue_search_dev.model_build import build_model_artifact


def _log(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


class World:
    def __init__(self, env, settings, tmp) -> None:
        import boto3

        self.env, self.settings, self.tmp = env, settings, tmp
        self.s3 = boto3.client("s3", **settings.boto3_kwargs())
        self.os = index.client_from_settings(settings)

    def use_artifact(self, weights: str, name: str, *, random_weights: bool = False) -> str:
        """Build the tiny model's artifact with `weights` (a checkpoint, "" = random) and upload it."""
        path = self.tmp / name / "model.tar.gz"
        path.parent.mkdir(exist_ok=True)
        build_model_artifact(path, "tiny-clip", weights, TINY)
        return tiny_training.upload_artifact(self.settings, self.s3, path, random_weights=random_weights)

    def target(self, alias: str | None = None) -> str | None:
        targets = index.alias_targets(self.os, alias or self.settings.index_alias)
        return targets[0] if targets else None

    def meta(self, name: str) -> dict:
        return self.os.indices.get_mapping(index=name)[name]["mappings"]["_meta"]

    def latest_report(self) -> dict:
        listed = self.s3.list_objects_v2(Bucket=self.settings.bucket, Prefix=self.settings.manifests_prefix)
        reports = [o for o in listed.get("Contents", []) if o["Key"].endswith("/quality.json")]
        latest = max(reports, key=lambda o: o["LastModified"])
        return json.loads(self.s3.get_object(Bucket=self.settings.bucket, Key=latest["Key"])["Body"].read())


@pytest.fixture(scope="module")
def world(moto_url, sagemaker_url, opensearch_url, aws_env, tmp_path_factory):
    env, settings = tiny_stack_env("e2eq", moto_url, sagemaker_url, opensearch_url, aws_env)
    demo.prepare(settings, model_cfg_path=TINY)
    return World(env, settings, tmp_path_factory.mktemp("quality-artifacts"))


@pytest.fixture(scope="module")
def trained(world):
    layout = sample_index.layout_dir()
    return tiny_training.trained_checkpoint(layout, sample_index.sample_products(layout), TINY)


@pytest.fixture(scope="module")
def published_a(world, trained):
    version = world.use_artifact(str(trained), "trained")
    result = _dags_test(world.env)
    assert result.returncode == 0, testenv.run_failure(result)
    return world.target(), version, result


@pytest.fixture(scope="module")
def refused_b(world, trained, published_a):
    worse = tiny_training.permuted_text_projection(trained, world.tmp / "permuted.pt")
    version = world.use_artifact(str(worse), "permuted")
    result = _dags_test(world.env)
    return version, result, world.latest_report()


def test_random_weights_are_refused_without_the_opt_in(world):
    # First: the artifact is the one `demo.prepare` uploaded (the same bytes), whose containers the module
    # before this one on the same pytest process may have left running.
    alias = f"{world.settings.index_alias}-random"
    world.use_artifact("", "random", random_weights=True)
    env = {**world.env, "CATSEARCH_INDEX_ALIAS": alias, "CATSEARCH_ALLOW_RANDOM_WEIGHTS": "false"}
    result = _dags_test(env)
    log = _log(result)
    assert result.returncode != 0
    assert "random weights: quality is chance level" in log and "CATSEARCH_ALLOW_RANDOM_WEIGHTS=true" in log
    assert world.target(alias) is None  # nothing was published
    report = world.latest_report()
    assert report["weights"] == {"random": True, "pretrained": None} and report["alias"] == alias


def test_a_trained_model_publishes_with_its_quality_in_meta_report_and_log(world, published_a, trained):
    name, version, result = published_a
    meta = world.meta(name)
    assert meta["weights"] == {"random": False, "pretrained": trained.name}
    record = meta["quality"]
    assert record["artifact_version"] == version and record["random_weights"] is False
    assert record["sample_size"] == 200 and record["products"] == 773
    image, chance = record["modes"]["image"]["recall@10"], record["chance"]["recall@10"]
    assert image > 10 * chance, record["modes"]  # learnt: far above chance
    assert world.latest_report()["quality"] == record
    log = _log(result)
    assert "text -> image" in log and f"{image:.4f}" in log
    assert "quality gate: no index is served yet" in log
    # the title vectors the pipeline encoded (batch transform) are what a text query encodes to: 32 checked
    assert "evaluated 200 titles in" in log and "32 encoded by the TEXT model" in log
    assert "168 taken from the index's title vectors" in log
    assert quality.RANDOM_WEIGHTS_NOTE not in log


def test_a_worse_model_is_refused_with_the_measured_drop_and_the_alias_stays(world, published_a, refused_b):
    served, _, _ = published_a
    version, result, report = refused_b
    log = _log(result)
    assert result.returncode != 0
    assert world.target() == served  # the alias did not move
    assert report["quality"]["artifact_version"] == version
    gate = report["gate"]
    served_recall = world.meta(served)["quality"]["modes"]["image"]["recall@10"]
    assert gate["refused"] and gate["served_index"] == served and gate["same_model"] is False
    assert gate["drop"] == pytest.approx(served_recall - report["quality"]["modes"]["image"]["recall@10"], abs=1e-6)
    assert gate["drop"] > gate["allowed"] > 0
    assert "quality gate: the new model is worse than the served one" in log
    assert f"drop {gate['drop']:+.4f}" in log and f"stays on {served}" in log
    # the shuffled text projection leaves titles finding their own title vectors
    assert report["quality"]["modes"]["name"]["recall@10"] == 1.0


def test_the_same_run_with_allow_quality_drop_publishes(world, published_a, refused_b):
    served, _, _ = published_a
    version, _, _ = refused_b
    result = _dags_test(world.env, json.dumps({"allow_quality_drop": True}))
    assert result.returncode == 0, testenv.run_failure(result)
    now = world.target()
    assert now != served and world.meta(now)["artifact_version"] == version
    assert "allowed for this run (allow_quality_drop)" in _log(result)
