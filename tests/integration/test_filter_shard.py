"""ingest.filter_shard against moto: dirty source files are counted, or stop the shard naming the S3 object and line."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json

import pytest

from catalogue_search import catalogue, ingest
from catalogue_search.settings import Settings


def gz(text: str) -> bytes:
    out = io.BytesIO()
    with gzip.open(out, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return out.getvalue()


def listing(item_id, image: str = "imgA") -> str:
    row = {"item_name": [{"language_tag": "en_US", "value": "a lamp"}], "main_image_id": image}
    if item_id is not ...:
        row["item_id"] = item_id
    return json.dumps(row)


@pytest.fixture
def source(settings: Settings, s3, unique: str):
    """A source bucket of this test's own (never the shared sample catalogue); both buckets are deleted after."""
    bucket = f"test-source-{unique}"
    s3.create_bucket(Bucket=bucket)
    yield dataclasses.replace(settings, source_bucket=bucket, source_prefix="abo/")
    for name in (bucket, settings.bucket):
        for item in s3.list_objects_v2(Bucket=name).get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
        s3.delete_bucket(Bucket=name)


def plan(settings: Settings) -> ingest.RunPlan:
    return ingest.RunPlan(
        run_key="r1",
        shards=["0"],
        language_tag="en_US",
        max_products=None,
        alias=settings.index_alias,
        force_reencode=False,
        index="unused",
        prefix="runs/r1/",
    )


def put(s3, settings: Settings, key: str, body: bytes) -> None:
    s3.put_object(Bucket=settings.source_bucket, Key=settings.source_prefix + key, Body=body)


def test_dirty_rows_are_dropped_and_counted_by_reason(source: Settings, s3):
    put(s3, source, catalogue.IMAGES_CSV_KEY, gz("image_id,height,width,path\nimgA,10,20,a/imgA.jpg\nimgB,,20,b.jpg\n"))
    lines = [listing("B1"), listing(...), listing(None), listing(""), "[]", "null", listing("B2", image="imgB")]
    put(s3, source, catalogue.LISTINGS_KEY.format(shard="0"), gz("\n".join(lines) + "\n"))
    report = ingest.filter_shard(source, s3, plan(source), "0")
    assert report["kept"] == 1
    assert report["dropped"] == {"image_size_invalid": 1, "no_item_id": 3, "not_a_json_object": 2}
    written = catalogue.from_jsonl(
        s3.get_object(Bucket=source.bucket, Key="runs/r1/shards/listings_0.jsonl")["Body"].read()
    )
    assert [p["item_id"] for p in written] == ["B1"]


def test_a_broken_listings_line_names_the_s3_object_and_line(source: Settings, s3):
    put(s3, source, catalogue.IMAGES_CSV_KEY, gz("image_id,height,width,path\nimgA,10,20,a/imgA.jpg\n"))
    put(s3, source, catalogue.LISTINGS_KEY.format(shard="0"), gz(listing("B1") + "\n{broken\n"))
    where = f"s3://{source.source_bucket}/abo/listings/metadata/listings_0.json.gz line 2"
    with pytest.raises(ValueError, match=where):
        ingest.filter_shard(source, s3, plan(source), "0")
