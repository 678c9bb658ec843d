"""Catalogue ingestion: ABO listings and images -> a searchable OpenSearch k-NN index."""

from __future__ import annotations

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTransformOperator
from airflow.sdk import Param, chain, dag

from catalogue_search.airflow_tasks import (
    TaskEnv,
    catalogue_task,
    dag_args,
    index_asset_alias,
    ingest_schedule,
    sagemaker_job_args,
)
from catalogue_search.settings import Settings

SETTINGS = Settings.from_env()

DOC = """
### Catalogue ingestion

Turns Amazon Berkeley Objects listings and images into a k-NN index searchable
by text and by image, then points the read alias at it.

1. **filter_shard** (one per listings shard): products with a title in the
   chosen language and a known main image; drops are counted by reason.
2. **copy_images** (one per part, `CATSEARCH_SPLIT_PARTS`): server-side copy into
   the project bucket of a range of the images, skipping what is already there;
   products whose image is missing are dropped. **record_copies** joins the parts.
3. **prepare_encoding** / **encode_images** / **record_embeddings**: JSON Lines
   chunks of the images with no embedding yet for this artifact version, one
   SageMaker batch transform over them (one chunk per request, batched forward
   passes), then a check that every chunk has its output and a run report of
   the images that could not be encoded. The transform task defers while the
   job runs (no worker slot held); a Failed job fails it with SageMaker's
   FailureReason. **prepare_name_encoding** / **encode_names** /
   **record_name_embeddings** do the same for the product titles with the TEXT
   model.
4. **choose_build**: compares what the run's index would hold (artifact version,
   mapping, a digest per product) with what the served index holds. Nothing changed:
   the run stops here and says so (no index, no publish; the alias, the served index
   and the retention stay as they are). Only products changed, by at most
   `CATSEARCH_INCREMENTAL_MAX_CHANGE_PERCENT`: the run's index is a `_clone` of the
   served one, the removed products are deleted from it, and the load parts upsert
   the added and updated ones only. Otherwise (a new artifact version or mapping, a
   larger change, the `full_rebuild` Param) a full build (docs/across-weeks.md).
   **load_index** (one per part): the new versioned index, bulk-loaded from a range of
   the embedding chunks (documents keyed by `item_id`, so parts and retries never
   duplicate); **finish_index** gives it its serving settings.
5. **validate_index**: the count, sampled products holding exactly their stored
   embedding, and ANN recall@10 against exact search; a failure leaves the alias alone.
   **evaluate_index**: search quality (recall@1/5/10 and MRR per mode and product
   type, each title asked as a query) to the run report, the index `_meta` and the
   log; an index from random weights (unless CATSEARCH_ALLOW_RANDOM_WEIGHTS) or a
   new model worse than the served one (unless `allow_quality_drop`) is refused
   (docs/quality.md).
6. **swap_alias**: the shrink guard, then one atomic `_aliases` call; served
   indices beyond the retention are deleted. Records an event of the alias's
   index Asset (`catalogue-search-index/<alias>`, through the asset alias
   `catalogue-search-index`) naming the alias and the index it now serves.
7. **report_duplicates** (beside the swap): groups of near-duplicate products (same
   image id, or image vectors with cosine >= the threshold, found through the k-NN
   index) as a JSON report in the run's prefix of the project bucket, counts in the
   log; after an incremental build only the changed products are checked.
8. **clean_up** (teardown, runs whatever happened): removes the indices of the
   alias that never served, this run's included when it failed.

Scheduled by `CATSEARCH_SCHEDULE` and by the model Asset
(`catalogue-search-model/<model>`), whose event `catalogue_finetune` records when it
promotes a fine-tuned model: the re-index that encodes the catalogue with it.

A run publishes the whole catalogue: the shards it processes plus every other
shard as last published under the alias. Trigger with Params to backfill chosen
shards (`shards: ["0", "3"]`), another language, a forced re-encode,
`allow_shrink` for an intended large shrink, or `allow_quality_drop` for an
intended quality drop of a new model. `max_products` is for trials on
another alias. Unknown conf keys fail the run at once. Roll back with the
`catalogue_rollback` DAG. Every task has a time limit (`CATSEARCH_*_TIMEOUT_S`),
the run one of `CATSEARCH_INGEST_DAGRUN_TIMEOUT_S`: see docs/pipeline.md.
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
    "full_rebuild": Param(
        False,
        type="boolean",
        description="Build the index in full even when nothing or only a few products changed.",
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
    return SageMakerTransformOperator(task_id=task_id, config=config, **sagemaker_job_args(SETTINGS, "transform"))


@dag(
    dag_id="catalogue_ingest",
    schedule=ingest_schedule(SETTINGS),
    **dag_args(SETTINGS, "ingest_dagrun"),
    tags=["catalogue-search", "ingestion", "opensearch", "sagemaker"],
    doc_md=DOC,
    params=PARAMS,
)
def catalogue_ingest():
    @catalogue_task()
    def plan(env: TaskEnv) -> dict:
        from catalogue_search import ingest

        ingest.check_conf(env.conf, PARAMS)
        return ingest.plan_run(env.settings, env.s3, env.opensearch, run_id=env.run_id, params=env.params).as_dict()

    @catalogue_task()
    def shards_of(env: TaskEnv, run_plan: dict) -> list[str]:
        return run_plan["shards"]

    @catalogue_task("filter", map_index_template="{{ task.op_kwargs['shard'] }}")
    def filter_shard(env: TaskEnv, run_plan: dict, shard: str) -> dict:
        from catalogue_search import ingest

        return ingest.filter_shard(env.settings, env.s3, env.plan, shard)

    @catalogue_task()
    def parts_of(env: TaskEnv, run_plan: dict) -> list[int]:
        return list(range(run_plan["parts"]))

    @catalogue_task("copy", map_index_template="{{ task.op_kwargs['part'] }}")
    def copy_images(env: TaskEnv, run_plan: dict, part: int) -> dict:
        from catalogue_search import ingest

        return ingest.copy_part(env.settings, env.s3, env.plan, part)

    @catalogue_task()
    def record_copies(env: TaskEnv, run_plan: dict, parts: list[dict]) -> dict:
        from catalogue_search import ingest

        return ingest.record_copies(env.settings, env.s3, env.plan, list(parts))

    @catalogue_task(short_circuit=True, ignore_downstream_trigger_rules=False)
    def prepare_encoding(env: TaskEnv, run_plan: dict) -> dict | None:
        from catalogue_search import ingest
        from catalogue_search.model_artifact import inference_image_uri

        return ingest.prepare_encoding(env.settings, env.s3, env.sagemaker, env.plan, inference_image_uri(env.settings))

    @catalogue_task(trigger_rule="none_failed")
    def record_embeddings(env: TaskEnv, run_plan: dict) -> dict:
        from catalogue_search import ingest

        return ingest.record_embeddings(env.settings, env.s3, env.plan)

    @catalogue_task(short_circuit=True, ignore_downstream_trigger_rules=False)
    def prepare_name_encoding(env: TaskEnv, run_plan: dict) -> dict | None:
        from catalogue_search import ingest
        from catalogue_search.model_artifact import inference_image_uri

        image_uri = inference_image_uri(env.settings)
        return ingest.prepare_name_encoding(env.settings, env.s3, env.sagemaker, env.plan, image_uri)

    @catalogue_task(trigger_rule="none_failed")
    def record_name_embeddings(env: TaskEnv, run_plan: dict) -> dict:
        from catalogue_search import ingest

        return ingest.record_name_embeddings(env.settings, env.s3, env.plan)

    @catalogue_task("load", short_circuit=True, ignore_downstream_trigger_rules=False, trigger_rule="none_failed")
    def choose_build(env: TaskEnv, run_plan: dict) -> dict | None:
        from catalogue_search import ingest

        full = bool(env.params.get("full_rebuild", False))
        build = ingest.choose_build(env.settings, env.s3, env.opensearch, env.plan, full_rebuild=full)
        return None if build["mode"] == "noop" else build  # nothing changed: the rest of the run is skipped

    @catalogue_task("load", map_index_template="{{ task.op_kwargs['part'] }}")
    def load_index(env: TaskEnv, run_plan: dict, part: int) -> dict:
        from catalogue_search import ingest

        return ingest.load_part(env.settings, env.s3, env.opensearch, env.plan, part)

    @catalogue_task("load")
    def finish_index(env: TaskEnv, run_plan: dict, parts: list[dict]) -> dict:
        from catalogue_search import ingest

        return ingest.finish_index(env.settings, env.s3, env.opensearch, env.plan, list(parts))

    @catalogue_task("validate")
    def validate_index(env: TaskEnv, run_plan: dict, loaded: dict) -> dict:
        from catalogue_search import ingest

        return ingest.validate_index(env.settings, env.s3, env.opensearch, env.plan, loaded)

    @catalogue_task("validate")
    def evaluate_index(env: TaskEnv, run_plan: dict) -> dict:
        from catalogue_search import quality_gate

        return quality_gate.evaluate_index(
            env.settings,
            env.s3,
            env.opensearch,
            index_name=run_plan["index"],
            alias=run_plan["alias"],
            report_key=f"{run_plan['prefix']}quality.json",
            allow_quality_drop=bool(env.params.get("allow_quality_drop", False)),
        )

    @catalogue_task(outlets=[index_asset_alias()])
    def swap_alias(env: TaskEnv, run_plan: dict) -> dict:
        from catalogue_search import ingest

        published = ingest.publish(env.settings, env.s3, env.opensearch, env.plan)
        env.announce_index(published["alias"], published["index"], "publish", previous=published["previous"])
        return published

    # A teardown: runs whatever happened upstream (with no setup task, its trigger rule
    # ALL_DONE_SETUP_SUCCESS is ALL_DONE) and, unlike a plain ALL_DONE leaf, does not
    # turn a failed run into a successful one.
    @catalogue_task()
    def clean_up(env: TaskEnv) -> dict:
        from catalogue_search import ingest

        return ingest.clean_up(env.settings, env.s3, env.opensearch, env.params["alias"])

    @catalogue_task("validate")
    def report_duplicates(env: TaskEnv, run_plan: dict) -> dict:
        from catalogue_search import ingest

        return ingest.report_duplicates(env.settings, env.s3, env.opensearch, env.plan)

    run_plan = plan()
    filtered = filter_shard.partial(run_plan=run_plan).expand(shard=shards_of(run_plan))
    parts = parts_of(run_plan)
    copy_parts = copy_images.partial(run_plan=run_plan).expand(part=parts)
    copied = record_copies(run_plan, copy_parts)
    config = prepare_encoding(run_plan)
    encode_images = _transform("encode_images", config)
    recorded = record_embeddings(run_plan)
    name_config = prepare_name_encoding(run_plan)
    encode_names = _transform("encode_names", name_config)
    names_recorded = record_name_embeddings(run_plan)
    built = choose_build(run_plan)
    load_parts = load_index.partial(run_plan=run_plan).expand(part=parts)
    loaded = finish_index(run_plan, load_parts)
    validated = validate_index(run_plan, loaded)
    evaluated = evaluate_index(run_plan)
    published = swap_alias(run_plan)
    chain(
        filtered,
        copy_parts,
        copied,
        [config, name_config],
        [encode_images, encode_names],
        [recorded, names_recorded],
        built,
        load_parts,
        loaded,
        validated,
        evaluated,
        published,
    )
    validated >> report_duplicates(run_plan)
    published >> clean_up().as_teardown()


catalogue_ingest()
