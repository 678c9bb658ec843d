"""The local batch-transform runner against moto S3 + SageMaker, with the tiny CLIP artifact.

What is checked is what SageMaker batch transform promises: one `<key>.out`
per input under the output path, the handler's answer inside, no `.out` for an
input that failed (named in the report), and Line-split inputs answered
line by line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from catalogue_search.contract import VECTOR_ATOL
from catalogue_search.handler import LoadedHandler, load_handler_from_artifact
from catalogue_search.model_artifact import ArtifactInfo, upload_model_artifact
from catalogue_search.settings import Settings
from catalogue_search_dev.local_transform import TransformJobError, run_transform_job

IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"


def image_bytes(seed: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).convert(mode)
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def artifact(tiny_artifact_info) -> ArtifactInfo:
    return tiny_artifact_info  # the session's tiny model (tests/conftest.py)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def local_handlers(artifact: ArtifactInfo, cache_dir: Path) -> dict[str, LoadedHandler]:
    """The same handler, called directly: what each `.out` must hold."""
    return {kind: load_handler_from_artifact(artifact.path, kind, cache_dir=cache_dir) for kind in ("IMAGE", "TEXT")}


def create_model(settings: Settings, s3, sagemaker_client, artifact: ArtifactInfo, encode_type: str) -> str:
    uri = upload_model_artifact(settings, s3, artifact.path)
    name = f"{settings.bucket}-{encode_type.lower()}"  # unique: the moto server outlives the test
    sagemaker_client.create_model(
        ModelName=name,
        PrimaryContainer={"Image": IMAGE_URI, "ModelDataUrl": uri, "Environment": {"ENCODE_TYPE": encode_type}},
        ExecutionRoleArn=settings.sagemaker_role_arn,
    )
    return name


def request(model: str, source: dict[str, str], output: str, **overrides: Any) -> dict[str, Any]:
    """A CreateTransformJob request shaped like the one SageMakerTransformOperator sends."""
    req: dict[str, Any] = {
        "TransformJobName": "test-job",
        "ModelName": model,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
        "TransformInput": {
            "DataSource": {"S3DataSource": source},
            "ContentType": "application/x-image",
            "SplitType": "None",
            "CompressionType": "None",
        },
        "TransformOutput": {"S3OutputPath": output, "Accept": "application/json", "AssembleWith": "None"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(req.get(key), dict):
            req[key] = {**req[key], **value}
        else:
            req[key] = value
    return req


def read_vectors(s3, bucket: str, key: str) -> np.ndarray:
    return np.asarray(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["embeddings"])


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


@pytest.fixture
def catalogue_images(settings: Settings, s3) -> dict[str, bytes]:
    """Three good images (one grayscale PNG) and a corrupt JPEG, plus a manifest listing all four."""
    good = {"ab/1.jpg": image_bytes(1), "cd/2.png": image_bytes(2, "PNG", "L"), "ef/3.jpg": image_bytes(3)}
    corrupt = image_bytes(4)[:300]
    for path, data in {**good, "gh/4.jpg": corrupt}.items():
        s3.put_object(Bucket=settings.bucket, Key=settings.images_prefix + path, Body=data)
    manifest = [{"prefix": f"s3://{settings.bucket}/{settings.images_prefix}"}, *good, "gh/4.jpg"]
    s3.put_object(Bucket=settings.bucket, Key="manifests/run-1/manifest.json", Body=json.dumps(manifest).encode())
    return good


def test_manifest_job_writes_one_out_per_good_image_and_records_the_corrupt_one(
    settings: Settings, s3, sagemaker_client, artifact, cache_dir, local_handlers, catalogue_images
):
    model = create_model(settings, s3, sagemaker_client, artifact, "IMAGE")
    source = {"S3DataType": "ManifestFile", "S3Uri": f"s3://{settings.bucket}/manifests/run-1/manifest.json"}
    report = run_transform_job(
        request(model, source, f"s3://{settings.bucket}/{settings.embeddings_prefix}{settings.model_slug}/"),
        s3_client=s3,
        sagemaker_client=sagemaker_client,
        cache_dir=cache_dir,
    )

    out_prefix = f"{settings.embeddings_prefix}{settings.model_slug}/"
    assert keys_under(s3, settings.bucket, out_prefix) == sorted(f"{out_prefix}{p}.out" for p in catalogue_images)
    for path, data in catalogue_images.items():
        vec = read_vectors(s3, settings.bucket, f"{out_prefix}{path}.out")
        assert vec.shape == (1, artifact.embed_dim)
        assert np.linalg.norm(vec[0]) == pytest.approx(1.0, abs=1e-5)
        direct = json.loads(local_handlers["IMAGE"].invoke(data, "application/x-image", "application/json"))
        np.testing.assert_allclose(vec, direct["embeddings"], atol=VECTOR_ATOL)

    assert (report.total, report.succeeded, report.records) == (4, 3, 3)
    assert [key for key, _ in report.failed] == [f"{settings.images_prefix}gh/4.jpg"]
    assert "truncated" in report.failed[0][1] or "decoded" in report.failed[0][1]
    summary = json.loads(json.dumps(report.as_dict()))
    assert summary["status"] == "Failed" and summary["failed"][0][0].endswith("gh/4.jpg")


def test_error_mode_record_answers_the_corrupt_image_with_an_error_out(
    settings: Settings, s3, sagemaker_client, artifact, cache_dir, catalogue_images
):
    model = create_model(settings, s3, sagemaker_client, artifact, "IMAGE")
    source = {"S3DataType": "ManifestFile", "S3Uri": f"s3://{settings.bucket}/manifests/run-1/manifest.json"}
    report = run_transform_job(
        request(model, source, f"s3://{settings.bucket}/out", Environment={"ERROR_MODE": "record"}),
        s3_client=s3,
        sagemaker_client=sagemaker_client,
        cache_dir=cache_dir,
    )
    assert (report.succeeded, report.failed, report.status) == (3, [], "Completed")
    assert [key for key, _ in report.error_records] == [f"{settings.images_prefix}gh/4.jpg"]
    error = json.loads(s3.get_object(Bucket=settings.bucket, Key="out/gh/4.jpg.out")["Body"].read())
    assert set(error) == {"error"}
    assert read_vectors(s3, settings.bucket, "out/ab/1.jpg.out").shape == (1, artifact.embed_dim)


def test_prefix_job_splits_jsonlines_into_mini_batches_and_keeps_line_order(
    settings: Settings, s3, sagemaker_client, artifact, cache_dir, local_handlers
):
    model = create_model(settings, s3, sagemaker_client, artifact, "TEXT")
    first = [{"inputs": t, "id": f"B0{i}"} for i, t in enumerate(["red shoe", "blue hat", "lamp", "mug", "sofa"])]
    second = ["oak table", "green scarf", "steel kettle"]
    s3.put_object(
        Bucket=settings.bucket, Key="queries/a.jsonl", Body="\n".join(json.dumps(r) for r in first).encode() + b"\n"
    )
    s3.put_object(
        Bucket=settings.bucket, Key="queries/sub/b.jsonl", Body="\n".join(json.dumps(t) for t in second).encode()
    )
    req = request(
        model,
        {"S3DataType": "S3Prefix", "S3Uri": f"s3://{settings.bucket}/queries/"},
        f"s3://{settings.bucket}/query-vectors/",
        MaxPayloadInMB=1,
        Environment={"MAX_BATCH_SIZE": "2"},  # 5 lines must go out as 3 requests, not one too-large batch
        TransformInput={"ContentType": "application/jsonlines", "SplitType": "Line"},
        TransformOutput={"Accept": "application/jsonlines", "AssembleWith": "Line"},
    )
    report = run_transform_job(req, s3_client=s3, sagemaker_client=sagemaker_client, cache_dir=cache_dir)

    assert (report.total, report.succeeded, report.records, report.failed) == (2, 2, 8, [])
    assert report.requests == 3 + 2  # MultiRecord: lines packed two at a time
    assert keys_under(s3, settings.bucket, "query-vectors/") == [
        "query-vectors/a.jsonl.out",
        "query-vectors/sub/b.jsonl.out",
    ]
    body_a = s3.get_object(Bucket=settings.bucket, Key="query-vectors/a.jsonl.out")["Body"].read().decode()
    lines_a = [json.loads(line) for line in body_a.splitlines()]
    assert body_a.endswith("\n") and [line["id"] for line in lines_a] == [r["id"] for r in first]
    expected = local_handlers["TEXT"].encode_texts([r["inputs"] for r in first])
    np.testing.assert_allclose([line["embedding"] for line in lines_a], expected, atol=VECTOR_ATOL)

    body_b = s3.get_object(Bucket=settings.bucket, Key="query-vectors/sub/b.jsonl.out")["Body"].read().decode()
    lines_b = [json.loads(line) for line in body_b.splitlines()]
    assert all("id" not in line for line in lines_b)
    np.testing.assert_allclose(
        [line["embedding"] for line in lines_b], local_handlers["TEXT"].encode_texts(second), atol=VECTOR_ATOL
    )


def test_a_record_above_max_payload_fails_only_its_object(
    settings: Settings, s3, sagemaker_client, artifact, cache_dir
):
    model = create_model(settings, s3, sagemaker_client, artifact, "TEXT")
    s3.put_object(Bucket=settings.bucket, Key="q/ok.jsonl", Body=b'"lamp"\n')
    s3.put_object(Bucket=settings.bucket, Key="q/huge.jsonl", Body=json.dumps("x" * (1024 * 1024 + 10)).encode())
    req = request(
        model,
        {"S3DataType": "S3Prefix", "S3Uri": f"s3://{settings.bucket}/q/"},
        f"s3://{settings.bucket}/o",
        MaxPayloadInMB=1,
        TransformInput={"ContentType": "application/jsonlines", "SplitType": "Line"},
    )
    report = run_transform_job(req, s3_client=s3, sagemaker_client=sagemaker_client, cache_dir=cache_dir)
    assert report.succeeded == 1
    assert [key for key, _ in report.failed] == ["q/huge.jsonl"] and "MaxPayloadInMB" in report.failed[0][1]
    assert keys_under(s3, settings.bucket, "o/") == ["o/ok.jsonl.out"]


def test_jobs_that_cannot_run_fail_as_a_whole(settings: Settings, s3, sagemaker_client, artifact, cache_dir):
    source = {"S3DataType": "S3Prefix", "S3Uri": f"s3://{settings.bucket}/nothing-here/"}
    with pytest.raises(TransformJobError, match="no-such-model"):
        run_transform_job(
            request("no-such-model", source, f"s3://{settings.bucket}/o/"),
            s3_client=s3,
            sagemaker_client=sagemaker_client,
            cache_dir=cache_dir,
        )
    model = create_model(settings, s3, sagemaker_client, artifact, "IMAGE")
    with pytest.raises(TransformJobError, match="no S3 objects"):
        run_transform_job(
            request(model, source, f"s3://{settings.bucket}/o/"),
            s3_client=s3,
            sagemaker_client=sagemaker_client,
            cache_dir=cache_dir,
        )
    with pytest.raises(TransformJobError, match="SplitType='RecordIO'"):
        run_transform_job(
            request(model, source, f"s3://{settings.bucket}/o/", TransformInput={"SplitType": "RecordIO"}),
            s3_client=s3,
            sagemaker_client=sagemaker_client,
            cache_dir=cache_dir,
        )
