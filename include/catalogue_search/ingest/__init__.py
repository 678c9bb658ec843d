"""The ingestion, as plain functions the DAG's tasks call; nothing here imports Airflow.

- `plan`: the Params checked once, and the `RunPlan` of what a run does.
- `steps`: filter the listings, copy the images, encode (one path for images and titles).
- `delta`: what changed since the served index, and the build it needs (none, incremental, full).
- `load`: load the index, validate it, report its near-duplicates.
- `lifecycle`: publish (shrink guard, retention), clean up, roll back.
"""

from catalogue_search.ingest.delta import choose_build
from catalogue_search.ingest.lifecycle import check_shrink, clean_up, publish, rollback, served_indices
from catalogue_search.ingest.load import load_index, report_duplicates, title_vectors, validate_index
from catalogue_search.ingest.plan import RunPlan, available_shards, check_conf, plan_run
from catalogue_search.ingest.steps import (
    copy_run_images,
    filter_shard,
    prepare_encoding,
    prepare_name_encoding,
    products,
    record_embeddings,
    record_name_embeddings,
)

__all__ = [
    "RunPlan",
    "available_shards",
    "check_conf",
    "check_shrink",
    "choose_build",
    "clean_up",
    "copy_run_images",
    "filter_shard",
    "load_index",
    "plan_run",
    "prepare_encoding",
    "prepare_name_encoding",
    "products",
    "publish",
    "record_embeddings",
    "record_name_embeddings",
    "report_duplicates",
    "rollback",
    "served_indices",
    "title_vectors",
    "validate_index",
]
