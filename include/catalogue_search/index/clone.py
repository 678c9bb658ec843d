"""A run's index made from the served one: a `_clone` (segments hard-linked, no vector indexed
again), then the delta applied to it (documents upserted by `bulk_load`, deleted here).

The served index is only write-blocked for the few seconds `_clone` needs and
gets its block setting back as it was; it is never written to, so readers and a
rollback see it unchanged.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from catalogue_search.errors import PermanentError

log = logging.getLogger(__name__)

BLOCK = "index.blocks.write"


def clone_index(client, source: str, target: str, *, timeout_s: int = 300, logger: logging.Logger = log) -> float:
    """Clone `source` into `target` (which must not exist) and wait until it can take writes; seconds taken."""
    started = time.perf_counter()
    if client.indices.exists(index=target):
        raise PermanentError(f"cannot clone {source} into {target}: {target} exists")
    found = client.indices.get_settings(index=source, name=BLOCK, flat_settings=True)  # {} when never set
    before = found.get(source, {}).get("settings", {}).get(BLOCK)
    client.indices.put_settings(index=source, body={BLOCK: True})
    try:
        # The clone takes the source's settings, its write block too: the target is created writable.
        # The request itself waits until every primary of the clone is started (what cluster health's
        # "yellow" would say): `_cluster/health` is a cluster action the writer role is not granted.
        done = client.indices.clone(
            index=source,
            target=target,
            body={"settings": {BLOCK: False}},
            wait_for_active_shards="1",
            timeout=f"{timeout_s}s",
            request_timeout=timeout_s + 30,
        )
        if not done.get("shards_acknowledged"):
            raise RuntimeError(f"clone {target} of {source}: its primaries had not started within {timeout_s} s")
    finally:
        client.indices.put_settings(index=source, body={BLOCK: before})
    elapsed = time.perf_counter() - started
    logger.info("cloned %s into %s in %.1f s (segments hard-linked)", source, target, elapsed)
    return elapsed


def delete_documents(client, index: str, ids: Iterable[str], *, chunk_size: int = 1000) -> int:
    """Delete documents by id (`_bulk` deletes); an id already gone counts as deleted. Returns how many were."""
    ids = list(ids)
    deleted = 0
    for lo in range(0, len(ids), chunk_size):
        actions: list[dict[str, Any]] = [{"delete": {"_index": index, "_id": i}} for i in ids[lo : lo + chunk_size]]
        resp = client.bulk(body=actions)
        for item in resp["items"]:
            status = item["delete"].get("status")
            if status not in (200, 404):
                raise RuntimeError(f"could not delete {item['delete'].get('_id')} from {index}: {item['delete']}")
            deleted += status == 200
    return deleted


def set_meta(client, index: str, meta: dict[str, Any]) -> None:
    """Replace the index's mapping `_meta` (the clone carries the source's)."""
    client.indices.put_mapping(index=index, body={"_meta": meta})
