"""The search client against the real OpenSearch node, with the tiny model's real handler."""

from __future__ import annotations

import io
import json
import uuid

import boto3
import pytest
from PIL import Image, ImageDraw

from catalogue_search import index, search
from catalogue_search.contract import VECTOR_ATOL, vectors_close
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.settings import Settings, boto3_client
from catalogue_search_dev import testenv
from catalogue_search_dev.model_build import upload_model_artifact

SHAPES = {
    "B0RED00001": ("red", "ellipse", "TOY"),
    "B0BLUE0002": ("blue", "rectangle", "TOY"),
    "B0GREEN003": ("green", "ellipse", "FOOD"),
    "B0YELLOW04": ("yellow", "rectangle", "FOOD"),
    "B0BLACK005": ("black", "ellipse", "TOY"),
}


def _jpeg(colour: str, shape: str, size: int = 96) -> bytes:
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    getattr(draw, shape)((12, 20, size - 12, size - 20), fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tiny_artifact, moto_url, sagemaker_url, opensearch_url):
    """A tiny-model artifact in moto S3 and a five-product index behind an alias."""
    token = testenv.unique_name_part()
    settings = Settings.from_env(
        aws_endpoint_url=moto_url,
        sagemaker_endpoint_url=sagemaker_url,
        opensearch_url=opensearch_url,
        bucket=f"search-{token}",
        index_alias=f"search-{token}",
        model_name="tiny-clip",
        model_pretrained="",
    )
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    s3.create_bucket(Bucket=settings.bucket)
    upload_model_artifact(settings, s3, tiny_artifact)
    images = {item: _jpeg(c, shape) for item, (c, shape, _) in SHAPES.items()}
    handler = load_handler_from_artifact(settings.artifact_uri, "IMAGE", s3_client=s3)
    vectors = handler.encode_images(list(images.values()))
    client = index.make_client(opensearch_url)
    name = f"{settings.index_alias}-v1"
    body = index.index_body(settings, alias=settings.index_alias, dimension=vectors.shape[1], run_key="t")
    index.create_index(client, name, body)
    docs = []
    for (item_id, (colour, shape, kind)), vec in zip(SHAPES.items(), vectors):
        product = {
            "item_id": item_id,
            "item_name": f"a {colour} {shape}",
            "image_id": f"img{item_id}",
            "main_image_id": f"img{item_id}",
            "path": f"{item_id[:2].lower()}/{item_id}.jpg",
            "product_type": kind,
            "brand": "Shapes",
        }
        docs.append(index.document(product, vec.tolist(), settings.model_name))
    index.bulk_load(client, name, docs, total=len(docs))
    index.finish_loading(client, name, 0)
    index.swap_alias(client, settings.index_alias, name)
    yield settings, s3, images
    client.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture(scope="module")
def local_client(world):
    settings, s3, _ = world
    return search.SearchClient(settings, encoder=search.LocalEncoder(settings, s3_client=s3))


def test_image_query_returns_the_products_own_image_first(world, local_client):
    _, _, images = world
    for item_id, data in images.items():
        hits = local_client.search_image(data, k=3)
        assert hits[0].item_id == item_id
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].rank == 1 and hits[0].image_path.endswith(f"{item_id}.jpg")


def test_text_and_image_queries_hit_the_same_index(local_client):
    text_hits = local_client.search_text("a red ellipse", k=5)
    assert {h.item_id for h in text_hits} == set(SHAPES)
    assert all(set(h.as_dict()) >= {"item_id", "item_name", "image_path", "score"} for h in text_hits)
    assert all("embedding" not in h.as_dict() for h in text_hits)


def test_filters_and_paging(world, local_client):
    _, _, images = world
    food = local_client.search_image(images["B0RED00001"], k=5, product_type="FOOD")
    assert {h.item_id for h in food} == {"B0GREEN003", "B0YELLOW04"}
    first = local_client.search_image(images["B0RED00001"], k=2)
    second = local_client.search_image(images["B0RED00001"], k=2, offset=2)
    assert [h.rank for h in second] == [3, 4]
    assert not {h.item_id for h in first} & {h.item_id for h in second}


def test_clear_errors_for_bad_queries(world, local_client):
    settings, s3, _ = world
    with pytest.raises(search.EmptyQueryError):
        local_client.search_text("   ")
    with pytest.raises(search.UnreadableImageError):
        local_client.search_image(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(search.UnreadableImageError):
        local_client.search_image(b"")
    missing = search.SearchClient(
        settings.replace(index_alias="no-such-alias"), encoder=search.LocalEncoder(settings, s3_client=s3)
    )
    with pytest.raises(search.IndexMissingError, match="no-such-alias"):
        missing.search_text("a red ellipse")


def _deploy(settings: Settings, encode_type: str, model_data_url: str | None = None) -> str:
    """Model, serverless config and endpoint, through the local SageMaker server (moto: InService at once)."""
    sm = boto3_client("sagemaker", settings)
    name = settings.endpoint_name(encode_type)
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=settings.sagemaker_role_arn or "arn:aws:iam::123456789012:role/r",
        PrimaryContainer={
            "Image": "pytorch-inference:2.6-cpu-py312",
            "ModelDataUrl": model_data_url or settings.artifact_uri,
            "Environment": {"ENCODE_TYPE": encode_type},
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-cfg",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 1},
            }
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")
    return name


@pytest.fixture(scope="module")
def endpoint_settings(world):
    """The world's settings with CATSEARCH_QUERY_ENCODER=endpoint and both endpoints deployed."""
    settings, _, _ = world
    settings = settings.replace(endpoint_prefix=f"e{settings.bucket[-6:]}", query_encoder="endpoint")
    names = [_deploy(settings, encode_type) for encode_type in (search.TEXT, search.IMAGE)]
    yield settings
    sm = boto3_client("sagemaker", settings)
    for name in names:
        sm.delete_endpoint(EndpointName=name)
        sm.delete_endpoint_config(EndpointConfigName=f"{name}-cfg")
        sm.delete_model(ModelName=name)


def assert_same_hits(a, b) -> None:
    """The same products in the same order; scores from two encoder processes agree within the contract."""
    assert [h.item_id for h in a] == [h.item_id for h in b]
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=VECTOR_ATOL)


def test_endpoint_encoder_gives_the_same_vectors_as_the_local_one(world, endpoint_settings):
    """Through boto3's sagemaker-runtime and the local SageMaker server: a JSON text and a binary JPEG."""
    settings, s3, images = world
    remote = search.EndpointEncoder(endpoint_settings)
    local = search.LocalEncoder(settings, s3_client=s3)
    query = json.dumps({"inputs": ["a blue rectangle"]}).encode()
    assert vectors_close(
        remote.encode(search.TEXT, query, "application/json"), local.encode(search.TEXT, query, "application/json")
    )
    for data in list(images.values())[:2]:
        assert vectors_close(
            remote.encode(search.IMAGE, data, "application/x-image"),
            local.encode(search.IMAGE, data, "application/x-image"),
        )


def test_search_with_the_endpoint_encoder_matches_the_local_encoder(world, endpoint_settings, local_client):
    """CATSEARCH_QUERY_ENCODER=endpoint end to end: make_encoder picks the runtime, hits equal the local ones."""
    _, _, images = world
    remote = search.SearchClient(endpoint_settings)
    assert isinstance(remote.encoder, search.EndpointEncoder)
    assert_same_hits(remote.search_text("a red ellipse", k=5), local_client.search_text("a red ellipse", k=5))
    for item_id, data in images.items():
        hits = remote.search_image(data, k=3)
        assert hits[0].item_id == item_id and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert_same_hits(hits, local_client.search_image(data, k=3))
    with pytest.raises(search.UnreadableImageError, match="could not be read"):
        remote.search_image(b"\xff\xd8\xff\xe0 this is not a jpeg")


def test_endpoint_encoder_rejects_a_wrong_shaped_response(world, tmp_path, make_handler_artifact):
    settings, s3, _ = world
    settings = settings.replace(endpoint_prefix=f"w{settings.bucket[-6:]}")
    wrong = """
    import json

    def model_fn(model_dir):  # the serving toolkit's contract
        return None

    def transform_fn(model, body, content_type, accept):
        return json.dumps({"predictions": [0.1, 0.2]}).encode(), "application/json"
    """
    key = f"models/wrong-{uuid.uuid4().hex[:6]}/model.tar.gz"
    s3.upload_file(str(make_handler_artifact(tmp_path / "model.tar.gz", wrong)), settings.bucket, key)
    name = _deploy(settings, search.TEXT, f"s3://{settings.bucket}/{key}")
    try:
        encoder = search.EndpointEncoder(settings)
        with pytest.raises(search.EncoderResponseError, match=name):
            encoder.encode(search.TEXT, json.dumps({"inputs": ["probe"]}).encode(), "application/json")
    finally:
        sm = boto3_client("sagemaker", settings)
        sm.delete_endpoint(EndpointName=name)
        sm.delete_endpoint_config(EndpointConfigName=f"{name}-cfg")
        sm.delete_model(ModelName=name)


def test_endpoint_not_deployed_is_a_clear_error(world):
    settings, _, _ = world
    settings = settings.replace(endpoint_prefix="never-deployed")
    with pytest.raises(search.EndpointNotDeployedError, match="query_endpoints_deploy"):
        search.EndpointEncoder(settings).encode(search.TEXT, b'{"inputs": ["x"]}', "application/json")
