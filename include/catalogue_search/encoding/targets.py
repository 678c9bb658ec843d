"""What the pipeline encodes: a product's image (IMAGE model) or its title (TEXT model).

One encode path serves both (`store`, `chunks`, `outputs`); a `Target` holds
what differs: the model, where its store lives, the records a chunk carries,
and what decides that an entry is new (an image's ETag; a title's id is a
digest of its text, so a changed title is a new id).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from catalogue_search import contract
from catalogue_search.encoding import titles
from catalogue_search.s3util import list_objects
from catalogue_search.settings import Settings


@dataclass(frozen=True)
class Target:
    """One kind of encoded entry; `IMAGE` and `TITLE` are the two there are."""

    name: str  # "image" | "title": in logs and reports
    encode_type: str  # the handler's ENCODE_TYPE (contract.IMAGE | contract.TEXT)
    store_dir: str  # the store's folder under the embeddings prefix
    run_dir: str  # the run's encode files under the run's prefix
    job_suffix: str  # added to the run key in the transform job's name

    @property
    def content_type(self) -> str:
        return contract.CHUNK_CONTENT_TYPES[self.encode_type]

    @property
    def plural(self) -> str:
        return f"{self.name}s"


IMAGE = Target("image", contract.IMAGE, store_dir="", run_dir="", job_suffix="")
TITLE = Target("title", contract.TEXT, store_dir="names/", run_dir="names/", job_suffix="/names")
TARGETS = (IMAGE, TITLE)


@dataclass
class Wanted:
    """What a run's products ask of a target's store: the ids, their ETags ("" where the
    id is its content) and how a chunk of them is written."""

    ids: list[str]
    etags: dict[str, str]
    records: Callable[[list[str]], bytes]


def wanted(target: Target, settings: Settings, s3, products: Iterable[dict[str, Any]]) -> Wanted:
    """The distinct ids `products` need encoded for `target`; images cost one listing for their ETags."""
    products = list(products)
    if target == TITLE:
        by_id = titles.titles_of(products)
        return Wanted(sorted(by_id), dict.fromkeys(by_id, ""), lambda ids: titles.title_records(by_id, ids))
    paths = sorted({p["path"] for p in products})
    return Wanted(paths, image_etags(s3, settings), lambda ids: image_records(settings, ids))


def image_etags(s3, settings: Settings) -> dict[str, str]:
    """ABO `path` -> ETag of every image in the project bucket (one listing, 1,000 keys a request)."""
    prefix = settings.images_prefix
    return {key[len(prefix) :]: meta["etag"] for key, meta in list_objects(s3, settings.bucket, prefix).items()}


def image_records(settings: Settings, paths: Iterable[str]) -> bytes:
    """One transform request: JSON Lines, `{"id": path, "s3_uri": ...}` per image."""
    base = f"s3://{settings.bucket}/{settings.images_prefix}"
    return b"".join(json.dumps({"id": p, "s3_uri": base + p}, separators=(",", ":")).encode() + b"\n" for p in paths)
