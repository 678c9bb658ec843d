"""Unit tests for the Airflow-free core: filtering, planning, transform requests, settings."""

from __future__ import annotations

import gzip
import io
import json

import pandas as pd
import pytest

from catalogue_search import catalogue, transform
from catalogue_search.settings import Settings


def _names(*pairs):
    return [{"language_tag": t, "value": v} for t, v in pairs]


IMAGES = pd.DataFrame(
    [
        {"image_id": "imgA", "height": 10, "width": 20, "path": "aa/imgA.jpg"},
        {"image_id": "imgB", "height": 10, "width": 20, "path": "bb/imgB.jpg"},
        {"image_id": "imgC", "height": 10, "width": 20, "path": "cc/imgC.jpg"},
    ]
)


def test_filter_keeps_first_title_in_language_and_counts_drops():
    listings = [
        {
            "item_id": "B1",
            "item_name": _names(("de_DE", "Hund"), ("en_US", "a dog"), ("en_US", "dog 2")),
            "main_image_id": "imgA",
        },
        {"item_id": "B2", "item_name": _names(("fr_FR", "un chat")), "main_image_id": "imgB"},
        {"item_id": "B3", "item_name": _names(("en_US", "a car"))},
        {"item_id": "B4", "item_name": _names(("en_US", "a bus")), "main_image_id": "nope"},
        {"item_id": "B1", "item_name": _names(("en_US", "again")), "main_image_id": "imgC"},
        {"item_id": "B5", "item_name": _names(("en_US", "  ")), "main_image_id": "imgC"},
    ]
    products, report = catalogue.filter_listings(listings, IMAGES, language_tag="en_US", shard="0")
    assert [p["item_id"] for p in products] == ["B1"]
    assert products[0]["item_name"] == "a dog"
    assert products[0]["path"] == "aa/imgA.jpg"
    assert report.listings == 6 and report.kept == 1
    assert report.dropped == {
        catalogue.DROP_NO_TITLE: 2,
        catalogue.DROP_NO_IMAGE: 1,
        catalogue.DROP_UNKNOWN_IMAGE: 1,
        catalogue.DROP_DUPLICATE: 1,
    }


def test_filter_in_another_language():
    listings = [{"item_id": "B2", "item_name": _names(("fr_FR", "un chat")), "main_image_id": "imgB"}]
    products, _ = catalogue.filter_listings(listings, IMAGES, language_tag="fr_FR")
    assert products[0]["item_name"] == "un chat"


def test_bad_listing_line_is_named():
    raw = io.BytesIO()
    with gzip.open(raw, "wt") as fh:
        fh.write(json.dumps({"item_id": "x"}) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        catalogue.read_listings(raw.getvalue())


def test_merge_drops_cross_shard_duplicates_and_limits():
    a = [{"item_id": "B2", "v": "a"}, {"item_id": "B1", "v": "a"}]
    b = [{"item_id": "B1", "v": "b"}, {"item_id": "B3", "v": "b"}]
    merged, dups = catalogue.merge_products([a, b], max_products=2)
    assert dups == 1
    assert merged == [{"item_id": "B1", "v": "a"}, {"item_id": "B2", "v": "a"}]


def test_pending_ids_skip_what_the_store_holds_unless_forced_or_the_image_changed():
    from catalogue_search.encoding import Catalogue, pending_ids

    cat = Catalogue(version="v1", chunks=["c0"], encoded={"a.jpg": (0, "e1"), "b.jpg": (0, "e1")})
    cat.errors["d.jpg"] = ("e4", "image could not be decoded")
    cat.errors["e.jpg"] = ("e5", "image could not be decoded")
    etags = {"a.jpg": "e1", "b.jpg": "e2-replaced", "c.jpg": "e3", "d.jpg": "e4", "e.jpg": "e5-fixed"}
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "a.jpg"]
    # b: replaced since; c: never encoded; d: failed and unchanged (stays dropped); e: failed, then fixed
    assert pending_ids(paths, cat, etags) == ["b.jpg", "c.jpg", "e.jpg"]
    assert pending_ids(paths, cat, etags, force=True) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]


def test_catalogue_add_moves_an_image_between_chunks_and_out_of_errors():
    from catalogue_search.encoding import Catalogue

    cat = Catalogue(version="v1")
    cat.add("run1/00000.jsonl.out", ["a", "b"], {"a": "e1", "b": "e1"}, {"c": "corrupt"})
    cat.add("run2/00000.jsonl.out", ["c"], {"c": "e2"}, {"b": "gone"})
    cat.add("run2/00000.jsonl.out", ["c"], {"c": "e2"}, {})  # a retry records the chunk once
    assert cat.chunks == ["run1/00000.jsonl.out", "run2/00000.jsonl.out"]
    assert cat.encoded == {"a": (0, "e1"), "c": (1, "e2")}
    assert cat.errors == {"b": ("", "gone")}


def test_chunk_output_round_trip_and_bad_outputs():
    import numpy as np

    from catalogue_search import encoding as store

    vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    raw = store.encode_output(["a", "b", "c"], vectors, {"d": "image could not be decoded"}, "v1")
    out = store.parse_output(raw, "x")
    assert out.ids == ["a", "b", "c"] and out.errors == {"d": "image could not be decoded"}
    assert out.vectors.dtype == np.float32 and np.array_equal(out.vectors, vectors)
    assert out.artifact_version == "v1"
    with pytest.raises(store.EmbeddingStoreError, match="not a chunk output"):
        store.parse_output(b'{"embeddings": [[1.0]]}', "s3://b/k.out")
    with pytest.raises(store.EmbeddingStoreError, match="2 ids but embeddings of shape"):
        store.parse_output(store.encode_output(["a", "b"], vectors), "s3://b/k.out")
    with pytest.raises(store.EmbeddingStoreError, match="non-finite"):
        store.parse_output(store.encode_output(["a"], np.full((1, 8), np.nan, dtype=np.float32)), "s3://b/k.out")


def test_title_records_are_keyed_by_content():
    import numpy as np

    from catalogue_search import encoding

    products = [
        {"item_id": "a", "item_name": "A fireman.", "path": "0a/a.jpg"},
        {"item_id": "b", "item_name": "A fireman.", "path": "0b/b.jpg"},
        {"item_id": "c", "item_name": "Crème brûlée", "path": "0a/a.jpg"},
        {"item_id": "d", "item_name": "  ", "path": "0d/d.jpg"},
    ]
    titles = encoding.titles_of(products)
    assert sorted(titles.values()) == ["A fireman.", "Crème brûlée"]
    assert encoding.title_id("A fireman.") == encoding.title_id("A fireman.") != encoding.title_id("A fireman")
    wanted = encoding.wanted(encoding.TITLE, Settings(), None, products)  # titles need no S3 request
    assert wanted.ids == sorted(titles) and wanted.etags == dict.fromkeys(titles, "")
    lines = wanted.records(wanted.ids).decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"id": i, "text": titles[i]} for i in sorted(titles)]
    spooled = [
        (encoding.title_id("A fireman."), np.array([0.5, -1.0])),
        (encoding.title_id("Crème brûlée"), np.ones(2)),
    ]
    with encoding.TitleVectors(iter(spooled)) as vectors:
        assert vectors.get("A fireman.") == [0.5, -1.0] and vectors.get("Crème brûlée") == [1.0, 1.0]
        assert vectors.get("A fireman") is None and vectors.get("  ") is None and vectors.get(None) is None
        assert len(vectors.rows) == 2 and vectors.row_bytes == 8
    with pytest.raises(ValueError, match="dimensions"):
        encoding.TitleVectors(iter([("t1", np.ones(2)), ("t2", np.ones(3))]))


def test_each_target_has_a_store_of_its_own_and_chunks_of_its_content_type():
    from catalogue_search import contract, encoding

    s = Settings(bucket="proj", embeddings_prefix="emb/", model_name="ViT-B-32")
    image, title = encoding.Store(s, encoding.IMAGE), encoding.Store(s, encoding.TITLE)
    assert image.prefix("v1") == "emb/vit-b-32/v1/" and title.prefix("v1") == "emb/names/vit-b-32/v1/"
    assert image.catalogue_key("v1") != title.catalogue_key("v1")
    assert image.encode_prefix("runs/r1/") == "runs/r1/encode/"
    assert title.encode_prefix("runs/r1/") == "runs/r1/names/encode/"
    assert title.output_prefix("v1", "runs/r1/") == "emb/names/vit-b-32/v1/runs/runs-r1-names/"
    assert (encoding.IMAGE.content_type, encoding.TITLE.content_type) == (contract.IMAGE_CHUNK, contract.TEXT_CHUNK)
    wanted = encoding.image_records(s, ["0a/a.jpg"])
    assert json.loads(wanted) == {"id": "0a/a.jpg", "s3_uri": "s3://proj/images/small/0a/a.jpg"}
    with pytest.raises(ValueError, match="artifact version"):
        image.prefix("")


def test_transform_request_is_a_valid_create_transform_job_input_for_batched_chunks():
    """Checked against botocore's own service model, as the SageMaker API will check it."""
    import botocore.session
    from botocore.validate import validate_parameters

    s = Settings(bucket="proj", model_name="ViT-B-32", transform_chunk_size=512, transform_batch_size=128)
    req = transform.transform_request(
        s,
        job=transform.job_name(s, "run-1"),
        manifest_uri="s3://proj/manifests/run-1/encode/chunks.manifest",
        output_uri="s3://proj/embeddings/vit-b-32/0123456789abcdef/runs/run-1/",
    )
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(req, model.operation_model("CreateTransformJob").input_shape)  # raises if invalid
    assert req["TransformInput"]["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    # one chunk object = one request = one `.out`
    assert req["TransformInput"]["SplitType"] == "None" and req["BatchStrategy"] == "SingleRecord"
    assert req["TransformInput"]["ContentType"] == "application/x-image-chunk"
    assert req["TransformOutput"] == {
        "S3OutputPath": "s3://proj/embeddings/vit-b-32/0123456789abcdef/runs/run-1/",
        "Accept": "application/x-npz",
        "AssembleWith": "None",
    }
    assert req["Environment"]["MAX_BATCH_SIZE"] == "128"
    assert 1 <= req["ModelClientConfig"]["InvocationsTimeoutInSeconds"] <= 3600
    assert req["MaxPayloadInMB"] <= 100
    assert len(req["TransformJobName"]) <= 63
    assert req["TransformJobName"] == transform.job_name(s, "run-1") != transform.job_name(s, "run-2")
    with pytest.raises(ValueError, match="1..3600"):
        transform.transform_request(
            s.replace(transform_invocation_timeout_s=7200), job="j", manifest_uri="s3://p/m", output_uri="s3://p/o/"
        )
    bad = {**req, "SplitType": "Line"}  # the check can fail: SplitType belongs in TransformInput
    with pytest.raises(Exception, match="SplitType"):
        validate_parameters(bad, model.operation_model("CreateTransformJob").input_shape)


def test_model_request_carries_the_artifact_version():
    import botocore.session
    from botocore.validate import validate_parameters

    s = Settings(bucket="proj", sagemaker_role_arn="arn:aws:iam::123456789012:role/r")
    req = transform.model_request(s, transform.IMAGE, "img:latest", "0123456789abcdef")
    assert req["PrimaryContainer"]["Environment"]["ARTIFACT_VERSION"] == "0123456789abcdef"
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(req, model.operation_model("CreateModel").input_shape)
    with pytest.raises(ValueError, match="artifact version"):
        transform.model_request(s, transform.IMAGE, "img:latest", "")


def test_settings_from_env_and_bad_numbers():
    s = Settings.from_env({"CATSEARCH_BUCKET": "b", "CATSEARCH_ENDPOINT_MEMORY_MB": "3072"})
    assert s.bucket == "b" and s.endpoint_memory_mb == 3072
    assert s.artifact_uri == "s3://b/models/vit-b-32/model.tar.gz"
    with pytest.raises(ValueError, match="CATSEARCH_INDEX_RETENTION"):
        Settings.from_env({"CATSEARCH_INDEX_RETENTION": "two"})


def test_opensearch_client_auth_modes():
    from opensearchpy import AWSV4SignerAuth

    from catalogue_search import index

    https = index.make_client("https://search.example.internal:443", auth="basic", user="u", password="p")
    conn = https.transport.get_connection()
    assert conn.use_ssl and conn.session.auth == ("u", "p")
    signed = index.make_client("https://search.example.internal", auth="sigv4", region="eu-west-1")
    assert isinstance(signed.transport.get_connection().session.auth, AWSV4SignerAuth)
    with pytest.raises(ValueError, match="needs a user"):
        index.make_client("http://127.0.0.1:9200", auth="basic")
    with pytest.raises(ValueError, match="unknown OpenSearch auth"):
        index.make_client("http://127.0.0.1:9200", auth="kerberos")
