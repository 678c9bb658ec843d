"""The transform's outputs: one `.npz` per chunk, checked, recorded in the store, and read back streamed."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from catalogue_search.contract import JSON
from catalogue_search.encoding.chunks import EncodePlan, read_plan
from catalogue_search.encoding.store import Catalogue, EmbeddingStoreError, MissingOutputError, Store
from catalogue_search.s3util import get_bytes, list_objects, put_bytes

log = logging.getLogger(__name__)

READ_AHEAD = 4  # chunks fetched ahead while one is being loaded
LOGGED_FAILURES = 50


@dataclass
class ChunkOutput:
    ids: list[str]
    vectors: np.ndarray  # (len(ids), dim) float32
    errors: dict[str, str]
    artifact_version: str = ""


def encode_output(
    ids: list[str], vectors: np.ndarray, errors: dict[str, str] | None = None, version: str = ""
) -> bytes:
    """The handler's `.npz` answer, built outside the handler (benchmarks, tests)."""
    errors = errors or {}
    out = io.BytesIO()
    np.savez(
        out,
        ids=np.asarray(ids, dtype=str),
        embeddings=np.ascontiguousarray(vectors, dtype=np.float32),
        error_ids=np.asarray(list(errors), dtype=str),
        errors=np.asarray(list(errors.values()), dtype=str),
        artifact_version=np.asarray(version, dtype=str),
    )
    return out.getvalue()


def parse_output(raw: bytes, source: str) -> ChunkOutput:
    """One chunk's `.npz` -> ids, float32 vectors, error records; anything else raises naming `source`."""
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            ids = [str(i) for i in npz["ids"]]
            vectors = np.asarray(npz["embeddings"], dtype=np.float32)
            errors = dict(zip((str(i) for i in npz["error_ids"]), (str(e) for e in npz["errors"])))
            version = str(npz["artifact_version"]) if "artifact_version" in npz.files else ""
    except Exception as exc:
        raise EmbeddingStoreError(f"{source} is not a chunk output (.npz with ids and embeddings): {exc}") from exc
    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or (ids and vectors.shape[1] == 0):
        raise EmbeddingStoreError(f"{source}: {len(ids)} ids but embeddings of shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise EmbeddingStoreError(f"{source} holds non-finite vectors")
    return ChunkOutput(ids=ids, vectors=vectors, errors=errors, artifact_version=version)


def read_output(s3, store: Store, key: str) -> ChunkOutput:
    return parse_output(get_bytes(s3, store.bucket, key), store.uri(key))


def verify_outputs(s3, store: Store, plan: EncodePlan) -> None:
    """Every input chunk has its output: one listing of the output prefix (1,000 keys a request)."""
    found = list_objects(s3, store.bucket, plan.output_prefix)
    for chunk in plan.chunks:
        if chunk["output"] not in found:
            elsewhere = sorted(found)[:3]
            raise MissingOutputError(
                f"the transform wrote no output for {store.uri(chunk['input'])}: expected {store.uri(chunk['output'])} "
                + (
                    f"(found under the output prefix instead: {elsewhere})"
                    if elsewhere
                    else f"(nothing at all under {store.uri(plan.output_prefix)}: did the job write "
                    "its outputs elsewhere? check its TransformOutput.S3OutputPath)"
                )
            )


@dataclass
class EncodeReport:
    """What a run's encoding did; written to the run's `encode/report.json` and returned to the task."""

    artifact_version: str
    chunks: int = 0
    requested: int = 0
    encoded: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # id -> reason

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["failed"] = len(self.errors)
        doc["failed_by_reason"] = dict(Counter(_reason_kind(r) for r in self.errors.values()).most_common())
        return doc


def _reason_kind(reason: str) -> str:
    """A short class of a failure reason, for counting ("image could not be decoded", ...)."""
    return reason.split(":", 1)[0][:80]


def record_outputs(s3, store: Store, run_prefix: str, workers: int = 8, logger: logging.Logger = log) -> EncodeReport:
    """After the transform: check the outputs, add them to the store's catalogue, write the run report.

    Every record the chunk sent that came back with neither a vector nor an
    error is an error too ("no output for this record"). Costs one listing,
    one GET per chunk, the catalogue's GET and PUT and the report's PUT.
    """
    plan = read_plan(s3, store, run_prefix)
    report = EncodeReport(artifact_version=plan.version, chunks=len(plan.chunks), requested=plan.total)
    if plan.chunks:
        verify_outputs(s3, store, plan)
        stored = Catalogue.load(s3, store, plan.version)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outputs = pool.map(lambda chunk: read_output(s3, store, chunk["output"]), plan.chunks)
            for chunk, out in zip(plan.chunks, outputs):
                if out.artifact_version and out.artifact_version != plan.version:
                    raise EmbeddingStoreError(
                        f"{store.uri(chunk['output'])} was encoded by artifact {out.artifact_version}, "
                        f"not {plan.version}: the model.tar.gz changed during the run"
                    )
                sent = set(chunk["ids"])
                encoded = [i for i in out.ids if i in sent]
                failed = {i: r for i, r in out.errors.items() if i in sent}
                for entry in sorted(sent - set(encoded) - set(failed)):
                    failed[entry] = "no output for this record: the handler answered neither a vector nor an error"
                stored.add(chunk["output"], encoded, plan.etags, failed)
                report.encoded += len(encoded)
                report.errors.update(failed)
        stored.save(s3, store)
    report_key = store.report_key(run_prefix)
    put_bytes(s3, store.bucket, report_key, json.dumps(report.as_dict(), indent=1).encode(), JSON)
    what = store.target.plural
    logger.info(
        "encoding: %d of %d %s encoded in %d chunks, %d failed (run report %s)",
        report.encoded,
        report.requested,
        what,
        report.chunks,
        len(report.errors),
        store.uri(report_key),
    )
    for number, (entry, reason) in enumerate(sorted(report.errors.items())):
        if number == LOGGED_FAILURES:
            logger.warning("... and %d more failed %s (all in the run report)", len(report.errors) - number, what)
            break
        logger.warning("%s %s could not be encoded, its product is dropped: %s", store.target.name, entry, reason)
    return report


def iter_vectors(
    s3, store: Store, catalogue: Catalogue, ids: Iterable[str], read_ahead: int = READ_AHEAD
) -> Iterator[tuple[str, np.ndarray]]:
    """(id, float32 vector) for every wanted id the catalogue holds, one chunk at a time.

    Each chunk is read once; at most `read_ahead` chunks are in memory, so the
    peak does not grow with the catalogue. Rows come out in chunk order.
    """
    wanted_by_chunk: dict[int, set[str]] = {}
    for entry in ids:
        found = catalogue.encoded.get(entry)
        if found is not None:
            wanted_by_chunk.setdefault(found[0], set()).add(entry)
    order = sorted(wanted_by_chunk)

    def read(number: int) -> ChunkOutput:
        return read_output(s3, store, catalogue.chunks[number])

    with ThreadPoolExecutor(max_workers=max(1, read_ahead)) as pool:
        futures = {n: pool.submit(read, n) for n in order[:read_ahead]}
        for position, number in enumerate(order):
            out = futures.pop(number).result()
            if position + read_ahead < len(order):
                ahead = order[position + read_ahead]
                futures[ahead] = pool.submit(read, ahead)
            wanted = wanted_by_chunk.pop(number)
            for row, entry in enumerate(out.ids):
                if entry in wanted:
                    wanted.discard(entry)
                    yield entry, out.vectors[row]
            if wanted:
                raise EmbeddingStoreError(
                    f"{store.uri(catalogue.chunks[number])} lacks {len(wanted)} vectors the catalogue "
                    f"places there (first: {sorted(wanted)[0]})"
                )
            del out
