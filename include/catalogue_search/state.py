"""The catalogue's state across runs, kept in the project bucket and keyed by alias.

```
state/<alias>/indices/<index>/listings_<shard>.jsonl  the products of each shard that <index> was built from
state/<alias>/indices/<index>/state.json              language, shards, run and product count of <index>
state/<alias>/indices/<index>/catalogue.json.gz       what <index> holds: artifact, mapping, digest per product
state/<alias>/indices/<index>/duplicates.json.gz      its near-duplicate report (pairs reused by the next run)
state/<alias>/served.json                             indices that served (were alias targets), oldest first
```

The published state is the state of the index the alias points at. A run
writes its state under its own index before the swap, so the new per-shard
lists become the published state in the same atomic `_aliases` call that
moves the alias, and a rollback brings back the old lists with the old index.
"""

from __future__ import annotations

import json
from typing import Any

from catalogue_search import catalogue
from catalogue_search.contract import GZIP, JSON, JSONLINES
from catalogue_search.s3util import get_bytes, get_or_none, list_objects, put_bytes
from catalogue_search.settings import Settings


def alias_prefix(settings: Settings, alias: str) -> str:
    return f"{settings.state_prefix}{alias}/"


def index_prefix(settings: Settings, alias: str, index: str) -> str:
    return f"{alias_prefix(settings, alias)}indices/{index}/"


def shard_key(settings: Settings, alias: str, index: str, shard: str) -> str:
    return f"{index_prefix(settings, alias, index)}listings_{shard}.jsonl"


def manifest_key(settings: Settings, alias: str, index: str) -> str:
    return f"{index_prefix(settings, alias, index)}state.json"


def catalogue_key(settings: Settings, alias: str, index: str) -> str:
    return f"{index_prefix(settings, alias, index)}catalogue.json.gz"


def duplicates_key(settings: Settings, alias: str, index: str) -> str:
    return f"{index_prefix(settings, alias, index)}duplicates.json.gz"


def write_catalogue(s3, settings: Settings, alias: str, index: str, record: dict[str, Any]) -> None:
    """What `index` holds (`ingest.delta.fingerprint`): the next run compares its own with it."""
    import gzip

    body = gzip.compress(json.dumps(record, separators=(",", ":"), sort_keys=True).encode(), mtime=0)
    put_bytes(s3, settings.bucket, catalogue_key(settings, alias, index), body, GZIP)


def read_catalogue(s3, settings: Settings, alias: str, index: str) -> dict[str, Any] | None:
    """The record `write_catalogue` wrote for `index`, or None (an index built before records were kept)."""
    import gzip

    raw = get_or_none(s3, settings.bucket, catalogue_key(settings, alias, index))
    return None if raw is None else json.loads(gzip.decompress(raw))


def served_key(settings: Settings, alias: str) -> str:
    return f"{alias_prefix(settings, alias)}served.json"


def _get_json(s3, bucket: str, key: str) -> Any:
    raw = get_or_none(s3, bucket, key)
    return None if raw is None else json.loads(raw)


def read_manifest(s3, settings: Settings, alias: str, index: str) -> dict[str, Any] | None:
    """The state record of `index`, or None when it has none (built before state was kept)."""
    return _get_json(s3, settings.bucket, manifest_key(settings, alias, index))


def read_shard(s3, settings: Settings, alias: str, index: str, shard: str) -> list[dict[str, Any]]:
    return catalogue.from_jsonl(get_bytes(s3, settings.bucket, shard_key(settings, alias, index, shard)))


def write_state(
    s3,
    settings: Settings,
    alias: str,
    index: str,
    shard_products: dict[str, list[dict[str, Any]]],
    *,
    language_tag: str,
    run_key: str,
) -> dict[str, Any]:
    """Write the per-shard lists of `index` (shard lists first, the record last)."""
    for shard, products in sorted(shard_products.items()):
        put_bytes(
            s3,
            settings.bucket,
            shard_key(settings, alias, index, shard),
            catalogue.to_jsonl(products),
            JSONLINES,
        )
    record = {
        "alias": alias,
        "index": index,
        "run_key": run_key,
        "language_tag": language_tag,
        "shards": {shard: len(products) for shard, products in sorted(shard_products.items())},
        "products": sum(len(p) for p in shard_products.values()),
    }
    key = manifest_key(settings, alias, index)
    put_bytes(s3, settings.bucket, key, json.dumps(record).encode(), JSON)
    return record


def delete_index_state(s3, settings: Settings, alias: str, index: str) -> int:
    keys = list(list_objects(s3, settings.bucket, index_prefix(settings, alias, index)))
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        s3.delete_objects(Bucket=settings.bucket, Delete={"Objects": batch, "Quiet": True})
    return len(keys)


def served(s3, settings: Settings, alias: str) -> list[str]:
    """Indices that served `alias`, oldest first (the last one normally serves now)."""
    return list(_get_json(s3, settings.bucket, served_key(settings, alias)) or [])


def write_served(s3, settings: Settings, alias: str, indices: list[str]) -> None:
    put_bytes(s3, settings.bucket, served_key(settings, alias), json.dumps(indices).encode(), JSON)
