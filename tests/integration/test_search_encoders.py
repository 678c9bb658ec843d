"""The endpoint query encoder (boto3's sagemaker-runtime through the local SageMaker server, endpoints made
with the pipeline's own requests) against the in-process one, on the shared catalogue."""

from __future__ import annotations

import json
import uuid

import pytest
from search_world import deployed

from catalogue_search import search
from catalogue_search.contract import VECTOR_ATOL, vectors_close


@pytest.fixture(scope="module")
def endpoint_settings(search_world, sagemaker_url):
    """The shared catalogue's settings with CATSEARCH_QUERY_ENCODER=endpoint and both endpoints deployed."""
    settings = search_world.settings.replace(
        sagemaker_endpoint_url=sagemaker_url, endpoint_prefix=f"e{uuid.uuid4().hex[:6]}", query_encoder="endpoint"
    )
    with deployed(settings, search.TEXT), deployed(settings, search.IMAGE):
        yield settings


def assert_same_hits(a, b) -> None:
    """The same products in the same order; scores from two encoder processes agree within the contract."""
    assert [h.item_id for h in a] == [h.item_id for h in b]
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=VECTOR_ATOL)


def test_endpoint_encoder_gives_the_same_vectors_as_the_local_one(search_world, endpoint_settings, searcher):
    """A JSON text and binary JPEGs; each encoder reports the artifact version the index records."""
    remote = search.EndpointEncoder(endpoint_settings)
    local = searcher.encoder
    query = json.dumps({"inputs": ["a blue rectangle"]}).encode()
    assert vectors_close(
        remote.encode(search.TEXT, query, "application/json"), local.encode(search.TEXT, query, "application/json")
    )
    for p in search_world.products[:2]:
        assert vectors_close(
            remote.encode(search.IMAGE, p.image, "application/x-image"),
            local.encode(search.IMAGE, p.image, "application/x-image"),
        )
    for encode_type in (search.TEXT, search.IMAGE):
        assert remote.artifact_version(encode_type) == local.artifact_version(encode_type)
        assert remote.artifact_version(encode_type) == search_world.artifact_version


def test_search_with_the_endpoint_encoder_matches_the_local_encoder(search_world, endpoint_settings, searcher):
    """CATSEARCH_QUERY_ENCODER=endpoint end to end: make_encoder picks the runtime, hits equal the local ones."""
    remote = search.SearchClient(endpoint_settings)
    assert isinstance(remote.encoder, search.EndpointEncoder)
    assert_same_hits(remote.search_text("a red ellipse", 5), searcher.search_text("a red ellipse", 5))
    for p in search_world.products[::4]:
        hits = remote.search_image(p.image, 3)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert_same_hits(hits, searcher.search_image(p.image, 3))
    with pytest.raises(search.UnreadableImageError, match="could not be read"):
        remote.search_image(b"\xff\xd8\xff\xe0 this is not a jpeg")


def test_endpoint_encoder_rejects_a_wrong_shaped_response(search_world, sagemaker_url, tmp_path, make_handler_artifact):
    settings = search_world.settings.replace(
        sagemaker_endpoint_url=sagemaker_url, endpoint_prefix="w" + uuid.uuid4().hex[:6]
    )
    wrong = """
    import json

    def model_fn(model_dir):  # the serving toolkit's contract
        return None

    def transform_fn(model, body, content_type, accept):
        return json.dumps({"predictions": [0.1, 0.2]}).encode(), "application/json"
    """
    key = f"models/wrong-{uuid.uuid4().hex[:6]}/model.tar.gz"
    search_world.s3.upload_file(str(make_handler_artifact(tmp_path / "model.tar.gz", wrong)), settings.bucket, key)
    with deployed(settings, search.TEXT, f"s3://{settings.bucket}/{key}") as name:
        with pytest.raises(search.EncoderResponseError, match=name):
            search.EndpointEncoder(settings).encode(
                search.TEXT, json.dumps({"inputs": ["x"]}).encode(), "application/json"
            )


def test_endpoint_not_deployed_is_a_clear_error(search_world, sagemaker_url):
    settings = search_world.settings.replace(sagemaker_endpoint_url=sagemaker_url, endpoint_prefix="never-deployed")
    with pytest.raises(search.EndpointNotDeployedError, match="query_endpoints_deploy"):
        search.EndpointEncoder(settings).encode(search.TEXT, b'{"inputs": ["x"]}', "application/json")


def test_an_endpoint_deleted_after_the_client_saw_it_is_a_clear_error(search_world, sagemaker_url):
    """The client checks an endpoint once; when it is gone later, the runtime's answer sends it to look again."""
    settings = search_world.settings.replace(
        sagemaker_endpoint_url=sagemaker_url, endpoint_prefix="g" + uuid.uuid4().hex[:6]
    )
    encoder = search.EndpointEncoder(settings)
    with deployed(settings, search.TEXT):
        assert encoder.artifact_version(search.TEXT) == search_world.artifact_version
    with pytest.raises(search.EndpointNotDeployedError, match="query_endpoints_deploy"):
        encoder.encode(search.TEXT, b'{"inputs": ["x"]}', "application/json")
