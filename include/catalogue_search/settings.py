"""One typed settings object for the whole project.

Every name a task, a CLI command or a test needs (buckets, index alias, model,
endpoints) comes from here. Values are read from environment variables. Production code has no local
defaults: the settings that name a deployment (bucket, role, OpenSearch,
query encoder) are empty unless set, and `check()` (called by every task before
its work, and by the CLI) fails with one message naming every one missing or invalid.
The local stack's values live in `tools/catalogue_search_dev/localenv.py`,
which `./dev` and `docker-compose.yaml` export.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from catalogue_search.errors import InvalidValueError

ENV_PREFIX = "CATSEARCH_"


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


@dataclass(frozen=True)
class Settings:
    """Project settings. Field `foo_bar` is read from `CATSEARCH_FOO_BAR`."""

    # --- AWS / local stand-ins -------------------------------------------------
    region: str = "us-east-1"
    # Endpoint of the S3 stand-in (moto). Empty means real AWS.
    aws_endpoint_url: str = ""
    # Endpoint of the SageMaker stand-in (control plane and runtime), the local SageMaker server.
    # Empty means aws_endpoint_url.
    sagemaker_endpoint_url: str = ""
    aws_conn_id: str = "aws_default"
    # Attempts per AWS call, first included (botocore's "standard" retry mode; s3util.client_config).
    aws_max_attempts: int = 5

    # --- Source catalogue (ABO layout) ---------------------------------------
    # The public ABO bucket in production; a moto bucket of the same name locally.
    source_bucket: str = "amazon-berkeley-objects"
    source_prefix: str = ""

    # --- Project bucket ------------------------------------------------------
    bucket: str = ""
    images_prefix: str = "images/small/"
    manifests_prefix: str = "manifests/"
    embeddings_prefix: str = "embeddings/"
    models_prefix: str = "models/"
    # The catalogue's state across runs (per-shard product lists, served indices), keyed by alias.
    state_prefix: str = "state/"

    # --- Model ---------------------------------------------------------------
    model_name: str = "ViT-B-32"
    # open_clip pretrained tag packaged into the artifact ("" = random weights).
    model_pretrained: str = "openai"
    # Override the model.tar.gz location (default: s3://{bucket}/{models_prefix}{model_name}/model.tar.gz).
    model_artifact_uri: str = ""
    # Override the inference container image (default: looked up with the sagemaker SDK).
    inference_image_uri: str = ""
    framework_version: str = "2.6"
    py_version: str = "py312"
    sagemaker_role_arn: str = ""

    # --- Fine-tuning (catalogue_finetune, docs/finetune.md) -------------------
    # The training image (default: SageMaker's PyTorch training image, looked up with the sagemaker SDK).
    training_image_uri: str = ""
    training_instance_type: str = "ml.g5.xlarge"
    # Spot capacity for the training job (resumes from /opt/ml/checkpoints after an interruption).
    training_use_spot: bool = False
    # The fine-tune DAG's schedule ("" = triggered by hand only).
    finetune_schedule: str = ""

    # --- Batch transform -----------------------------------------------------
    transform_instance_type: str = "ml.g4dn.xlarge"
    transform_instance_count: int = 1
    transform_max_concurrent: int = 4
    transform_max_payload_mb: int = 6
    # Images per transform request (one JSON Lines chunk object = one request = one `.out`).
    transform_chunk_size: int = 256
    # Rows per forward pass inside the handler (MAX_BATCH_SIZE of the container).
    transform_batch_size: int = 64
    # ModelClientConfig.InvocationsTimeoutInSeconds (1..3600) for one chunk request.
    transform_invocation_timeout_s: int = 600
    # How often the deferred transform task asks SageMaker whether the job is done.
    transform_poll_seconds: int = 60

    # --- Query endpoints -----------------------------------------------------
    endpoint_prefix: str = "catalogue-search"
    endpoint_memory_mb: int = 6144
    endpoint_max_concurrency: int = 5
    # How often the deploy asks whether an endpoint is InService, and the tear-down whether it is gone.
    endpoint_poll_seconds: int = 30
    # "local": encode queries in-process with the same handler; "endpoint": the SageMaker runtime.
    query_encoder: str = ""
    # The largest query image (the search page's upload), in bytes: at most 4,000,000, the most a
    # serverless endpoint accepts in one request; larger uploads are refused before any encoding.
    max_query_image_bytes: int = 4_000_000

    # --- OpenSearch ----------------------------------------------------------
    opensearch_url: str = ""
    # "none", "basic" (user/password below) or "sigv4" (AWS credentials of the process).
    opensearch_auth: str = "none"
    opensearch_user: str = ""
    opensearch_password: str = field(default="", repr=False)
    # CA bundle (PEM) that signed an https node's certificate ("" = the system's CAs).
    opensearch_ca_certs: str = ""
    opensearch_conn_id: str = "opensearch_default"
    index_alias: str = "products"
    index_shards: int = 1
    index_replicas: int = 0
    # Loading: documents per _bulk request, and requests in flight (one keeps one
    # of the node's write threads building the HNSW graph; BENCHMARKS.md "Bulk load").
    bulk_chunk_size: int = 500
    bulk_threads: int = 2
    # How many earlier served indices (former alias targets) to keep for rollback.
    index_retention: int = 1
    # Refuse to move the alias when the new index holds more than this percentage
    # fewer documents than the live one (the `allow_shrink` Param overrides it for one run).
    shrink_guard_percent: int = 10
    # A run whose products changed by at most this percentage of the served catalogue (added + updated
    # + removed) builds its index from a clone of the served one and applies the delta; above, it
    # rebuilds in full (docs/across-weeks.md).
    incremental_max_change_percent: float = 20.0
    # Validation: products whose indexed vector must equal their stored embedding
    # (exact, filtered k-NN), and queries of the ANN recall@10 check against exact search.
    validation_sample: int = 20
    recall_sample: int = 50
    # The lowest recall@10 (ANN vs exact cosine search) an index may publish with, in percent.
    min_recall_percent: int = 90
    # HNSW graph of the k-NN field (Lucene engine), and the query-time candidate
    # list. Chosen from the measured trade-off in BENCHMARKS.md (150,000 x 512):
    # with Lucene, a query's `k` is also its candidate-list size (ef_search), so
    # every query asks for max(page, knn_candidates) neighbours and keeps the page.
    knn_m: int = 16
    knn_ef_construction: int = 100
    knn_candidates: int = 75
    # Search quality (the evaluate_index step, docs/quality.md): titles of a seeded sample of this many
    # products are asked in every mode (0 = every product); a new model may publish when its text -> image
    # recall@10 is at most this many percentage points below the served index's, beyond the sampling margin.
    quality_sample: int = 1000
    quality_seed: int = 0
    quality_tolerance_points: float = 2.0
    # Publish an index encoded by a model artifact with random weights (the local stack sets it; docs/quality.md).
    allow_random_weights: bool = False
    # Near-duplicates: two products whose image vectors have cosine >= this are one
    # product for hit folding and the per-run duplicate report (same image id: always).
    duplicate_cosine_threshold: float = 0.98
    # Rows per block of the duplicate report's blocked matmul (memory ~ 4 * block^2 bytes).
    duplicate_block_rows: int = 4096
    # Above this many products the report asks the run's k-NN index for each image's neighbours
    # (cost ~ images x log(images)) instead of comparing every pair (images^2); `./dev bench duplicates`
    # compares the two. k: the neighbours each image asks for first (4x more while all k are near).
    duplicate_exact_max_products: int = 20000
    duplicate_neighbours: int = 8

    # --- DAGs ----------------------------------------------------------------
    dag_owner: str = "catalogue-search"
    task_retries: int = 2
    retry_delay_seconds: int = 20
    max_retry_delay_seconds: int = 600
    # Time limits, in seconds. Each task's `execution_timeout` is the one of its kind of
    # work (docs/pipeline.md lists which task has which), so a hung S3, OpenSearch or
    # SageMaker call ends there and the task is retried instead of holding a worker slot
    # forever. Sized at 10x or more of the full-size run's figures in BENCHMARKS.md.
    task_timeout_s: int = 1800  # bookkeeping: plan, prepare/record, swap, clean-up, rollback, endpoint calls
    filter_timeout_s: int = 1800  # filter_shard: one listings shard and images.csv (about 1-11 s)
    copy_timeout_s: int = 3 * 3600  # copy_images: every image of the catalogue (851 s at 145,445)
    transform_timeout_s: int = 6 * 3600  # encode_images / encode_names: the job, polled while deferred
    load_timeout_s: int = 3 * 3600  # load_index: the bulk load and HNSW build (266 s quiet, ~45 min loaded)
    validate_timeout_s: int = 3600  # validate_index, report_duplicates (7 s, 213 s), the smoke test
    training_timeout_s: int = 12 * 3600  # train_model: the fine-tune's training job, polled while deferred
    endpoint_timeout_s: int = 2700  # wait_in_service: an endpoint reaching InService
    # A run that has not finished by then fails (and stops holding its max_active_runs slot).
    ingest_dagrun_timeout_s: int = 24 * 3600
    finetune_dagrun_timeout_s: int = 24 * 3600  # catalogue_finetune: export, training job, evaluation
    dagrun_timeout_s: int = 3 * 3600  # every other DAG

    # --- Ingestion -----------------------------------------------------------
    schedule: str = "@weekly"
    # The first day the schedule counts from (ISO date, UTC). In the past, an unpaused DAG runs its
    # latest weekly slot at once; with catchup off, only that one (docs/cluster.md).
    start_date: str = "2025-01-01"
    language_tag: str = "en_US"
    copy_workers: int = 16
    # copy_images and load_index run as this many mapped tasks (parts of the images, ranges of the
    # embedding chunks), so several workers share them (docs/cluster.md); the cluster stack sets 4.
    split_parts: int = 1

    # --- Local caches ----------------------------------------------------------
    # Where extracted model artifacts are cached ("" = ~/.cache/catalogue-search/models).
    model_cache_dir: str = ""

    # ---------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `CATSEARCH_*` variables, then apply keyword overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_env_name(f.name))
            if raw is None:
                continue
            values[f.name] = _coerce(f, raw)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def env_names(cls) -> set[str]:
        """Every environment variable the settings read."""
        return {_env_name(f.name) for f in fields(cls)}

    def missing(self) -> list[str]:
        """The environment variables of required settings that are not set."""
        return [_env_name(name) for name in REQUIRED if not str(getattr(self, name)).strip()]

    def check(self) -> Settings:
        """Fail closed: raise one `SettingsError` naming every missing or invalid setting."""
        problems = [f"{name} is not set" for name in self.missing()]
        problems += [
            f"{_env_name(name)}={getattr(self, name)} must be at least 1"
            for name in TIMEOUTS
            if getattr(self, name) < 1
        ]
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value and value not in allowed:
                problems.append(f"{_env_name(name)}={value!r} is not one of {', '.join(allowed)}")
        if problems:
            raise SettingsError(
                "catalogue-search is not configured: " + "; ".join(problems) + " (see docs/settings.md)"
            )
        return self

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # --- Derived names (one place for every S3 key and resource name) --------
    @property
    def model_cache(self) -> Path:
        return Path(self.model_cache_dir) if self.model_cache_dir else default_model_cache()

    @property
    def model_slug(self) -> str:
        """The model name as it appears in S3 keys, index names and job names."""
        return _slug(self.model_name)

    @property
    def artifact_uri(self) -> str:
        if self.model_artifact_uri:
            return self.model_artifact_uri
        return f"s3://{self.bucket}/{self.models_prefix}{self.model_slug}/model.tar.gz"

    @property
    def start_datetime(self):
        """`start_date` as an aware UTC datetime (the DAGs' `start_date`)."""
        from datetime import date, datetime, timezone

        try:
            day = date.fromisoformat(self.start_date)
        except ValueError as exc:
            raise SettingsError(f"{_env_name('start_date')}={self.start_date!r} is not an ISO date") from exc
        return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)

    def run_prefix(self, run_key: str) -> str:
        return f"{self.manifests_prefix}{_slug(run_key)}/"

    def sagemaker_model_name(self, encode_type: str) -> str:
        return f"{self.endpoint_prefix}-{self.model_slug}-{encode_type.lower()}"

    def endpoint_name(self, encode_type: str) -> str:
        return self.sagemaker_model_name(encode_type)

    def dag_default_args(self) -> dict[str, Any]:
        """Owner, retry policy (exponential backoff) and time limit shared by every task of every DAG."""
        return {
            "owner": self.dag_owner,
            "retries": self.task_retries,
            "retry_delay": timedelta(seconds=self.retry_delay_seconds),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(seconds=self.max_retry_delay_seconds),
            "execution_timeout": self.timeout("task"),
        }

    def timeout(self, kind: str) -> timedelta:
        """The time limit `<kind>_timeout_s` ("task", "load", "ingest_dagrun", ...) as a timedelta."""
        name = f"{kind}_timeout_s"
        if name not in TIMEOUTS:
            raise KeyError(f"no time limit {name!r}; the settings have {', '.join(sorted(TIMEOUTS))}")
        return timedelta(seconds=getattr(self, name))

    def endpoint_url(self, service: str = "") -> str:
        """Where boto3 reaches `service` ("" = real AWS): SageMaker's own stand-in, else the S3 one."""
        if service in SAGEMAKER_SERVICES and self.sagemaker_endpoint_url:
            return self.sagemaker_endpoint_url
        return self.aws_endpoint_url

    def boto3_kwargs(self, service: str = "") -> dict[str, Any]:
        """`boto3.client(service, **kwargs)` arguments: region, and the local endpoint of `service` if any."""
        from catalogue_search.s3util import client_config

        config = client_config(self.copy_workers, self.aws_max_attempts)
        kwargs: dict[str, Any] = {"region_name": self.region, "config": config}
        if self.endpoint_url(service):
            kwargs["endpoint_url"] = self.endpoint_url(service)
        return kwargs


class SettingsError(InvalidValueError):
    """A required setting is missing or has a value the code cannot use."""


# The time limits (`timeout(kind)`), in seconds.
TIMEOUTS = tuple(
    f.name for f in fields(Settings) if f.name.endswith("_timeout_s") and f.name != "transform_invocation_timeout_s"
)
# Settings with no safe default: a deployment must name them.
REQUIRED = ("bucket", "sagemaker_role_arn", "opensearch_url", "query_encoder")
CHOICES = {"query_encoder": ("local", "endpoint")}
# boto3 service names that the SageMaker endpoint setting applies to.
SAGEMAKER_SERVICES = ("sagemaker", "sagemaker-runtime")


def default_model_cache() -> Path:
    return Path(os.environ.get("CATSEARCH_MODEL_CACHE_DIR") or Path.home() / ".cache" / "catalogue-search" / "models")


def _slug(text: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "int":
        try:
            return int(raw)
        except ValueError as exc:
            raise SettingsError(f"{_env_name(f.name)}={raw!r} is not a whole number") from exc
    if kind == "float":
        try:
            return float(raw)
        except ValueError as exc:
            raise SettingsError(f"{_env_name(f.name)}={raw!r} is not a number") from exc
    if kind == "bool":
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return raw


def boto3_client(service: str, settings: Settings | None = None):
    """A boto3 client for `service` that honours the local endpoint settings."""
    import boto3

    settings = settings or Settings.from_env()
    return boto3.client(service, **settings.boto3_kwargs(service))
