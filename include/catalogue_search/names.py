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


def name_updates(index: str, field: str, by_title: dict[str, list[str]], vectors: Iterator[tuple[str, Any]]):
    """Bulk partial updates that add each product's title vector, streamed title chunk by chunk."""
    for tid, vector in vectors:
        row = vector.tolist()
        for item_id in by_title.get(tid, ()):
            yield {"_op_type": "update", "_index": index, "_id": item_id, "doc": {field: row}}
