"""The run's side of encoding: the input chunks, their ManifestFile and the encode plan."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from catalogue_search.contract import JSON
from catalogue_search.encoding.store import OUTPUT_SUFFIX, EmbeddingStoreError, Store
from catalogue_search.errors import InvalidValueError
from catalogue_search.s3util import get_or_none, put_bytes

MAX_CHUNK_RECORDS = 1024


@dataclass
class EncodePlan:
    """What one run sends to the transform and where the outputs must appear."""

    version: str
    output_prefix: str
    chunks: list[dict[str, Any]] = field(default_factory=list)  # {"input", "output", "ids"}
    etags: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(c["ids"]) for c in self.chunks)

    def as_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> EncodePlan:
        return cls(**json.loads(raw))


def write_chunks(
    s3,
    store: Store,
    run_prefix: str,
    version: str,
    ids: list[str],
    etags: dict[str, str],
    records: Callable[[list[str]], bytes],
    chunk_size: int,
) -> EncodePlan:
    """Write the input chunks (`records` turns a chunk's ids into its request), their
    ManifestFile and the plan; return the plan."""
    if not 1 <= chunk_size <= MAX_CHUNK_RECORDS:
        raise InvalidValueError(f"chunk size {chunk_size} must be between 1 and {MAX_CHUNK_RECORDS}")
    chunk_prefix = store.encode_prefix(run_prefix) + "chunks/"
    out_prefix = store.output_prefix(version, run_prefix)
    plan = EncodePlan(version=version, output_prefix=out_prefix, etags={i: etags.get(i, "") for i in ids})
    bodies = []
    for number, start in enumerate(range(0, len(ids), chunk_size)):
        part = ids[start : start + chunk_size]
        # Named by content: a rerun that sends other entries writes other outputs, never
        # overwriting one the catalogue already points at; the same entries, the same name.
        digest = hashlib.sha1("\n".join(part).encode()).hexdigest()[:10]
        name = f"{number:05d}-{digest}.jsonl"
        plan.chunks.append({"input": chunk_prefix + name, "output": out_prefix + name + OUTPUT_SUFFIX, "ids": part})
        bodies.append((chunk_prefix + name, records(part)))
    limit = store.settings.transform_max_payload_mb * 1024 * 1024
    for key, data in bodies:
        if len(data) > limit:
            raise InvalidValueError(f"chunk {key} is {len(data)} bytes, above MaxPayloadInMB: lower the chunk size")
    content_type = store.target.content_type
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda kb: put_bytes(s3, store.bucket, kb[0], kb[1], content_type), bodies))
    manifest = [{"prefix": store.uri(chunk_prefix)}, *(c["input"][len(chunk_prefix) :] for c in plan.chunks)]
    put_bytes(s3, store.bucket, store.manifest_key(run_prefix), json.dumps(manifest).encode(), JSON)
    put_bytes(s3, store.bucket, store.plan_key(run_prefix), plan.as_json(), JSON)
    return plan


def read_plan(s3, store: Store, run_prefix: str) -> EncodePlan:
    raw = get_or_none(s3, store.bucket, store.plan_key(run_prefix))
    if raw is None:
        raise EmbeddingStoreError(
            f"no {store.target.name} encode plan at {store.uri(store.plan_key(run_prefix))}: "
            "the prepare step has not run"
        )
    return EncodePlan.from_json(raw)
