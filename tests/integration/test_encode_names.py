"""Title vectors through the image encode path: chunks, the TEXT model's transform, the store, load_index.

Against moto (S3 + SageMaker control plane), the local transform runner with
the real handler, and the real OpenSearch node.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalogue_search import catalogue, contract, encoding, index, ingest
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.model_artifact import upload_model_artifact
from catalogue_search.search import LocalEncoder, SearchClient
from catalogue_search.settings import Settings
from catalogue_search_dev.local_transform import run_transform_job

IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-gpu-py312"
TITLES = [f"Zebra plush toy ZX-{i:03d}" for i in range(9)] + ["A fireman.", "A fireman.", "Crème brûlée set"]


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def stack(settings: Settings, s3, sagemaker_client, opensearch_url: str, tmp_path: Path, tiny_artifact: Path):
    settings = settings.replace(
        model_name="tiny-clip",
        opensearch_url=opensearch_url,
        transform_chunk_size=4,
        transform_batch_size=3,
        sagemaker_role_arn="arn:aws:iam::123456789012:role/catalogue-search-sagemaker",
    )
    upload_model_artifact(settings, s3, tiny_artifact)
    products = []
    for i, title in enumerate(TITLES):
        path = f"{i:02x}/img{i}.jpg"
        s3.put_object(Bucket=settings.bucket, Key=settings.images_prefix + path, Body=_jpeg(i))
        products.append({"item_id": f"B{i:04d}", "item_name": title, "image_id": f"I{i}", "main_image_id": f"I{i}"})
        products[-1]["path"] = path
    plan = ingest.RunPlan.for_run(settings, "run-1")
    s3.put_object(Bucket=settings.bucket, Key=plan.products_key, Body=catalogue.to_jsonl(products))
    client = index.client_from_settings(settings)
    yield settings, plan, products, client, tmp_path / "cache"
    for name in list(client.indices.get(index=f"{settings.index_alias}-*")):
        client.indices.delete(index=name)


def _run(settings, s3, sagemaker_client, plan, cache):
    for request in (
        ingest.prepare_encoding(settings, s3, sagemaker_client, plan, IMAGE_URI),
        ingest.prepare_name_encoding(settings, s3, sagemaker_client, plan, IMAGE_URI),
    ):
        if request is not None:
            report = run_transform_job(request, s3_client=s3, sagemaker_client=sagemaker_client, cache_dir=cache)
            assert report.status == "Completed", report.as_dict()
    ingest.record_embeddings(settings, s3, plan)
    return ingest.record_name_embeddings(settings, s3, plan)


def test_titles_are_encoded_by_the_text_model_in_chunks_and_loaded(stack, s3, sagemaker_client):
    settings, plan, products, client, cache = stack
    request = ingest.prepare_name_encoding(settings, s3, sagemaker_client, plan, IMAGE_URI)
    assert request["ModelName"] == settings.sagemaker_model_name("TEXT")
    assert request["TransformInput"]["ContentType"] == contract.TEXT_CHUNK
    distinct = len(set(TITLES))  # two products share "A fireman.": one record
    encode = encoding.read_plan(s3, encoding.Store(settings, encoding.TITLE), plan.prefix)
    assert encode.total == distinct and len(encode.chunks) == -(-distinct // 4)

    recorded = _run(settings, s3, sagemaker_client, plan, cache)
    assert (recorded["encoded"], recorded["failed"]) == (distinct, 0)
    loaded = ingest.load_index(settings, s3, client, plan)
    assert loaded["title_vectors"] == len(products)

    text = load_handler_from_artifact(settings.artifact_uri, "TEXT", s3_client=s3, cache_dir=cache)
    expected = text.encode_texts(TITLES)
    for product, want in zip(products, expected):
        doc = client.get(index=plan.index, id=product["item_id"])["_source"]
        np.testing.assert_allclose(doc[index.NAME_VECTOR_FIELD], want, atol=1e-5)

    # A word of a title that no picture carries finds its product through the loaded index.
    ingest.publish(settings, s3, client, plan)
    searcher = SearchClient(settings, client=client, encoder=LocalEncoder(settings, s3_client=s3, cache_dir=cache))
    assert searcher.search_text("zx004", 3, mode="hybrid")[0].item_id == "B0004"
    assert searcher.search_text(TITLES[5], 1, mode="name")[0].item_id == "B0005"


def test_a_second_run_encodes_no_title_again_and_a_new_title_only(stack, s3, sagemaker_client):
    settings, plan, products, client, cache = stack
    _run(settings, s3, sagemaker_client, plan, cache)
    second = ingest.RunPlan.for_run(settings, "run-2")
    changed = [*products[:-1], {**products[-1], "item_name": "Crème brûlée set, 4 pieces"}]
    s3.put_object(Bucket=settings.bucket, Key=second.products_key, Body=catalogue.to_jsonl(changed))
    request = ingest.prepare_name_encoding(settings, s3, sagemaker_client, second, IMAGE_URI)
    encode = encoding.read_plan(s3, encoding.Store(settings, encoding.TITLE), second.prefix)
    assert request is not None and [c["ids"] for c in encode.chunks] == [[encoding.title_id(changed[-1]["item_name"])]]
    _run(settings, s3, sagemaker_client, second, cache)
    assert ingest.load_index(settings, s3, client, second)["title_vectors"] == len(products)
    third = ingest.RunPlan.for_run(settings, "run-3")
    s3.put_object(Bucket=settings.bucket, Key=third.products_key, Body=catalogue.to_jsonl(changed))
    assert ingest.prepare_name_encoding(settings, s3, sagemaker_client, third, IMAGE_URI) is None
