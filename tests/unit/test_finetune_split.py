"""The fine-tune's split (by product, seeded, stratified) and its gate's arithmetic."""

from __future__ import annotations

import pytest

from catalogue_search import quality
from catalogue_search.errors import PermanentError
from catalogue_search.finetune import Hyperparameters, decide, split


def products(n: int, kinds=("A", "B", "C")) -> list[dict]:
    return [
        {"item_id": f"P{i:04d}", "item_name": f"thing {i}", "product_type": kinds[i % len(kinds)]} for i in range(n)
    ]


def ids(part: list[dict]) -> set[str]:
    return {p["item_id"] for p in part}


def test_every_product_is_in_exactly_one_part_and_each_type_in_its_share():
    catalogue = products(300, kinds=("A", "A", "B", "C"))  # A: 150, B: 75, C: 75
    parts = split(catalogue, seed=0, test=0.2, validation=0.1)
    assert ids(parts["train"]) | ids(parts["validation"]) | ids(parts["test"]) == ids(catalogue)
    assert sum(len(p) for p in parts.values()) == 300
    counts = {kind: sum(p["product_type"] == kind for p in parts["test"]) for kind in "ABC"}
    assert counts == {"A": 30, "B": 15, "C": 15}


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    catalogue = products(200)
    first, again = (
        split(catalogue, seed=3, test=0.2, validation=0.1),
        split(catalogue[::-1], seed=3, test=0.2, validation=0.1),
    )
    assert {k: ids(v) for k, v in first.items()} == {k: ids(v) for k, v in again.items()}
    assert ids(split(catalogue, seed=4, test=0.2, validation=0.1)["test"]) != ids(first["test"])


def test_a_product_listed_twice_or_without_a_title_is_one_pair_or_none():
    catalogue = products(50) + products(50)[:5] + [{"item_id": "X", "item_name": " ", "product_type": "A"}]
    parts = split(catalogue, seed=0, test=0.2, validation=0.1)
    assert sum(len(p) for p in parts.values()) == 50 and "X" not in set().union(*map(ids, parts.values()))


def test_fractions_that_leave_nothing_to_train_on_are_refused():
    with pytest.raises(PermanentError):
        split(products(10), seed=0, test=0.6, validation=0.5)


def test_the_gate_promotes_a_gain_beyond_the_noise_only():
    def figures(base: float, tuned: float, n: int = 150) -> dict:
        return {
            "test_products": n,
            "chance": quality.chance(n),
            "base": {"recall@10": base},
            "tuned": {"recall@10": tuned},
        }

    refused = decide(figures(0.05, 0.10))  # noise at n=150: about 0.058
    assert not refused.promote and refused.gain == pytest.approx(0.05)
    assert refused.noise == pytest.approx(
        (quality.margin(0.05, 150) ** 2 + quality.margin(0.10, 150) ** 2) ** 0.5, abs=1e-6
    )
    assert decide(figures(0.05, 0.18)).promote
    assert not decide(figures(0.2, 0.2)).promote  # lr 0: equal figures never promote


def test_bad_hyperparameters_are_refused():
    with pytest.raises(PermanentError):
        Hyperparameters(lr=-1)
    with pytest.raises(PermanentError):
        Hyperparameters(unfreeze="head")
    assert Hyperparameters(lr=0.0).arguments()["batch-size"] == "64"
