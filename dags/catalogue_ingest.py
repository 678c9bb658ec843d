"""Catalogue ingestion: ABO listings and images -> a searchable OpenSearch k-NN index."""

from __future__ import annotations

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTransformOperator
from airflow.sdk import Asset, Param, chain, dag, task

from catalogue_search.settings import Settings

SETTINGS = Settings.from_env()
MAX_TRANSFORM_SECONDS = 6 * 3600
INDEX_ASSET = Asset(
    name=f"catalogue-search-{SETTINGS.index_alias}",
    uri=f"opensearch://{SETTINGS.opensearch_url.split('://')[-1]}/{SETTINGS.index_alias}",
)

DOC = """
### Catalogue ingestion

Turns Amazon Berkeley Objects listings and images into a k-NN index searchable
by text and by image, then points the read alias at it.

1. **filter_shard** (one per listings shard): products with a title in the
   chosen language and a known main image; drops are counted by reason.
2. **copy_images**: server-side copy into the project bucket, skipping what is
   already there; products whose image is missing are dropped.
3. **prepare_encoding** / **encode_images** / **record_embeddings**: JSON Lines
   chunks of the images with no embedding yet for this artifact version, one
   SageMaker batch transform over them (one chunk per request, batched forward
   passes), then a check that every chunk has its output and a run report of
   the images that could not be encoded. The transform task defers while the
   job runs (no worker slot held); a Failed job fails it with SageMaker's
   FailureReason. **prepare_name_encoding** / **encode_names** /
   **record_name_embeddings** do the same for the product titles with the TEXT
   model.
4. **load_index**: a new versioned index, bulk-loaded (documents keyed by `item_id`).
5. **validate_index**: the count, sampled products holding exactly their stored
   embedding, and ANN recall@10 against exact search; a failure leaves the alias alone.
   **evaluate_index**: search quality (recall@1/5/10 and MRR per mode and product
   type, each title asked as a query) to the run report, the index `_meta` and the
   log; an index from random weights (unless CATSEARCH_ALLOW_RANDOM_WEIGHTS) or a
   new model worse than the served one (unless `allow_quality_drop`) is refused
   (docs/quality.md).
6. **swap_alias**: the shrink guard, then one atomic `_aliases` call; served
   indices beyond the retention are deleted.
7. **report_duplicates** (beside the swap): groups of near-duplicate products (same
   image id, or image vectors with cosine >= the threshold) as a JSON report in the
   run's prefix of the project bucket, counts in the log.
8. **clean_up** (teardown, runs whatever happened): removes the indices of the
   alias that never served, this run's included when it failed.

A run publishes the whole catalogue: the shards it processes plus every other
shard as last published under the alias. Trigger with Params to backfill chosen
shards (`shards: ["0", "3"]`), another language, a forced re-encode,
`allow_shrink` for an intended large shrink, or `allow_quality_drop` for an
intended quality drop of a new model. `max_products` is for trials on
another alias. Unknown conf keys fail the run at once. Roll back with the
`catalogue_rollback` DAG.
"""

PARAMS = {
    "shards": Param(
        [],
        type="array",
        items={"type": "string", "pattern": "^[0-9a-fA-F]$"},
        description="Listing shards to process (0..f); empty = every shard found. Other shards keep their "
        "published products.",
    ),
    "language_tag": Param(
        SETTINGS.language_tag,
        type="string",
        pattern="^[a-z]{2,3}(_[A-Z]{2})?$",
        description="ABO language tag of the titles to index.",
    ),
    "max_products": Param(
        0,
        type="integer",
        minimum=0,
        description="Trials only: index at most this many products (0 = all); refused on the default alias.",
    ),
    "alias": Param(
        SETTINGS.index_alias,
        type="string",
        pattern="^[a-z0-9][a-z0-9_-]*$",
        description="The read alias to point at the new index.",
    ),
    "force_reencode": Param(
        False, type="boolean", description="Encode every image again, even those that have an embedding."
    ),
    "allow_shrink": Param(
        False,
        type="boolean",
        description="Publish even when the catalogue shrinks by more than CATSEARCH_SHRINK_GUARD_PERCENT.",
    ),
    "allow_quality_drop": Param(
        False,
        type="boolean",
        description="Publish a new model even when its text->image recall@10 is below the served index's "
        "(beyond CATSEARCH_QUALITY_TOLERANCE_POINTS and the sampling margin).",
    ),
}


def _transform(task_id: str, config) -> SageMakerTransformOperator:
    """A batch transform task (images or titles): the same deferral, polling and rerun policy for both."""
    return SageMakerTransformOperator(
        task_id=task_id,
        config=config,
        aws_conn_id=SETTINGS.aws_conn_id,
        wait_for_completion=True,
        # The triggerer polls the job; no worker is held for the hours it may run.
        deferrable=True,
        check_interval=SETTINGS.transform_poll_seconds,
        max_ingestion_time=MAX_TRANSFORM_SECONDS,
        max_attempts=MAX_TRANSFORM_SECONDS // SETTINGS.transform_poll_seconds,
        # One job per run; a retry after a half-done job starts a new, timestamped one.
        check_if_job_exists=True,
        action_if_job_exists="timestamp",
    )


@dag(
    dag_id="catalogue_ingest",
    schedule=SETTINGS.schedule or None,
    catchup=False,
    max_active_runs=1,
    default_args=SETTINGS.dag_default_args(),
    tags=["catalogue-search", "ingestion", "opensearch", "sagemaker"],
    doc_md=DOC,
    params=PARAMS,
)
def catalogue_ingest():
    @task
    def plan(params=None, run_id=None, dag_run=None) -> dict:
        from catalogue_search import airflow_clients, ingest

        with airflow_clients.fail_fast():
            ingest.check_conf(dag_run.conf, PARAMS)
            settings = airflow_clients.checked_settings()
            return ingest.plan_run(
                settings,
                airflow_clients.s3(settings),
                airflow_clients.opensearch(settings),
                run_id=run_id,
                params=params,
            ).as_dict()

    @task
    def shards_of(run_plan: dict) -> list[str]:
        return run_plan["shards"]

    @task(map_index_template="{{ task.op_kwargs['shard'] }}")
    def filter_shard(run_plan: dict, shard: str) -> dict:
        from catalogue_search import airflow_clients, ingest

        settings = Settings.from_env()
        with airflow_clients.fail_fast():
            return ingest.filter_shard(
                settings, airflow_clients.s3(settings), ingest.RunPlan.from_dict(run_plan), shard
            )

    @task
    def copy_images(run_plan: dict) -> dict:
        from catalogue_search import airflow_clients, ingest

        settings = Settings.from_env()
        with airflow_clients.fail_fast():
            return ingest.copy_run_images(settings, airflow_clients.s3(settings), ingest.RunPlan.from_dict(run_plan))

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def prepare_encoding(run_plan: dict) -> dict | None:
        from catalogue_search import airflow_clients, ingest
        from catalogue_search.model_artifact import inference_image_uri

        settings = Settings.from_env()
        return ingest.prepare_encoding(
            settings,
            airflow_clients.s3(settings),
            airflow_clients.sagemaker(settings),
            ingest.RunPlan.from_dict(run_plan),
            inference_image_uri(settings),
        )

    @task(trigger_rule="none_failed")
    def record_embeddings(run_plan: dict) -> dict:
        from catalogue_search import airflow_clients, ingest

        settings = Settings.from_env()
        return ingest.record_embeddings(settings, airflow_clients.s3(settings), ingest.RunPlan.from_dict(run_plan))

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def prepare_name_encoding(run_plan: dict) -> dict | None:
        from catalogue_search import airflow_clients, ingest
        from catalogue_search.model_artifact import inference_image_uri

        settings = Settings.from_env()
        return ingest.prepare_name_encoding(
            settings,
            airflow_clients.s3(settings),
            airflow_clients.sagemaker(settings),
            ingest.RunPlan.from_dict(run_plan),
            inference_image_uri(settings),
        )

    @task(trigger_rule="none_failed")
    def record_name_embeddings(run_plan: dict) -> dict:
        from catalogue_search import airflow_clients, ingest

        settings = Settings.from_env()
        return ingest.record_name_embeddings(settings, airflow_clients.s3(settings), ingest.RunPlan.from_dict(run_plan))

    @task(trigger_rule="none_failed")
    def load_index(run_plan: dict) -> dict:
        from catalogue_search import airflow_clients, ingest

        settings = Settings.from_env()
        with airflow_clients.fail_fast():
            return ingest.load_index(
                settings,
                airflow_clients.s3(settings),
                airflow_clients.opensearch(settings),
                ingest.RunPlan.from_dict(run_plan),
            )

    @task
    def validate_index(run_plan: dict, loaded: dict) -> dict:
        from catalogue_search import airflow_clients, ingest

        settings = Settings.from_env()
        with airflow_clients.fail_fast():
            return ingest.validate_index(
                settings,
                airflow_clients.s3(settings),
                airflow_clients.opensearch(settings),
                ingest.RunPlan.from_dict(run_plan),
                loaded,
            )

    @task
    def evaluate_index(run_plan: dict, params=None) -> dict:
        from catalogue_search import airflow_clients, quality_gate

        settings = Settings.from_env()
        with airflow_clients.fail_fast():
            return quality_gate.evaluate_index(
                settings,
                airflow_clients.s3(settings),
                airflow_clients.opensearch(settings),
                index_name=run_plan["index"],
                alias=run_plan["alias"],
                report_key=f"{run_plan['prefix']}quality.json",
                allow_quality_drop=bool(params.get("allow_quality_drop", False)),
            )

    @task(outlets=[INDEX_ASSET])
    def swap_alias(run_plan: dict) -> dict:
        from catalogue_search import airflow_clients, ingest

        settings = Settings.from_env()
        with airflow_clients.fail_fast():
            return ingest.publish(
                settings,
                airflow_clients.s3(settings),
                airflow_clients.opensearch(settings),
                ingest.RunPlan.from_dict(run_plan),
            )

    # A teardown: runs whatever happened upstream (with no setup task, its trigger rule
    # ALL_DONE_SETUP_SUCCESS is ALL_DONE) and, unlike a plain ALL_DONE leaf, does not
    # turn a failed run into a successful one.
    @task
    def clean_up(params=None) -> dict:
        from catalogue_search import airflow_clients, ingest

        settings = Settings.from_env()
        with airflow_clients.fail_fast():
            return ingest.clean_up(
                settings,
                airflow_clients.s3(settings),
                airflow_clients.opensearch(settings),
                params["alias"],
            )

    @task
    def report_duplicates(run_plan: dict) -> dict:
        from catalogue_search import airflow_clients, ingest

        settings = Settings.from_env()
        return ingest.report_duplicates(
            settings,
            airflow_clients.s3(settings),
            airflow_clients.opensearch(settings),
            ingest.RunPlan.from_dict(run_plan),
        )

    run_plan = plan()
    filtered = filter_shard.partial(run_plan=run_plan).expand(shard=shards_of(run_plan))
    copied = copy_images(run_plan)
    config = prepare_encoding(run_plan)
    encode_images = _transform("encode_images", config)
    recorded = record_embeddings(run_plan)
    name_config = prepare_name_encoding(run_plan)
    encode_names = _transform("encode_names", name_config)
    names_recorded = record_name_embeddings(run_plan)
    loaded = load_index(run_plan)
    validated = validate_index(run_plan, loaded)
    evaluated = evaluate_index(run_plan)
    published = swap_alias(run_plan)
    chain(
        filtered,
        copied,
        [config, name_config],
        [encode_images, encode_names],
        [recorded, names_recorded],
        loaded,
        validated,
        evaluated,
        published,
    )
    validated >> report_duplicates(run_plan)
    published >> clean_up().as_teardown()


catalogue_ingest()
