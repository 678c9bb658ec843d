"""Near-duplicate products in a catalogue: the same image, or image vectors that are near-identical.

Two passes over the run's index, with bounded memory:

1. Group by image: products that share an `image_id` show the same picture
   (ABO lists many colour/size variants with one main image). One vector row
   per distinct image goes to a float32 memory-mapped file on local disk.
2. Blocked cosine: the unit rows are compared tile by tile (`block_rows` x
   `block_rows` similarities at a time, about 4 * block_rows^2 bytes), each
   pair at most once; pairs at or above the threshold are joined with a
   union-find. Products of joined images form one group.

The cost is O(images^2 * dim) multiply-adds in numpy (ABO's 398k images at
512-d: about 4e13, minutes on one worker), and the memory is one tile plus the
page cache of the memory map, whatever the catalogue's size.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalogue_search.errors import InvalidValueError

log = logging.getLogger(__name__)

SAME_IMAGE = "same image id"
NEAR_VECTORS = "near-identical image vectors"


@dataclass
class DuplicateGroup:
    item_ids: list[str]
    image_ids: list[str]
    reason: str  # SAME_IMAGE when every product shows one image id, else NEAR_VECTORS
    min_cosine: float | None = None  # the weakest link that joined the group's images (None: one image)
    item_names: list[str] = field(default_factory=list)


@dataclass
class DuplicateReport:
    threshold: float
    products: int = 0
    images: int = 0
    groups: list[DuplicateGroup] = field(default_factory=list)

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
        return {"threshold": self.threshold, "counts": self.counts, "groups": [asdict(g) for g in self.groups]}


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.weakest: dict[int, float] = {}

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int, cos: float) -> None:
        ra, rb = self.find(a), self.find(b)
        weakest = min(cos, self.weakest.pop(ra, 2.0), self.weakest.pop(rb, 2.0))
        if ra != rb:
            self.parent[rb] = ra
        self.weakest[ra] = weakest


def near_pairs(matrix: np.ndarray, threshold: float, block_rows: int = 4096) -> Iterator[tuple[int, int, float]]:
    """(i, j, cosine) with i < j for every pair of unit rows with cosine >= threshold, tile by tile."""
    n = matrix.shape[0]
    for i0 in range(0, n, block_rows):
        a = np.asarray(matrix[i0 : i0 + block_rows], dtype=np.float32)
        for j0 in range(i0, n, block_rows):
            b = a if j0 == i0 else np.asarray(matrix[j0 : j0 + block_rows], dtype=np.float32)
            sims = a @ b.T
            if j0 == i0:
                sims = np.triu(sims, k=1) + np.tril(np.full_like(sims, -2.0))  # each pair once, no self pairs
            rows, cols = np.nonzero(sims >= threshold)
            for r, c in zip(rows.tolist(), cols.tolist()):
                yield i0 + r, j0 + c, float(sims[r, c])


def find_duplicates(
    products: Iterable[tuple[dict[str, Any], Any]],
    *,
    total: int,
    threshold: float,
    block_rows: int = 4096,
    workdir: str | Path | None = None,
    logger: logging.Logger = log,
) -> DuplicateReport:
    """Group near-duplicate products.

    `products` yields (document, image vector) pairs, documents with `item_id`,
    `image_id` and `item_name`; `total` bounds their number (the memory map's rows).
    """
    if not 0 < threshold <= 1:
        raise InvalidValueError(f"the duplicate threshold is a cosine in (0, 1], got {threshold}")
    report = DuplicateReport(threshold=threshold)
    row_of: dict[str, int] = {}  # image id -> row
    items_of: list[list[tuple[str, str]]] = []  # row -> [(item_id, item_name)]
    with tempfile.TemporaryDirectory(prefix="duplicates-", dir=workdir) as tmp:
        matrix: np.memmap | None = None
        for doc, vector in products:
            report.products += 1
            key = doc.get("image_id") or doc.get("image_path") or doc["item_id"]
            row = row_of.get(key)
            if row is None:
                vec = np.asarray(vector, dtype=np.float32)
                if matrix is None:
                    matrix = np.memmap(Path(tmp) / "vectors.f32", dtype=np.float32, mode="w+", shape=(total, vec.size))
                if len(row_of) >= total:
                    raise ValueError(f"more products than the {total} announced")
                row = row_of[key] = len(row_of)
                norm = float(np.linalg.norm(vec))
                matrix[row] = vec / norm if norm else vec
                items_of.append([])
            items_of[row].append((doc["item_id"], doc.get("item_name", "")))
        report.images = len(row_of)
        if matrix is None:
            return report
        matrix.flush()
        view = matrix[: report.images]
        uf = _UnionFind(report.images)
        pairs = 0
        for i, j, cos in near_pairs(view, threshold, block_rows):
            uf.union(i, j, cos)
            pairs += 1
        logger.info("duplicates: %d image pairs with cosine >= %.4f among %d images", pairs, threshold, report.images)
        del view, matrix
    image_ids = {row: key for key, row in row_of.items()}
    members: dict[int, list[int]] = defaultdict(list)
    for row in range(report.images):
        members[uf.find(row)].append(row)
    for root, rows in members.items():
        items = sorted(item for row in rows for item in items_of[row])
        if len(items) < 2:
            continue
        report.groups.append(
            DuplicateGroup(
                item_ids=[i for i, _ in items],
                item_names=[n for _, n in items],
                image_ids=sorted(image_ids[row] for row in rows),
                reason=SAME_IMAGE if len(rows) == 1 else NEAR_VECTORS,
                min_cosine=None if len(rows) == 1 else round(uf.weakest.get(root, threshold), 6),
            )
        )
    report.groups.sort(key=lambda g: (-len(g.item_ids), g.item_ids))
    return report


def index_vectors(client, index: str, vector_field: str, batch: int = 500) -> Iterator[tuple[dict[str, Any], Any]]:
    """(document, image vector) of every product in `index`, streamed with a scroll."""
    from opensearchpy import helpers

    fields = ["item_id", "item_name", "image_id", "main_image_id", "image_path", vector_field]
    for hit in helpers.scan(client, index=index, query={"_source": fields}, size=batch, preserve_order=False):
        src = hit["_source"]
        yield src, src.pop(vector_field)
