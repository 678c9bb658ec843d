"""Serverless query endpoints (text and image encoders): deploy them, tear them down."""

from __future__ import annotations

import logging
from collections.abc import Callable

from airflow.providers.amazon.aws.operators.sagemaker import (
    SageMakerEndpointConfigOperator,
    SageMakerEndpointOperator,
    SageMakerModelOperator,
)
from airflow.providers.amazon.aws.sensors.sagemaker import SageMakerEndpointSensor
from airflow.sdk import TaskGroup, TriggerRule, chain, dag

from catalogue_search.airflow_tasks import TaskEnv, catalogue_task, dag_args, task_env
from catalogue_search.endpoints import ENCODE_TYPES
from catalogue_search.settings import Settings

SETTINGS = Settings.from_env()
log = logging.getLogger(__name__)

DEPLOY_DOC = """
### Query endpoints: deploy

One SageMaker serverless endpoint per encode type (`text`, `image`), both
serving the model.tar.gz at the configured artifact URI with a different
`ENCODE_TYPE`. **resolve_model** checks the artifact is there and finds the
(CPU) inference image; then, per encode type:

1. **prepare**: the CreateModel / CreateEndpointConfig / CreateEndpoint requests.
   Model and endpoint config are named `<endpoint>-<digest>`, the digest of the
   container, the artifact's version and the serverless sizing
   (`CATSEARCH_ENDPOINT_MEMORY_MB`, `CATSEARCH_ENDPOINT_MAX_CONCURRENCY`).
   A Failed endpoint is deleted here so it can be created again.
2. **create_model**, **create_endpoint_config**: skipped when already there.
3. **deploy_endpoint**: creates the endpoint, or updates the existing one to the
   new config (the operator falls back to UpdateEndpoint); skipped when it already
   uses this config. Never a second endpoint.
4. **wait_in_service**: until the endpoint is InService (Failed fails the task).
5. **smoke_test**: one request through the SageMaker runtime ("a red flower" as
   JSON, a small JPEG as `application/x-image`); the answer must be one embedding,
   else the task fails at once, naming the endpoint.

Superseded models and configs stay (a rollback is one UpdateEndpoint) until the
tear-down. On the local stack the local SageMaker server answers the smoke
requests with the artifact's own handler, over the same HTTP path. Tear down
with `query_endpoints_teardown` when the endpoints are idle.
"""

TEARDOWN_DOC = """
### Query endpoints: tear down

Deletes, per encode type, the endpoint (and waits until it is gone), then every
endpoint config and every model of that endpoint (`<endpoint>-<digest>`), so idle
cost is zero. Batch transform's model is not touched. What is already gone counts
as deleted: run it as often as you like. Every step runs even when an earlier one
failed; **verify_gone** then fails the run if anything is left, naming it.
"""


# --- pre_execute hooks: skip a create whose result is already there (re-deploys and retries) ---
def _skip_when(done: Callable[..., bool], reason: str) -> Callable[[dict], None]:
    """A hook that skips its task when `done(endpoints, sagemaker, config)`; `reason` is formatted with the config."""

    def hook(context) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        from catalogue_search import endpoints

        config = context["task"].config
        with task_env(context) as env:
            if done(endpoints, env.sagemaker, config):
                raise AirflowSkipException(reason.format(**config))

    return hook


_skip_existing_model = _skip_when(
    lambda endpoints, sagemaker, config: endpoints.model_exists(sagemaker, config["ModelName"]),
    "model {ModelName} already exists (its name is a digest of its content)",
)
_skip_existing_config = _skip_when(
    lambda endpoints, sagemaker, config: endpoints.endpoint_config_exists(sagemaker, config["EndpointConfigName"]),
    "endpoint config {EndpointConfigName} already exists (its name is a digest of its content)",
)
_skip_current_endpoint = _skip_when(
    lambda endpoints, sagemaker, config: endpoints.endpoint_up_to_date(sagemaker, config),
    "endpoint {EndpointName} already uses {EndpointConfigName}",
)


@dag(
    dag_id="query_endpoints_deploy",
    schedule=None,
    **dag_args(SETTINGS),
    tags=["catalogue-search", "query", "sagemaker", "endpoints"],
    doc_md=DEPLOY_DOC,
)
def query_endpoints_deploy():
    @catalogue_task()
    def resolve_model(env: TaskEnv) -> dict:
        from catalogue_search import endpoints
        from catalogue_search.model_artifact import inference_image_uri

        version = endpoints.artifact_version(env.s3, env.settings)  # no artifact: fails at once
        image_uri = inference_image_uri(env.settings, instance_type=endpoints.SERVERLESS_IMAGE_INSTANCE_TYPE)
        return {"image_uri": image_uri, "artifact_version": version}

    @catalogue_task(multiple_outputs=True)
    def prepare(env: TaskEnv, model: dict, encode_type: str) -> dict:
        from catalogue_search import endpoints

        plan = endpoints.deploy_plan(env.settings, encode_type, model["image_uri"], model["artifact_version"])
        action = endpoints.endpoint_action(env.sagemaker, plan.endpoint)  # still busy: retried with backoff
        log.info("endpoint %s -> %s: %s", plan.endpoint_name, plan.model["ModelName"], action)
        return {**plan.as_dict(), "endpoint_action": action}

    @catalogue_task()
    def smoke_test(env: TaskEnv, endpoint_name: str, encode_type: str) -> dict:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        from catalogue_search import endpoints

        runtime = AwsBaseHook(aws_conn_id=env.settings.aws_conn_id, client_type="sagemaker-runtime").get_conn()
        payload, content_type = endpoints.smoke_payload(encode_type)
        inference_id = endpoints.smoke_inference_id(env.run_id, encode_type, env.context["ti"].try_number)
        # A wrong answer is a SmokeTestError: permanent, no retry.
        return endpoints.smoke_test(runtime, endpoint_name, payload, content_type, inference_id=inference_id)

    model = resolve_model()
    for encode_type in ENCODE_TYPES:
        with TaskGroup(group_id=encode_type.lower()):
            plan = prepare(model, encode_type)
            create_model = SageMakerModelOperator(
                task_id="create_model",
                config=plan["model"],
                aws_conn_id=SETTINGS.aws_conn_id,
                pre_execute=_skip_existing_model,
            )
            create_endpoint_config = SageMakerEndpointConfigOperator(
                task_id="create_endpoint_config",
                config=plan["endpoint_config"],
                aws_conn_id=SETTINGS.aws_conn_id,
                pre_execute=_skip_existing_config,
                trigger_rule=TriggerRule.NONE_FAILED,
            )
            deploy_endpoint = SageMakerEndpointOperator(
                task_id="deploy_endpoint",
                config=plan["endpoint"],
                # "create" falls back to UpdateEndpoint when the endpoint exists (see the operator's source).
                operation="create",
                wait_for_completion=False,
                aws_conn_id=SETTINGS.aws_conn_id,
                pre_execute=_skip_current_endpoint,
                trigger_rule=TriggerRule.NONE_FAILED,
            )
            # Rescheduled between pokes (no worker held); each poke has the default task time limit.
            wait_in_service = SageMakerEndpointSensor(
                task_id="wait_in_service",
                endpoint_name=plan["endpoint_name"],
                aws_conn_id=SETTINGS.aws_conn_id,
                mode="reschedule",
                poke_interval=SETTINGS.endpoint_poll_seconds,
                timeout=SETTINGS.timeout("endpoint").total_seconds(),
                trigger_rule=TriggerRule.NONE_FAILED,
            )
            smoke = smoke_test(plan["endpoint_name"], encode_type)
            chain(plan, create_model, create_endpoint_config, deploy_endpoint, wait_in_service, smoke)


@dag(
    dag_id="query_endpoints_teardown",
    schedule=None,
    **dag_args(SETTINGS),
    tags=["catalogue-search", "query", "sagemaker", "endpoints", "cleanup"],
    doc_md=TEARDOWN_DOC,
)
def query_endpoints_teardown():
    @catalogue_task(trigger_rule=TriggerRule.ALL_DONE)
    def delete_endpoint(env: TaskEnv, encode_type: str) -> bool:
        from catalogue_search import endpoints

        return endpoints.delete_endpoint(
            env.sagemaker, env.settings.endpoint_name(encode_type), wait_delay=env.settings.endpoint_poll_seconds
        )

    @catalogue_task(trigger_rule=TriggerRule.ALL_DONE)
    def delete_endpoint_configs(env: TaskEnv, encode_type: str) -> list[str]:
        from catalogue_search import endpoints

        return endpoints.delete_endpoint_configs(env.sagemaker, endpoints.resource_prefix(env.settings, encode_type))

    @catalogue_task(trigger_rule=TriggerRule.ALL_DONE)
    def delete_models(env: TaskEnv, encode_type: str) -> list[str]:
        from catalogue_search import endpoints

        return endpoints.delete_models(env.sagemaker, endpoints.resource_prefix(env.settings, encode_type))

    @catalogue_task(trigger_rule=TriggerRule.ALL_DONE)
    def verify_gone(env: TaskEnv) -> None:
        """Fails the run if anything is left (the run's state follows its last task, which runs anyway)."""
        from catalogue_search import endpoints
        from catalogue_search.errors import PermanentError

        left = endpoints.leftovers(env.sagemaker, env.settings)
        if left:
            raise PermanentError(f"still there after the tear-down: {', '.join(left)}")

    deleted = []
    for encode_type in ENCODE_TYPES:
        with TaskGroup(group_id=encode_type.lower()) as group:
            chain(delete_endpoint(encode_type), delete_endpoint_configs(encode_type), delete_models(encode_type))
        deleted.append(group)
    chain(deleted, verify_gone())


query_endpoints_deploy()
query_endpoints_teardown()
