"""The handler's chunk path (what batch transform sends): many images per request.

Real torch, open_clip and PIL with the tiny CLIP config. Records carry base64
images here (no S3 needed); the S3 records run against moto in
tests/integration/test_encode_chunks.py.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalogue_search import encoding as store
from catalogue_search.handler import LoadedHandler, load_handler

CHUNK = "application/x-image-chunk"
NPZ = "application/x-npz"


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def chunk(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir  # the session's tiny model (tests/conftest.py)


@pytest.fixture(scope="module")
def handler(model_dir: Path) -> LoadedHandler:
    return load_handler(model_dir, "IMAGE", env={"MAX_BATCH_SIZE": "4", "FETCH_WORKERS": "3"})


@pytest.fixture
def passes(handler: LoadedHandler, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The row count of every forward pass the handler runs."""
    sizes: list[int] = []
    real = handler.module.embed

    def counting(inputs, model):
        sizes.append(int(inputs.shape[0]))
        return real(inputs, model)

    monkeypatch.setattr(handler.module, "embed", counting)
    return sizes


def test_a_chunk_is_encoded_in_forward_passes_of_max_batch_size_equal_to_one_by_one(handler, passes):
    images = {f"ab/{i}.jpg": jpeg(i) for i in range(10)}
    records = [{"id": path, "b64": base64.b64encode(data).decode()} for path, data in images.items()]
    body = handler.invoke(chunk(records), CHUNK, NPZ)

    out = store.parse_output(body, "chunk")
    assert out.ids == list(images) and out.errors == {}
    assert out.vectors.dtype == np.float32 and out.vectors.shape == (10, handler.embed_dim)
    assert out.artifact_version == handler.artifact_version != ""
    assert passes == [4, 4, 2]  # MAX_BATCH_SIZE=4, not one image per pass
    passes.clear()
    for row, data in zip(out.vectors, images.values()):
        single = json.loads(handler.invoke(data, "application/x-image"))["embeddings"][0]
        np.testing.assert_allclose(row, single, atol=1e-5)
    assert passes == [1] * 10


def test_bad_records_become_error_records_and_the_rest_is_encoded(handler, passes):
    good = jpeg(1)
    records = [
        {"id": "ok/1.jpg", "b64": base64.b64encode(good).decode()},
        {"id": "bad/truncated.jpg", "b64": base64.b64encode(jpeg(2)[:200]).decode()},
        {"id": "bad/not-base64.jpg", "b64": "%%% not base64 %%%"},
        {"id": "bad/both.jpg", "b64": "", "s3_uri": "s3://b/k"},
        {"id": "bad/uri.jpg", "s3_uri": "https://example.com/x.jpg"},
        {"id": "ok/1.jpg", "b64": base64.b64encode(good).decode()},  # the same id twice
        {"id": "ok/2.jpg", "b64": base64.b64encode(jpeg(3)).decode()},
    ]
    out = store.parse_output(handler.invoke(chunk(records), CHUNK, NPZ), "chunk")
    assert out.ids == ["ok/1.jpg", "ok/2.jpg"]
    assert set(out.errors) == {"bad/truncated.jpg", "bad/not-base64.jpg", "bad/both.jpg", "bad/uri.jpg", "ok/1.jpg"}
    assert "decoded" in out.errors["bad/truncated.jpg"] or "truncated" in out.errors["bad/truncated.jpg"]
    assert "base64" in out.errors["bad/not-base64.jpg"]
    assert "exactly one of" in out.errors["bad/both.jpg"]
    assert "not an s3://" in out.errors["bad/uri.jpg"]
    assert "duplicate" in out.errors["ok/1.jpg"]
    assert sum(passes) == 2


def test_a_malformed_chunk_fails_the_request(handler):
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        handler.invoke(b'{"id": "a", "b64": ""}\n{not json\n', CHUNK, NPZ)
    with pytest.raises(ValueError, match="line 1 must be"):
        handler.invoke(b'{"s3_uri": "s3://b/k"}\n', CHUNK, NPZ)
    with pytest.raises(ValueError, match="no records"):
        handler.invoke(b"\n\n", CHUNK, NPZ)
    with pytest.raises(ValueError, match="answers application/x-image-chunk requests only"):
        handler.invoke(jpeg(1), "application/x-image", NPZ)


def test_s3_records_are_fetched_with_the_client_the_model_is_given(handler):
    class Body:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self) -> bytes:
            return self.data

    class S3:
        """An S3 stand-in with one object: a client injected by the caller, as the local runner does."""

        def get_object(self, Bucket: str, Key: str) -> dict:
            if (Bucket, Key) != ("proj", "images/small/ab/1.jpg"):
                from botocore.exceptions import ClientError

                raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "no such key"}}, "GetObject")
            return {"Body": Body(jpeg(1))}

    handler.model.s3_client = S3()
    try:
        records = [
            {"id": "ab/1.jpg", "s3_uri": "s3://proj/images/small/ab/1.jpg"},
            {"id": "ab/9.jpg", "s3_uri": "s3://proj/images/small/ab/9.jpg"},
        ]
        out = store.parse_output(handler.invoke(chunk(records), CHUNK, NPZ), "chunk")
    finally:
        handler.model.s3_client = None
    assert out.ids == ["ab/1.jpg"]
    assert "could not be fetched" in out.errors["ab/9.jpg"] and "NoSuchKey" in out.errors["ab/9.jpg"]


def _read_failure(kind: str) -> Exception:
    """A real botocore error of each kind an S3 read can end with once the client's own retries are spent."""
    from botocore import exceptions as e

    def client_error(code: str, status: int) -> Exception:
        error = {"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return e.ClientError(error, "GetObject")

    return {
        "throttled": client_error("SlowDown", 503),
        "5xx": client_error("InternalError", 500),
        "request timeout": client_error("RequestTimeout", 400),
        "access": client_error("AccessDenied", 403),
        "read timeout": e.ReadTimeoutError(endpoint_url="https://s3.amazonaws.com/proj/k"),
        "connection": e.EndpointConnectionError(endpoint_url="https://s3.amazonaws.com/proj/k"),
        "body cut": e.ResponseStreamingError(error="Connection broken: IncompleteRead"),
    }[kind]


@pytest.mark.parametrize(
    "kind", ["throttled", "5xx", "request timeout", "access", "read timeout", "connection", "body cut"]
)
def test_a_read_that_fails_for_no_fault_of_the_image_fails_the_request_instead_of_recording_it(handler, kind):
    """Such a chunk is retried whole (SageMaker's InvocationsMaxRetries, the task's retries, the next run);
    an error record would mark the image bad for as long as its ETag stays the same."""
    from botocore.exceptions import ClientError

    class Body:
        def __init__(self, data: bytes, fail: Exception | None = None) -> None:
            self.data, self.fail = data, fail

        def read(self) -> bytes:
            if self.fail is not None:
                raise self.fail
            return self.data

    class S3:
        """Serves two objects; the read of `ab/2.jpg` fails with `kind`, a missing key is NoSuchKey."""

        def get_object(self, Bucket: str, Key: str) -> dict:
            if Key == "ab/2.jpg":
                if kind == "body cut":
                    return {"Body": Body(b"", _read_failure(kind))}
                raise _read_failure(kind)
            if Key not in ("ab/1.jpg", "ab/3.jpg"):
                raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "no such key"}}, "GetObject")
            return {"Body": Body(jpeg(int(Key[3])))}

    records = [{"id": f"ab/{n}.jpg", "s3_uri": f"s3://proj/ab/{n}.jpg"} for n in (1, 2, 3)]
    handler.model.s3_client = S3()
    try:
        with pytest.raises(handler.module.FetchError, match="ab/2.jpg could not be read") as raised:
            handler.invoke(chunk(records), CHUNK, NPZ)
        assert not isinstance(raised.value, ValueError)  # not an input error: the serving side answers 5xx
        # the same chunk without the failing read: a missing image and a corrupt one stay error records
        records[1] = {"id": "ab/9.jpg", "s3_uri": "s3://proj/ab/9.jpg"}
        records.append({"id": "ab/bad.jpg", "b64": base64.b64encode(jpeg(4)[:200]).decode()})
        out = store.parse_output(handler.invoke(chunk(records), CHUNK, NPZ), "chunk")
    finally:
        handler.model.s3_client = None
    assert out.ids == ["ab/1.jpg", "ab/3.jpg"] and set(out.errors) == {"ab/9.jpg", "ab/bad.jpg"}
    assert "NoSuchKey" in out.errors["ab/9.jpg"]


def test_a_text_chunk_of_titles_is_encoded_in_batched_passes_with_error_records(model_dir: Path, monkeypatch):
    text = load_handler(model_dir, "TEXT", env={"MAX_BATCH_SIZE": "4"})
    sizes: list[int] = []
    real = text.module.embed

    def counting(inputs, model):
        sizes.append(int(inputs.shape[0]))
        return real(inputs, model)

    monkeypatch.setattr(text.module, "embed", counting)
    titles = [f"title number {i}" for i in range(9)]
    records = [{"id": f"t{i}", "text": t} for i, t in enumerate(titles)]
    records += [{"id": "blank", "text": "  "}, {"id": "t0", "text": "again"}, {"id": "picture", "b64": "AAAA"}]
    out = store.parse_output(text.invoke(chunk(records), "application/x-text-chunk", NPZ), "text chunk")
    assert out.ids == [f"t{i}" for i in range(9)]
    assert set(out.errors) == {"blank", "t0", "picture"} and "duplicate" in out.errors["t0"]
    assert sizes[:3] == [4, 4, 1]
    sizes.clear()
    np.testing.assert_allclose(out.vectors, text.encode_texts(titles), atol=1e-5)
