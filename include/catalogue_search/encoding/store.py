"""The embedding store of one encode target: vectors compacted per chunk, keyed by the artifact version.

Layout in the project bucket (`<store>` = `{embeddings_prefix}{target.store_dir}{model_slug}/{artifact_version}/`,
so the images' store is `embeddings/<model>/<version>/` and the titles' `embeddings/names/<model>/<version>/`):

- `<store>runs/<run>/<chunk>.jsonl.out`: what batch transform wrote for one
  input chunk, a NumPy `.npz` holding `ids` (an image's ABO `path`, a title's
  digest), `embeddings` (float32, one row per id), `error_ids` and `errors`
  (records that could not be encoded, with the reason) and `artifact_version`.
- `<store>catalogue.json.gz`: what is encoded, `id -> (chunk, ETag at encode
  time)`, plus the records that failed (`id -> (ETag, reason)`).

So "what is new" is one GET of the catalogue (and, for images, one listing of
the images, 1,000 keys a request), never a request per entry; loading an index
reads each chunk once and streams its rows. New weights, a new model config or
a changed handler give a new artifact version, hence an empty store: every
entry is encoded again.

The run's side (`<run prefix>{target.run_dir}encode/`): the input chunks
(`chunks/NNNNN-<digest of their ids>.jsonl`), the ManifestFile naming them,
`plan.json` (the version, the chunk -> output pairs, the ETags of what was
sent) and `report.json` (what was encoded, what failed and why).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from catalogue_search.contract import GZIP
from catalogue_search.encoding.targets import IMAGE, Target
from catalogue_search.errors import PermanentError
from catalogue_search.s3util import get_or_none, put_bytes
from catalogue_search.settings import Settings

CATALOGUE_FORMAT = 2
OUTPUT_SUFFIX = ".out"


class EmbeddingStoreError(PermanentError, RuntimeError):
    """The store or a transform's outputs are not what the pipeline wrote; the message says where."""


class MissingOutputError(EmbeddingStoreError):
    """A transform input chunk has no output where SageMaker should have written it."""


@dataclass(frozen=True)
class Store:
    """Where one target's vectors live, and the run's encode files for that target."""

    settings: Settings
    target: Target = IMAGE

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def prefix(self, version: str) -> str:
        if not version:
            raise ValueError("an artifact version is needed to address the embedding store")
        return f"{self.settings.embeddings_prefix}{self.target.store_dir}{self.settings.model_slug}/{version}/"

    def catalogue_key(self, version: str) -> str:
        return self.prefix(version) + "catalogue.json.gz"

    def output_prefix(self, version: str, run_prefix: str) -> str:
        """Where one run's transform writes: under the store, named after the run's prefix."""
        return self.prefix(version) + "runs/" + self._run_dir(run_prefix).rstrip("/").replace("/", "-") + "/"

    def encode_prefix(self, run_prefix: str) -> str:
        """The run's encode files for this target (`run_prefix`: the run's own prefix)."""
        return self._run_dir(run_prefix) + "encode/"

    def plan_key(self, run_prefix: str) -> str:
        return self.encode_prefix(run_prefix) + "plan.json"

    def report_key(self, run_prefix: str) -> str:
        return self.encode_prefix(run_prefix) + "report.json"

    def manifest_key(self, run_prefix: str) -> str:
        return self.encode_prefix(run_prefix) + "chunks.manifest"

    def _run_dir(self, run_prefix: str) -> str:
        return f"{run_prefix}{self.target.run_dir}"


@dataclass
class Catalogue:
    """What a store holds for one artifact version (one small object, read and written whole)."""

    version: str
    chunks: list[str] = field(default_factory=list)  # output keys
    encoded: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> (chunk index, ETag)
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (ETag, reason)

    @classmethod
    def load(cls, s3, store: Store, version: str) -> Catalogue:
        """One GET; a store never written to is empty."""
        key = store.catalogue_key(version)
        raw = get_or_none(s3, store.bucket, key)
        if raw is None:
            return cls(version=version)
        doc = json.loads(gzip.decompress(raw))
        # Format 1 (before titles had a store of their own) named the entries "images".
        entries = doc.get("encoded", doc.get("images")) if doc.get("format") in (1, CATALOGUE_FORMAT) else None
        if entries is None or doc.get("artifact_version") != version:
            raise EmbeddingStoreError(
                f"{store.uri(key)} is not a format-{CATALOGUE_FORMAT} catalogue of version {version}"
            )
        return cls(
            version=version,
            chunks=list(doc["chunks"]),
            encoded={i: (int(c), e) for i, (c, e) in entries.items()},
            errors={i: (e, r) for i, (e, r) in doc["errors"].items()},
        )

    def save(self, s3, store: Store) -> None:
        doc = {
            "format": CATALOGUE_FORMAT,
            "artifact_version": self.version,
            "chunks": self.chunks,
            "encoded": {i: list(v) for i, v in sorted(self.encoded.items())},
            "errors": {i: list(v) for i, v in sorted(self.errors.items())},
        }
        body = gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), compresslevel=6, mtime=0)
        put_bytes(s3, store.bucket, store.catalogue_key(self.version), body, GZIP)

    def add(self, output_key: str, ids: Iterable[str], etags: dict[str, str], failed: dict[str, str]) -> None:
        """Record one chunk's outcome (a chunk recorded twice, by a retry, is recorded once)."""
        if output_key in self.chunks:
            number = self.chunks.index(output_key)
        else:
            number = len(self.chunks)
            self.chunks.append(output_key)
        for entry in ids:
            self.encoded[entry] = (number, etags.get(entry, ""))
            self.errors.pop(entry, None)
        for entry, reason in failed.items():
            self.errors[entry] = (etags.get(entry, ""), reason)
            self.encoded.pop(entry, None)


def pending_ids(ids: Iterable[str], catalogue: Catalogue, etags: dict[str, str], force: bool = False) -> list[str]:
    """Ids to encode: not in the store, or whose content changed since (another ETag).

    An id that failed before is tried again only when its content changed
    (a corrupt image stays corrupt; its product stays dropped, with the reason).
    """
    ids = sorted(set(ids))
    if force:
        return ids
    todo = []
    for entry in ids:
        current = etags.get(entry, "")
        done = catalogue.encoded.get(entry)
        failed = catalogue.errors.get(entry)
        if done is not None and done[1] == current:
            continue
        if done is None and failed is not None and failed[0] == current:
            continue
        todo.append(entry)
    return todo
