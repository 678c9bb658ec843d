"""Query endpoints: request builders, names, error classification and the smoke check.

The helpers that talk to SageMaker's control plane are tested against moto in
tests/integration/test_endpoint_helpers.py.
"""

from __future__ import annotations

import io
import json

import pytest
from botocore.exceptions import ClientError

from catalogue_search import endpoints, transform
from catalogue_search.endpoints import IMAGE, TEXT, SmokeTestError
from catalogue_search.settings import Settings

IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"


@pytest.fixture
def settings() -> Settings:
    return Settings(endpoint_prefix="cs", bucket="project")


def not_found(operation: str, what: str) -> ClientError:
    error = {"Code": "ValidationException", "Message": f'Could not find {what} "arn:aws:sagemaker:...".'}
    return ClientError({"Error": error}, operation)


# --- requests ------------------------------------------------------------------
def test_plan_reuses_the_transform_model_request_with_its_own_name_per_encode_type(settings):
    plans = {t: endpoints.deploy_plan(settings, t, IMAGE_URI, "etag1") for t in (TEXT, IMAGE)}
    for encode_type, plan in plans.items():
        container = plan.model["PrimaryContainer"]
        assert container == transform.model_request(settings, encode_type, IMAGE_URI, "etag1")["PrimaryContainer"]
        assert container["Environment"]["ENCODE_TYPE"] == encode_type
        assert container["ModelDataUrl"] == settings.artifact_uri
        assert plan.endpoint_name == settings.endpoint_name(encode_type) == f"cs-vit-b-32-{encode_type.lower()}"
        assert plan.model["ModelName"].startswith(endpoints.resource_prefix(settings, encode_type))
        # not batch transform's model: the tear-down must not delete that one
        assert plan.model["ModelName"] != settings.sagemaker_model_name(encode_type)
        assert plan.endpoint == {"EndpointName": plan.endpoint_name, "EndpointConfigName": plan.model["ModelName"]}
    assert plans[TEXT].model["ModelName"] != plans[IMAGE].model["ModelName"]


def test_endpoint_config_is_serverless_with_the_configured_memory_and_concurrency(settings):
    plan = endpoints.deploy_plan(settings, TEXT, IMAGE_URI, "etag1")
    assert plan.endpoint_config == {
        "EndpointConfigName": plan.endpoint["EndpointConfigName"],
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": plan.model["ModelName"],
                "ServerlessConfig": {"MemorySizeInMB": 6144, "MaxConcurrency": 5},
            }
        ],
    }
    smaller = settings.replace(endpoint_memory_mb=2048, endpoint_max_concurrency=20)
    small = endpoints.deploy_plan(smaller, TEXT, IMAGE_URI, "e")
    assert small.endpoint_config["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": 2048,
        "MaxConcurrency": 20,
    }


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"endpoint_memory_mb": 3000}, "CATSEARCH_ENDPOINT_MEMORY_MB"),
        ({"endpoint_max_concurrency": 0}, "CATSEARCH_ENDPOINT_MAX_CONCURRENCY"),
    ],
)
def test_serverless_limits_are_checked_before_anything_is_sent(settings, change, variable):
    with pytest.raises(ValueError, match=variable):
        endpoints.deploy_plan(settings.replace(**change), TEXT, IMAGE_URI, "etag1")


def test_names_change_with_what_is_deployed_and_only_then(settings):
    def name(s=settings, image=IMAGE_URI, version="etag1", encode_type=TEXT):
        return endpoints.deploy_plan(s, encode_type, image, version).endpoint["EndpointConfigName"]

    same = name()
    assert name() == same
    others = {
        "memory": name(s=settings.replace(endpoint_memory_mb=4096)),
        "concurrency": name(s=settings.replace(endpoint_max_concurrency=6)),
        "image": name(image=IMAGE_URI.replace("2.6", "2.7")),
        "artifact rebuilt": name(version="etag2"),
        "artifact moved": name(s=settings.replace(model_artifact_uri="s3://elsewhere/model.tar.gz")),
    }
    assert all(n != same for n in others.values()), others
    assert len(set(others.values())) == len(others)
    for n in [same, *others.values()]:
        assert len(n) <= 63 and n.startswith("cs-vit-b-32-text-")


def test_names_too_long_for_sagemaker_are_refused_naming_the_setting(settings):
    longest = endpoints.deploy_plan(settings.replace(endpoint_prefix="p" * 37), IMAGE, IMAGE_URI, "e")
    assert len(longest.model["ModelName"]) == 63
    with pytest.raises(ValueError, match="CATSEARCH_ENDPOINT_PREFIX"):
        endpoints.deploy_plan(settings.replace(endpoint_prefix="p" * 38), IMAGE, IMAGE_URI, "e")
    with pytest.raises(ValueError, match="CATSEARCH_ENDPOINT_PREFIX"):
        endpoints.deploy_plan(settings.replace(endpoint_prefix="bad_prefix"), TEXT, IMAGE_URI, "e")


def test_encode_types_match_the_transform_module():
    assert (endpoints.TEXT, endpoints.IMAGE) == (transform.TEXT, transform.IMAGE)
    with pytest.raises(ValueError, match="encode type"):
        endpoints.deploy_plan(Settings(), "AUDIO", IMAGE_URI, "e")


def test_missing_artifact_is_a_clear_error(settings):
    class S3:
        def head_object(self, Bucket, Key):
            raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadObject")

    with pytest.raises(endpoints.ArtifactMissingError, match=f"no model artifact at {settings.artifact_uri}"):
        endpoints.artifact_version(S3(), settings)


# --- what is there -------------------------------------------------------------
def test_is_not_found_only_for_sagemakers_could_not_find():
    assert endpoints.is_not_found(not_found("DeleteModel", "model"))
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "DeleteModel")
    other = ClientError({"Error": {"Code": "ValidationException", "Message": "Cannot delete in-use thing"}}, "X")
    assert not endpoints.is_not_found(throttled)
    assert not endpoints.is_not_found(other)
    assert not endpoints.is_not_found(RuntimeError("Could not find model"))


def test_errors_other_than_not_found_while_deleting_are_raised():
    """(What SageMaker's not-found answers do to the helpers: tests/integration/test_endpoint_helpers.py.)"""

    class Denied:
        def delete_endpoint(self, EndpointName):
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "DeleteEndpoint")

    with pytest.raises(ClientError, match="AccessDenied"):
        endpoints.delete_endpoint(Denied(), "ep")


# --- smoke ---------------------------------------------------------------------
def test_smoke_payloads():
    from PIL import Image

    body, ctype = endpoints.smoke_payload(TEXT)
    assert (json.loads(body), ctype) == ({"inputs": ["a red flower"]}, "application/json")
    jpeg, ctype = endpoints.smoke_payload(IMAGE)
    assert ctype == "application/x-image" and jpeg[:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


@pytest.mark.parametrize(
    "body",
    [
        b"body",
        b"\xff\xd8 not even text",
        json.dumps({"vectors": [[0.1]]}).encode(),
        json.dumps({"embeddings": [[0.1], [0.2]]}).encode(),
        json.dumps({"embeddings": []}).encode(),
        json.dumps({"embeddings": [[]]}).encode(),
        json.dumps({"embeddings": [["0.1"]]}).encode(),
        json.dumps({"embeddings": [[True]]}).encode(),
        json.dumps({"embeddings": [0.1, 0.2]}).encode(),
        b'{"embeddings": [[NaN, 0.1]]}',
        json.dumps({"error": "cannot decode image"}).encode(),
        json.dumps([[0.1, 0.2]]).encode(),
    ],
)
def test_a_wrong_shaped_answer_fails_naming_the_endpoint(body):
    with pytest.raises(SmokeTestError, match="endpoint cs-vit-b-32-image "):
        endpoints.check_embeddings(body, "cs-vit-b-32-image")


def test_one_vector_passes():
    assert endpoints.check_embeddings(b'{"embeddings": [[0.5, -1, 2.5e-3]], "ids": ["x"]}', "e") == [0.5, -1.0, 0.0025]


class FakeRuntime:
    def __init__(self, body: bytes = b"", error: Exception | None = None) -> None:
        self.body, self.error, self.requests = body, error, []

    def invoke_endpoint(self, **request):
        self.requests.append(request)
        if self.error:
            raise self.error
        return {"Body": io.BytesIO(self.body), "ContentType": "application/json"}


def test_smoke_test_sends_the_payload_and_checks_the_answer():
    runtime = FakeRuntime(json.dumps({"embeddings": [[0.1] * 8]}).encode())
    payload, ctype = endpoints.smoke_payload(TEXT)
    result = endpoints.smoke_test(runtime, "cs-text", payload, ctype, inference_id="smoke-1")
    assert result == {"endpoint": "cs-text", "content_type": "application/json", "dimensions": 8}
    assert runtime.requests == [
        {
            "EndpointName": "cs-text",
            "ContentType": "application/json",
            "Accept": "application/json",
            "Body": payload,
            "InferenceId": "smoke-1",
        }
    ]


def test_a_model_error_fails_the_smoke_test_naming_the_endpoint():
    error = ClientError({"Error": {"Code": "ModelError", "Message": "Received client error (400)"}}, "InvokeEndpoint")
    with pytest.raises(SmokeTestError, match="endpoint cs-image rejected the application/x-image smoke request"):
        endpoints.smoke_test(FakeRuntime(error=error), "cs-image", b"\xff\xd8", "application/x-image")


def test_smoke_inference_ids_differ_per_run_type_and_try():
    ids = {
        endpoints.smoke_inference_id(run, t, attempt)
        for run in ("manual__1", "manual__2")
        for t in (TEXT, IMAGE)
        for attempt in (1, 2)
    }
    assert len(ids) == 8 and all(len(i) <= 64 for i in ids)
