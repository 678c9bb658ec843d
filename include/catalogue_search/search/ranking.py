"""Ranking maths, with no I/O: cosine similarity, reciprocal rank fusion, folding near-duplicate hits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from catalogue_search import index


def cosine_similarity(score: float) -> float:
    """The cosine similarity of a hit: the engine's cosinesimil score is (1 + cos) / 2."""
    return max(-1.0, min(1.0, 2.0 * float(score) - 1.0))


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


@dataclass(frozen=True)
class Fusion:
    """Reciprocal rank fusion: score(d) = sum over lists of weight / (rank_constant + rank of d).

    Each list (BM25 on the title, k-NN on the title vectors, k-NN on the image
    vectors) contributes its top `candidates`; a weight of 0 leaves a list out.
    60 is the rank constant of Cormack et al. (2009) and of OpenSearch's own RRF.
    """

    rank_constant: int = 60
    lexical_weight: float = 1.0
    name_weight: float = 1.0
    image_weight: float = 1.0
    candidates: int = 100

    def __post_init__(self) -> None:
        if self.rank_constant < 1 or self.candidates < 1:
            raise ValueError("rank_constant and candidates must be >= 1")
        if min(self.weights.values()) < 0 or not any(self.weights.values()):
            raise ValueError("fusion weights must be >= 0 and not all 0")

    @property
    def weights(self) -> dict[str, float]:
        """The weight of each ranked list, by its name."""
        return {"lexical": self.lexical_weight, "name": self.name_weight, "image": self.image_weight}


def reciprocal_rank_fusion(
    ranked: dict[str, list[str]], weights: dict[str, float], rank_constant: int = 60
) -> list[tuple[str, float]]:
    """Fuse ranked id lists: (id, score) by descending score, ties by id (deterministic)."""
    scores: dict[str, float] = {}
    for name, ids in ranked.items():
        weight = weights.get(name, 1.0)
        if not weight:
            continue
        for rank, doc_id in enumerate(ids, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (rank_constant + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass
class Candidate:
    """A hit before paging: its score, its document and the hits folded into it."""

    score: float
    source: dict[str, Any]
    folded: list[str] = field(default_factory=list)
    knn_score: float | None = None  # fused candidates: the best k-NN score (0: found by BM25 alone)

    @property
    def similarity(self) -> float | None:
        """A fused candidate's cosine similarity: its best k-NN score's (0 when BM25 alone found it).
        None for the others: their score is a k-NN score, and `Hit` takes the similarity from it."""
        if self.knn_score is None:
            return None
        return cosine_similarity(self.knn_score) if self.knn_score else 0.0


def fold_candidates(candidates: list[Candidate], threshold: float) -> list[Candidate]:
    """Fold, in rank order, each candidate into the first kept one with the same image
    (image id or image path) or an image vector with cosine >= `threshold`."""
    kept: list[Candidate] = []
    for cand in candidates:
        src = cand.source
        for lead in kept:
            ls = lead.source
            same_image = (src.get("image_id") and src.get("image_id") == ls.get("image_id")) or (
                src.get("image_path") and src.get("image_path") == ls.get("image_path")
            )
            vec, lvec = src.get(index.VECTOR_FIELD), ls.get(index.VECTOR_FIELD)
            if same_image or (vec and lvec and cosine(vec, lvec) >= threshold):
                lead.folded.append(src["item_id"])
                break
        else:
            kept.append(cand)
    return kept
