"""Titles as an encode target: ids by content, the chunk records, and the lookup spool the load uses.

A record's id is a digest of the title text, not the product: products that
share a title share one vector, and a changed title is a new id, so what is new
is decided by content, as an image's ETag decides it for images.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from catalogue_search.errors import InvalidValueError


def title_id(title: str) -> str:
    """The store id of a title: a digest of its exact text."""
    return "t" + hashlib.sha1(title.encode("utf-8")).hexdigest()[:24]


def titles_of(products: Iterable[dict[str, Any]]) -> dict[str, str]:
    """title id -> title, for every product with a non-empty title."""
    out: dict[str, str] = {}
    for product in products:
        title = product.get("item_name")
        if isinstance(title, str) and title.strip():
            out[title_id(title)] = title
    return out


def title_records(titles: dict[str, str], ids: Iterable[str]) -> bytes:
    """One transform request: JSON Lines, `{"id": <title id>, "text": <title>}` per title."""
    return b"".join(
        json.dumps({"id": i, "text": titles[i]}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for i in ids
    )


class TitleVectors:
    """Title vectors looked up by title while the index documents stream, so a document is
    indexed once with both vectors (a later partial update would re-index the whole document,
    image vector and HNSW insertions included, and leave a deleted copy behind).

    The vectors are spooled to a local temporary file (4 x dim bytes a title) and read
    back with one `pread` each: memory holds only the title id -> row map, not the vectors.
    """

    def __init__(self, vectors: Iterator[tuple[str, Any]]) -> None:
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
        if not isinstance(title, str) or not title.strip():
            return None
        row = self.rows.get(title_id(title))
        if row is None:
            return None
        raw = os.pread(self._file.fileno(), self.row_bytes, row * self.row_bytes)
        return np.frombuffer(raw, dtype=np.float32).tolist()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TitleVectors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
