"""Reciprocal rank fusion, hit folding and the blocked near-duplicate search (no services)."""

from __future__ import annotations

import numpy as np
import pytest

from catalogue_search import duplicates, index, search
from catalogue_search.search.ranking import Candidate


def test_rrf_sums_weighted_reciprocal_ranks():
    fused = search.reciprocal_rank_fusion(
        {"lexical": ["a", "b"], "image": ["b", "c", "a"]}, {"lexical": 2.0, "image": 1.0}, rank_constant=10
    )
    scores = dict(fused)
    assert scores["a"] == pytest.approx(2 / 11 + 1 / 13)
    assert scores["b"] == pytest.approx(2 / 12 + 1 / 11)
    assert scores["c"] == pytest.approx(1 / 12)
    assert [i for i, _ in fused] == ["a", "b", "c"]
    # A zero weight leaves a list out; ties break by id.
    assert search.reciprocal_rank_fusion({"x": ["b"], "y": ["a"]}, {"x": 1, "y": 1}) == [
        ("a", pytest.approx(1 / 61)),
        ("b", pytest.approx(1 / 61)),
    ]
    assert [i for i, _ in search.reciprocal_rank_fusion({"x": ["b"], "y": ["a"]}, {"x": 0, "y": 1})] == ["a"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank_constant": 0},
        {"candidates": 0},
        {"lexical_weight": -1},
        {"lexical_weight": 0, "name_weight": 0, "image_weight": 0},
    ],
)
def test_fusion_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        search.Fusion(**kwargs)


def _cand(item_id, vec, image_id=None):
    return Candidate(1.0, {"item_id": item_id, "image_id": image_id or item_id, index.VECTOR_FIELD: vec})


def test_fold_candidates_by_image_id_and_by_cosine():
    cands = [
        _cand("a", [1.0, 0.0]),
        _cand("b", [0.0, 1.0]),
        _cand("a2", [0.999, 0.01]),  # cosine ~0.99995 with a
        _cand("b2", [0.6, 0.8], image_id="b"),  # same image id as b, different vector
        _cand("c", [0.7, 0.7]),
    ]
    kept = search.fold_candidates(cands, 0.98)
    assert [(c.source["item_id"], c.folded) for c in kept] == [("a", ["a2"]), ("b", ["b2"]), ("c", [])]
    assert [c.source["item_id"] for c in search.fold_candidates(cands, 1.01)] == ["a", "b", "a2", "c"]


def test_blocked_pairs_equal_the_brute_force_pairs():
    rng = np.random.default_rng(7)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    base[[5, 17, 33]] = base[3] + rng.normal(scale=0.01, size=(3, 16))  # a group spanning tiles
    base[39] = base[0]
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    sims = unit @ unit.T
    want = {(i, j) for i in range(40) for j in range(i + 1, 40) if sims[i, j] >= 0.98}
    for block in (1, 7, 16, 64):
        got = {(i, j) for i, j, _ in duplicates.near_pairs(unit, 0.98, block)}
        assert got == want, block
    assert want >= {(3, 5), (3, 17), (3, 33), (0, 39)}


def test_find_duplicates_groups_by_image_then_by_vector(tmp_path):
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(6, 8))
    vecs[4] = vecs[1] * 3  # same direction: cosine 1
    docs = [
        ({"item_id": "i0", "image_id": "m0", "item_name": "zero"}, vecs[0]),
        ({"item_id": "i1", "image_id": "m1", "item_name": "one"}, vecs[1]),
        ({"item_id": "i2", "image_id": "m0", "item_name": "zero again"}, vecs[2]),  # m0's vector stays m0's first
        ({"item_id": "i3", "image_id": "m3", "item_name": "three"}, vecs[3]),
        ({"item_id": "i4", "image_id": "m4", "item_name": "one, twin"}, vecs[4]),
        ({"item_id": "i5", "image_id": "m5", "item_name": "five"}, vecs[5]),
    ]
    report = duplicates.find_duplicates(iter(docs), total=6, threshold=0.98, block_rows=2, workdir=tmp_path)
    got = {tuple(g.item_ids): (g.reason, g.image_ids) for g in report.groups}
    assert got == {
        ("i0", "i2"): (duplicates.SAME_IMAGE, ["m0"]),
        ("i1", "i4"): (duplicates.NEAR_VECTORS, ["m1", "m4"]),
    }
    assert report.counts == {
        "products": 6,
        "images": 5,
        "groups": 2,
        "same_image_groups": 1,
        "near_vector_groups": 1,
        "products_in_groups": 4,
        "folded_away": 2,
    }
    assert list(tmp_path.iterdir()) == []  # the memory map is removed
    with pytest.raises(ValueError):
        duplicates.find_duplicates(iter(docs), total=6, threshold=0)
