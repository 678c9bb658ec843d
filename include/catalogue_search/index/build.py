"""Writing a run's index: create it (or reuse the one an earlier attempt left), bulk-load, then make it servable.

Documents are keyed by `item_id`, so a retry overwrites instead of duplicating.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from catalogue_search.errors import PermanentError
from catalogue_search.index.mapping import VECTOR_FIELD, adapt_to_node

log = logging.getLogger(__name__)

# Per-document statuses of a shard that is moving (its node died, its replica not yet promoted).
TRANSIENT_STATUSES = (500, 502, 503, 504)
TRANSIENT_ROUNDS = 4


def create_index(client, name: str, body: dict[str, Any], served: Iterable[str] = ()) -> str:
    """Create the index; an index left by an earlier attempt of the same run, or created a moment
    ago by another part of the same load (the load is mapped, docs/cluster.md), is reused.

    An index that serves or has served (`served`) is never touched: "served" is
    returned and the caller must not load into it (a rerun of a finished run).
    """
    if not client.indices.exists(index=name):
        try:
            client.indices.create(index=name, body=adapt_to_node(client, body))
            return "created"
        except Exception as exc:  # another part of the same load created it a moment ago: reuse it
            if getattr(exc, "error", None) != "resource_already_exists_exception":
                raise
    if name in set(served):
        return "served"
    mapping = client.indices.get_mapping(index=name)[name]["mappings"]
    want = body["mappings"]["properties"][VECTOR_FIELD]["dimension"]
    have = mapping.get("properties", {}).get(VECTOR_FIELD, {}).get("dimension")
    if have != want:
        raise PermanentError(f"index {name} exists with vector dimension {have}, expected {want}")
    replicas = body["settings"]["index"]["number_of_replicas"]
    client.indices.put_settings(index=name, body={"index": {"refresh_interval": "-1", "number_of_replicas": replicas}})
    return "reused"


@dataclass
class LoadReport:
    index: str
    indexed: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bulk_load(
    client,
    index: str,
    docs: Iterable[dict[str, Any]],
    *,
    total: int,
    chunk_size: int = 500,
    threads: int = 1,
    logger: logging.Logger = log,
) -> LoadReport:
    """Upsert documents keyed by item_id, `threads` requests in flight; progress every 10%.

    Each request is `chunk_size` documents; a 429 is retried with back-off
    (per request, as `streaming_bulk` does it); a document refused with a
    transient shard error (a primary lost with its node, before its replica is
    promoted: 5xx) is sent again up to `TRANSIENT_ROUNDS` times; a document
    rejected otherwise is reported, not raised. At most `2 * threads` chunks are held in memory, so
    memory does not grow with `total`. One request in flight keeps one of the
    node's write threads busy building the HNSW graph; two keep two (BENCHMARKS.md).
    """
    import itertools
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from opensearchpy import helpers

    def send(chunk: list[dict[str, Any]]) -> tuple[int, list[str]]:
        indexed, failed = 0, []
        for attempt in range(TRANSIENT_ROUNDS + 1):
            by_id = {action["_id"]: action for action in chunk}
            again, statuses = [], set()
            for ok, item in helpers.streaming_bulk(
                client,
                chunk,
                chunk_size=len(chunk),
                max_retries=5,
                initial_backoff=1,
                max_backoff=30,
                raise_on_error=False,
            ):
                info = next(iter(item.values()))
                if ok:
                    indexed += 1
                elif info.get("status") in TRANSIENT_STATUSES and attempt < TRANSIENT_ROUNDS:
                    again.append(by_id[info["_id"]])
                    statuses.add(info["status"])
                else:
                    failed.append(str(item))
            if not again:
                break
            logger.warning("%d documents met a transient shard error %s: sent again", len(again), sorted(statuses))
            time.sleep(2**attempt)
            chunk = again
        return indexed, failed

    actions = ({"_op_type": "index", "_index": index, "_id": doc["item_id"], "_source": doc} for doc in docs)
    report = LoadReport(index=index)
    step = max(1, total // 10)
    logged = 0

    def collect(done) -> None:
        nonlocal logged
        for future in done:
            indexed, failed = future.result()
            report.indexed += indexed
            report.failed.extend(failed)
        loaded = report.indexed + len(report.failed)
        if loaded // step > logged // step or loaded == total:
            logger.info("documents loaded: %d / %d", loaded, total)
            logged = loaded

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="bulk") as pool:
        pending: set = set()
        while chunk := list(itertools.islice(actions, chunk_size)):
            if len(pending) >= 2 * max(1, threads):
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
            pending.add(pool.submit(send, chunk))
        collect(wait(pending).done)
    return report


def finish_loading(client, index: str, replicas: int) -> None:
    """Restore the serving settings and make the documents visible."""
    client.indices.put_settings(index=index, body={"index": {"refresh_interval": "1s", "number_of_replicas": replicas}})
    client.indices.refresh(index=index)
