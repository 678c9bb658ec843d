"""The encode path at scale, against moto (S3 + SageMaker control plane) and the real OpenSearch node.

The DAG's steps as plain functions: prepare_encoding writes JSON Lines chunks
and the CreateTransformJob request, the local runner executes exactly that
request with the real handler (forward passes of MAX_BATCH_SIZE over many
images per request), record_embeddings checks the outputs and writes the run
report, load_index streams the chunks into an index whose `_meta` names the
artifact version. Then: a run with nothing new costs O(chunks) S3 requests,
new weights re-encode everything, and a query encoder of another version is
refused.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalogue_search import catalogue, encoding, index, ingest
from catalogue_search.contract import VECTOR_ATOL
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.search import LocalEncoder, ModelVersionMismatchError, SearchClient
from catalogue_search.settings import Settings
from catalogue_search_dev.local_transform import run_transform_job
from catalogue_search_dev.model_build import build_model_artifact, upload_model_artifact

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"
IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-gpu-py312"
N_GOOD = 37
CHUNK = 8
BATCH = 3


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


class FailTimes:
    """The S3 client's next `times` GetObjects of `key` end as they would once the client's own retries are
    spent: S3 answers 503 SlowDown (`throttled`) or the read times out (`timed out`). Injected through
    botocore's own `before-call` event, so the client raises its real exception; every other call goes to moto."""

    def __init__(self, client, key: str, fault: str, times: int) -> None:
        self.client, self.key, self.fault, self.times, self.raised = client, key, fault, times, 0

    def __enter__(self) -> FailTimes:
        self.client.meta.events.register("before-call.s3.GetObject", self._call)
        return self

    def __exit__(self, *exc) -> None:
        self.client.meta.events.unregister("before-call.s3.GetObject", self._call)

    def _call(self, params, **_: object):
        from botocore.awsrequest import AWSResponse
        from botocore.exceptions import ReadTimeoutError

        if self.raised >= self.times or not params["url"].endswith("/" + self.key):
            return None
        self.raised += 1
        if self.fault == "timed out":
            raise ReadTimeoutError(endpoint_url=params["url"])
        error = {"Code": "SlowDown", "Message": "Please reduce your request rate."}
        return AWSResponse(params["url"], 503, {}, None), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 503}}


class RequestCounter:
    """Counts the API calls a boto3 client makes (botocore's before-call event)."""

    def __init__(self, client) -> None:
        self.calls: Counter[str] = Counter()
        client.meta.events.register("before-call.*.*", self._count)

    def _count(self, model, **_: object) -> None:
        self.calls[model.name] += 1

    def reset(self) -> Counter[str]:
        calls, self.calls = self.calls, Counter()
        return calls


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, tiny_artifact_info):
    """The session's tiny model (seed 0), and the same architecture with other weights (seed 1)."""
    other = build_model_artifact(tmp_path_factory.mktemp("artifacts") / "seed1.tar.gz", "tiny-clip", "", TINY, seed=1)
    return {0: tiny_artifact_info, 1: other}


@pytest.fixture
def stack(settings: Settings, s3, sagemaker_client, opensearch_url: str, artifacts, tmp_path: Path):
    settings = settings.replace(
        model_name="tiny-clip",
        opensearch_url=opensearch_url,
        transform_chunk_size=CHUNK,
        transform_batch_size=BATCH,
        sagemaker_role_arn="arn:aws:iam::123456789012:role/catalogue-search-sagemaker",
    )
    upload_model_artifact(settings, s3, artifacts[0].path)
    images = {f"{i % 7:02x}/img{i}.jpg": jpeg(i) for i in range(N_GOOD)}
    images["ff/corrupt.jpg"] = jpeg(99)[:250]
    for path, data in images.items():
        s3.put_object(Bucket=settings.bucket, Key=settings.images_prefix + path, Body=data)
    products = [
        {"item_id": f"B{i:04d}", "item_name": f"product {i}", "image_id": f"I{i}", "main_image_id": f"I{i}", "path": p}
        for i, p in enumerate(sorted(images))
    ]
    # a product whose image is not in the bucket: the handler cannot fetch it
    products.append(
        {"item_id": "B9999", "item_name": "lost", "image_id": "I9", "main_image_id": "I9", "path": "ee/gone.jpg"}
    )
    plan = ingest.RunPlan.for_run(settings, "run-1")
    s3.put_object(Bucket=settings.bucket, Key=plan.products_key, Body=catalogue.to_jsonl(products))
    client = index.client_from_settings(settings)
    yield settings, plan, images, client, tmp_path / "model-cache"
    for name in list(client.indices.get(index=f"{settings.index_alias}-*")):
        client.indices.delete(index=name)


def copy_plan(settings: Settings, s3, source: ingest.RunPlan, run_id: str) -> ingest.RunPlan:
    plan = ingest.RunPlan.for_run(settings, run_id)
    body = s3.get_object(Bucket=settings.bucket, Key=source.products_key)["Body"].read()
    s3.put_object(Bucket=settings.bucket, Key=plan.products_key, Body=body)
    return plan


def test_the_dags_request_encodes_many_images_per_request_in_batched_passes(
    stack, s3, sagemaker_client, artifacts, monkeypatch: pytest.MonkeyPatch
):
    settings, plan, images, client, cache = stack
    request = ingest.prepare_encoding(settings, s3, sagemaker_client, plan, IMAGE_URI)
    assert request is not None

    handler = load_handler_from_artifact(artifacts[0].path, "IMAGE", cache_dir=cache)
    passes: list[int] = []
    real_embed = handler.module.embed  # the runner loads the same module (same inference.py)

    def counting(inputs, model):
        passes.append(int(inputs.shape[0]))
        return real_embed(inputs, model)

    monkeypatch.setattr(handler.module, "embed", counting)
    report = run_transform_job(request, s3_client=s3, sagemaker_client=sagemaker_client, cache_dir=cache)
    monkeypatch.undo()

    n_records = len(images) + 1  # + the product whose image is gone
    n_chunks = -(-n_records // CHUNK)
    assert (report.status, report.total, report.succeeded, report.requests) == (
        "Completed",
        n_chunks,
        n_chunks,
        n_chunks,
    )
    assert report.records == N_GOOD
    assert sorted(i for i, _ in report.record_errors) == ["ee/gone.jpg", "ff/corrupt.jpg"]
    assert max(passes) == BATCH and sum(passes) == N_GOOD and len(passes) < N_GOOD  # batched, not one by one

    # outputs: one `.npz` per chunk under the artifact version's prefix, equal to one-by-one encoding
    version = artifacts[0].artifact_version
    store = encoding.Store(settings, encoding.IMAGE)
    out_prefix = store.output_prefix(version, plan.prefix)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=settings.bucket, Prefix=out_prefix)["Contents"])
    encode = encoding.read_plan(s3, store, plan.prefix)
    assert keys == sorted(c["output"] for c in encode.chunks) and len(keys) == n_chunks
    assert all(key.startswith(f"{out_prefix}{n:05d}-") and key.endswith(".jsonl.out") for n, key in enumerate(keys))
    seen = {}
    for key in keys:
        out = encoding.parse_output(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read(), key)
        assert out.artifact_version == version
        seen.update(zip(out.ids, out.vectors))
    assert sorted(seen) == sorted(p for p in images if p != "ff/corrupt.jpg")
    for path, vector in seen.items():
        single = json.loads(handler.invoke(images[path], "application/x-image"))["embeddings"][0]
        np.testing.assert_allclose(vector, single, atol=VECTOR_ATOL)

    # record: the run report names the failed images with their reasons
    summary = ingest.record_embeddings(settings, s3, plan)
    assert (summary["encoded"], summary["failed"], summary["chunks"]) == (N_GOOD, 2, n_chunks)
    run_report = json.loads(s3.get_object(Bucket=settings.bucket, Key=store.report_key(plan.prefix))["Body"].read())
    assert "could not be fetched" in run_report["errors"]["ee/gone.jpg"]
    assert "decod" in run_report["errors"]["ff/corrupt.jpg"] or "truncated" in run_report["errors"]["ff/corrupt.jpg"]

    # load: the index holds every encoded product and names the artifact version
    loaded = ingest.load_index(settings, s3, client, plan)
    assert loaded["indexed"] == N_GOOD and sorted(loaded["dropped_no_embedding"]) == ["ee/gone.jpg", "ff/corrupt.jpg"]
    meta = client.indices.get_mapping(index=plan.index)[plan.index]["mappings"]["_meta"]
    assert meta["artifact_version"] == version
    doc = client.get(index=plan.index, id="B0000")["_source"]
    np.testing.assert_allclose(doc[index.VECTOR_FIELD], seen[doc["image_path"]], atol=VECTOR_ATOL)
    index.swap_alias(client, settings.index_alias, plan.index)

    # a week later, nothing new: O(chunks) S3 requests, not O(images)
    counter = RequestCounter(s3)
    plan2 = copy_plan(settings, s3, plan, "run-2")
    counter.reset()
    assert ingest.prepare_encoding(settings, s3, sagemaker_client, plan2, IMAGE_URI) is None
    prepare_calls = counter.reset()
    ingest.record_embeddings(settings, s3, plan2)
    record_calls = counter.reset()
    loaded2 = ingest.load_index(settings, s3, client, plan2)
    load_calls = counter.reset()
    assert loaded2["indexed"] == N_GOOD
    assert sum(prepare_calls.values()) <= 6, prepare_calls  # HEAD artifact, GET catalogue, LIST, GET products, PUTs
    assert prepare_calls["HeadObject"] == 1 and prepare_calls["ListObjectsV2"] == 1
    assert sum(record_calls.values()) <= 2, record_calls
    # each chunk once + plan, catalogue, products, the alias's served list (the rerun rule),
    # the title store's catalogue (no titles encoded here) and the run's build choice (full or incremental);
    # one load part here (CATSEARCH_SPLIT_PARTS=1): each part reads those six itself, finish_index none
    assert plan2.parts == 1 and load_calls["GetObject"] == n_chunks + 6, load_calls
    assert sum(load_calls.values()) < len(images)

    # a replaced image, re-encoded by a rerun of the same run: a new chunk name, the old outputs untouched
    images["00/img0.jpg"] = jpeg(1000)
    s3.put_object(Bucket=settings.bucket, Key=settings.images_prefix + "00/img0.jpg", Body=images["00/img0.jpg"])
    rerun = ingest.prepare_encoding(settings, s3, sagemaker_client, plan, IMAGE_URI)
    (chunk,) = encoding.read_plan(s3, store, plan.prefix).chunks
    assert chunk["ids"] == ["00/img0.jpg"] and chunk["output"] not in keys
    assert run_transform_job(rerun, s3_client=s3, sagemaker_client=sagemaker_client, cache_dir=cache).records == 1
    ingest.record_embeddings(settings, s3, plan)
    assert ingest.load_index(settings, s3, client, plan2)["indexed"] == N_GOOD  # every old chunk still readable
    doc = next(
        h["_source"]
        for h in client.search(index=plan2.index, body={"query": {"term": {"image_path": "00/img0.jpg"}}})["hits"][
            "hits"
        ]
    )
    single = json.loads(handler.invoke(images["00/img0.jpg"], "application/x-image"))["embeddings"][0]
    np.testing.assert_allclose(doc[index.VECTOR_FIELD], single, atol=VECTOR_ATOL)

    # the query side: the index's version matches the local encoder's
    search = SearchClient(settings, client=client, encoder=LocalEncoder(settings, s3_client=s3, cache_dir=cache))
    assert search.search_image(images["01/img1.jpg"], 3)[0].score == pytest.approx(1.0, abs=1e-4)

    # new weights (another seed): a new version, every image encoded again, old queries refused
    upload_model_artifact(settings, s3, artifacts[1].path)
    assert artifacts[1].artifact_version != version
    plan3 = copy_plan(settings, s3, plan, "run-3")
    request3 = ingest.prepare_encoding(settings, s3, sagemaker_client, plan3, IMAGE_URI)
    assert request3 is not None
    encode3 = encoding.read_plan(s3, store, plan3.prefix)
    assert encode3.version == artifacts[1].artifact_version and encode3.total == n_records
    described = sagemaker_client.describe_model(ModelName=settings.sagemaker_model_name("IMAGE"))
    assert described["PrimaryContainer"]["Environment"]["ARTIFACT_VERSION"] == artifacts[1].artifact_version
    fresh = SearchClient(settings, client=client, encoder=LocalEncoder(settings, s3_client=s3, cache_dir=cache))
    with pytest.raises(ModelVersionMismatchError, match=f"encoded with artifact {version}"):
        fresh.search_text("a red flower")


@pytest.mark.parametrize(("fault", "recovery"), [("throttled", "retry"), ("timed out", "next run")])
def test_a_read_that_fails_once_is_indexed_after_the_retry_and_never_recorded_as_a_bad_image(
    stack, s3, sagemaker_client, fault: str, recovery: str
):
    """Issue 20: a passing S3 fault fails the chunk's request, never the image. SageMaker sends the request
    again (InvocationsMaxRetries): a fault that passes by then costs nothing; one that outlasts the retries
    fails the job, and the next run sends the image again. Only the corrupt image is recorded as failed."""
    settings, plan, images, client, cache = stack
    victim = "03/img3.jpg"
    request = ingest.prepare_encoding(settings, s3, sagemaker_client, plan, IMAGE_URI)
    attempts = request["ModelClientConfig"]["InvocationsMaxRetries"] + 1
    times = 1 if recovery == "retry" else attempts
    with FailTimes(s3, settings.images_prefix + victim, fault, times) as failing:
        first = run_transform_job(request, s3_client=s3, sagemaker_client=sagemaker_client, cache_dir=cache)
    assert failing.raised == times
    version = encoding.read_plan(s3, encoding.Store(settings), plan.prefix).version
    assert victim not in dict(first.record_errors)
    if recovery == "next run":
        # Every attempt at the victim's chunk failed as a request: the job is Failed, no `.out`, no error record.
        assert first.status == "Failed" and len(first.failed) == 1, first.as_dict()
        assert "HTTP 500" in first.failed[0][1] and f"{victim} could not be read" in first.failed[0][1]
        with pytest.raises(encoding.MissingOutputError):
            ingest.record_embeddings(settings, s3, plan)
        assert encoding.Catalogue.load(s3, encoding.Store(settings), version).errors == {}  # nothing recorded
        plan = copy_plan(settings, s3, plan, "run-2")  # the DAG run failed; the next one sends the victim again
        request = ingest.prepare_encoding(settings, s3, sagemaker_client, plan, IMAGE_URI)
        assert victim in {
            i for c in encoding.read_plan(s3, encoding.Store(settings), plan.prefix).chunks for i in c["ids"]
        }
        first = run_transform_job(request, s3_client=s3, sagemaker_client=sagemaker_client, cache_dir=cache)
    assert first.status == "Completed", first.as_dict()
    summary = ingest.record_embeddings(settings, s3, plan)
    assert (summary["encoded"], summary["failed"]) == (N_GOOD, 2)  # the corrupt image and the missing one
    loaded = ingest.load_index(settings, s3, client, plan)
    assert loaded["indexed"] == N_GOOD and sorted(loaded["dropped_no_embedding"]) == ["ee/gone.jpg", "ff/corrupt.jpg"]
    hits = client.search(index=plan.index, body={"query": {"term": {"image_path": victim}}})["hits"]["hits"]
    assert len(hits) == 1

    # The corrupt image is a permanent failure: the run after sends nothing (its ETag is unchanged).
    stored = encoding.Catalogue.load(s3, encoding.Store(settings), version)
    assert set(stored.errors) == {"ee/gone.jpg", "ff/corrupt.jpg"} and victim in stored.encoded
    assert (
        ingest.prepare_encoding(settings, s3, sagemaker_client, copy_plan(settings, s3, plan, "run-3"), IMAGE_URI)
        is None
    )


def test_outputs_written_elsewhere_fail_naming_the_first_missing_key(stack, s3, sagemaker_client):
    settings, plan, images, _, _ = stack
    request = ingest.prepare_encoding(settings, s3, sagemaker_client, plan, IMAGE_URI)
    first = encoding.read_plan(s3, encoding.Store(settings), plan.prefix).chunks[0]
    # as if the job had written under another prefix
    s3.put_object(Bucket=settings.bucket, Key="elsewhere/00000.jsonl.out", Body=b"x")
    assert request["TransformOutput"]["S3OutputPath"].endswith(first["output"].rsplit("/", 1)[0] + "/")
    with pytest.raises(encoding.MissingOutputError, match=f"expected s3://{settings.bucket}/{first['output']}"):
        ingest.record_embeddings(settings, s3, plan)


def test_endpoint_encoder_of_another_artifact_version_is_refused(settings: Settings, opensearch_url: str, unique):
    """DescribeEndpoint -> endpoint config -> DescribeModel's ARTIFACT_VERSION, against the index's `_meta`."""
    import boto3

    from catalogue_search.search import TEXT, EndpointEncoder

    settings = settings.replace(opensearch_url=opensearch_url, endpoint_prefix=f"v{unique}")
    sm = boto3.client("sagemaker", **settings.boto3_kwargs())
    name = settings.endpoint_name(TEXT)
    sm.create_model(
        ModelName=f"{name}-m",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/catalogue-search-sagemaker",
        PrimaryContainer={
            "Image": IMAGE_URI,
            "ModelDataUrl": settings.artifact_uri,
            "Environment": {"ENCODE_TYPE": TEXT, "ARTIFACT_VERSION": "00000000000old01"},
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-c",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": f"{name}-m",
                "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 1},
            }
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-c")
    client = index.client_from_settings(settings)
    name_of_index = f"{settings.index_alias}-x"
    body = index.index_body(settings, alias=settings.index_alias, dimension=4, run_key="t")
    body["mappings"]["_meta"]["artifact_version"] = "00000000000new02"
    client.indices.create(index=name_of_index, body=body)
    try:
        index.swap_alias(client, settings.index_alias, name_of_index)
        encoder = EndpointEncoder(settings)
        assert encoder.artifact_version(TEXT) == "00000000000old01"
        search = SearchClient(settings, client=client, encoder=encoder)
        assert search.index_artifact_version() == "00000000000new02"
        with pytest.raises(ModelVersionMismatchError, match="runs model artifact 00000000000old01"):
            search.search_text("a red flower")
    finally:
        client.indices.delete(index=name_of_index)
        sm.delete_endpoint(EndpointName=name)
        sm.delete_endpoint_config(EndpointConfigName=f"{name}-c")
        sm.delete_model(ModelName=f"{name}-m")
