"""Title vectors, hybrid ranking and near-duplicate folding on the real OpenSearch node (tiny model), on the
shared catalogue; the sample catalogue's real duplicate pictures in an index of their own."""

from __future__ import annotations

import pytest
from search_world import TITLED

from catalogue_search import duplicates, index, search
from catalogue_search.search import Fold, Fusion

# The tiny model's random weights put every picture within cosine 0.98 of every other (see the
# README): only identical pictures are near-identical here.
IDENTICAL = 0.9999


def _rank(hits: list[search.Hit], item_id: str) -> int:
    return next((h.rank for h in hits if h.item_id == item_id), 10**6)


def test_a_title_query_finds_its_product_by_the_title_vectors(searcher):
    for item_id, (title, *_) in TITLED.items():
        hits = searcher.search_text(title, 3, mode="name")
        assert item_id in {h.item_id for h in hits if h.score >= index.SELF_MATCH_SCORE}, (title, hits)


@pytest.mark.parametrize("query", ["zebra", "ZX-200", "zx200", "ZX 200"])
def test_a_word_of_the_title_that_no_image_carries_finds_the_product(searcher, query):
    hybrid = searcher.search_text(query, 3, mode="hybrid")
    assert hybrid[0].item_id == "B0ZEBRA001", hybrid
    assert [h.item_id for h in searcher.search_lexical(query, 3)] == ["B0ZEBRA001"]


def test_title_analyzer_folds_case_and_accents_where_the_node_can(search_world, searcher):
    assert searcher.search_lexical("CRÈME BRÛLÉE", 3)[0].item_id == "B0MUG00004"
    name = search_world.index_name
    analyzer = searcher.client.indices.get_settings(index=name)[name]["settings"]["index"]["analysis"]["analyzer"]
    if "asciifolding" in analyzer[index.TITLE_ANALYZER]["filter"]:
        assert searcher.search_lexical("creme brulee", 3)[0].item_id == "B0MUG00004"
    else:  # the local integ-test node has no analysis-common module: create_index left the filter out
        assert searcher.search_lexical("creme brulee", 3) == []


def test_hybrid_ranks_the_exact_name_above_the_product_that_only_looks_similar(search_world, searcher):
    """For every title whose product is not the image vectors' top hit (random weights: most),
    the image-only ranking puts a look-alike first; hybrid puts the named product first."""
    every = len(search_world.products)
    checked = 0
    for item_id, (title, *_) in TITLED.items():
        if item_id.startswith(("B0TWIN", "B0SHARE")):  # titles shared by two products
            continue
        by_image = searcher.search_text(title, every, mode="image")
        look_alike = by_image[0].item_id
        if look_alike == item_id:
            continue
        hybrid = searcher.search_text(title, every, mode="hybrid")
        assert hybrid[0].item_id == item_id, (title, hybrid)
        assert _rank(hybrid, item_id) < _rank(hybrid, look_alike)
        assert _rank(by_image, item_id) > _rank(by_image, look_alike)
        checked += 1
    assert checked >= 3, "the image vectors ranked too many titles' products first to test anything"


def test_fusion_weights_and_rank_constant_change_the_ranking(search_world, searcher):
    every = len(search_world.products)
    image_only = Fusion(lexical_weight=0, name_weight=0, image_weight=1)
    fused = searcher.search_text("Red ball", every, mode="hybrid", fusion=image_only)
    plain = searcher.search_text("Red ball", every, mode="image")
    assert [h.item_id for h in fused] == [h.item_id for h in plain]
    assert fused[0].score == pytest.approx(1 / 61)
    k10 = searcher.search_text("Red ball", 1, mode="hybrid", fusion=Fusion(rank_constant=10))
    assert k10[0].item_id == "B0RED00005" and k10[0].score > 2 / 11


def test_image_queries_in_every_mode(search_world, searcher):
    lamp = search_world.product("B0LAMP0003").image
    every = len(search_world.products)
    assert searcher.search_image(lamp, 1, mode="image")[0].item_id == "B0LAMP0003"
    by_name = searcher.search_image(lamp, every, mode="name")
    assert len(by_name) == every and all(h.score < index.SELF_MATCH_SCORE for h in by_name)
    # Random weights: the title vectors' ranking is noise, so fused with equal weights the lamp is
    # only somewhere near the top; with the title list's weight at 0 hybrid is the image ranking.
    hybrid = searcher.search_image(lamp, 3, mode="hybrid")
    assert "B0LAMP0003" in {h.item_id for h in hybrid}
    images_only = searcher.search_image(lamp, 3, mode="hybrid", fusion=Fusion(name_weight=0))
    assert images_only[0].item_id == "B0LAMP0003" and images_only[0].score == pytest.approx(1 / 61)
    with pytest.raises(ValueError, match="mode"):
        searcher.search_image(lamp, mode="psychic")


def test_folding_turns_products_that_share_an_image_into_one_hit(search_world, searcher):
    twin = search_world.product("B0TWIN0008").image
    plain = searcher.search_image(twin, 4)
    assert {h.item_id for h in plain[:2]} == {"B0TWIN0008", "B0TWIN0009"}
    folded = searcher.search_image(twin, 4, fold=Fold(IDENTICAL))
    assert folded[0].item_id in {"B0TWIN0008", "B0TWIN0009"} and folded[0].duplicates == 1
    assert set(folded[0].duplicate_ids) | {folded[0].item_id} == {"B0TWIN0008", "B0TWIN0009"}
    assert len({h.item_id for h in folded}) == 4 and "B0TWIN0009" not in {h.item_id for h in folded[1:]}
    assert [h.rank for h in folded] == [1, 2, 3, 4]
    shared = searcher.search_image(search_world.product("B0SHARE010").image, 3, fold=Fold(IDENTICAL))
    assert shared[0].duplicates == 1 and {shared[0].item_id, *shared[0].duplicate_ids} == {"B0SHARE010", "B0SHARE011"}
    # The text side folds too (same title and same image: hybrid puts them at 1 and 2).
    hybrid = searcher.search_text("Fireman figure", 3, mode="hybrid", fold=Fold(IDENTICAL))
    assert hybrid[0].duplicates == 1 and hybrid[0].item_id.startswith("B0TWIN")
    # At the default threshold (0.98) random weights fold (nearly) everything into the first hit.
    assert searcher.search_image(twin, 4, fold=Fold())[0].duplicates >= 1
    # Threshold 1.01 folds nothing by vectors; the shared image id still folds.
    strict = searcher.search_image(twin, 2, fold=Fold(1.01))
    assert {h.item_id for h in strict} == {"B0TWIN0008", "B0TWIN0009"}


def test_duplicate_report_lists_the_groups(search_world, searcher):
    products = search_world.products
    report = duplicates.find_duplicates(
        duplicates.index_vectors(searcher.client, search_world.index_name, index.VECTOR_FIELD),
        total=len(products),
        threshold=IDENTICAL,
        block_rows=4,  # several tiles, so pairs across tiles are found too
    )
    groups = {tuple(g.item_ids): g for g in report.groups}
    assert groups[("B0SHARE010", "B0SHARE011")].reason == duplicates.SAME_IMAGE
    twins = groups[("B0TWIN0008", "B0TWIN0009")]
    assert twins.reason == duplicates.NEAR_VECTORS and twins.min_cosine >= 0.9999
    assert len(report.groups) == 2
    assert report.products == len(products) and report.images == len(products) - 1
    assert report.counts["folded_away"] == sum(len(g.item_ids) - 1 for g in report.groups)


@pytest.fixture(scope="module")
def sample_world(search_world, searcher, tiny_artifact):
    """The sample catalogue's products whose pictures are identical, plus 30 others, indexed in-process."""
    from catalogue_search_dev import sample_index

    layout = sample_index.layout_dir()
    products = sample_index.sample_products(layout)
    groups = sample_index.identical_image_groups(layout, products)
    in_groups = {i for g in groups for i in g}
    chosen = [p for p in products if p["item_id"] in in_groups] + [
        p for p in products if p["item_id"] not in in_groups
    ][:30]
    encoded = sample_index.encode(layout, chosen, tiny_artifact, cache_dir=search_world.settings.model_cache)
    settings = search_world.settings.replace(index_alias=f"{search_world.settings.index_alias}-sample")
    name = f"{settings.index_alias}-v1"
    sample_index.load(searcher.client, settings, name, settings.index_alias, encoded)
    yield layout, groups, encoded, name, search_world.searcher(settings)
    searcher.client.indices.delete(index=name, ignore_unavailable=True)


def test_sample_catalogue_products_that_share_an_image_fold_into_one_hit(sample_world):
    layout, groups, encoded, _, sample = sample_world
    assert groups, "the sample catalogue has no two products with the same picture any more"
    paths = {p["item_id"]: p["path"] for p in encoded.products}
    for group in groups:
        picture = (layout / "images/small" / paths[group[0]]).read_bytes()
        plain = sample.search_image(picture, len(group))
        assert {h.item_id for h in plain} == set(group)
        folded = sample.search_image(picture, 3, fold=Fold(IDENTICAL))
        assert {folded[0].item_id, *folded[0].duplicate_ids} >= set(group)
        assert not {h.item_id for h in folded[1:]} & set(group)


def test_sample_catalogue_duplicate_report_lists_them(sample_world, searcher):
    _, groups, encoded, name, _ = sample_world
    report = duplicates.find_duplicates(
        duplicates.index_vectors(searcher.client, name, index.VECTOR_FIELD),
        total=len(encoded.products),
        threshold=IDENTICAL,
    )
    listed = [set(g.item_ids) for g in report.groups]
    for group in groups:
        assert any(set(group) <= found for found in listed), (group, listed)
