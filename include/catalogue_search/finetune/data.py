"""The fine-tune's data: the published catalogue's (image, title) pairs, split by product.

The published catalogue is what the alias serves: the documents of its index
(the products whose image was copied and encoded; the per-shard state lists
also hold those the run dropped). Each product is one pair, its image in the
project bucket (`images_prefix` + `path`, the document's `image_path`). The split is by
product, seeded and stratified by product type: within each type the
products are ordered by a hash of (seed, item_id) and cut into test,
validation and train, so a product is in exactly one part, a test product is
never trained on, and the same catalogue and seed give the same split.

Written under the run's prefix (`finetune_prefix(settings, run_key)`):
`data/train/train.jsonl`, `data/validation/validation.jsonl`,
`data/test/test.jsonl` and `data/images.manifest` (a SageMaker ManifestFile
of the train and validation images, for the training job's `images` channel).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from catalogue_search import index
from catalogue_search.contract import JSON, JSONLINES
from catalogue_search.errors import PermanentError
from catalogue_search.s3util import put_bytes
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

PARTS = ("train", "validation", "test")
PAIR_FIELDS = ("item_id", "item_name", "product_type", "path", "image_id")
NO_TYPE = "(none)"


def finetune_prefix(settings: Settings, run_key: str) -> str:
    return f"{settings.run_prefix(run_key)}finetune/"


def published_products(client, alias: str) -> tuple[str, list[dict[str, Any]]]:
    """(index, products) of the catalogue `alias` serves: its index's documents, in ABO's names."""
    from opensearchpy import helpers

    targets = index.alias_targets(client, alias)
    if not targets:
        raise PermanentError(f"alias {alias} serves no index: publish the catalogue (catalogue_ingest) first")
    served = targets[0]
    fields = ["item_id", "item_name", "product_type", "image_id", "image_path"]
    docs = [h["_source"] for h in helpers.scan(client, index=served, query={"_source": fields}, size=1000)]
    products = [{**{k: v for k, v in d.items() if k != "image_path"}, "path": d.get("image_path")} for d in docs]
    return served, sorted((p for p in products if p["path"]), key=lambda p: p["item_id"])


def _order(seed: int, item_id: str) -> str:
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()


def split(
    products: list[dict[str, Any]], *, seed: int, test: float, validation: float
) -> dict[str, list[dict[str, Any]]]:
    """Products -> {"train", "validation", "test"}, by product, stratified by product type."""
    if not (0 < test < 1 and 0 <= validation < 1 and test + validation < 1):
        raise PermanentError(f"test ({test}) and validation ({validation}) must be fractions summing to under 1")
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for product in products:
        if product["item_id"] in seen or not str(product.get("item_name") or "").strip():
            continue
        seen.add(product["item_id"])
        by_type[product.get("product_type") or NO_TYPE].append(product)
    parts: dict[str, list[dict[str, Any]]] = {part: [] for part in PARTS}
    for kind in sorted(by_type):
        group = sorted(by_type[kind], key=lambda p: _order(seed, p["item_id"]))
        n_test = round(len(group) * test)
        n_val = round(len(group) * validation)
        parts["test"] += group[:n_test]
        parts["validation"] += group[n_test : n_test + n_val]
        parts["train"] += group[n_test + n_val :]
    for part in PARTS:
        parts[part].sort(key=lambda p: p["item_id"])
    return parts


@dataclass(frozen=True)
class Snapshot:
    """What one export wrote: where, how many, and a digest of the pairs (the data snapshot)."""

    index: str
    prefix: str
    counts: dict[str, int]
    digest: str
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def uri(self, part: str) -> str:
        return f"{self.prefix}data/{part}/"


def _pair(settings: Settings, product: dict[str, Any]) -> dict[str, Any]:
    pair = {k: product.get(k) for k in PAIR_FIELDS}
    pair["image"] = f"s3://{settings.bucket}/{settings.images_prefix}{product['path']}"
    return pair


def export_pairs(
    settings: Settings,
    s3,
    client,
    *,
    alias: str,
    run_key: str,
    seed: int,
    test: float,
    validation: float,
    logger: logging.Logger = log,
) -> Snapshot:
    """Split the published catalogue of `alias` and write the parts as JSON Lines (see the module docstring)."""
    served, products = published_products(client, alias)
    parts = split(products, seed=seed, test=test, validation=validation)
    if len(parts["train"]) < 2 or len(parts["test"]) < 2:
        raise PermanentError(f"{len(products)} products in {served}: too few to train on and test")
    prefix = finetune_prefix(settings, run_key)
    digest = hashlib.sha256()
    for part in PARTS:
        body = "".join(json.dumps(_pair(settings, p), sort_keys=True) + "\n" for p in parts[part]).encode()
        digest.update(body)
        put_bytes(s3, settings.bucket, f"{prefix}data/{part}/{part}.jsonl", body, JSONLINES)
    manifest = [{"prefix": f"s3://{settings.bucket}/{settings.images_prefix}"}]
    manifest += sorted({p["path"] for part in ("train", "validation") for p in parts[part]})
    put_bytes(s3, settings.bucket, f"{prefix}data/images.manifest", json.dumps(manifest).encode(), JSON)
    counts = {part: len(parts[part]) for part in PARTS}
    snapshot = Snapshot(served, f"s3://{settings.bucket}/{prefix}", counts, digest.hexdigest()[:16], seed)
    overlap = {p["item_id"] for p in parts["test"]} & {p["item_id"] for p in parts["train"] + parts["validation"]}
    assert not overlap, overlap  # the split's promise; a failure here is a bug, not bad data
    logger.info(
        "fine-tune data from %s (%d products): train %d, validation %d, test %d pairs (seed %d, snapshot %s) at %s",
        served,
        len(products),
        *(counts[p] for p in PARTS),
        seed,
        snapshot.digest,
        snapshot.prefix,
    )
    return snapshot
