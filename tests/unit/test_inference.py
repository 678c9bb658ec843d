"""The SageMaker handler (inference_code/inference.py) as a client of the endpoint sees it.

Most tests use the tiny CLIP config (fast); one loads the real ViT-B-32
architecture with random weights. No mocks: real torch, open_clip and PIL.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catalogue_search.handler import LoadedHandler, load_handler
from catalogue_search_dev.model_build import write_model_dir

X_IMAGE = "application/x-image"
JSON = "application/json"
JSONLINES = "application/jsonlines"


# --------------------------------------------------------------------------- helpers


def pattern(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def encoded(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def vectors(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["embeddings"], dtype=np.float32)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions: the shape of a decompression bomb, a few bytes long."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir  # the session's tiny model (tests/conftest.py)


@pytest.fixture(scope="module")
def image_handler(model_dir: Path) -> LoadedHandler:
    return load_handler(model_dir, "IMAGE")


@pytest.fixture(scope="module")
def text_handler(model_dir: Path) -> LoadedHandler:
    return load_handler(model_dir, "TEXT")


@pytest.fixture
def container_globals():
    """model_fn sets process-wide state the container owns; put it back after the test."""
    grad, pixels = torch.is_grad_enabled(), Image.MAX_IMAGE_PIXELS
    yield
    torch.set_grad_enabled(grad)
    Image.MAX_IMAGE_PIXELS = pixels


# --------------------------------------------------------------------------- requests that work


def test_an_image_gives_one_unit_vector_of_the_model_dimension(image_handler: LoadedHandler):
    body = image_handler.invoke(encoded(pattern(1), "JPEG"), X_IMAGE, JSON)
    doc = json.loads(body)
    assert set(doc) == {"embeddings"}
    vec = np.asarray(doc["embeddings"], dtype=np.float32)
    assert vec.shape == (1, 32)
    assert np.linalg.norm(vec[0]) == pytest.approx(1.0, abs=1e-5)


def test_json_images_come_back_in_input_order_matching_single_requests(image_handler: LoadedHandler):
    images = [encoded(pattern(seed)) for seed in (10, 11, 12)]
    batch = vectors(image_handler.invoke(json.dumps({"inputs": [b64(i) for i in images]}), JSON, JSON))
    singles = np.concatenate([vectors(image_handler.invoke(i, X_IMAGE, JSON)) for i in images])
    assert batch.shape == (3, 32)
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    assert not np.allclose(batch[0], batch[1], atol=1e-3), "different images must give different vectors"
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_a_batch_is_one_forward_pass(image_handler: LoadedHandler, text_handler: LoadedHandler):
    calls = []
    hooks = [
        image_handler.model.model.visual.register_forward_hook(lambda *_: calls.append("image")),
        text_handler.model.model.token_embedding.register_forward_hook(lambda *_: calls.append("text")),
    ]
    try:
        image_handler.invoke(json.dumps({"inputs": [b64(encoded(pattern(s))) for s in range(5)]}), JSON, JSON)
        text_handler.invoke(json.dumps({"inputs": ["red shoe", "blue hat", "lamp", "mug"]}), JSON, JSON)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == ["image", "text"]


def test_many_queries_share_passes_and_a_bad_one_fails_alone(text_handler: LoadedHandler):
    """invoke_many (the quality evaluation's encoder) answers each query as invoke does, in fewer passes."""
    from catalogue_search.contract import VECTOR_ATOL

    titles = ["red shoe", "blue hat", "", "a lamp", "mug"] * 3
    payloads = [json.dumps({"inputs": [t]}) for t in titles]
    payloads[4] = "{not json"
    calls = []
    hook = text_handler.model.model.token_embedding.register_forward_hook(lambda *_: calls.append(1))
    try:
        answers = text_handler.invoke_many(payloads, JSON)
    finally:
        hook.remove()
    failed = {i for i, a in enumerate(answers) if a.error is not None}
    assert failed == {i for i, t in enumerate(titles) if not t} | {4}
    assert 0 < len(calls) < len(payloads) - len(failed)
    for i in sorted(set(range(len(payloads))) - failed):
        np.testing.assert_allclose(
            vectors(answers[i].body), vectors(text_handler.invoke(payloads[i], JSON, JSON)), atol=VECTOR_ATOL
        )


def test_the_same_image_twice_gives_the_same_vector(image_handler: LoadedHandler):
    data = encoded(pattern(3), "JPEG")
    first = image_handler.invoke(data, X_IMAGE, JSON)
    assert image_handler.invoke(data, X_IMAGE, JSON) == first
    pair = vectors(image_handler.invoke(json.dumps({"inputs": [b64(data), b64(data)]}), JSON, JSON))
    np.testing.assert_allclose(pair[0], pair[1], atol=1e-6)


def test_text_and_image_vectors_share_one_space(image_handler: LoadedHandler, text_handler: LoadedHandler):
    texts = text_handler.encode_texts(["red running shoe", "a desk lamp"])
    images = image_handler.encode_images([encoded(pattern(4)), encoded(pattern(5), "JPEG")])
    assert texts.shape == images.shape == (2, 32)
    assert texts.dtype == images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([texts, images]), axis=1), 1.0, atol=1e-5)
    assert text_handler.encode_texts([]).shape == (0, 32)


def test_content_type_parameters_and_text_bodies_are_accepted(text_handler: LoadedHandler):
    plain = text_handler.invoke(b'{"inputs": ["red shoe"]}', JSON, JSON)
    # The SageMaker toolkit hands JSON bodies over already decoded to str.
    assert text_handler.invoke('{"inputs": ["red shoe"]}', "application/json; charset=utf-8", JSON) == plain
    assert text_handler.invoke(b'{"inputs": "red shoe"}', "Application/JSON", JSON) == plain


def test_jsonlines_records_keep_their_ids_and_order(text_handler: LoadedHandler):
    body = b'{"inputs": "red shoe", "id": "B01"}\n"blue hat"\n\n{"inputs": "lamp", "id": 7}\n'
    lines = [json.loads(line) for line in text_handler.invoke(body, JSONLINES, JSONLINES).splitlines()]
    assert [line.get("id") for line in lines] == ["B01", None, 7]
    assert "id" not in lines[1]
    expected = text_handler.encode_texts(["red shoe", "blue hat", "lamp"])
    np.testing.assert_allclose([line["embedding"] for line in lines], expected, atol=1e-5)

    as_json = json.loads(text_handler.invoke(body, JSONLINES, JSON))
    assert as_json["ids"] == ["B01", None, 7]
    assert len(as_json["embeddings"]) == 3


def test_prompt_template_from_request_or_environment(model_dir: Path, text_handler: LoadedHandler):
    prompted = text_handler.invoke(json.dumps({"inputs": ["cat"], "prompt": "this is a {}"}), JSON, JSON)
    assert prompted == text_handler.invoke(json.dumps({"inputs": ["this is a cat"]}), JSON, JSON)
    assert prompted != text_handler.invoke(json.dumps({"inputs": ["cat"]}), JSON, JSON)

    with_env = load_handler(model_dir, "TEXT", {"TEXT_PROMPT": "this is a {}"})
    assert with_env.invoke(json.dumps({"inputs": ["cat"]}), JSON, JSON) == prompted


def test_any_or_missing_accept_means_json_and_jsonlines_is_one_line_per_vector(image_handler: LoadedHandler):
    data = encoded(pattern(6))
    as_json = image_handler.invoke(data, X_IMAGE, JSON)
    assert image_handler.invoke(data, X_IMAGE, "*/*") == as_json
    assert image_handler.invoke(data, X_IMAGE, "") == as_json
    lines = image_handler.invoke(data, X_IMAGE, JSONLINES).splitlines()
    assert len(lines) == 1
    np.testing.assert_allclose(json.loads(lines[0])["embedding"], vectors(as_json)[0])


def _white_vector(handler: LoadedHandler) -> np.ndarray:
    return vectors(handler.invoke(encoded(Image.new("RGB", (40, 40), "white")), X_IMAGE, JSON))[0]


def _transparent_palette() -> bytes:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([255, 0, 0] * 256)
    return encoded(img, "PNG", transparency=0)


ODD_WHITE_IMAGES = {
    "rgba-transparent": lambda: encoded(Image.new("RGBA", (40, 40), (255, 0, 0, 0))),
    "rgba-opaque-white": lambda: encoded(Image.new("RGBA", (40, 40), (255, 255, 255, 255))),
    "grayscale": lambda: encoded(Image.new("L", (40, 40), 255), "JPEG", quality=100),
    "cmyk-tiff": lambda: encoded(Image.new("CMYK", (40, 40), (0, 0, 0, 0)), "TIFF"),
    "cmyk-jpeg": lambda: encoded(Image.new("CMYK", (40, 40), (0, 0, 0, 0)), "JPEG", quality=100),
    "palette-transparent": _transparent_palette,
    "16-bit-grayscale": lambda: encoded(Image.new("I;16", (40, 40), 65535)),
    "1-bit": lambda: encoded(Image.new("1", (40, 40), 1)),
}


@pytest.mark.parametrize("name", sorted(ODD_WHITE_IMAGES))
def test_other_image_modes_are_converted_to_rgb(image_handler: LoadedHandler, name: str):
    """Each is a white picture in another mode (transparent counts as white): same vector as white RGB."""
    vec = vectors(image_handler.invoke(ODD_WHITE_IMAGES[name](), X_IMAGE, JSON))[0]
    np.testing.assert_allclose(vec, _white_vector(image_handler), atol=1e-4)


def test_a_grayscale_photo_encodes_like_its_rgb_copy(image_handler: LoadedHandler):
    gray = pattern(7, mode="L")
    np.testing.assert_allclose(
        vectors(image_handler.invoke(encoded(gray), X_IMAGE, JSON)),
        vectors(image_handler.invoke(encoded(gray.convert("RGB")), X_IMAGE, JSON)),
        atol=1e-5,
    )


# --------------------------------------------------------------------------- bad requests


def _truncated_jpeg() -> bytes:
    data = encoded(pattern(8, size=(64, 64)), "JPEG")
    return data[: len(data) // 2]


BAD_IMAGE_REQUESTS = {
    "not-an-image": (b"this is not an image", X_IMAGE, "not in a format"),
    "truncated-jpeg": (_truncated_jpeg(), X_IMAGE, "truncated"),
    "empty-body": (b"", X_IMAGE, "empty"),
    "bomb-beyond-pil-limit": (png_header_only(20_000, 20_000), X_IMAGE, "decompression bomb"),
    "bomb-beyond-our-cap": (png_header_only(8_000, 8_000), X_IMAGE, "MAX_IMAGE_PIXELS"),
    "text-for-image-model": (b'{"inputs": ["red shoe"]}', JSON, "base64"),
    "no-inputs": (b'{"inputs": []}', JSON, "no inputs"),
    "unknown-content-type": (b"a,b\n1,2", "text/csv", "Content-Type"),
    "invalid-json": (b'{"inputs": [', JSON, "not valid JSON"),
    "no-inputs-key": (b'{"images": []}', JSON, '"inputs"'),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGE_REQUESTS))
def test_bad_image_requests_raise_a_clear_input_error(image_handler: LoadedHandler, name: str):
    body, content_type, message = BAD_IMAGE_REQUESTS[name]
    with pytest.raises(image_handler.module.InputError, match=message):
        image_handler.invoke(body, content_type, JSON)


def test_a_prompt_is_refused_by_the_image_model(image_handler: LoadedHandler):
    body = json.dumps({"inputs": [b64(encoded(pattern(1)))], "prompt": "a photo of {}"})
    with pytest.raises(image_handler.module.InputError, match="prompt"):
        image_handler.invoke(body, JSON, JSON)


BAD_TEXT_REQUESTS = {
    "empty-text": ({"inputs": ["red shoe", ""]}, JSON, "input 1 is an empty"),
    "whitespace-text": ({"inputs": ["   "]}, JSON, "empty or whitespace"),
    "not-a-string": ({"inputs": ["ok", 3]}, JSON, "expected a text string"),
    "base64-image-for-text-model": ({"inputs": [b64(encoded(pattern(9)))]}, JSON, "looks like a base64-encoded image"),
    "prompt-without-placeholder": ({"inputs": ["cat"], "prompt": "a photo"}, JSON, "placeholder"),
}


@pytest.mark.parametrize("name", sorted(BAD_TEXT_REQUESTS))
def test_bad_text_requests_raise_a_clear_input_error(text_handler: LoadedHandler, name: str):
    doc, content_type, message = BAD_TEXT_REQUESTS[name]
    with pytest.raises(text_handler.module.InputError, match=message):
        text_handler.invoke(json.dumps(doc), content_type, JSON)


def test_an_image_sent_to_the_text_model_is_refused(text_handler: LoadedHandler):
    with pytest.raises(text_handler.module.InputError, match="encodes TEXT"):
        text_handler.invoke(encoded(pattern(1)), X_IMAGE, JSON)


def test_a_bad_jsonlines_record_is_named_by_line(text_handler: LoadedHandler):
    with pytest.raises(text_handler.module.InputError, match="line 2"):
        text_handler.invoke(b'"red shoe"\n{"text": "lamp"}\n', JSONLINES, JSONLINES)


def test_unknown_accept_is_refused(text_handler: LoadedHandler):
    with pytest.raises(text_handler.module.InputError, match="Accept"):
        text_handler.invoke(b'{"inputs": ["lamp"]}', JSON, "text/html")


def test_batches_above_max_batch_size_are_refused(model_dir: Path):
    handler = load_handler(model_dir, "TEXT", {"MAX_BATCH_SIZE": "2"})
    assert handler.encode_texts(["a", "b", "c"]).shape == (3, 32)  # the convenience splits for you
    with pytest.raises(handler.module.InputError, match="MAX_BATCH_SIZE=2"):
        handler.invoke(json.dumps({"inputs": ["a", "b", "c"]}), JSON, JSON)


def test_input_error_is_a_value_error(image_handler: LoadedHandler):
    assert issubclass(image_handler.module.InputError, ValueError)


def test_error_mode_record_answers_bad_inputs_with_an_error_record(model_dir: Path):
    handler = load_handler(model_dir, "IMAGE", {"ERROR_MODE": "record"})
    doc = json.loads(handler.invoke(_truncated_jpeg(), X_IMAGE, JSON))
    assert set(doc) == {"error"} and "truncated" in doc["error"]
    with pytest.raises(handler.module.InputError, match="Content-Type"):
        handler.invoke(b"x", "text/csv", JSON)  # a malformed request still fails


# --------------------------------------------------------------------------- the container entry point


def test_model_fn_follows_the_container_environment(
    model_dir: Path, image_handler: LoadedHandler, monkeypatch: pytest.MonkeyPatch, container_globals
):
    inference = image_handler.module
    monkeypatch.setenv("ENCODE_TYPE", "TEXT")
    monkeypatch.setenv("MODEL_NAME", "tiny-clip")
    monkeypatch.setenv("MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "1000000")
    model = inference.model_fn(str(model_dir))
    assert (model.encode_type, model.max_batch_size) == ("TEXT", 5)
    assert Image.MAX_IMAGE_PIXELS == 1_000_000
    data = inference.parse_request('{"inputs": ["red shoe", "lamp"]}', JSON)
    body = inference.serialize(inference.predict(data, model), JSON)
    assert vectors(body).shape == (2, 32)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ENCODE_TYPE": "AUDIO"}, "ENCODE_TYPE='AUDIO'"),
        ({"MODEL_NAME": "ViT-L-14"}, "MODEL_NAME='ViT-L-14' but .* holds 'tiny-clip'"),
        ({"MAX_BATCH_SIZE": "lots"}, "MAX_BATCH_SIZE"),
        ({"ERROR_MODE": "ignore"}, "ERROR_MODE"),
    ],
)
def test_bad_container_configuration_fails_at_load(model_dir: Path, image_handler: LoadedHandler, env, message):
    with pytest.raises(ValueError, match=message):
        image_handler.module.load_model(model_dir, env)


def test_missing_clip_config_names_the_directory(tmp_path: Path, image_handler: LoadedHandler):
    with pytest.raises(FileNotFoundError, match="clip_config.json"):
        image_handler.module.load_model(tmp_path, {})


# --------------------------------------------------------------------------- the real architecture


@pytest.mark.slow  # builds and saves the real 151M-parameter architecture: left out of `./dev test --quick`
def test_real_vit_b_32_offline_with_random_weights_allowed_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """`pretrained="openai"`, no model hub, random weights allowed: the real architecture, a loud warning."""
    import socket

    import huggingface_hub.constants

    connections = []
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never reach for the hub
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: connections.append(address))
    with caplog.at_level(logging.WARNING):
        config = write_model_dir(tmp_path, "ViT-B-32", "openai", allow_random_weights=True)
    assert connections == []
    assert (config["pretrained"], config["pretrained_requested"], config["random_weights"]) == (None, "openai", True)
    assert config["model_cfg"]["quick_gelu"] is True  # the architecture the openai weights need
    assert (config["embed_dim"], config["image_size"]) == (512, 224)
    assert any("NOT be meaningful" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    images = load_handler(tmp_path, "IMAGE")
    texts = dataclasses.replace(images, model=dataclasses.replace(images.model, encode_type="TEXT"))
    image_vec = images.encode_images([encoded(pattern(1, size=(300, 200)), "JPEG")])
    text_vec = texts.encode_texts(["a red running shoe"])
    assert image_vec.shape == text_vec.shape == (1, 512)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([image_vec, text_vec]), axis=1), 1.0, atol=1e-5)
