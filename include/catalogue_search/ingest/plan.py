"""Planning a run: the Params checked once, and what the run will do fixed in a `RunPlan`.

Bad input fails here, clearly, before any work. The plan names every S3 path
the run writes (keyed by the run) and the published state it builds on.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from catalogue_search import index, state
from catalogue_search.errors import PermanentError
from catalogue_search.s3util import list_objects
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """What one run does: decided once, from the run id and the Params."""

    run_key: str
    shards: list[str]
    language_tag: str
    max_products: int | None
    alias: str
    force_reencode: bool
    index: str
    prefix: str
    # The published state this run builds on: the index the alias served when the run was planned,
    # and the shards this run takes from it unchanged (every shard it does not process itself).
    base_index: str | None = None
    base_shards: list[str] = field(default_factory=list)
    allow_shrink: bool = False
    # copy_images and load_index run in this many mapped parts (`Settings.split_parts`).
    parts: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_run(cls, settings: Settings, run_id: str, shards: list[str] | None = None) -> RunPlan:
        """A plan with the default Params for `run_id` (shard 0 unless given), named as `plan_run` names it:
        for notebooks, tests and benchmarks that call the steps without a DAG run."""
        run_key = f"{settings.model_slug}/{run_id}"
        return cls(
            run_key=run_key,
            shards=list(shards or ["0"]),
            language_tag=settings.language_tag,
            max_products=None,
            alias=settings.index_alias,
            force_reencode=False,
            index=index.index_name(settings.index_alias, settings.model_slug, run_key),
            prefix=settings.run_prefix(run_id),
            parts=max(1, settings.split_parts),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        return cls(**data)

    @property
    def products_key(self) -> str:
        return f"{self.prefix}products.jsonl"

    def shard_key(self, shard: str) -> str:
        return f"{self.prefix}shards/listings_{shard}.jsonl"

    def copy_part_key(self, part: int, suffix: str) -> str:
        """Where part `part` of the split copy keeps its products (".jsonl") or its ledger (".ledger.json.gz")."""
        return f"{self.prefix}copy/part-{part:03d}-of-{self.parts:03d}{suffix}"

    @property
    def duplicates_key(self) -> str:
        return f"{self.prefix}duplicates.json"


_SHARD = re.compile(r"listings_([0-9a-f])\.json\.gz$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")


def available_shards(s3, settings: Settings) -> list[str]:
    keys = list_objects(s3, settings.source_bucket, f"{settings.source_prefix}listings/metadata/")
    return sorted(m.group(1) for k in keys if (m := _SHARD.search(k)))


def check_conf(conf: dict[str, Any] | None, valid: Iterable[str]) -> None:
    """Reject conf keys that are not Params (a misspelt `shard` must not index every shard)."""
    unknown = sorted(set(conf or {}) - set(valid))
    if unknown:
        raise PermanentError(
            f"unknown conf key(s) {', '.join(map(repr, unknown))}: valid Params are {', '.join(sorted(valid))}"
        )


def plan_run(
    settings: Settings,
    s3,
    client=None,
    *,
    run_id: str,
    params: dict[str, Any],
    logger: logging.Logger = log,
) -> RunPlan:
    """Validate the Params and fix what this run will do. Bad input fails here, clearly, before any work.

    With an OpenSearch `client`, the run builds on the published state of the
    index the alias serves now: the shards it does not process come from there.
    """
    language = str(params.get("language_tag") or settings.language_tag)
    if not _LANGUAGE.match(language):
        raise PermanentError(f"language_tag {language!r} is not an ABO language tag such as en_US")
    alias = str(params.get("alias") or settings.index_alias)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", alias):
        raise PermanentError(f"alias {alias!r} must be lower-case letters, digits, '-' or '_'")
    max_products = params.get("max_products")
    if max_products in ("", 0, None):
        max_products = None
    elif int(max_products) < 0:
        raise PermanentError(f"max_products must be positive, got {max_products}")
    if max_products and alias == settings.index_alias:
        raise PermanentError(
            f"max_products={max_products} is for trials and would publish a partial catalogue to the default "
            f'alias {alias!r}: trigger again with another alias (e.g. {{"alias": "{alias}-trial"}}) '
            "or without max_products"
        )
    run_key = f"{settings.model_slug}/{run_id}"
    name = index.index_name(alias, settings.model_slug, run_key)
    if len(name.encode()) > index.MAX_INDEX_NAME_BYTES:
        raise PermanentError(
            f"alias {alias!r} is too long: its index names ({name[:40]}..., {len(name.encode())} bytes) "
            f"exceed OpenSearch's {index.MAX_INDEX_NAME_BYTES} bytes"
        )
    available = available_shards(s3, settings)
    if not available:
        raise PermanentError(
            f"no listings under s3://{settings.source_bucket}/{settings.source_prefix}listings/metadata/"
        )
    wanted = [str(s).lower() for s in (params.get("shards") or [])] or available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise PermanentError(f"listing shards {unknown} do not exist; available: {available}")
    shards = sorted(set(wanted))
    base_index, base_shards = None, []
    if client is not None:
        base_index, base_shards = _base_state(settings, s3, client, alias, shards, language, name, logger)
    return RunPlan(
        run_key=run_key,
        shards=shards,
        language_tag=language,
        max_products=int(max_products) if max_products else None,
        alias=alias,
        force_reencode=bool(params.get("force_reencode", False)),
        index=name,
        prefix=settings.run_prefix(run_id),
        base_index=base_index,
        base_shards=base_shards,
        allow_shrink=bool(params.get("allow_shrink", False)),
        parts=max(1, settings.split_parts),
    )


def _base_state(
    settings: Settings, s3, client, alias: str, shards: list[str], language: str, own_index: str, logger
) -> tuple[str | None, list[str]]:
    """The index the alias serves and the shards to take from its state (those this run does not process)."""
    targets = index.alias_targets(client, alias)
    if not targets:
        logger.info("alias %s serves nothing yet: the run publishes shards %s only", alias, ", ".join(shards))
        return None, []
    base = targets[0]
    record = state.read_manifest(s3, settings, alias, base)
    if record is None:
        logger.warning(
            "alias %s serves %s, which has no recorded catalogue state: the run publishes shards %s only",
            alias,
            base,
            ", ".join(shards),
        )
        return base, []
    others = sorted(set(record["shards"]) - set(shards))
    if others and record["language_tag"] != language and base != own_index:
        raise PermanentError(
            f"language_tag {language} differs from the published catalogue's ({record['language_tag']}, index "
            f"{base}), whose shards {others} this run would keep: run every shard, or use another alias"
        )
    logger.info(
        "builds on %s (published state of alias %s): processes shards %s, keeps shards %s as published",
        base,
        alias,
        ", ".join(shards),
        ", ".join(others) or "none",
    )
    return base, others
