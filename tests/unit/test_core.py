"""Unit tests for the Airflow-free core: filtering, planning, transform requests, settings."""

from __future__ import annotations

import gzip
import io
import json
from datetime import datetime, timedelta, timezone

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


def test_pending_paths_skips_encoded_unless_forced_or_image_replaced():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    products = [{"path": "a.jpg"}, {"path": "b.jpg"}, {"path": "c.jpg"}]
    encoded = {"a.jpg": t0, "b.jpg": t0}
    images = {"a.jpg": t0 - timedelta(hours=1), "b.jpg": t0 + timedelta(hours=1), "c.jpg": t0}
    assert transform.pending_paths(products, encoded, images) == ["b.jpg", "c.jpg"]
    assert transform.pending_paths(products, encoded, images, force=True) == ["a.jpg", "b.jpg", "c.jpg"]


def test_manifest_and_transform_request_follow_the_sagemaker_contract():
    s = Settings(bucket="proj", model_name="ViT-B-32")
    body = json.loads(transform.manifest(s, ["aa/x.jpg"]))
    assert body == [{"prefix": "s3://proj/images/small/"}, "aa/x.jpg"]
    req = transform.transform_request(s, job=transform.job_name(s, "run-1"), manifest_uri="s3://proj/m")
    assert req["TransformInput"]["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    assert req["BatchStrategy"] == "MultiRecord"
    assert req["TransformOutput"]["S3OutputPath"] == "s3://proj/embeddings/vit-b-32/"
    assert len(req["TransformJobName"]) <= 63
    assert req["TransformJobName"] == transform.job_name(s, "run-1") != transform.job_name(s, "run-2")


def test_parse_output_rejects_error_records_and_bad_shapes():
    assert transform.parse_output(b'{"embeddings": [[0.6, 0.8]]}') == pytest.approx([0.6, 0.8])
    with pytest.raises(ValueError, match="truncated"):
        transform.parse_output(b'{"error": "image is truncated"}')
    with pytest.raises(ValueError, match="with one vector"):
        transform.parse_output(b'{"embeddings": [[1.0], [1.0]]}')


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
