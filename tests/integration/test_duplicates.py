"""Near-duplicate groups from the k-NN index equal the exact blocked cosine's, on the sample catalogue.

The whole sample (every product the pipeline keeps) is encoded in-process by the tiny model and loaded
into a real OpenSearch index. Its random weights put a third of the distinct pictures above 0.98, in
groups of up to hundreds of images: the k-NN way must widen its k to find them whole. An incremental
check (3 products changed, 1 removed) asks the index about the changed images only and must give the
groups a full exact check of the new catalogue gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from catalogue_search import duplicates, index
from catalogue_search.contract import VECTOR_ATOL
from catalogue_search.settings import Settings
from catalogue_search_dev import sample_index, testenv

THRESHOLDS = (0.98, 0.9999)


def _load(client, name: str, products: list[dict], vectors: np.ndarray) -> None:
    settings = Settings.from_env()
    body = index.index_body(settings, alias=name, dimension=int(vectors.shape[1]), run_key=name)
    index.create_index(client, name, body)
    docs = (index.document(p, v.tolist(), "tiny-clip") for p, v in zip(products, vectors))
    assert not index.bulk_load(client, name, docs, total=len(products)).failed
    index.finish_loading(client, name, 0)


@pytest.fixture(scope="module")
def sample(opensearch_url, tiny_artifact, tmp_path_factory):
    layout = sample_index.layout_dir()
    encoded = sample_index.encode(
        layout, sample_index.sample_products(layout), tiny_artifact, cache_dir=tmp_path_factory.mktemp("models")
    )
    client = index.make_client(opensearch_url)
    name = f"test-duplicates-{testenv.unique_name_part()}"
    _load(client, name, encoded.products, encoded.images)
    yield client, name, encoded
    client.indices.delete(index=name, ignore_unavailable=True)


def _exact(client, name: str, total: int, threshold: float) -> duplicates.DuplicateReport:
    vectors = duplicates.index_vectors(client, name, index.VECTOR_FIELD)
    return duplicates.find_duplicates(vectors, total=total, threshold=threshold, block_rows=128)


def _same_groups(got: duplicates.DuplicateReport, want: duplicates.DuplicateReport) -> None:
    assert [(g.item_ids, g.item_names, g.image_ids, g.reason) for g in got.groups] == [
        (g.item_ids, g.item_names, g.image_ids, g.reason) for g in want.groups
    ]
    for a, b in zip(got.groups, want.groups):
        assert (a.min_cosine is None) == (b.min_cosine is None)
        if a.min_cosine is not None:
            assert abs(a.min_cosine - b.min_cosine) <= VECTOR_ATOL
    assert {tuple(p[:2]) for p in got.pairs} == {tuple(p[:2]) for p in want.pairs}
    assert (got.products, got.images) == (want.products, want.images)


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("k", [16, 2])
def test_index_neighbours_give_the_exact_groups(sample, threshold, k):
    client, name, encoded = sample
    exact = _exact(client, name, len(encoded.products), threshold)
    assert exact.method == "exact" and any(g.reason == duplicates.NEAR_VECTORS for g in exact.groups)
    near = duplicates.IndexNeighbours(client, name, index.VECTOR_FIELD, k=k, batch=50)
    found = duplicates.find_duplicates(
        duplicates.index_vectors(client, name, index.VECTOR_FIELD),
        total=len(encoded.products),
        threshold=threshold,
        neighbours=near,
    )
    assert found.method == "index" and found.checked == found.images
    _same_groups(found, exact)
    if threshold == 0.98:
        assert max(len(g.image_ids) for g in found.groups) > 4 * k
        assert near.widened > 0  # groups bigger than k were found whole by asking again with a larger k


def test_an_incremental_check_asks_about_the_changed_images_only(sample):
    client, name, encoded = sample
    threshold = 0.9999
    products = [dict(p) for p in encoded.products]
    vectors = encoded.images.copy()
    before = duplicates.find_duplicates(
        duplicates.index_vectors(client, name, index.VECTOR_FIELD),
        total=len(products),
        threshold=threshold,
        neighbours=duplicates.IndexNeighbours(client, name, index.VECTOR_FIELD),
    )
    grouped = [g for g in before.groups if g.reason == duplicates.NEAR_VECTORS]
    assert grouped
    by_id = {p["item_id"]: i for i, p in enumerate(products)}
    loner = [p["item_id"] for p in products if p["item_id"] not in {i for g in before.groups for i in g.item_ids}]
    # 1: a grouped product gets another picture (leaves its group); 2: two loners get the picture of a
    # grouped product (new image ids, same vector: they join it); 3: a grouped product is removed.
    moved, removed = grouped[0].item_ids[0], grouped[-1].item_ids[-1]
    target = by_id[grouped[1 % len(grouped)].item_ids[0]]
    changes = {moved: by_id[loner[0]], loner[1]: target, loner[2]: target}
    for item_id, source in changes.items():
        row = by_id[item_id]
        vectors[row] = vectors[source] + np.float32(1e-4) * (row % 3)
        products[row]["image_id"] = f"changed-{item_id}"
    # An unchanged grouped product whose title is longer than its keyword keeps (no doc value): the
    # incremental read takes the others' titles from the doc values, and this one from its source.
    long_title = products[target]["item_id"]  # unchanged, and its group gains two products
    products[by_id[long_title]]["item_name"] = "A title far longer than any keyword keeps, " * 15
    keep = [i for i, p in enumerate(products) if p["item_id"] != removed]
    new_name = f"{name}-next"
    _load(client, new_name, [products[i] for i in keep], vectors[keep])
    try:
        near = duplicates.IndexNeighbours(client, new_name, index.VECTOR_FIELD)
        incremental = duplicates.find_duplicates(
            duplicates.index_vectors(client, new_name, index.VECTOR_FIELD, only=set(changes)),
            total=len(keep),
            threshold=threshold,
            neighbours=near,
            changed=set(changes),
            previous=before.as_dict(),
        )
        assert incremental.checked == len(changes) and near.queries == len(changes)
        assert incremental.reused_pairs > 0
        exact = _exact(client, new_name, len(keep), threshold)
        _same_groups(incremental, exact)
        joined = next(g for g in exact.groups if loner[1] in g.item_ids)
        assert loner[2] in joined.item_ids and products[target]["item_id"] in joined.item_ids
        assert all(removed not in g.item_ids for g in incremental.groups)
        named = next(g for g in incremental.groups if long_title in g.item_ids)
        assert products[by_id[long_title]]["item_name"] in named.item_names
    finally:
        client.indices.delete(index=new_name, ignore_unavailable=True)


def test_an_incremental_check_needs_the_changed_vectors(sample):
    client, name, encoded = sample
    some = encoded.products[0]["item_id"]
    docs = ((doc, None) for doc, _ in duplicates.index_vectors(client, name, index.VECTOR_FIELD))
    near = duplicates.IndexNeighbours(client, name, index.VECTOR_FIELD)
    with pytest.raises(ValueError, match="no vector to check"):
        duplicates.find_duplicates(docs, total=len(encoded.products), threshold=0.98, neighbours=near, changed={some})
