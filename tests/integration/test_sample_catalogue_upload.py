"""Uploading the Tux Paint sample catalogue to S3 (the moto server)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from catalogue_search.settings import Settings
from catalogue_search_dev.sample_catalogue import (
    SUMMARY_FILENAME,
    CatalogueSummary,
    build_sample_catalogue,
    default_cache_dir,
    fetch_tuxpaint,
    layout_files,
    main,
    upload_catalogue,
)


@pytest.fixture(scope="session")
def stamps_root() -> Path:
    return fetch_tuxpaint(default_cache_dir())


@pytest.fixture(scope="session")
def full_build(stamps_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CatalogueSummary]:
    out = tmp_path_factory.mktemp("full") / "abo"
    return out, build_sample_catalogue(stamps_root, out)


@pytest.fixture(scope="session")
def small_build(stamps_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CatalogueSummary]:
    out = tmp_path_factory.mktemp("small") / "abo"
    return out, build_sample_catalogue(stamps_root, out, max_products=30)


def list_keys(s3, bucket: str, prefix: str = "") -> dict[str, int]:
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
    return keys


def test_full_catalogue_in_s3_matches_the_summary_and_a_rerun_skips_everything(
    full_build, settings: Settings, s3
) -> None:
    out, summary = full_build
    report = upload_catalogue(out, settings.bucket, s3)
    assert (report.uploaded, report.skipped) == (summary.objects, 0)

    keys = list_keys(s3, settings.bucket)
    assert len(keys) == summary.objects
    assert sum(k.startswith("images/small/") for k in keys) == summary.image_files
    assert sorted(k for k in keys if k.startswith("listings/")) == [
        f"listings/metadata/listings_{n:x}.json.gz" for n in range(summary.shards)
    ]
    assert SUMMARY_FILENAME not in keys
    assert all(keys[rel] == (out / rel).stat().st_size for rel in layout_files(out))

    # The "missing from the bucket" image is listed in images.csv but really absent in S3.
    csv_body = s3.get_object(Bucket=settings.bucket, Key="images/metadata/images.csv.gz")["Body"].read()
    csv_paths = [line.split(",")[3] for line in gzip.decompress(csv_body).decode().splitlines()[1:]]
    absent = [p for p in csv_paths if f"images/small/{p}" not in keys]
    assert len(absent) == len(summary.image_missing_from_bucket) == 1

    again = upload_catalogue(out, settings.bucket, s3)
    assert (again.uploaded, again.skipped) == (0, summary.objects)
    assert list_keys(s3, settings.bucket) == keys


def test_upload_creates_the_bucket_and_honours_the_prefix(small_build, settings: Settings, s3, unique: str) -> None:
    out, summary = small_build
    bucket = f"test-source-{unique}"
    report = upload_catalogue(out, bucket, s3, prefix="abo/v1")
    assert report.prefix == "abo/v1/"
    assert report.uploaded == summary.objects
    keys = list_keys(s3, bucket)
    assert sorted(keys) == [f"abo/v1/{rel}" for rel in layout_files(out)]


def test_a_changed_file_is_uploaded_again(small_build, settings: Settings, s3, tmp_path: Path) -> None:
    out, summary = small_build
    upload_catalogue(out, settings.bucket, s3)
    # Same size, different bytes: only the ETag tells them apart.
    copy = tmp_path / "copy"
    for rel in layout_files(out):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes((out / rel).read_bytes())
    jpeg = copy / next(rel for rel in layout_files(copy) if rel.endswith(".jpg"))
    data = bytearray(jpeg.read_bytes())
    data[-3] ^= 0xFF
    jpeg.write_bytes(bytes(data))

    report = upload_catalogue(copy, settings.bucket, s3)
    assert (report.uploaded, report.skipped) == (1, summary.objects - 1)
    key = jpeg.relative_to(copy).as_posix()
    assert s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read() == bytes(data)


def test_cli_builds_and_uploads_to_the_source_bucket(
    stamps_root: Path, settings: Settings, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, unique: str
) -> None:
    bucket = f"test-abo-{unique}"
    monkeypatch.setenv("CATSEARCH_AWS_ENDPOINT_URL", settings.aws_endpoint_url)
    monkeypatch.setenv("CATSEARCH_SOURCE_BUCKET", bucket)
    monkeypatch.setenv("CATSEARCH_SOURCE_PREFIX", "sample")
    out = tmp_path / "abo"
    argv = ["build", "--out", str(out), "--cache", str(stamps_root.parents[4]), "--max-products", "25", "--upload"]
    assert main(argv) == 0
    summary = CatalogueSummary.load(out)
    assert len(list_keys(s3, bucket, "sample/")) == summary.objects
    assert f"{summary.objects} uploaded, 0 already there" in capsys.readouterr().out
