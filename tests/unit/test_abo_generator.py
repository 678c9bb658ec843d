"""The full-size synthetic ABO generator, at a small size: shape, dirt, determinism, and what the
pipeline's own filter makes of it."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from PIL import Image

from catalogue_search import catalogue
from catalogue_search_dev import abo_generator


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("abo")
    gen = abo_generator.generate(3000, seed=4)
    abo_generator.write_layout(gen, out)
    return gen, out


def test_layout_has_abo_shape(built):
    gen, out = built
    shards = sorted(p.name for p in (out / "listings" / "metadata").iterdir())
    assert shards == [f"listings_{n:x}.json.gz" for n in range(16)]
    lines = sum(len(gzip.decompress((out / "listings/metadata" / s).read_bytes()).splitlines()) for s in shards)
    assert lines == 3000 == gen.summary.listing_lines
    rows = list(io.StringIO(gzip.decompress((out / "images/metadata/images.csv.gz").read_bytes()).decode()))
    assert rows[0].strip() == "image_id,height,width,path"
    per_listing = (len(rows) - 1) / gen.summary.unique_products
    assert 2.5 < per_listing < 2.9  # ABO: 398,212 / 147,702 = 2.70
    path = rows[1].strip().split(",")[3]
    assert len(path) == len("ab/abcdef12.jpg") and path[2] == "/" and path.endswith(".jpg")


def test_dirt_is_there_and_the_filter_counts_it(built):
    gen, out = built
    s = gen.summary
    assert all(count >= 1 for count in s.dirt.values()), s.dirt
    images = catalogue.read_images_csv((out / catalogue.IMAGES_CSV_KEY).read_bytes())
    shard_products = []
    dropped: dict[str, int] = {}
    for shard in catalogue.ALL_SHARDS:
        listings = catalogue.read_listings((out / catalogue.LISTINGS_KEY.format(shard=shard)).read_bytes())
        products, report = catalogue.filter_listings(listings, images, language_tag="en_US", shard=shard)
        shard_products.append(products)
        for reason, count in report.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    merged, duplicates = catalogue.merge_products(shard_products)
    assert duplicates == s.dirt["duplicate"]
    assert dropped[catalogue.DROP_NO_TITLE] == s.dirt["no_title_in_language"]
    assert dropped[catalogue.DROP_NO_IMAGE] == s.dirt["no_main_image"]
    assert dropped[catalogue.DROP_UNKNOWN_IMAGE] == s.dirt["image_not_in_csv"]
    # What the copy (missing from the bucket) and the encoder (truncated JPEG) drop later:
    later = len(gen.absent_paths) + len(gen.corrupt_paths)
    assert len(merged) - later == s.expected_products
    assert any(p["brand"] is None for p in merged) and any(p["product_type"] is None for p in merged)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        abo_generator.write_layout(abo_generator.generate(500, seed=seed), tmp_path / name)
    digest = {name: abo_generator.digest(tmp_path / name) for name in "abc"}
    assert digest["a"] == digest["b"] != digest["c"]


def test_languages_and_titles(built):
    gen, _ = built
    first = json.loads(gen.shards[0][0])
    assert {"item_id", "item_name", "other_image_id"} <= set(first)
    assert len(gen.summary.languages) > 5 and gen.summary.languages["en_US"] > 0.9 * gen.summary.unique_products


def test_jpeg_pool_and_precomputed_vectors(built):
    gen, _ = built
    pool = abo_generator.jpeg_pool(5)
    assert len(set(pool)) == 5
    with Image.open(io.BytesIO(pool[0])) as img:
        assert img.format == "JPEG" and max(img.size) <= 256
    paths, vecs = abo_generator.precomputed_vectors(gen)
    assert vecs.shape == (len(paths), 512) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert not (set(paths) & (gen.absent_paths | gen.corrupt_paths))
    # Clustered like embeddings, not uniform on the sphere: a vector's nearest neighbour is
    # much closer than a typical pair (uniform 512-d vectors are all nearly orthogonal).
    sample = vecs[:400]
    cos = sample @ sample.T
    np.fill_diagonal(cos, -1)
    assert np.median(cos.max(axis=1)) > 0.5 and abs(np.median(cos)) < 0.2
    again = abo_generator.precomputed_vectors(gen)[1]
    assert np.array_equal(vecs, again)
