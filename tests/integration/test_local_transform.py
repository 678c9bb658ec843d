"""The local batch-transform runner against moto S3 + SageMaker, with the tiny CLIP artifact in TorchServe.

What is checked is what SageMaker batch transform promises: one `<key>.out`
per input under the output path, the container's answer inside, no `.out` for
an input that failed (named in the report), Line-split inputs answered line by
line, records packed by BatchStrategy and MaxPayloadInMB, and a model that
cannot answer failing the job at its first request. The model runs in AWS's
serving toolkit on TorchServe (the session's model servers, shared by the
tests whose models have the same artifact and environment).
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
from catalogue_search.settings import Settings
from catalogue_search_dev.local_transform import (
    TransformJobError,
    describe_container,
    model_environment,
    run_transform_job,
)
from catalogue_search_dev.model_build import upload_model_artifact

TINY_MODEL_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"
IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"


def image_bytes(seed: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).convert(mode)
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


EMBED_DIM = json.loads(TINY_MODEL_CONFIG.read_text())["embed_dim"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def local_handlers(tiny_artifact: Path, cache_dir: Path) -> dict[str, LoadedHandler]:
    """The same handler, called in this process: what each `.out` must hold (within the contract's tolerance)."""
    return {kind: load_handler_from_artifact(tiny_artifact, kind, cache_dir=cache_dir) for kind in ("IMAGE", "TEXT")}


def create_model(settings: Settings, s3, sagemaker_client, artifact: Path, encode_type: str) -> str:
    uri = upload_model_artifact(settings.replace(model_name="tiny-clip"), s3, artifact)
    name = f"{settings.bucket}-{encode_type.lower()}"  # unique: the moto server outlives the test
    sagemaker_client.create_model(
        ModelName=name,
        PrimaryContainer={
            "Image": IMAGE_URI,
            "ModelDataUrl": uri,
            "Environment": {"ENCODE_TYPE": encode_type, "MODEL_NAME": "tiny-clip"},
        },
        ExecutionRoleArn=settings.sagemaker_role_arn,
    )
    return name


@pytest.fixture
def transform(s3, sagemaker_client, local_sagemaker):
    """`transform(request)`: run the job as the local SageMaker server does, against the model's TorchServe."""

    def run(request: dict[str, Any]):
        container = describe_container(sagemaker_client, request["ModelName"])
        env = model_environment(request, container)
        server = local_sagemaker.servers.get(request["ModelName"], container["ModelDataUrl"], env, hold=True)
        try:
            return run_transform_job(request, s3_client=s3, sagemaker_client=sagemaker_client, model=server.endpoint)
        finally:
            local_sagemaker.servers.unhold(server)

    return run


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
    settings: Settings, s3, sagemaker_client, tiny_artifact, transform, local_handlers, catalogue_images
):
    model = create_model(settings, s3, sagemaker_client, tiny_artifact, "IMAGE")
    source = {"S3DataType": "ManifestFile", "S3Uri": f"s3://{settings.bucket}/manifests/run-1/manifest.json"}
    report = transform(request(model, source, f"s3://{settings.bucket}/{settings.embeddings_prefix}tiny/"))

    out_prefix = f"{settings.embeddings_prefix}tiny/"
    assert keys_under(s3, settings.bucket, out_prefix) == sorted(f"{out_prefix}{p}.out" for p in catalogue_images)
    for path, data in catalogue_images.items():
        vec = read_vectors(s3, settings.bucket, f"{out_prefix}{path}.out")
        assert vec.shape == (1, EMBED_DIM)
        assert np.linalg.norm(vec[0]) == pytest.approx(1.0, abs=1e-5)
        direct = json.loads(local_handlers["IMAGE"].invoke(data, "application/x-image", "application/json"))
        np.testing.assert_allclose(vec, direct["embeddings"], atol=VECTOR_ATOL)

    assert (report.total, report.succeeded, report.records, report.requests) == (4, 3, 3, 4)
    assert [key for key, _ in report.failed] == [f"{settings.images_prefix}gh/4.jpg"]
    # The container's 400, its one line: what SageMaker's transform agent records for the input.
    assert report.failed[0][1].startswith("HTTP 400: image") and "truncated or corrupt" in report.failed[0][1]
    summary = json.loads(json.dumps(report.as_dict()))
    assert summary["status"] == "Failed" and summary["failed"][0][0].endswith("gh/4.jpg")


def test_error_mode_record_answers_the_corrupt_image_with_an_error_out(
    settings: Settings, s3, sagemaker_client, tiny_artifact, transform, catalogue_images
):
    model = create_model(settings, s3, sagemaker_client, tiny_artifact, "IMAGE")
    source = {"S3DataType": "ManifestFile", "S3Uri": f"s3://{settings.bucket}/manifests/run-1/manifest.json"}
    report = transform(request(model, source, f"s3://{settings.bucket}/out", Environment={"ERROR_MODE": "record"}))
    assert (report.succeeded, report.failed, report.status) == (3, [], "Completed")
    assert [key for key, _ in report.error_records] == [f"{settings.images_prefix}gh/4.jpg"]
    error = json.loads(s3.get_object(Bucket=settings.bucket, Key="out/gh/4.jpg.out")["Body"].read())
    assert set(error) == {"error"}
    assert read_vectors(s3, settings.bucket, "out/ab/1.jpg.out").shape == (1, EMBED_DIM)


def put_queries(s3, settings: Settings) -> tuple[list[dict], list[str]]:
    first = [{"inputs": t, "id": f"B0{i}"} for i, t in enumerate(["red shoe", "blue hat", "lamp", "mug", "sofa"])]
    second = ["oak table", "green scarf", "steel kettle"]
    s3.put_object(
        Bucket=settings.bucket, Key="queries/a.jsonl", Body="\n".join(json.dumps(r) for r in first).encode() + b"\n"
    )
    s3.put_object(
        Bucket=settings.bucket, Key="queries/sub/b.jsonl", Body="\n".join(json.dumps(t) for t in second).encode()
    )
    return first, second


def text_request(model: str, settings: Settings, out: str, strategy: str) -> dict[str, Any]:
    return request(
        model,
        {"S3DataType": "S3Prefix", "S3Uri": f"s3://{settings.bucket}/queries/"},
        f"s3://{settings.bucket}/{out}/",
        BatchStrategy=strategy,
        MaxPayloadInMB=1,
        TransformInput={"ContentType": "application/jsonlines", "SplitType": "Line"},
        TransformOutput={"Accept": "application/jsonlines", "AssembleWith": "Line"},
    )


def test_line_split_objects_are_sent_as_the_batch_strategy_packs_them_and_keep_line_order(
    settings: Settings, s3, sagemaker_client, tiny_artifact, transform, local_handlers
):
    model = create_model(settings, s3, sagemaker_client, tiny_artifact, "TEXT")
    first, second = put_queries(s3, settings)
    packed = transform(text_request(model, settings, "multi", "MultiRecord"))
    single = transform(text_request(model, settings, "single", "SingleRecord"))

    assert (packed.total, packed.succeeded, packed.records, packed.failed) == (2, 2, 8, [])
    assert packed.requests == 2  # MultiRecord: every line of an object fits in one 1 MB request
    assert (single.succeeded, single.records, single.requests) == (2, 8, 8)  # SingleRecord: a request a line
    for out in ("multi", "single"):
        assert keys_under(s3, settings.bucket, f"{out}/") == [f"{out}/a.jsonl.out", f"{out}/sub/b.jsonl.out"]
        body_a = s3.get_object(Bucket=settings.bucket, Key=f"{out}/a.jsonl.out")["Body"].read().decode()
        lines_a = [json.loads(line) for line in body_a.splitlines()]
        assert body_a.endswith("\n") and [line["id"] for line in lines_a] == [r["id"] for r in first]
        expected = local_handlers["TEXT"].encode_texts([r["inputs"] for r in first])
        np.testing.assert_allclose([line["embedding"] for line in lines_a], expected, atol=VECTOR_ATOL)
        body_b = s3.get_object(Bucket=settings.bucket, Key=f"{out}/sub/b.jsonl.out")["Body"].read().decode()
        lines_b = [json.loads(line) for line in body_b.splitlines()]
        assert all("id" not in line for line in lines_b)
        np.testing.assert_allclose(
            [line["embedding"] for line in lines_b], local_handlers["TEXT"].encode_texts(second), atol=VECTOR_ATOL
        )


def test_a_record_above_max_payload_fails_only_its_object(
    settings: Settings, s3, sagemaker_client, tiny_artifact, transform
):
    model = create_model(settings, s3, sagemaker_client, tiny_artifact, "TEXT")
    s3.put_object(Bucket=settings.bucket, Key="queries/ok.jsonl", Body=b'"lamp"\n')
    s3.put_object(Bucket=settings.bucket, Key="queries/huge.jsonl", Body=json.dumps("x" * (1024 * 1024 + 10)).encode())
    report = transform(text_request(model, settings, "o", "MultiRecord"))
    assert report.succeeded == 1
    assert [key for key, _ in report.failed] == ["queries/huge.jsonl"] and "MaxPayloadInMB" in report.failed[0][1]
    assert keys_under(s3, settings.bucket, "o/") == ["o/ok.jsonl.out"]


def test_a_model_that_cannot_answer_fails_the_job_at_its_first_request(
    settings: Settings, s3, sagemaker_client, local_sagemaker, make_handler_artifact, tmp_path: Path
):
    """A healthy /ping proves nothing: the runner checks the first answer before it sends anything else."""
    broken = make_handler_artifact(
        tmp_path / "broken.tar.gz",
        """
        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept):
            raise RuntimeError("the model is broken")
        """,
    )
    uri = f"s3://{settings.bucket}/models/broken/model.tar.gz"
    s3.upload_file(str(broken), settings.bucket, "models/broken/model.tar.gz")
    name = f"{settings.bucket}-broken"
    env = {"ENCODE_TYPE": "TEXT", "MODEL_NAME": "tiny-clip"}
    sagemaker_client.create_model(
        ModelName=name,
        PrimaryContainer={"Image": IMAGE_URI, "ModelDataUrl": uri, "Environment": env},
        ExecutionRoleArn=settings.sagemaker_role_arn,
    )
    for key in ("q/1.jsonl", "q/2.jsonl", "q/3.jsonl"):
        s3.put_object(Bucket=settings.bucket, Key=key, Body=b'"lamp"\n')
    req = request(
        name,
        {"S3DataType": "S3Prefix", "S3Uri": f"s3://{settings.bucket}/q/"},
        f"s3://{settings.bucket}/o/",
        ModelClientConfig={"InvocationsTimeoutInSeconds": 60, "InvocationsMaxRetries": 1},
        TransformInput={"ContentType": "application/jsonlines", "SplitType": "Line"},
    )
    server = local_sagemaker.servers.get(name, uri, env, hold=True)
    try:
        with pytest.raises(TransformJobError, match="did not answer the job's first request: HTTP 500: the model is"):
            run_transform_job(req, s3_client=s3, sagemaker_client=sagemaker_client, model=server.endpoint)
    finally:
        local_sagemaker.servers.unhold(server)
    assert keys_under(s3, settings.bucket, "o/") == []


def test_jobs_that_cannot_run_fail_as_a_whole(settings: Settings, s3, sagemaker_client, tiny_artifact):
    source = {"S3DataType": "S3Prefix", "S3Uri": f"s3://{settings.bucket}/nothing-here/"}
    with pytest.raises(TransformJobError, match="no-such-model"):
        run_transform_job(
            request("no-such-model", source, f"s3://{settings.bucket}/o/"),
            s3_client=s3,
            sagemaker_client=sagemaker_client,
        )
    model = create_model(settings, s3, sagemaker_client, tiny_artifact, "IMAGE")
    unused = object()  # the job fails before it would ask the model anything
    with pytest.raises(TransformJobError, match="no S3 objects"):
        run_transform_job(
            request(model, source, f"s3://{settings.bucket}/o/"),
            s3_client=s3,
            sagemaker_client=sagemaker_client,
            model=unused,
        )
    with pytest.raises(TransformJobError, match="SplitType='RecordIO'"):
        run_transform_job(
            request(model, source, f"s3://{settings.bucket}/o/", TransformInput={"SplitType": "RecordIO"}),
            s3_client=s3,
            sagemaker_client=sagemaker_client,
            model=unused,
        )
