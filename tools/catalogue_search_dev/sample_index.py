"""An index of the sample catalogue built in-process (tests, the search-mode evaluation).

Reads the ABO layout from a local build directory, keeps the products the
pipeline keeps (`catalogue.filter_listings`), encodes each main image with the
IMAGE handler and each `item_name` with the TEXT handler of one model
artifact (the same handler code batch transform runs), and loads an index
with the production mapping (`index.index_body`, `index.document`). No DAG,
no S3: seconds with the tiny test model, where the DAG takes minutes.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catalogue_search import catalogue, index
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    products: list[dict[str, Any]]
    images: np.ndarray  # (n, d) image vectors, rows as products
    names: np.ndarray  # (n, d) title vectors
    artifact_version: str = ""  # of the artifact that encoded them (the index records it, as the pipeline does)


def sample_products(layout: Path, language_tag: str = "en_US") -> list[dict[str, Any]]:
    """The products the pipeline keeps from a local ABO layout, one per item_id, item_id order."""
    layout = Path(layout)
    images = catalogue.read_images_csv((layout / "images/metadata/images.csv.gz").read_bytes())
    shards = []
    for path in sorted(glob.glob(str(layout / "listings/metadata/listings_*.json.gz"))):
        listings = catalogue.read_listings(Path(path).read_bytes())
        products, _ = catalogue.filter_listings(listings, images, language_tag=language_tag)
        shards.append(products)
    merged, _ = catalogue.merge_products(shards)
    return [p for p in merged if (layout / "images/small" / p["path"]).is_file()]


def encode(
    layout: Path, products: list[dict[str, Any]], artifact: Path, batch: int = 64, cache_dir: Path | None = None
) -> Encoded:
    """Image and title vectors of `products`; a product whose image cannot be decoded is dropped."""
    image_handler = load_handler_from_artifact(artifact, "IMAGE", cache_dir=cache_dir)
    text_handler = load_handler_from_artifact(artifact, "TEXT", cache_dir=cache_dir)
    kept, rows = [], []
    for start in range(0, len(products), batch):
        part = products[start : start + batch]
        blobs = [(Path(layout) / "images/small" / p["path"]).read_bytes() for p in part]
        try:
            rows.append(image_handler.encode_images(blobs))
            kept += part
        except Exception:  # one corrupt image fails its batch: encode one by one
            for product, blob in zip(part, blobs):
                try:
                    rows.append(image_handler.encode_images([blob]))
                    kept.append(product)
                except Exception as exc:
                    log.warning("image of %s could not be encoded, dropped: %s", product["item_id"], exc)
    names = text_handler.encode_texts([p["item_name"] for p in kept])
    return Encoded(kept, np.concatenate(rows), names, image_handler.artifact_version)


def load(client, settings: Settings, name: str, alias: str, encoded: Encoded) -> int:
    """Create index `name` (production mapping), load the products, point `alias` at it."""
    dim = int(encoded.images.shape[1])
    body = index.index_body(settings, alias=alias, dimension=dim, run_key=name)
    body["mappings"]["_meta"]["artifact_version"] = encoded.artifact_version
    index.create_index(client, name, body)
    docs = (
        index.document(p, img.tolist(), settings.model_name, name_vector=txt.tolist())
        for p, img, txt in zip(encoded.products, encoded.images, encoded.names)
    )
    report = index.bulk_load(client, name, docs, total=len(encoded.products))
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} documents rejected: {report.failed[0]}")
    index.finish_loading(client, name, 0)
    client.indices.update_aliases(body={"actions": [{"add": {"index": name, "alias": alias}}]})
    return report.indexed


def identical_image_groups(layout: Path, products: list[dict[str, Any]]) -> list[list[str]]:
    """Products whose main image files have the same bytes (different image ids), as sorted item id lists."""
    import hashlib

    by_digest: dict[str, list[str]] = {}
    for p in products:
        digest = hashlib.sha256((Path(layout) / "images/small" / p["path"]).read_bytes()).hexdigest()
        by_digest.setdefault(digest, []).append(p["item_id"])
    return sorted(sorted(ids) for ids in by_digest.values() if len(ids) > 1)


def layout_dir(out_dir: Path | None = None) -> Path:
    """The sample catalogue's local build (the one `./dev demo` uses), built once if missing."""
    from catalogue_search_dev import sample_catalogue as sc

    out_dir = Path(out_dir or sc.default_build_dir())
    sc.ensure_built(out_dir)
    return out_dir
