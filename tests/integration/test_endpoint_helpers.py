"""The query endpoints' helpers against SageMaker's control plane as moto keeps it (behind the local server).

What the deploy decides for an endpoint, what the tear-down deletes and what it
reports as left over, with SageMaker's real requests, errors and name filters.
The local server keeps an endpoint Creating until its container answers /ping,
as SageMaker does; where a test needs SageMaker to report an endpoint Failed
or Updating, only that field of the real DescribeEndpoint answer is changed.
"""

from __future__ import annotations

import pytest

from catalogue_search import endpoints
from catalogue_search.endpoints import IMAGE, TEXT
from catalogue_search.settings import Settings

IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"


class Reporting:
    """The real client, except that DescribeEndpoint reports `status` (no failure or update is forced locally)."""

    def __init__(self, client, status: str) -> None:
        self._client, self._status = client, status

    def describe_endpoint(self, **kwargs):
        return {**self._client.describe_endpoint(**kwargs), "EndpointStatus": self._status, "FailureReason": "OOM"}

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def deploy(sagemaker, settings: Settings, encode_type: str, version: str) -> endpoints.DeployPlan:
    """What the deploy DAG creates for one encode type and artifact version (model, config, endpoint)."""
    plan = endpoints.deploy_plan(settings, encode_type, IMAGE_URI, version)
    sagemaker.create_model(**plan.model)
    sagemaker.create_endpoint_config(**plan.endpoint_config)
    return plan


@pytest.fixture
def sagemaker(sagemaker_client, settings: Settings):
    yield sagemaker_client
    for encode_type in (TEXT, IMAGE):  # leave moto as we found it
        endpoints.delete_endpoint(sagemaker_client, settings.endpoint_name(encode_type), wait_delay=1)
        endpoints.delete_endpoint_configs(sagemaker_client, endpoints.resource_prefix(settings, encode_type))
        endpoints.delete_models(sagemaker_client, endpoints.resource_prefix(settings, encode_type))


def test_the_deploy_creates_then_leaves_alone_then_updates(sagemaker, settings: Settings):
    first = deploy(sagemaker, settings, TEXT, "v1")
    assert endpoints.endpoint_action(sagemaker, first.endpoint) == "create"
    sagemaker.create_endpoint(**first.endpoint)
    # No artifact is uploaded here, so the local container would end Failed: the status is set, the rest is real.
    running = Reporting(sagemaker, "InService")
    assert endpoints.endpoint_action(running, first.endpoint) == "unchanged"
    assert endpoints.endpoint_up_to_date(running, first.endpoint)

    second = deploy(sagemaker, settings, TEXT, "v2")  # a rebuilt artifact: another config for the same endpoint
    assert second.endpoint["EndpointName"] == first.endpoint["EndpointName"]
    assert endpoints.endpoint_action(running, second.endpoint) == "update"
    assert not endpoints.endpoint_up_to_date(running, second.endpoint)


def test_a_failed_endpoint_is_deleted_so_that_it_can_be_created_again(sagemaker, settings: Settings):
    plan = deploy(sagemaker, settings, IMAGE, "v1")
    sagemaker.create_endpoint(**plan.endpoint)
    failed = Reporting(sagemaker, "Failed")
    assert not endpoints.endpoint_up_to_date(failed, plan.endpoint)

    assert endpoints.endpoint_action(failed, plan.endpoint, wait_delay=1) == "create"
    assert endpoints.describe_or_none(sagemaker.describe_endpoint, EndpointName=plan.endpoint_name) is None


def test_an_endpoint_busy_with_another_config_is_left_for_a_later_try(sagemaker, settings: Settings):
    first = deploy(sagemaker, settings, TEXT, "v1")
    sagemaker.create_endpoint(**first.endpoint)
    second = deploy(sagemaker, settings, TEXT, "v2")

    with pytest.raises(endpoints.EndpointBusyError, match=f"endpoint {first.endpoint_name} is Updating"):
        endpoints.endpoint_action(Reporting(sagemaker, "Updating"), second.endpoint)
    assert (
        sagemaker.describe_endpoint(EndpointName=first.endpoint_name)["EndpointConfigName"]
        == (first.endpoint["EndpointConfigName"])
    )


def test_deleting_what_is_gone_is_a_success(sagemaker, settings: Settings):
    plan = deploy(sagemaker, settings, TEXT, "v1")
    sagemaker.create_endpoint(**plan.endpoint)
    assert endpoints.delete_endpoint(sagemaker, plan.endpoint_name, wait_delay=1) is True
    assert endpoints.delete_endpoint(sagemaker, plan.endpoint_name, wait_delay=1) is False  # SageMaker's not-found
    prefix = endpoints.resource_prefix(settings, TEXT)
    assert endpoints.delete_models(sagemaker, prefix) == [plan.model["ModelName"]]
    assert endpoints.delete_models(sagemaker, prefix) == []


def test_configs_and_models_are_deleted_by_prefix_only(sagemaker, settings: Settings):
    ours = [deploy(sagemaker, settings, TEXT, version) for version in ("v1", "v2")]
    image = deploy(sagemaker, settings, IMAGE, "v1")  # the other encode type's: another prefix
    longer = settings.replace(endpoint_prefix=f"x{settings.endpoint_prefix}")  # holds our prefix, not at the start
    theirs = deploy(sagemaker, longer, TEXT, "v1")
    prefix = endpoints.resource_prefix(settings, TEXT)

    names = sorted(plan.model["ModelName"] for plan in ours)
    assert endpoints.delete_endpoint_configs(sagemaker, prefix) == names
    assert endpoints.delete_models(sagemaker, prefix) == names
    for plan in (image, theirs):
        assert endpoints.model_exists(sagemaker, plan.model["ModelName"])
        assert endpoints.endpoint_config_exists(sagemaker, plan.endpoint["EndpointConfigName"])
    endpoints.delete_endpoint_configs(sagemaker, endpoints.resource_prefix(longer, TEXT))
    endpoints.delete_models(sagemaker, endpoints.resource_prefix(longer, TEXT))


def test_leftovers_names_whatever_the_teardown_missed(sagemaker, settings: Settings):
    assert endpoints.leftovers(sagemaker, settings) == []
    image = deploy(sagemaker, settings, IMAGE, "v1")
    sagemaker.create_endpoint(**image.endpoint)
    text = deploy(sagemaker, settings, TEXT, "v1")
    sagemaker.delete_model(ModelName=text.model["ModelName"])  # only its config is left

    assert endpoints.leftovers(sagemaker, settings) == [
        f"endpoint config {text.endpoint['EndpointConfigName']}",
        f"endpoint {image.endpoint_name}",
        f"endpoint config {image.endpoint['EndpointConfigName']}",
        f"model {image.model['ModelName']}",
    ]
