"""The ingestion, as plain functions the DAG's tasks call; nothing here imports Airflow.

- `plan`: the Params checked once, and the `RunPlan` of what a run does.
- `steps`: filter the listings, encode (one path for images and titles).
- `copy`: copy the images, in parts that several workers share, then one record of them.
- `delta`: what changed since the served index, and the build it needs (none, incremental, full).
- `load`: load the index (in parts, then made servable once), validate it, report its near-duplicates.
- `lifecycle`: publish (shrink guard, retention), clean up, roll back.
"""

from catalogue_search.ingest.copy import copy_part, copy_run_images, part_range, record_copies
from catalogue_search.ingest.delta import choose_build
from catalogue_search.ingest.lifecycle import check_shrink, clean_up, publish, rollback, served_indices
from catalogue_search.ingest.load import (
    finish_index,
    load_index,
    load_part,
    report_duplicates,
    title_vectors,
    validate_index,
)
from catalogue_search.ingest.plan import RunPlan, available_shards, check_conf, plan_run
from catalogue_search.ingest.steps import (
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
    "copy_part",
    "copy_run_images",
    "filter_shard",
    "finish_index",
    "load_index",
    "load_part",
    "part_range",
    "plan_run",
    "prepare_encoding",
    "prepare_name_encoding",
    "products",
    "publish",
    "record_copies",
    "record_embeddings",
    "record_name_embeddings",
    "report_duplicates",
    "rollback",
    "served_indices",
    "title_vectors",
    "validate_index",
]
