"""Title embeddings: each product's `item_name` through the TEXT model, on the image encode path.

The same JSON Lines chunks, the same batch transform settings (chunk size,
forward-pass batch, payload limit), the same store layout keyed by the same
artifact version, in a sibling store:

- store: `{embeddings_prefix}names/{model_slug}/{artifact_version}/` (catalogue + chunk outputs)
- run:   `<run prefix>names/encode/` (chunks, ManifestFile, plan, report)

A record's id is a digest of the title text, not the product: products that
share a title share one vector, and a changed title is a new id, so what is new
is decided by content, as an image's ETag decides it for images. New weights
give a new artifact version, hence an empty store: every title is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from catalogue_search.errors import InvalidValueError
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

TEXT_CHUNK_CONTENT_TYPE = "application/x-text-chunk"  # = transform.TEXT_CHUNK_CONTENT_TYPE
STORE_DIR = "names/"


def title_id(title: str) -> str:
    """The store id of a title: a digest of its exact text."""
    return "t" + hashlib.sha1(title.encode("utf-8")).hexdigest()[:24]


def store_settings(settings: Settings) -> Settings:
    """Settings whose embedding store is the titles' (`embeddings/names/...`)."""
    return settings.replace(embeddings_prefix=f"{settings.embeddings_prefix}{STORE_DIR}")


def run_prefix(plan_prefix: str) -> str:
    """The run's prefix for the titles' chunks, plan and report."""
    return f"{plan_prefix}{STORE_DIR}"


def titles_of(products: Iterable[dict[str, Any]]) -> dict[str, str]:
    """title id -> title, for every product with a non-empty title."""
    out: dict[str, str] = {}
    for product in products:
        title = product.get("item_name")
        if isinstance(title, str) and title.strip():
            out[title_id(title)] = title
    return out


def chunk_body(titles: dict[str, str], ids: Iterable[str]) -> bytes:
    """One transform request: JSON Lines, `{"id": <title id>, "text": <title>}` per title."""
    return b"".join(
        json.dumps({"id": i, "text": titles[i]}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for i in ids
    )


def products_by_title(products: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """title id -> item ids of the products with that title."""
    out: dict[str, list[str]] = {}
    for product in products:
        title = product.get("item_name")
        if isinstance(title, str) and title.strip():
            out.setdefault(title_id(title), []).append(product["item_id"])
    return out


class TitleVectors:
    """Title vectors looked up by title while the index documents stream, so a document is
    indexed once with both vectors (a later partial update re-indexes the whole document,
    image vector and HNSW insertions included, and leaves a deleted copy behind).

    The vectors are spooled to a local temporary file (4 x dim bytes a title) and read
    back with one `pread` each: memory holds only the title id -> row map, not the vectors.
    """

    def __init__(self, vectors: Iterator[tuple[str, Any]]) -> None:
        import tempfile

        import numpy as np

        self._np = np
        self._file = tempfile.TemporaryFile(prefix="catsearch-titles-")
        self.rows: dict[str, int] = {}
        self.row_bytes = 0
        for tid, vector in vectors:
            raw = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            if self.row_bytes and len(raw) != self.row_bytes:
                raise InvalidValueError(f"title vector {tid} has {len(raw) // 4} dimensions, not {self.row_bytes // 4}")
            self.row_bytes = len(raw)
            self.rows[tid] = len(self.rows)
            self._file.write(raw)
        self._file.flush()

    def get(self, title: Any) -> list[float] | None:
        """The vector of `title` (None: no title, or the store has none for it)."""
        import os

        if not isinstance(title, str) or not title.strip():
            return None
        row = self.rows.get(title_id(title))
        if row is None:
            return None
        raw = os.pread(self._file.fileno(), self.row_bytes, row * self.row_bytes)
        return self._np.frombuffer(raw, dtype=self._np.float32).tolist()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TitleVectors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
