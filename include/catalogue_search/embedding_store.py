"""The embedding store: image vectors compacted per chunk, keyed by the artifact version.

Layout in the project bucket (`<store>` = `{embeddings_prefix}{model_slug}/{artifact_version}/`):

- `<store>runs/<run>/<chunk>.jsonl.out`: what batch transform wrote for one
  input chunk, a NumPy `.npz` holding `ids` (ABO `path`), `embeddings`
  (float32, one row per id), `error_ids` and `errors` (records that could not
  be encoded, with the reason) and `artifact_version`.
- `<store>catalogue.json.gz`: what is encoded, `path -> (chunk, image ETag at
  encode time)`, plus the records that failed (`path -> (ETag, reason)`).

So "what is new" is one GET of the catalogue and one listing of the images
(1,000 keys a request), never a request per image; loading an index reads
each chunk once and streams its rows. New weights, a new model config or a
changed handler give a new artifact version, hence an empty store: every
image is encoded again.

The run's side (`<run prefix>encode/`): the input chunks (`chunks/NNNNN-<digest of their ids>.jsonl`),
the ManifestFile naming them, `plan.json` (the version, the chunk -> output
pairs, the ETags of what was sent) and `report.json` (what was encoded, what
failed and why).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from catalogue_search.errors import InvalidValueError, PermanentError
from catalogue_search.s3util import get_bytes, list_objects, put_bytes
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

CHUNK_CONTENT_TYPE = "application/x-image-chunk"
OUTPUT_CONTENT_TYPE = "application/x-npz"
OUTPUT_SUFFIX = ".out"
CATALOGUE_FORMAT = 1
MAX_CHUNK_RECORDS = 1024
READ_AHEAD = 4  # chunks fetched ahead while one is being loaded


class EmbeddingStoreError(PermanentError, RuntimeError):
    """The store or a transform's outputs are not what the pipeline wrote; the message says where."""


class MissingOutputError(EmbeddingStoreError):
    """A transform input chunk has no output where SageMaker should have written it."""


# --- Names ----------------------------------------------------------------------
def store_prefix(settings: Settings, version: str) -> str:
    if not version:
        raise ValueError("an artifact version is needed to address the embedding store")
    return f"{settings.embeddings_prefix}{settings.model_slug}/{version}/"


def catalogue_key(settings: Settings, version: str) -> str:
    return store_prefix(settings, version) + "catalogue.json.gz"


def run_output_prefix(settings: Settings, version: str, run_prefix: str) -> str:
    """Where one run's transform writes: under the store, named after the run's prefix."""
    return store_prefix(settings, version) + "runs/" + run_prefix.rstrip("/").replace("/", "-") + "/"


def encode_prefix(run_prefix: str) -> str:
    return f"{run_prefix}encode/"


# --- The catalogue of what is encoded -------------------------------------------
@dataclass
class Catalogue:
    """What the store holds for one artifact version (one small object, read and written whole)."""

    version: str
    chunks: list[str] = field(default_factory=list)  # output keys
    images: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (chunk index, ETag)
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (ETag, reason)

    @classmethod
    def load(cls, s3, settings: Settings, version: str) -> Catalogue:
        """One GET; a store never written to is empty."""
        try:
            raw = get_bytes(s3, settings.bucket, catalogue_key(settings, version))
        except Exception as exc:
            if _is_missing(exc):
                return cls(version=version)
            raise
        doc = json.loads(gzip.decompress(raw))
        if doc.get("format") != CATALOGUE_FORMAT or doc.get("artifact_version") != version:
            raise EmbeddingStoreError(
                f"s3://{settings.bucket}/{catalogue_key(settings, version)} is not a format-{CATALOGUE_FORMAT} "
                f"catalogue of version {version}"
            )
        return cls(
            version=version,
            chunks=list(doc["chunks"]),
            images={p: (int(c), e) for p, (c, e) in doc["images"].items()},
            errors={p: (e, r) for p, (e, r) in doc["errors"].items()},
        )

    def save(self, s3, settings: Settings) -> None:
        doc = {
            "format": CATALOGUE_FORMAT,
            "artifact_version": self.version,
            "chunks": self.chunks,
            "images": {p: list(v) for p, v in sorted(self.images.items())},
            "errors": {p: list(v) for p, v in sorted(self.errors.items())},
        }
        body = gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), compresslevel=6, mtime=0)
        put_bytes(s3, settings.bucket, catalogue_key(settings, self.version), body, "application/gzip")

    def add(self, output_key: str, ids: Iterable[str], etags: dict[str, str], failed: dict[str, str]) -> None:
        """Record one chunk's outcome (a chunk recorded twice, by a retry, is recorded once)."""
        if output_key in self.chunks:
            index = self.chunks.index(output_key)
        else:
            index = len(self.chunks)
            self.chunks.append(output_key)
        for path in ids:
            self.images[path] = (index, etags.get(path, ""))
            self.errors.pop(path, None)
        for path, reason in failed.items():
            self.errors[path] = (etags.get(path, ""), reason)
            self.images.pop(path, None)


def image_etags(s3, settings: Settings) -> dict[str, str]:
    """ABO `path` -> ETag of every image in the project bucket (one listing, 1,000 keys a request)."""
    prefix = settings.images_prefix
    return {key[len(prefix) :]: meta["etag"] for key, meta in list_objects(s3, settings.bucket, prefix).items()}


def pending_paths(paths: Iterable[str], catalogue: Catalogue, etags: dict[str, str], force: bool = False) -> list[str]:
    """Paths to encode: not in the store, or whose image changed since (another ETag).

    A path that failed before is tried again only when its image changed
    (a corrupt image stays corrupt; its product stays dropped, with the reason).
    """
    paths = sorted(set(paths))
    if force:
        return paths
    todo = []
    for path in paths:
        current = etags.get(path, "")
        done = catalogue.images.get(path)
        failed = catalogue.errors.get(path)
        if done is not None and done[1] == current:
            continue
        if done is None and failed is not None and failed[0] == current:
            continue
        todo.append(path)
    return todo


# --- Chunks and the run's encode plan --------------------------------------------
def chunk_body(settings: Settings, paths: Iterable[str]) -> bytes:
    """One transform request: JSON Lines, `{"id": path, "s3_uri": ...}` per image."""
    base = f"s3://{settings.bucket}/{settings.images_prefix}"
    return b"".join(json.dumps({"id": p, "s3_uri": base + p}, separators=(",", ":")).encode() + b"\n" for p in paths)


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


def plan_key(run_prefix: str) -> str:
    return encode_prefix(run_prefix) + "plan.json"


def report_key(run_prefix: str) -> str:
    return encode_prefix(run_prefix) + "report.json"


def manifest_key(run_prefix: str) -> str:
    return encode_prefix(run_prefix) + "chunks.manifest"


def write_chunks(
    s3,
    settings: Settings,
    run_prefix: str,
    version: str,
    paths: list[str],
    etags: dict[str, str],
    chunk_size: int,
    *,
    body: Callable[[list[str]], bytes] | None = None,
    content_type: str = CHUNK_CONTENT_TYPE,
) -> EncodePlan:
    """Write the input chunks, their ManifestFile and the plan; return the plan.

    `body` turns a chunk's ids into its request (default: image records,
    `chunk_body`); the titles' chunks (`names`) pass their own, with `content_type`.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_RECORDS:
        raise InvalidValueError(f"chunk size {chunk_size} must be between 1 and {MAX_CHUNK_RECORDS}")
    chunk_prefix = encode_prefix(run_prefix) + "chunks/"
    out_prefix = run_output_prefix(settings, version, run_prefix)
    plan = EncodePlan(version=version, output_prefix=out_prefix, etags={p: etags.get(p, "") for p in paths})
    bodies = []
    for number, start in enumerate(range(0, len(paths), chunk_size)):
        ids = paths[start : start + chunk_size]
        # Named by content: a rerun that sends other images writes other outputs, never
        # overwriting one the catalogue already points at; the same images, the same name.
        digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10]
        name = f"{number:05d}-{digest}.jsonl"
        plan.chunks.append({"input": chunk_prefix + name, "output": out_prefix + name + OUTPUT_SUFFIX, "ids": ids})
        bodies.append((chunk_prefix + name, body(ids) if body is not None else chunk_body(settings, ids)))
    limit = settings.transform_max_payload_mb * 1024 * 1024
    for key, data in bodies:
        if len(data) > limit:
            raise InvalidValueError(f"chunk {key} is {len(data)} bytes, above MaxPayloadInMB: lower the chunk size")
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda kb: put_bytes(s3, settings.bucket, kb[0], kb[1], content_type), bodies))
    manifest = [
        {"prefix": f"s3://{settings.bucket}/{chunk_prefix}"},
        *(c["input"][len(chunk_prefix) :] for c in plan.chunks),
    ]
    put_bytes(s3, settings.bucket, manifest_key(run_prefix), json.dumps(manifest).encode(), "application/json")
    put_bytes(s3, settings.bucket, plan_key(run_prefix), plan.as_json(), "application/json")
    return plan


def read_plan(s3, settings: Settings, run_prefix: str) -> EncodePlan:
    try:
        return EncodePlan.from_json(get_bytes(s3, settings.bucket, plan_key(run_prefix)))
    except Exception as exc:
        if _is_missing(exc):
            raise EmbeddingStoreError(
                f"no encode plan at s3://{settings.bucket}/{plan_key(run_prefix)}: prepare_encoding has not run"
            ) from exc
        raise


# --- Outputs ----------------------------------------------------------------------
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


def verify_outputs(s3, settings: Settings, plan: EncodePlan) -> None:
    """Every input chunk has its output: one listing of the output prefix (1,000 keys a request)."""
    found = list_objects(s3, settings.bucket, plan.output_prefix)
    for chunk in plan.chunks:
        if chunk["output"] not in found:
            elsewhere = sorted(found)[:3]
            raise MissingOutputError(
                f"the transform wrote no output for s3://{settings.bucket}/{chunk['input']}: expected "
                f"s3://{settings.bucket}/{chunk['output']} "
                + (
                    f"(found under the output prefix instead: {elsewhere})"
                    if elsewhere
                    else f"(nothing at all under s3://{settings.bucket}/{plan.output_prefix}: did the job write "
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
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["failed"] = len(self.errors)
        doc["failed_by_reason"] = dict(Counter(_reason_kind(r) for r in self.errors.values()).most_common())
        return doc


def _reason_kind(reason: str) -> str:
    """A short class of a failure reason, for counting ("image could not be decoded", ...)."""
    return reason.split(":", 1)[0][:80]


def record_outputs(
    s3, settings: Settings, run_prefix: str, workers: int = 8, logger: logging.Logger = log
) -> EncodeReport:
    """After the transform: check the outputs, add them to the catalogue, write the run report.

    Every record the chunk sent that came back with neither a vector nor an
    error is an error too ("no output for this record"). Costs one listing,
    one GET per chunk, the catalogue's GET and PUT and the report's PUT.
    """
    plan = read_plan(s3, settings, run_prefix)
    report = EncodeReport(artifact_version=plan.version, chunks=len(plan.chunks), requested=plan.total)
    if plan.chunks:
        verify_outputs(s3, settings, plan)
        catalogue = Catalogue.load(s3, settings, plan.version)

        def read(chunk: dict[str, Any]) -> ChunkOutput:
            source = f"s3://{settings.bucket}/{chunk['output']}"
            return parse_output(get_bytes(s3, settings.bucket, chunk["output"]), source)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for chunk, out in zip(plan.chunks, pool.map(read, plan.chunks)):
                if out.artifact_version and out.artifact_version != plan.version:
                    raise EmbeddingStoreError(
                        f"s3://{settings.bucket}/{chunk['output']} was encoded by artifact {out.artifact_version}, "
                        f"not {plan.version}: the model.tar.gz changed during the run"
                    )
                sent = set(chunk["ids"])
                encoded = [i for i in out.ids if i in sent]
                failed = {i: r for i, r in out.errors.items() if i in sent}
                for path in sorted(sent - set(encoded) - set(failed)):
                    failed[path] = "no output for this record: the handler answered neither a vector nor an error"
                catalogue.add(chunk["output"], encoded, plan.etags, failed)
                report.encoded += len(encoded)
                report.errors.update(failed)
        catalogue.save(s3, settings)
    put_bytes(
        s3, settings.bucket, report_key(run_prefix), json.dumps(report.as_dict(), indent=1).encode(), "application/json"
    )
    logger.info(
        "encoding: %d of %d images encoded in %d chunks, %d failed (run report s3://%s/%s)",
        report.encoded,
        report.requested,
        report.chunks,
        len(report.errors),
        settings.bucket,
        report_key(run_prefix),
    )
    for number, (path, reason) in enumerate(sorted(report.errors.items())):
        if number == 50:
            logger.warning("... and %d more failed images (all in the run report)", len(report.errors) - 50)
            break
        logger.warning("image %s could not be encoded, its product is dropped: %s", path, reason)
    return report


# --- Reading vectors back, streamed -----------------------------------------------
def iter_vectors(
    s3, settings: Settings, catalogue: Catalogue, paths: Iterable[str], read_ahead: int = READ_AHEAD
) -> Iterator[tuple[str, np.ndarray]]:
    """(path, float32 vector) for every wanted path the catalogue holds, one chunk at a time.

    Each chunk is read once; at most `read_ahead` chunks are in memory, so the
    peak does not grow with the catalogue. Rows come out in chunk order.
    """
    wanted_by_chunk: dict[int, set[str]] = {}
    for path in paths:
        entry = catalogue.images.get(path)
        if entry is not None:
            wanted_by_chunk.setdefault(entry[0], set()).add(path)
    order = sorted(wanted_by_chunk)

    def read(index: int) -> ChunkOutput:
        key = catalogue.chunks[index]
        return parse_output(get_bytes(s3, settings.bucket, key), f"s3://{settings.bucket}/{key}")

    with ThreadPoolExecutor(max_workers=max(1, read_ahead)) as pool:
        futures = {i: pool.submit(read, i) for i in order[:read_ahead]}
        for position, index in enumerate(order):
            out = futures.pop(index).result()
            if position + read_ahead < len(order):
                ahead = order[position + read_ahead]
                futures[ahead] = pool.submit(read, ahead)
            wanted = wanted_by_chunk.pop(index)
            for row, path in enumerate(out.ids):
                if path in wanted:
                    wanted.discard(path)
                    yield path, out.vectors[row]
            if wanted:
                raise EmbeddingStoreError(
                    f"s3://{settings.bucket}/{catalogue.chunks[index]} lacks {len(wanted)} vectors the catalogue "
                    f"places there (first: {sorted(wanted)[0]})"
                )
            del out


def _is_missing(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}
