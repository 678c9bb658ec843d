"""The query endpoint DAGs, run with `airflow dags test` against the moto server.

moto keeps the SageMaker control plane (models, endpoint configs, endpoints, all
InService at once); its runtime answers invoke_endpoint with whatever results
were queued through its API, so each test queues the answers the smoke step
must see. Every test has its own endpoint prefix and bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from catalogue_search import endpoints
from catalogue_search.endpoints import ENCODE_TYPES, IMAGE, TEXT
from catalogue_search.s3util import parse_s3_uri
from catalogue_search.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny_clip.json"
IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"
GOOD_ANSWER = json.dumps({"embeddings": [[0.12, -0.5, 0.33, 0.9]]})


@dataclass
class Deployment:
    """One test's endpoints: the environment the DAGs run with, and clients to look at moto."""

    env: dict[str, str]
    settings: Settings
    sagemaker: object
    runtime: object
    outputs: list[str] = field(default_factory=list)

    def run(self, dag_id: str, **extra_env: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "test", dag_id],
            env={**os.environ, **self.env, **extra_env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.outputs.append(result.stdout + result.stderr)
        return result

    def run_ok(self, dag_id: str, **extra_env: str) -> str:
        result = self.run(dag_id, **extra_env)
        assert result.returncode == 0, f"{dag_id} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        return result.stdout + result.stderr

    def queue(self, *bodies: str) -> None:
        endpoints.queue_moto_results(self.settings.aws_endpoint_url, self.settings.region, list(bodies))

    def endpoint_names(self) -> list[str]:
        found = self.sagemaker.list_endpoints(NameContains=self.settings.endpoint_prefix)["Endpoints"]
        return sorted(e["EndpointName"] for e in found if e["EndpointName"].startswith(self.settings.endpoint_prefix))

    def config_names(self, encode_type: str) -> list[str]:
        return endpoints.list_endpoint_configs(self.sagemaker, endpoints.resource_prefix(self.settings, encode_type))

    def model_names(self, encode_type: str) -> list[str]:
        return endpoints.list_models(self.sagemaker, endpoints.resource_prefix(self.settings, encode_type))

    def endpoint(self, encode_type: str) -> dict:
        return self.sagemaker.describe_endpoint(EndpointName=self.settings.endpoint_name(encode_type))

    def config_of(self, encode_type: str) -> dict:
        name = self.endpoint(encode_type)["EndpointConfigName"]
        return self.sagemaker.describe_endpoint_config(EndpointConfigName=name)


def put_artifact(s3, settings: Settings, body: bytes = b"not a real model: moto does not read it") -> None:
    import hashlib

    bucket, key = parse_s3_uri(settings.artifact_uri)
    version = hashlib.sha256(body).hexdigest()[:16]  # what model_artifact records at upload
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"artifact-version": version})


@pytest.fixture
def deployment(settings: Settings, unique: str, moto_url: str):
    env = {
        "CATSEARCH_AWS_ENDPOINT_URL": moto_url,
        "CATSEARCH_BUCKET": settings.bucket,
        "CATSEARCH_ENDPOINT_PREFIX": f"t{unique}",
        "CATSEARCH_INFERENCE_IMAGE_URI": IMAGE_URI,
        # The smoke step goes through the runtime (moto) and sees what the test queued.
        "CATSEARCH_QUERY_ENCODER": "endpoint",
    }
    s = Settings.from_env({**os.environ, **env})
    dep = Deployment(
        env=env,
        settings=s,
        sagemaker=boto3.client("sagemaker", **s.boto3_kwargs()),
        runtime=boto3.client("sagemaker-runtime", **s.boto3_kwargs()),
    )
    endpoints.drain_moto_results(dep.runtime)
    yield dep
    endpoints.drain_moto_results(dep.runtime)
    s = dep.settings  # a test may have changed it
    for encode_type in ENCODE_TYPES:  # leave moto as we found it
        endpoints.delete_endpoint(dep.sagemaker, s.endpoint_name(encode_type), wait_delay=1)
        endpoints.delete_endpoint_configs(dep.sagemaker, endpoints.resource_prefix(s, encode_type))
        endpoints.delete_models(dep.sagemaker, endpoints.resource_prefix(s, encode_type))


def test_deploy_creates_a_serverless_endpoint_per_encode_type_and_smoke_tests_each(deployment, s3, unique):
    settings = deployment.settings
    put_artifact(s3, settings)
    deployment.queue(GOOD_ANSWER, GOOD_ANSWER)

    output = deployment.run_ok("query_endpoints_deploy")

    assert deployment.endpoint_names() == sorted(settings.endpoint_name(t) for t in ENCODE_TYPES)
    for encode_type in ENCODE_TYPES:
        endpoint = deployment.endpoint(encode_type)
        assert endpoint["EndpointStatus"] == "InService"
        config = deployment.config_of(encode_type)
        (variant,) = config["ProductionVariants"]
        assert variant["ServerlessConfig"] == {"MemorySizeInMB": 6144, "MaxConcurrency": 5}
        assert deployment.config_names(encode_type) == [config["EndpointConfigName"]]
        model = deployment.sagemaker.describe_model(ModelName=variant["ModelName"])
        assert deployment.model_names(encode_type) == [model["ModelName"]]
        container = model["PrimaryContainer"]
        assert container["Image"] == IMAGE_URI
        assert container["ModelDataUrl"] == settings.artifact_uri
        assert container["Environment"]["ENCODE_TYPE"] == encode_type
    # both smoke invocations went through the runtime and took the queued answers
    assert endpoints.drain_moto_results(deployment.runtime) == 0
    assert output.count("'dimensions': 4") == 2


def test_deploying_again_leaves_unchanged_endpoints_alone_and_updates_changed_ones(deployment, s3):
    settings = deployment.settings
    put_artifact(s3, settings)
    deployment.queue(GOOD_ANSWER, GOOD_ANSWER)
    deployment.run_ok("query_endpoints_deploy")
    first = {t: deployment.endpoint(t) for t in ENCODE_TYPES}

    deployment.queue(GOOD_ANSWER, GOOD_ANSWER)
    deployment.run_ok("query_endpoints_deploy")
    for encode_type in ENCODE_TYPES:
        again = deployment.endpoint(encode_type)
        assert again["EndpointConfigName"] == first[encode_type]["EndpointConfigName"]
        # moto replaces an endpoint on every CreateEndpoint: same creation time = not touched
        assert again["CreationTime"] == first[encode_type]["CreationTime"]
        assert len(deployment.config_names(encode_type)) == 1

    deployment.queue(GOOD_ANSWER, GOOD_ANSWER)
    deployment.run_ok("query_endpoints_deploy", CATSEARCH_ENDPOINT_MEMORY_MB="4096")
    assert deployment.endpoint_names() == sorted(settings.endpoint_name(t) for t in ENCODE_TYPES)
    for encode_type in ENCODE_TYPES:
        updated = deployment.endpoint(encode_type)
        assert updated["EndpointConfigName"] != first[encode_type]["EndpointConfigName"]
        assert updated["ProductionVariants"][0]["CurrentServerlessConfig"]["MemorySizeInMB"] == 4096
        (variant,) = deployment.config_of(encode_type)["ProductionVariants"]
        assert variant["ServerlessConfig"]["MemorySizeInMB"] == 4096
        # the superseded config and model stay until the tear-down (a rollback is one UpdateEndpoint)
        assert first[encode_type]["EndpointConfigName"] in deployment.config_names(encode_type)
        assert len(deployment.config_names(encode_type)) == len(deployment.model_names(encode_type)) == 2


def test_teardown_deletes_endpoints_configs_and_models_and_can_run_again(deployment, s3):
    settings = deployment.settings
    put_artifact(s3, settings)
    deployment.queue(GOOD_ANSWER, GOOD_ANSWER)
    deployment.run_ok("query_endpoints_deploy")
    from catalogue_search.transform import model_request

    for encode_type in ENCODE_TYPES:  # what an earlier deploy left: a superseded model and config
        old = endpoints.deploy_plan(settings.replace(endpoint_memory_mb=1024), encode_type, IMAGE_URI, "old")
        deployment.sagemaker.create_model(**old.model)
        deployment.sagemaker.create_endpoint_config(**old.endpoint_config)
        assert len(deployment.config_names(encode_type)) == len(deployment.model_names(encode_type)) == 2
    # batch transform's model, which the tear-down must leave alone
    deployment.sagemaker.create_model(**model_request(settings, IMAGE, IMAGE_URI, "v1"))

    output = deployment.run_ok("query_endpoints_teardown")

    assert deployment.endpoint_names() == []
    for encode_type in ENCODE_TYPES:
        assert deployment.config_names(encode_type) == []
        assert deployment.model_names(encode_type) == []
    assert deployment.sagemaker.describe_model(ModelName=settings.sagemaker_model_name(IMAGE))
    assert f"deleted endpoint {settings.endpoint_name(TEXT)}" in output

    again = deployment.run_ok("query_endpoints_teardown")
    assert f"endpoint {settings.endpoint_name(IMAGE)} is already gone" in again
    deployment.sagemaker.delete_model(ModelName=settings.sagemaker_model_name(IMAGE))


def test_a_wrong_shaped_smoke_answer_fails_the_deploy_naming_the_endpoint(deployment, s3):
    settings = deployment.settings
    put_artifact(s3, settings)
    two_vectors = json.dumps({"embeddings": [[0.1, 0.2], [0.3, 0.4]]})
    deployment.queue(two_vectors, two_vectors)

    result = deployment.run("query_endpoints_deploy")

    output = result.stdout + result.stderr
    assert result.returncode != 0
    for encode_type in ENCODE_TYPES:
        name = settings.endpoint_name(encode_type)
        errors = [line for line in output.splitlines() if line.startswith("airflow.sdk.exceptions.AirflowFail")]
        wanted = f"endpoint {name} returned an unexpected response shape"
        assert any(wanted in e and "with one vector" in e for e in errors), errors
    assert "new_state=up_for_retry" not in output  # a wrong answer is not retried
    # the control plane did its part: the endpoints are there, only the smoke check failed
    assert deployment.endpoint_names() == sorted(settings.endpoint_name(t) for t in ENCODE_TYPES)


def test_a_missing_artifact_fails_the_deploy_before_anything_is_created(deployment):
    result = deployment.run("query_endpoints_deploy")

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"no model artifact at {deployment.settings.artifact_uri}" in output
    assert "new_state=up_for_retry" not in output
    assert deployment.endpoint_names() == []
    assert all(deployment.model_names(t) == [] for t in ENCODE_TYPES)


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory) -> Path:
    from catalogue_search.model_artifact import build_model_artifact

    path = tmp_path_factory.mktemp("tiny-artifact") / "model.tar.gz"
    build_model_artifact(path, "tiny-clip", "", TINY)
    return path


def test_local_stack_smoke_test_runs_the_real_handler_through_the_runtime(deployment, s3, unique, tiny_artifact):
    """With the local query encoder, the smoke step queues the in-process handler's answer; nothing from the test."""
    from catalogue_search.model_artifact import upload_model_artifact

    deployment.env.update(
        {"CATSEARCH_QUERY_ENCODER": "local", "CATSEARCH_MODEL_NAME": "tiny-clip", "CATSEARCH_MODEL_PRETRAINED": ""}
    )
    deployment.settings = Settings.from_env({**os.environ, **deployment.env})
    upload_model_artifact(deployment.settings, s3, tiny_artifact)
    embed_dim = json.loads(TINY.read_text())["embed_dim"]

    output = deployment.run_ok("query_endpoints_deploy")

    assert output.count(f"'dimensions': {embed_dim}") == 2
    assert endpoints.drain_moto_results(deployment.runtime) == 0
    assert deployment.endpoint_names() == sorted(deployment.settings.endpoint_name(t) for t in ENCODE_TYPES)
