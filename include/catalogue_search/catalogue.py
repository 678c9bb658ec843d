"""Metadata filtering: ABO listings + images.csv -> the products to index.

Keeps the products that have an `item_name` in the chosen language (the first
value wins, as the original sample did), joins them with `images.csv.gz` on
`main_image_id`, drops duplicates by `item_id`, and counts every product it
drops and why.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

log = logging.getLogger(__name__)

LISTINGS_KEY = "listings/metadata/listings_{shard}.json.gz"
IMAGES_CSV_KEY = "images/metadata/images.csv.gz"
ALL_SHARDS = [format(n, "x") for n in range(16)]

# The columns of a product record, end to end (manifest, index document).
PRODUCT_FIELDS = [
    "item_id",
    "item_name",
    "main_image_id",
    "image_id",
    "path",
    "height",
    "width",
    "product_type",
    "brand",
]

DROP_NO_TITLE = "no_title_in_language"
DROP_NO_IMAGE = "no_main_image"
DROP_UNKNOWN_IMAGE = "image_id_unknown"
DROP_DUPLICATE = "duplicate_item_id"


@dataclass
class FilterReport:
    shard: str
    listings: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def first_value(entries: Any, language_tag: str | None = None) -> str | None:
    """The first non-empty `value` of an ABO multilingual list in `language_tag`."""
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if language_tag is not None and entry.get("language_tag") != language_tag:
            continue
        value = entry.get("value")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def read_listings(raw: bytes) -> list[dict[str, Any]]:
    """Parse a gzipped JSON-lines listings file; a bad line is an error naming its number."""
    rows = []
    with gzip.open(io.BytesIO(raw), "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"listings line {number} is not valid JSON: {exc}") from exc
    return rows


def read_images_csv(raw: bytes):
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(raw), compression="gzip", dtype={"image_id": str, "path": str})
    missing = {"image_id", "height", "width", "path"} - set(frame.columns)
    if missing:
        raise ValueError(f"images.csv.gz lacks the columns {sorted(missing)}")
    return frame.drop_duplicates("image_id")


def filter_listings(
    listings: Iterable[dict[str, Any]],
    images,
    *,
    language_tag: str,
    shard: str = "?",
) -> tuple[list[dict[str, Any]], FilterReport]:
    """Products with a title in `language_tag` and a known main image, one per item_id."""
    import pandas as pd

    report = FilterReport(shard=shard)
    drops: Counter[str] = Counter()
    rows = []
    for listing in listings:
        report.listings += 1
        name = first_value(listing.get("item_name"), language_tag)
        if name is None:
            drops[DROP_NO_TITLE] += 1
            continue
        image_id = listing.get("main_image_id")
        if not isinstance(image_id, str) or not image_id:
            drops[DROP_NO_IMAGE] += 1
            continue
        rows.append(
            {
                "item_id": str(listing.get("item_id")),
                "item_name": name,
                "main_image_id": image_id,
                "product_type": first_value(listing.get("product_type")),
                "brand": first_value(listing.get("brand"), language_tag) or first_value(listing.get("brand")),
            }
        )
    frame = pd.DataFrame(rows, columns=["item_id", "item_name", "main_image_id", "product_type", "brand"])
    before = len(frame)
    frame = frame.drop_duplicates("item_id", keep="first")
    drops[DROP_DUPLICATE] += before - len(frame)
    joined = frame.merge(images, how="left", left_on="main_image_id", right_on="image_id")
    unknown = joined["path"].isna()
    drops[DROP_UNKNOWN_IMAGE] += int(unknown.sum())
    joined = joined[~unknown].sort_values("item_id")
    products = []
    for rec in joined.to_dict("records"):
        products.append(
            {
                "item_id": rec["item_id"],
                "item_name": rec["item_name"],
                "main_image_id": rec["main_image_id"],
                "image_id": rec["image_id"],
                "path": rec["path"],
                "height": int(rec["height"]),
                "width": int(rec["width"]),
                "product_type": _none_if_nan(rec["product_type"]),
                "brand": _none_if_nan(rec["brand"]),
            }
        )
    report.kept = len(products)
    report.dropped = {reason: count for reason, count in sorted(drops.items()) if count}
    return products, report


def _none_if_nan(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and value != value) else value


def merge_products(
    shard_products: Iterable[list[dict[str, Any]]], max_products: int | None = None
) -> tuple[list[dict], int]:
    """Union of shard outputs, one product per item_id (first shard wins), in item_id order.

    Returns the products and how many cross-shard duplicates were dropped.
    """
    seen: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for products in shard_products:
        for product in products:
            if product["item_id"] in seen:
                duplicates += 1
                continue
            seen[product["item_id"]] = product
    merged = [seen[key] for key in sorted(seen)]
    if max_products:
        merged = merged[:max_products]
    return merged, duplicates


def to_jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def from_jsonl(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
