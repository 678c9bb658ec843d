"""The quality figures: exact metrics on small cases, chance levels, the seeded sample, the gate's rule."""

from __future__ import annotations

import math

import pytest

from catalogue_search import quality
from catalogue_search.quality_gate import artifact_weights, gate

H10 = sum(1 / r for r in range(1, 11))


def test_metrics_of_known_ranks():
    # ranks of the product itself: first, third, not in the first 10, tenth, sixth
    got = quality.metrics([1, 3, None, 10, 6])
    assert got == {
        "recall@1": 0.2,
        "recall@5": 0.4,
        "recall@10": 0.8,
        "mrr": round((1 + 1 / 3 + 1 / 10 + 1 / 6) / 5, 6),
    }


def test_a_rank_beyond_the_depth_counts_as_not_found():
    assert quality.metrics([11, 40]) == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr": 0.0}
    assert quality.metrics([]) == dict.fromkeys(quality.METRICS, 0.0)


@pytest.mark.parametrize("products", [1, 3, 10, 25, 773])
def test_chance_is_the_mean_over_every_rank_a_random_ranking_can_give(products):
    every_rank = list(range(1, products + 1))  # a random ranking puts the product at each rank equally often
    assert quality.chance(products) == pytest.approx(quality.metrics(every_rank), abs=1e-6)


def test_chance_levels_in_closed_form():
    assert quality.chance(1000) == pytest.approx(
        {"recall@1": 0.001, "recall@5": 0.005, "recall@10": 0.01, "mrr": H10 / 1000}, abs=1e-6
    )
    assert quality.chance(4)["recall@10"] == 1.0  # fewer products than hits: always found
    assert quality.chance(0) == dict.fromkeys(quality.METRICS, 0.0)


def test_the_sample_is_seeded_capped_and_stable():
    docs = [{"item_id": f"P{i:04d}"} for i in range(50)]
    first = quality.sample(docs, 10, seed=7)
    assert len(first) == 10
    assert quality.sample(list(reversed(docs)), 10, seed=7) == first  # input order does not matter
    assert quality.sample(docs, 10, seed=8) != first  # the seed does
    assert len(quality.sample(docs, 1000, seed=7)) == 50 == len(quality.sample(docs, 0, seed=7))  # all when fewer
    # a product that leaves the catalogue (not in the sample) leaves the sample as it was
    gone = next(d for d in docs if d not in first)
    assert quality.sample([d for d in docs if d is not gone], 10, seed=7) == first


def test_rank_of_the_first_wanted_hit():
    assert quality.rank_of(["a", "b", "c"], {"c"}) == 3
    assert quality.rank_of(["a", "b"], {"z"}) is None
    assert quality.rank_of(["a", "b", "c"], lambda x: x in "bc") == 2


def test_the_margin_shrinks_with_the_sample():
    assert quality.margin(0.5, 100) == pytest.approx(1.96 * 0.05)
    assert quality.margin(0.5, 10_000) == pytest.approx(1.96 * 0.005)
    assert quality.margin(0.0, 100) == 0.0


def _q(recall10: float, n: int = 1000, version: str = "new") -> dict:
    modes = {m: dict.fromkeys(quality.METRICS, 0.0) for m in quality.MODES}
    modes["image"]["recall@10"] = recall10
    return {"artifact_version": version, "sample_size": n, "modes": modes}


def test_a_new_model_worse_beyond_tolerance_and_margin_is_refused_with_its_drop():
    verdict = gate(_q(0.70), _q(0.80, version="old"), "products-v1", tolerance=0.02)
    spread = math.sqrt(0.8 * 0.2 / 1000 + 0.7 * 0.3 / 1000)
    assert verdict.refused
    assert verdict.drop == pytest.approx(0.10)
    assert verdict.allowed == pytest.approx(0.02 + 1.96 * spread, abs=1e-6)
    assert "drop +0.1000" in verdict.reason and "products-v1" in verdict.reason


def test_a_drop_within_the_sampling_margin_passes_and_a_small_sample_widens_it():
    assert not gate(_q(0.77), _q(0.80, version="old"), "v1", tolerance=0.02).refused  # 0.03 < 0.02 + 0.036
    assert gate(_q(0.70, n=10_000), _q(0.80, n=10_000, version="old"), "v1", tolerance=0.0).refused
    assert not gate(_q(0.70, n=30), _q(0.80, n=30, version="old"), "v1", tolerance=0.0).refused


def test_the_same_model_is_reported_not_gated():
    verdict = gate(_q(0.10, version="same"), _q(0.90, version="same"), "v1", tolerance=0.02)
    assert not verdict.refused and verdict.same_model and "reported only" in verdict.reason


def test_nothing_to_compare_with_passes_and_says_why():
    assert "no index is served" in gate(_q(0.5), None, None, 0.02).reason
    unmeasured = gate(_q(0.5), {"artifact_version": "old"}, "v1", 0.02)
    assert not unmeasured.refused and "no recorded quality" in unmeasured.reason


def test_better_is_never_refused():
    assert not gate(_q(0.9), _q(0.2, version="old"), "v1", tolerance=0.0).refused


@pytest.mark.parametrize(
    ("metadata", "config", "expected"),
    [
        ({}, {"pretrained": "openai"}, {"random": True, "pretrained": None}),  # no key: random
        ({"random-weights": "true"}, {}, {"random": True, "pretrained": None}),
        ({"random-weights": "TRUE"}, {}, {"random": True, "pretrained": None}),
        ({"random-weights": "false"}, {"pretrained": "openai"}, {"random": False, "pretrained": "openai"}),
        ({"random-weights": "false"}, {"random_weights": True}, {"random": True, "pretrained": None}),
    ],
)
def test_random_weights_unless_the_artifact_says_otherwise(metadata, config, expected):
    assert artifact_weights(metadata, config) == expected


def _record(random: bool) -> dict:
    return {
        "index": "products-v2",
        "model": "ViT-B-32",
        "artifact_version": "abc",
        "random_weights": random,
        "sample_size": 3,
        "products": 3,
        "seed": 0,
        "chance": quality.chance(3),
        "modes": {m: quality.metrics([1, 2, None]) for m in quality.MODES},
        "per_product_type": {"CHAIR": {m: quality.metrics([1, 2, None]) for m in quality.MODES}},
        "type_counts": {"CHAIR": 3},
        "duplicates": None,
    }


def test_the_table_says_random_weights_and_compares_side_by_side():
    table = quality.format_table(_record(True))
    assert quality.RANDOM_WEIGHTS_NOTE in table
    assert "text -> image" in table and "chance" in table and "CHAIR" in table
    assert "0.6667" in table  # recall@10 of [1, 2, None]
    both = quality.format_table(_record(False), _record(True))
    assert "compared with" in both and "(other)" in both
    assert quality.RANDOM_WEIGHTS_NOTE not in both.splitlines()[0]
