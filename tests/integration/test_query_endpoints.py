"""The query endpoint DAGs, run with `airflow dags test` against the local stack.

moto keeps the SageMaker control plane (models, endpoint configs, endpoints, all
InService at once); the local SageMaker server in front of it answers the smoke
invocations with the handler of the artifact each endpoint serves, over the
runtime's real HTTP path. Every test has its own endpoint prefix and bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from catalogue_search import endpoints
from catalogue_search.contract import vectors_close
from catalogue_search.endpoints import ENCODE_TYPES, IMAGE, TEXT
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.s3util import parse_s3_uri
from catalogue_search.settings import Settings, boto3_client
from catalogue_search_dev import prefork
from catalogue_search_dev.model_build import upload_model_artifact

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny_clip.json"
EMBED_DIM = json.loads(TINY.read_text())["embed_dim"]
IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"


@dataclass
class Deployment:
    """One test's endpoints: the environment the DAGs run with, and clients to look at SageMaker."""

    env: dict[str, str]
    settings: Settings
    sagemaker: object
    runtime: object
    outputs: list[str] = field(default_factory=list)

    def run(self, dag_id: str, **extra_env: str) -> subprocess.CompletedProcess:
        result = prefork.dags_test(dag_id, {**self.env, **extra_env}, timeout=600)
        self.outputs.append(result.stdout + result.stderr)
        return result

    def run_ok(self, dag_id: str, **extra_env: str) -> str:
        result = self.run(dag_id, **extra_env)
        assert result.returncode == 0, f"{dag_id} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        return result.stdout + result.stderr

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


def put_artifact(s3, settings: Settings, path: Path) -> None:
    """An artifact with its own handler, tagged with a version as model_artifact's upload does."""
    import hashlib

    bucket, key = parse_s3_uri(settings.artifact_uri)
    version = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    s3.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"artifact-version": version}})


@pytest.fixture
def deployment(settings: Settings, unique: str, aws_env, s3, tiny_artifact):
    """The tiny model's artifact in this test's bucket, and the environment that deploys it."""
    env = {
        **aws_env(settings),
        "CATSEARCH_BUCKET": settings.bucket,
        "CATSEARCH_ENDPOINT_PREFIX": f"t{unique}",
        "CATSEARCH_INFERENCE_IMAGE_URI": IMAGE_URI,
        "CATSEARCH_MODEL_NAME": "tiny-clip",
        "CATSEARCH_MODEL_PRETRAINED": "",
        "CATSEARCH_QUERY_ENCODER": "endpoint",
    }
    s = Settings.from_env({**os.environ, **env})
    upload_model_artifact(s, s3, tiny_artifact)
    dep = Deployment(
        env=env, settings=s, sagemaker=boto3_client("sagemaker", s), runtime=boto3_client("sagemaker-runtime", s)
    )
    yield dep
    s = dep.settings  # a test may have changed it
    for encode_type in ENCODE_TYPES:  # leave moto as we found it
        endpoints.delete_endpoint(dep.sagemaker, s.endpoint_name(encode_type), wait_delay=1)
        endpoints.delete_endpoint_configs(dep.sagemaker, endpoints.resource_prefix(s, encode_type))
        endpoints.delete_models(dep.sagemaker, endpoints.resource_prefix(s, encode_type))


def test_deploy_creates_a_serverless_endpoint_per_encode_type_and_smoke_tests_each(deployment, s3):
    settings = deployment.settings

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
    # both smoke invocations ran the artifact's handler through the runtime (a JSON text, a binary JPEG)
    assert output.count(f"'dimensions': {EMBED_DIM}") == 2
    assert "'content_type': 'application/x-image'" in output
    # and the endpoints the DAG deployed answer what the handler answers in-process
    for encode_type in ENCODE_TYPES:
        payload, content_type = endpoints.smoke_payload(encode_type)
        answer = deployment.runtime.invoke_endpoint(
            EndpointName=settings.endpoint_name(encode_type), ContentType=content_type, Body=payload
        )["Body"].read()
        handler = load_handler_from_artifact(settings.artifact_uri, encode_type, s3_client=s3, env={})
        assert vectors_close(
            json.loads(answer)["embeddings"], json.loads(handler.invoke(payload, content_type))["embeddings"]
        )


def test_deploying_again_leaves_unchanged_endpoints_alone_and_updates_changed_ones(deployment):
    settings = deployment.settings
    deployment.run_ok("query_endpoints_deploy")
    first = {t: deployment.endpoint(t) for t in ENCODE_TYPES}

    deployment.run_ok("query_endpoints_deploy")
    for encode_type in ENCODE_TYPES:
        again = deployment.endpoint(encode_type)
        assert again["EndpointConfigName"] == first[encode_type]["EndpointConfigName"]
        # moto replaces an endpoint on every CreateEndpoint: same creation time = not touched
        assert again["CreationTime"] == first[encode_type]["CreationTime"]
        assert len(deployment.config_names(encode_type)) == 1

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


def test_teardown_deletes_endpoints_configs_and_models_and_can_run_again(deployment):
    settings = deployment.settings
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


def test_a_wrong_shaped_smoke_answer_fails_the_deploy_naming_the_endpoint(
    deployment, s3, tmp_path, make_handler_artifact
):
    settings = deployment.settings
    two_vectors = """
    import json

    def model_fn(model_dir):  # the serving toolkit's contract
        return None

    def transform_fn(model, body, content_type, accept):
        return json.dumps({"embeddings": [[0.1, 0.2], [0.3, 0.4]]}).encode(), "application/json"
    """
    put_artifact(s3, settings, make_handler_artifact(tmp_path / "model.tar.gz", two_vectors))

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


def test_a_model_that_fails_to_load_fails_the_deploy_at_its_smoke_test(deployment, s3, tmp_path, make_handler_artifact):
    """moto calls the endpoint InService and TorchServe's /ping says Healthy while its workers die in
    `model_fn`: only the smoke invocation finds out, and it names why."""
    settings = deployment.settings
    broken = """
    def model_fn(model_dir):
        raise RuntimeError("the weights are corrupt")
    """
    put_artifact(s3, settings, make_handler_artifact(tmp_path / "model.tar.gz", broken))

    result = deployment.run("query_endpoints_deploy")

    output = result.stdout + result.stderr
    assert result.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("airflow.sdk.exceptions.AirflowFail")]
    for encode_type in ENCODE_TYPES:
        name = settings.endpoint_name(encode_type)
        assert any(f"endpoint {name} rejected" in e and "the weights are corrupt" in e for e in errors), errors
    assert "new_state=up_for_retry" not in output


def test_a_missing_artifact_fails_the_deploy_before_anything_is_created(deployment, s3):
    bucket, key = parse_s3_uri(deployment.settings.artifact_uri)
    s3.delete_object(Bucket=bucket, Key=key)

    result = deployment.run("query_endpoints_deploy")

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"no model artifact at {deployment.settings.artifact_uri}" in output
    assert "new_state=up_for_retry" not in output
    assert deployment.endpoint_names() == []
    assert all(deployment.model_names(t) == [] for t in ENCODE_TYPES)
