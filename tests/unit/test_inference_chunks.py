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

from catalogue_search import embedding_store as store
from catalogue_search.handler import LoadedHandler, load_handler
from catalogue_search_dev.model_build import write_model_dir

TINY_MODEL_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"
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
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    write_model_dir(path, "tiny-clip", "", TINY_MODEL_CONFIG)
    return path


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
