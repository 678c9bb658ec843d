"""Title vectors, hybrid ranking and near-duplicate folding on the real OpenSearch node (tiny model)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest
from PIL import Image, ImageDraw

from catalogue_search import duplicates, index, search
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.settings import Settings
from catalogue_search_dev import testenv
from catalogue_search_dev.model_build import build_model_artifact, upload_model_artifact

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"
# item_id -> (title, colour, shape, image id). The titles carry words no picture of a shape can carry.
PRODUCTS = {
    "B0ZEBRA001": ("Striped zebra plush toy ZX-200", "black", "rectangle", "imgZEBRA"),
    "B0KETTLE02": ("Stainless steel kettle 1.7 litre", "grey", "ellipse", "imgKETTLE"),
    "B0LAMP0003": ("Bedside lamp with linen shade", "yellow", "ellipse", "imgLAMP"),
    "B0MUG00004": ("Crème brûlée ramekin set", "white", "rectangle", "imgMUG"),
    "B0RED00005": ("Red ball", "red", "ellipse", "imgRED"),
    "B0BLUE0006": ("Blue box", "blue", "rectangle", "imgBLUE"),
    "B0GREEN007": ("Green leaf", "green", "ellipse", "imgGREEN"),
    # Two listings of one product photo under two image ids (identical bytes): near-identical vectors.
    "B0TWIN0008": ("Fireman figure", "orange", "ellipse", "imgTWIN1"),
    "B0TWIN0009": ("Fireman figure", "orange", "ellipse", "imgTWIN2"),
    # Two colour variants that share one main image id.
    "B0SHARE010": ("Rain boots, size 38", "purple", "rectangle", "imgSHARED"),
    "B0SHARE011": ("Rain boots, size 40", "purple", "rectangle", "imgSHARED"),
}


def _jpeg(colour: str, shape: str, size: int = 96) -> bytes:
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    getattr(draw, shape)((12, 20, size - 12, size - 20), fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory, moto_url, opensearch_url):
    token = testenv.unique_name_part()
    settings = Settings.from_env(
        aws_endpoint_url=moto_url,
        opensearch_url=opensearch_url,
        bucket=f"hybrid-{token}",
        index_alias=f"hybrid-{token}",
        model_name="tiny-clip",
        model_pretrained="",
    )
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    s3.create_bucket(Bucket=settings.bucket)
    out = tmp_path_factory.mktemp("artifact") / "model.tar.gz"
    build_model_artifact(out, "tiny-clip", "", TINY)
    upload_model_artifact(settings, s3, out)
    images = {item: _jpeg(colour, shape) for item, (_, colour, shape, _) in PRODUCTS.items()}
    image_vecs = load_handler_from_artifact(settings.artifact_uri, "IMAGE", s3_client=s3).encode_images(
        list(images.values())
    )
    name_vecs = load_handler_from_artifact(settings.artifact_uri, "TEXT", s3_client=s3).encode_texts(
        [title for title, *_ in PRODUCTS.values()]
    )
    client = index.make_client(opensearch_url)
    name = f"{settings.index_alias}-v1"
    body = index.index_body(settings, alias=settings.index_alias, dimension=image_vecs.shape[1], run_key="t")
    index.create_index(client, name, body)
    docs = []
    for (item_id, (title, _, _, image_id)), img, txt in zip(PRODUCTS.items(), image_vecs, name_vecs):
        product = {
            "item_id": item_id,
            "item_name": title,
            "image_id": image_id,
            "main_image_id": image_id,
            "path": f"{image_id[-4:].lower()}/{image_id}.jpg",
            "product_type": "THINGS",
            "brand": "Shapes",
        }
        docs.append(index.document(product, img.tolist(), settings.model_name, name_vector=txt.tolist()))
    index.bulk_load(client, name, docs, total=len(docs))
    index.finish_loading(client, name, 0)
    index.swap_alias(client, settings.index_alias, name)
    searcher = search.SearchClient(settings, client=client, encoder=search.LocalEncoder(settings, s3_client=s3))
    yield settings, client, name, searcher, images
    client.indices.delete(index=name, ignore_unavailable=True)
    for obj in s3.list_objects_v2(Bucket=settings.bucket).get("Contents", []):
        s3.delete_object(Bucket=settings.bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=settings.bucket)


def _rank(hits: list[search.Hit], item_id: str) -> int:
    return next((h.rank for h in hits if h.item_id == item_id), 10**6)


def test_a_title_query_finds_its_product_by_the_title_vectors(world):
    _, _, _, searcher, _ = world
    for item_id, (title, *_) in PRODUCTS.items():
        hits = searcher.search_text(title, k=3, mode="name")
        assert item_id in {h.item_id for h in hits if h.score >= index.SELF_MATCH_SCORE}, (title, hits)


@pytest.mark.parametrize(
    "query",
    ["zebra", "ZX-200", "zx200", "ZX 200"],
)
def test_a_word_of_the_title_that_no_image_carries_finds_the_product(world, query):
    _, _, _, searcher, _ = world
    hybrid = searcher.search_text(query, k=3, mode="hybrid")
    assert hybrid[0].item_id == "B0ZEBRA001", hybrid
    lexical = searcher.search_lexical(query, k=3)
    assert [h.item_id for h in lexical] == ["B0ZEBRA001"]


def test_title_analyzer_folds_case_and_accents_where_the_node_can(world):
    _, client, name, searcher, _ = world
    assert searcher.search_lexical("CRÈME BRÛLÉE", k=3)[0].item_id == "B0MUG00004"
    analyzer = client.indices.get_settings(index=name)[name]["settings"]["index"]["analysis"]["analyzer"]
    if "asciifolding" in analyzer[index.TITLE_ANALYZER]["filter"]:
        assert searcher.search_lexical("creme brulee", k=3)[0].item_id == "B0MUG00004"
    else:  # the local integ-test node has no analysis-common module: create_index left the filter out
        assert searcher.search_lexical("creme brulee", k=3) == []


def test_hybrid_ranks_the_exact_name_above_the_product_that_only_looks_similar(world):
    """For every title whose product is not the image vectors' top hit (random weights: most),
    the image-only ranking puts a look-alike first; hybrid puts the named product first."""
    _, _, _, searcher, _ = world
    checked = 0
    for item_id, (title, *_) in PRODUCTS.items():
        if item_id.startswith(("B0TWIN", "B0SHARE")):  # titles shared by two products
            continue
        by_image = searcher.search_text(title, k=len(PRODUCTS), mode="image")
        look_alike = by_image[0].item_id
        if look_alike == item_id:
            continue
        hybrid = searcher.search_text(title, k=len(PRODUCTS), mode="hybrid")
        assert hybrid[0].item_id == item_id, (title, hybrid)
        assert _rank(hybrid, item_id) < _rank(hybrid, look_alike)
        assert _rank(by_image, item_id) > _rank(by_image, look_alike)
        checked += 1
    assert checked >= 3, "the image vectors ranked too many titles' products first to test anything"


def test_fusion_weights_and_rank_constant_change_the_ranking(world):
    _, _, _, searcher, _ = world
    image_only = search.Fusion(lexical_weight=0, name_weight=0, image_weight=1)
    fused = searcher.search_text("Red ball", k=len(PRODUCTS), mode="hybrid", fusion=image_only)
    plain = searcher.search_text("Red ball", k=len(PRODUCTS), mode="image")
    assert [h.item_id for h in fused] == [h.item_id for h in plain]
    assert fused[0].score == pytest.approx(1 / 61)
    k10 = searcher.search_text("Red ball", k=1, mode="hybrid", fusion=search.Fusion(rank_constant=10))
    assert k10[0].item_id == "B0RED00005" and k10[0].score > 2 / 11


def test_image_queries_in_every_mode(world):
    _, _, _, searcher, images = world
    assert searcher.search_image(images["B0LAMP0003"], k=1, mode="image")[0].item_id == "B0LAMP0003"
    by_name = searcher.search_image(images["B0LAMP0003"], k=len(PRODUCTS), mode="name")
    assert len(by_name) == len(PRODUCTS) and all(h.score < index.SELF_MATCH_SCORE for h in by_name)
    # Random weights: the title vectors' ranking is noise, so fused with equal weights the lamp is
    # only somewhere near the top; with the title list's weight at 0 hybrid is the image ranking.
    hybrid = searcher.search_image(images["B0LAMP0003"], k=3, mode="hybrid")
    assert "B0LAMP0003" in {h.item_id for h in hybrid}
    images_only = searcher.search_image(images["B0LAMP0003"], k=3, mode="hybrid", fusion=search.Fusion(name_weight=0))
    assert images_only[0].item_id == "B0LAMP0003" and images_only[0].score == pytest.approx(1 / 61)
    with pytest.raises(ValueError, match="mode"):
        searcher.search_image(images["B0LAMP0003"], mode="psychic")


# The tiny model's random weights put every picture within cosine 0.98 of every other (see the
# README): only identical pictures are near-identical here.
IDENTICAL = 0.9999


def test_folding_turns_products_that_share_an_image_into_one_hit(world):
    _, _, _, searcher, images = world
    plain = searcher.search_image(images["B0TWIN0008"], k=4)
    assert {h.item_id for h in plain[:2]} == {"B0TWIN0008", "B0TWIN0009"}
    folded = searcher.search_image(images["B0TWIN0008"], k=4, fold=True, fold_threshold=IDENTICAL)
    assert folded[0].item_id in {"B0TWIN0008", "B0TWIN0009"} and folded[0].duplicates == 1
    assert set(folded[0].duplicate_ids) | {folded[0].item_id} == {"B0TWIN0008", "B0TWIN0009"}
    assert len({h.item_id for h in folded}) == 4 and "B0TWIN0009" not in {h.item_id for h in folded[1:]}
    assert [h.rank for h in folded] == [1, 2, 3, 4]
    shared = searcher.search_image(images["B0SHARE010"], k=3, fold=True, fold_threshold=IDENTICAL)
    assert shared[0].duplicates == 1 and {shared[0].item_id, *shared[0].duplicate_ids} == {"B0SHARE010", "B0SHARE011"}
    # The text side folds too (same title and same image: hybrid puts them at 1 and 2).
    hybrid = searcher.search_text("Fireman figure", k=3, mode="hybrid", fold=True, fold_threshold=IDENTICAL)
    assert hybrid[0].duplicates == 1 and hybrid[0].item_id.startswith("B0TWIN")
    # At the default threshold (0.98) random weights fold (nearly) everything into the first hit.
    loose = searcher.search_image(images["B0TWIN0008"], k=4, fold=True)
    assert loose[0].duplicates >= 1
    # Threshold 1.01 folds nothing by vectors; the shared image id still folds.
    strict = searcher.search_image(images["B0TWIN0008"], k=2, fold=True, fold_threshold=1.01)
    assert {h.item_id for h in strict} == {"B0TWIN0008", "B0TWIN0009"}


def test_duplicate_report_lists_the_groups(world):
    settings, client, name, _, _ = world
    report = duplicates.find_duplicates(
        duplicates.index_vectors(client, name, index.VECTOR_FIELD),
        total=len(PRODUCTS),
        threshold=IDENTICAL,
        block_rows=4,  # several tiles, so pairs across tiles are found too
    )
    groups = {tuple(g.item_ids): g for g in report.groups}
    assert groups[("B0SHARE010", "B0SHARE011")].reason == duplicates.SAME_IMAGE
    twins = groups[("B0TWIN0008", "B0TWIN0009")]
    assert twins.reason == duplicates.NEAR_VECTORS and twins.min_cosine >= 0.9999
    assert len(report.groups) == 2
    assert report.products == len(PRODUCTS) and report.images == len(PRODUCTS) - 1
    assert report.counts["folded_away"] == sum(len(g.item_ids) - 1 for g in report.groups)


def test_an_index_without_title_vectors_is_a_clear_error(world, opensearch_url):
    settings, client, _, _, _ = world
    old = f"{settings.index_alias}-old"
    client.indices.create(
        index=old,
        body={
            "settings": {"index": {"knn": True}},
            "mappings": {
                "properties": {
                    "item_id": {"type": "keyword"},
                    index.VECTOR_FIELD: {"type": "knn_vector", "dimension": 32},
                }
            },
        },
    )
    try:
        searcher = search.SearchClient(settings.replace(index_alias=old), client=client, encoder=world[3].encoder)
        with pytest.raises(search.SearchError, match="title vectors"):
            searcher.search_text("zebra", mode="name")
    finally:
        client.indices.delete(index=old, ignore_unavailable=True)


def test_cli_hybrid_flag(world, monkeypatch, capsys):
    from catalogue_search import cli

    settings = world[0]
    env = {
        "CATSEARCH_AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "CATSEARCH_OPENSEARCH_URL": settings.opensearch_url,
        "CATSEARCH_BUCKET": settings.bucket,
        "CATSEARCH_INDEX_ALIAS": settings.index_alias,
        "CATSEARCH_MODEL_NAME": settings.model_name,
        "CATSEARCH_QUERY_ENCODER": "local",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # An exact title is first in BM25 and in the title vectors: first in hybrid, whatever the images say.
    assert cli.main(["search", "Stainless steel kettle 1.7 litre", "--hybrid", "--json", "-k", "2"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["item_id"] == "B0KETTLE02" and first["score"] >= 2 / 61
    assert cli.main(["search", "Fireman figure", "--mode", "name", "--fold", "--fold-threshold", "0.9999"]) == 0
    assert "+1 with the same image" in capsys.readouterr().out
    assert cli.main(["search", "zebra", "--hybrid", "--rank-constant", "0"]) == 1
    assert "rank_constant" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sample_world(world, tmp_path_factory):
    """The sample catalogue's products whose pictures are identical, plus 30 others, indexed in-process."""
    from catalogue_search_dev import sample_index

    settings, client, _, _, _ = world
    layout = sample_index.layout_dir()
    products = sample_index.sample_products(layout)
    groups = sample_index.identical_image_groups(layout, products)
    in_groups = {i for g in groups for i in g}
    chosen = [p for p in products if p["item_id"] in in_groups] + [
        p for p in products if p["item_id"] not in in_groups
    ][:30]
    tmp = tmp_path_factory.mktemp("sample-artifact")
    build_model_artifact(tmp / "model.tar.gz", "tiny-clip", "", TINY)
    encoded = sample_index.encode(layout, chosen, tmp / "model.tar.gz", cache_dir=tmp / "cache")
    alias = f"{settings.index_alias}-sample"
    name = f"{alias}-v1"
    sample_index.load(client, settings.replace(index_alias=alias), name, alias, encoded)
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    searcher = search.SearchClient(
        settings.replace(index_alias=alias), client=client, encoder=search.LocalEncoder(settings, s3_client=s3)
    )
    yield layout, groups, encoded, name, searcher
    client.indices.delete(index=name, ignore_unavailable=True)


def test_sample_catalogue_products_that_share_an_image_fold_into_one_hit(sample_world):
    layout, groups, encoded, _, searcher = sample_world
    assert groups, "the sample catalogue has no two products with the same picture any more"
    paths = {p["item_id"]: p["path"] for p in encoded.products}
    for group in groups:
        picture = (layout / "images/small" / paths[group[0]]).read_bytes()
        plain = searcher.search_image(picture, k=len(group))
        assert {h.item_id for h in plain} == set(group)
        folded = searcher.search_image(picture, k=3, fold=True, fold_threshold=IDENTICAL)
        assert {folded[0].item_id, *folded[0].duplicate_ids} >= set(group)
        assert not {h.item_id for h in folded[1:]} & set(group)


def test_sample_catalogue_duplicate_report_lists_them(sample_world, world):
    _, groups, encoded, name, _ = sample_world
    client = world[1]
    report = duplicates.find_duplicates(
        duplicates.index_vectors(client, name, index.VECTOR_FIELD), total=len(encoded.products), threshold=IDENTICAL
    )
    listed = [set(g.item_ids) for g in report.groups]
    for group in groups:
        assert any(set(group) <= found for found in listed), (group, listed)
