"""The search client against the real OpenSearch node and the tiny model's real handler, on the shared
catalogue (`search_world`): queries, filters, pages, facets, "more like this", and the checks made once,
where a query enters, before anything reaches the encoder or OpenSearch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from catalogue_search import index, search
from catalogue_search.search import Filters, Page
from catalogue_search.search.query import lexical_terms


def test_an_image_query_finds_its_own_picture_first(search_world, searcher):
    for p in search_world.products:
        hits = searcher.search_image(p.image, 3)
        first = search_world.product(hits[0].item_id)
        assert first.image == p.image, (p.item_id, hits)  # itself, or a listing of the very same photo
        assert hits[0].rank == 1 and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].image_path == first.path


def test_text_and_image_queries_search_the_same_index(search_world, searcher):
    every = searcher.search_text("a red ellipse", len(search_world.products))
    assert sorted(h.item_id for h in every) == sorted(p.item_id for p in search_world.products)
    assert [h.rank for h in every] == list(range(1, len(every) + 1))
    assert all(set(h.as_dict()) >= {"item_id", "item_name", "image_path", "score", "similarity"} for h in every)
    assert all(index.VECTOR_FIELD not in h.as_dict() for h in every)


@pytest.mark.parametrize("spelling", ["FOOD", "food", "Food", " food "])
def test_filters_match_whatever_the_case(search_world, searcher, spelling):
    food = [p for p in search_world.products if p.product_type == "FOOD"]
    hits = searcher.search_image(food[0].image, len(search_world.products), filters=Filters(product_type=spelling))
    assert sorted(h.item_id for h in hits) == sorted(p.item_id for p in food)
    both = searcher.search_image(food[0].image, 20, filters=Filters(product_type=spelling, brand="roundish"))
    assert both and {(h.product_type, h.brand) for h in both} == {("FOOD", "Roundish")}


def test_pages_follow_each_other(search_world, searcher):
    image = search_world.products[0].image
    first = searcher.search_image(image, Page(2))
    second = searcher.search_image(image, Page(2, offset=2))
    assert [h.rank for h in second] == [3, 4]
    assert not {h.item_id for h in first} & {h.item_id for h in second}
    assert [h.item_id for h in first + second] == [h.item_id for h in searcher.search_image(image, 4)]


def test_facets_count_the_values_present(search_world, searcher):
    facets = searcher.facets()
    assert {(v.value, v.count) for v in facets["product_type"]} == set(
        Counter(p.product_type for p in search_world.products).items()
    )
    assert {(v.value, v.count) for v in facets["brand"]} == set(Counter(p.brand for p in search_world.products).items())
    # A facet counts what the *other* filters leave: product types among one brand.
    narrowed = searcher.facets(Filters(brand="roundish"))
    want = Counter(p.product_type for p in search_world.products if p.brand == "Roundish")
    assert {(v.value, v.count) for v in narrowed["product_type"]} == set(want.items())


def test_more_like_this_uses_the_stored_vector_and_leaves_the_product_out(search_world, searcher):
    target = search_world.products[3]
    by_image = searcher.search_image(target.image, 6)
    assert by_image[0].item_id == target.item_id and by_image[0].similarity == pytest.approx(1.0, abs=1e-4)
    similar = searcher.more_like_this(target.item_id, 5)
    assert [h.item_id for h in similar] == [h.item_id for h in by_image[1:6]]
    assert [h.rank for h in similar] == [1, 2, 3, 4, 5]
    page2 = searcher.more_like_this(target.item_id, Page(3, offset=3), filters=Filters(brand="SHAPES INC"))
    assert page2 and all(h.brand == "Shapes Inc" and h.item_id != target.item_id for h in page2)
    with pytest.raises(search.ProductNotFoundError):
        searcher.more_like_this("B0NOSUCHTHING")


def test_similarity_is_the_cosine_of_the_vectors(search_world, searcher):
    hits = searcher.search_image(search_world.products[0].image, 3)
    vec = {h.item_id: np.array(searcher.product_vector(h.item_id)) for h in hits}
    base = vec[hits[0].item_id]
    for h in hits:
        cos = float(base @ vec[h.item_id] / np.linalg.norm(base) / np.linalg.norm(vec[h.item_id]))
        assert h.similarity == pytest.approx(cos, abs=1e-4)
        assert h.score == pytest.approx((1 + cos) / 2, abs=1e-4)


def test_the_alias_result_window_is_checked_before_the_query(search_world, searcher):
    small = f"{search_world.settings.index_alias}-window"
    searcher.client.indices.create(index=small, body={"settings": {"index": {"max_result_window": 50}}})
    try:
        narrow = search_world.searcher(search_world.settings.replace(index_alias=small))
        assert narrow.result_limit() == 50
        assert narrow.fit(Page(40, offset=10)) == Page(40, 10, limit=50)
        with pytest.raises(search.OutOfRangeError, match="at most 50"):
            narrow.search_text("a red ellipse", Page(40, offset=20))
        assert Page(40, 10, limit=50).probe() == Page(40, 10, limit=50)  # no room for the extra hit
    finally:
        searcher.client.indices.delete(index=small, ignore_unavailable=True)


def test_clear_errors_for_bad_queries(search_world, searcher):
    with pytest.raises(search.EmptyQueryError):
        searcher.search_text("   ")
    with pytest.raises(search.UnreadableImageError, match="could not be read"):
        searcher.search_image(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(search.UnreadableImageError, match="empty"):
        searcher.search_image(b"")
    with pytest.raises(search.ImageTooLargeError, match="4,000,000 bytes"):
        searcher.search_image(b"\xff" * (4_000_000 + 1))
    missing = search_world.searcher(search_world.settings.replace(index_alias="no-such-alias"))
    with pytest.raises(search.IndexMissingError, match="no-such-alias"):
        missing.search_text("a red ellipse")


def test_an_index_that_records_no_model_version_is_refused(search_world, searcher):
    """The client compares the query encoder's artifact version with the index's, always: an index with
    none recorded cannot be checked, so no query is encoded for it."""
    old = f"{search_world.settings.index_alias}-unversioned"
    body = index.index_body(search_world.settings, alias=old, dimension=32, run_key="r")
    assert "artifact_version" not in body["mappings"]["_meta"]
    searcher.client.indices.create(index=old, body=body)
    try:
        unversioned = search_world.searcher(search_world.settings.replace(index_alias=old))
        with pytest.raises(search.ModelVersionMismatchError, match="records no model artifact version"):
            unversioned.search_text("a red ellipse")
    finally:
        searcher.client.indices.delete(index=old, ignore_unavailable=True)


def _distinct_words(n: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return " ".join(letters[i // 26] + letters[i % 26] for i in range(n))


def test_a_hybrid_query_at_the_word_limit_is_answered_and_one_word_more_is_refused(searcher):
    """The limit is under the engine's own (1,024 clauses): the longest query it lets through is answered."""
    longest = _distinct_words(search.MAX_LEXICAL_TERMS)
    assert len(longest) <= search.MAX_QUERY_CHARS
    assert searcher.search_text(longest, 3, mode="hybrid")
    assert searcher.search_lexical(longest, 3) is not None
    with pytest.raises(search.QueryTooLongError, match=f"at most {search.MAX_LEXICAL_TERMS}"):
        searcher.search_text(_distinct_words(search.MAX_LEXICAL_TERMS + 1), 3, mode="hybrid")
    # The vector modes send no words to OpenSearch: the same text is fine there.
    assert searcher.search_text(_distinct_words(search.MAX_LEXICAL_TERMS + 1), 3, mode="name")
    with pytest.raises(search.QueryTooLongError, match="10,000 characters"):
        searcher.search_text("x" * 10_000, 3, mode="hybrid")


@pytest.mark.parametrize(
    "text",
    [
        "Stainless steel kettle 1.7 litre",
        "WH-1000XM4 zx200 ZX 200 don't o'neil e-mail a_b",
        "日本語のテキストとカタカナ 한국어 텍스트",
        "नमस्ते दुनिया, crème brûlée",
        "emoji 😀 🎉👍🏽 ©™ ½ ① and symbols ★",
        "ไทยภาษา ελληνικά русский العربية",
    ],
)
def test_the_word_count_never_undercounts_the_title_analyzer(search_world, searcher, text):
    """`lexical_terms` is the bound the hybrid limit relies on: at least the node's own token count."""
    got = searcher.client.indices.analyze(
        index=search_world.index_name, body={"analyzer": index.TITLE_ANALYZER, "text": text}
    )
    assert lexical_terms(text) >= len(got["tokens"]), got["tokens"]
