"""Near-duplicate products in a catalogue: the same image, or image vectors that are near-identical.

Products that share an `image_id` show the same picture (ABO lists many
colour/size variants with one main image): one row per distinct image. Rows
whose vectors have cosine >= the threshold are joined (union-find); the
products of joined rows form one group. The pairs that joined them are kept in
the report, so a later run can reuse those of images that did not change.

Two ways to find the pairs:

- `IndexNeighbours` (the pipeline's): each image's vector asks the run's k-NN
  index for its top-k neighbours (`_msearch` batches), and asks again with 4x k
  while all k are at or above the threshold, so a big group is found whole.
  The cost grows as images x log(images): one HNSW search per image, and on an
  incremental run only the images of changed products are asked (`changed`);
  the pairs among the others come from the previous report (`previous`).
- the exact blocked cosine (`near_pairs`, neighbours=None): unit rows in a
  float32 memory map compared tile by tile, images^2 / 2 x dim multiply-adds.
  The reference the k-NN way is tested against (BENCHMARKS.md: cost at 15k,
  150k, 600k), and the cheaper one for small catalogues.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalogue_search.errors import InvalidValueError
from catalogue_search.neighbours import IndexNeighbours, index_vectors, near_pairs

log = logging.getLogger(__name__)

__all__ = ["DuplicateGroup", "DuplicateReport", "IndexNeighbours", "find_duplicates", "index_vectors", "near_pairs"]

SAME_IMAGE = "same image id"
NEAR_VECTORS = "near-identical image vectors"


@dataclass
class DuplicateGroup:
    item_ids: list[str]
    image_ids: list[str]
    reason: str  # SAME_IMAGE when every product shows one image id, else NEAR_VECTORS
    min_cosine: float | None = None  # the weakest pair among the group's images (None: one image)
    item_names: list[str] = field(default_factory=list)


@dataclass
class DuplicateReport:
    threshold: float
    products: int = 0
    images: int = 0
    groups: list[DuplicateGroup] = field(default_factory=list)
    # Every pair of distinct images at or above the threshold: [image key, image key, cosine].
    pairs: list[list[Any]] = field(default_factory=list)
    method: str = "exact"  # "exact" (blocked matmul) or "index" (k-NN neighbours)
    checked: int = 0  # images whose neighbours were looked for in this run
    reused_pairs: int = 0  # pairs taken from the previous report (unchanged images)

    @property
    def counts(self) -> dict[str, int]:
        in_groups = sum(len(g.item_ids) for g in self.groups)
        return {
            "products": self.products,
            "images": self.images,
            "groups": len(self.groups),
            "same_image_groups": sum(g.reason == SAME_IMAGE for g in self.groups),
            "near_vector_groups": sum(g.reason == NEAR_VECTORS for g in self.groups),
            "products_in_groups": in_groups,
            "folded_away": in_groups - len(self.groups),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "method": self.method,
            "counts": self.counts,
            "checked_images": self.checked,
            "reused_pairs": self.reused_pairs,
            "groups": [asdict(g) for g in self.groups],
            "pairs": self.pairs,
        }


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


class _Images:
    """The distinct images (rows), the products that show each, and the near pairs between rows."""

    def __init__(self) -> None:
        self.row_of: dict[str, int] = {}
        self.keys: list[str] = []
        self.items: list[list[tuple[str, str]]] = []  # row -> [(item_id, item_name)]
        self.pairs: dict[tuple[int, int], float] = {}

    def row(self, key: str) -> int:
        row = self.row_of.get(key)
        if row is None:
            row = self.row_of[key] = len(self.keys)
            self.keys.append(key)
            self.items.append([])
        return row

    def join(self, a: int, b: int, cosine: float) -> None:
        if a != b:
            self.pairs[(min(a, b), max(a, b))] = round(float(cosine), 6)


def image_key(doc: dict[str, Any]) -> str:
    return doc.get("image_id") or doc.get("image_path") or doc["item_id"]


def find_duplicates(
    products: Iterable[tuple[dict[str, Any], Any]],
    *,
    total: int,
    threshold: float,
    block_rows: int = 4096,
    workdir: str | Path | None = None,
    logger: logging.Logger = log,
    neighbours: IndexNeighbours | None = None,
    changed: Collection[str] | None = None,
    previous: dict[str, Any] | None = None,
) -> DuplicateReport:
    """Group near-duplicate products.

    `products` yields (document, image vector) pairs, documents with `item_id`,
    `image_id` and `item_name`; `total` bounds their number. With `neighbours`
    (the run's k-NN index) each image asks the index for its near neighbours;
    without, every pair of images is compared exactly (a memory map of `total` rows).

    Incremental (`neighbours` and `changed`, the item ids of products added or
    changed since `previous`, the served index's report as `as_dict` gave it):
    only the images of changed products ask the index (their vector may be None
    for the others); the pairs between other images still in the catalogue are
    taken from `previous`.
    """
    if not 0 < threshold <= 1:
        raise InvalidValueError(f"the duplicate threshold is a cosine in (0, 1], got {threshold}")
    if changed is not None and neighbours is None:
        raise InvalidValueError("an incremental duplicate check (changed=...) needs the k-NN index (neighbours=...)")
    report = DuplicateReport(threshold=threshold, method="exact" if neighbours is None else "index")
    images = _Images()
    if neighbours is None:
        _exact(images, products, total, threshold, block_rows, workdir, report)
    else:
        _from_index(images, products, neighbours, threshold, changed, previous, report)
    logger.info(
        "duplicates (%s): %d image pairs with cosine >= %.4f among %d images (%d checked, %d pairs reused)",
        report.method,
        len(images.pairs),
        threshold,
        report.images,
        report.checked,
        report.reused_pairs,
    )
    _group(images, report)
    return report


def _exact(images: _Images, products, total, threshold, block_rows, workdir, report: DuplicateReport) -> None:
    with tempfile.TemporaryDirectory(prefix="duplicates-", dir=workdir) as tmp:
        matrix: np.memmap | None = None
        for doc, vector in products:
            report.products += 1
            fresh = image_key(doc) not in images.row_of
            row = images.row(image_key(doc))
            images.items[row].append((doc["item_id"], doc.get("item_name", "")))
            if not fresh:
                continue
            vec = np.asarray(vector, dtype=np.float32)
            if matrix is None:
                matrix = np.memmap(Path(tmp) / "vectors.f32", dtype=np.float32, mode="w+", shape=(total, vec.size))
            if row >= total:
                raise InvalidValueError(f"more products than the {total} announced")
            norm = float(np.linalg.norm(vec))
            matrix[row] = vec / norm if norm else vec
        report.images = report.checked = len(images.keys)
        if matrix is None:
            return
        matrix.flush()
        view = matrix[: report.images]
        for i, j, cos in near_pairs(view, threshold, block_rows):
            images.join(i, j, cos)
        del view, matrix


def _from_index(images: _Images, products, neighbours, threshold, changed, previous, report) -> None:
    pending: dict[int, Any] = {}  # row -> the vector of an image to ask the index about

    def ask(rows: list[int]) -> None:
        for row, near in zip(rows, neighbours.near([pending.pop(r) for r in rows], threshold)):
            for doc, cos in near:
                images.join(row, images.row(image_key(doc)), cos)
        report.checked += len(rows)

    changed = None if changed is None else set(changed)
    asked: set[str] = set()  # the image keys whose neighbours this run looks for
    for doc, vector in products:
        report.products += 1
        key = image_key(doc)
        row = images.row(key)
        images.items[row].append((doc["item_id"], doc.get("item_name", "")))
        if changed is not None and doc["item_id"] not in changed:
            continue
        if key not in asked and vector is not None:
            pending[row] = np.asarray(vector, dtype=np.float32)
        asked.add(key)
        if changed is None and len(pending) >= neighbours.batch:
            ask(list(pending))  # a full check asks as it reads: memory stays one batch
    without = sorted(key for key in asked if images.row_of[key] not in pending and changed is not None)
    if without:
        raise InvalidValueError(f"{len(without)} changed images have no vector to check, first: {without[:5]}")
    rows = list(pending)
    for lo in range(0, len(rows), neighbours.batch):
        ask(rows[lo : lo + neighbours.batch])
    present = {key for key, row in images.row_of.items() if images.items[row]}
    if len(present) != len(images.keys):
        strays = [key for key in images.keys if key not in present][:5]
        raise InvalidValueError(f"the index holds images that no product lists (first: {strays}): a stale index?")
    for a, b, cos in (previous or {}).get("pairs", []) if changed is not None else ():
        if a in present and b in present and a not in asked and b not in asked:
            images.join(images.row_of[a], images.row_of[b], cos)
            report.reused_pairs += 1
    report.images = len(present)


def _group(images: _Images, report: DuplicateReport) -> None:
    uf = _UnionFind(len(images.keys))
    for a, b in images.pairs:
        uf.union(a, b)
    members: dict[int, list[int]] = defaultdict(list)
    for row in range(len(images.keys)):
        members[uf.find(row)].append(row)
    weakest: dict[int, float] = {}
    for (a, b), cos in images.pairs.items():
        root = uf.find(a)
        weakest[root] = min(cos, weakest.get(root, 2.0))
    for root, rows in members.items():
        items = sorted(item for row in rows for item in images.items[row])
        if len(items) < 2:
            continue
        report.groups.append(
            DuplicateGroup(
                item_ids=[i for i, _ in items],
                item_names=[n for _, n in items],
                image_ids=sorted(images.keys[row] for row in rows),
                reason=SAME_IMAGE if len(rows) == 1 else NEAR_VECTORS,
                min_cosine=None if len(rows) == 1 else weakest[root],
            )
        )
    report.groups.sort(key=lambda g: (-len(g.item_ids), g.item_ids))
    report.pairs = sorted([*sorted((images.keys[a], images.keys[b])), cos] for (a, b), cos in images.pairs.items())
