"""Property-based fuzz test of the handler: whatever a client sends, a unit vector or the handler's own error.

Hypothesis builds requests of every content type the handler accepts: real
images in many formats and modes, the same images truncated, bit-flipped or
with patched header sizes, bare headers claiming huge or thin sizes, random
bytes behind image magic numbers, JSON and JSON Lines with texts, base64
images, NaN, deep nesting, long integers, U+2028 and lone surrogates. For each
request it asserts:

- the answer is strict JSON holding L2-normalised vectors of the model's
  dimension (or, with ERROR_MODE=record, an error record), or the handler
  raised its own `InputError`: any other exception fails the test;
- a valid small image, or a plain text, is encoded (hardening refuses no good input);
- no request takes more than TIME_LIMIT_S or grows resident memory by more than MEMORY_LIMIT_MB.

The number of examples is bounded so it runs in the normal suite;
CATSEARCH_FUZZ_EXAMPLES raises it for a longer hunt.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from catalogue_search.handler import LoadedHandler, load_handler

EMBED_DIM = 32
X_IMAGE = "application/x-image"
JSON = "application/json"
JSONLINES = "application/jsonlines"
IMAGE_TYPES = [X_IMAGE, "image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"]
JSON_TYPES = [JSON, "text/json", "application/json; charset=utf-8"]
JSONLINES_TYPES = [JSONLINES, "application/jsonl", "application/x-jsonlines"]
ACCEPTS = [JSON, JSONLINES, "*/*"]

TIME_LIMIT_S = 10.0  # generous: a request the tiny model answers takes milliseconds
MEMORY_LIMIT_MB = 400.0  # generous: a 50 MP worst case is ~400 MB; the thin images took 2.8 to 4.9 GB
EXAMPLES = int(os.environ.get("CATSEARCH_FUZZ_EXAMPLES", "0")) or None

FUZZ = settings(
    max_examples=EXAMPLES or 150,
    deadline=None,  # time is asserted per request below, with a bound that holds on a loaded machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@dataclass
class Request:
    payload: bytes | str
    content_type: str
    accept: str
    must_encode: bool = False  # a valid input: refusing it is a failure


# --------------------------------------------------------------------------- images

# (format, modes) the fuzz saves real images in; the first group must always be encoded.
CORE_FORMATS = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F"],
    "WEBP": ["RGB", "RGBA"],
}
OTHER_FORMATS = {
    "PPM": ["1", "L", "RGB"],
    "TGA": ["L", "RGB", "RGBA"],
    "PCX": ["1", "L", "P", "RGB"],
    "ICO": ["RGBA"],
    "DDS": ["RGB", "RGBA"],
    "SGI": ["L", "RGB"],
    "IM": ["L", "RGB"],
    "QOI": ["RGB", "RGBA"],
    "JPEG2000": ["L", "RGB"],
    "XBM": ["1"],
    "MSP": ["1"],
}
MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"DDS |\x00\x00\x00",
    b"8BPS\x00\x01",
    b"icns",
    b"\x00\x00\x01\x00",
    b"P6\n",
    b"qoif",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    b"\x01\xda",
    b"%!PS-Adobe-3.0 EPSF",
    b"SIMPLE  =                    T",
]


@functools.cache
def savable(fmt: str, mode: str) -> bool:
    try:
        Image.new(mode, (4, 4)).save(io.BytesIO(), fmt)
        return True
    except Exception:
        return False


@st.composite
def real_images(draw, formats: dict[str, list[str]] = CORE_FORMATS) -> tuple[bytes, bool]:
    """(file bytes, whether the handler must encode it) for a small image in one format and mode."""
    fmt = draw(st.sampled_from(sorted(formats)))
    mode = draw(st.sampled_from(formats[fmt]))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB").convert(mode)
    if not savable(fmt, mode):
        fmt, mode = "PNG", img.mode if savable("PNG", img.mode) else "RGB"
        img = img.convert(mode)
    out = io.BytesIO()
    try:
        img.save(out, fmt)
    except Exception:  # a format that refuses this size (ICO, XBM...): fall back to PNG
        out = io.BytesIO()
        img.convert("RGB").save(out, "PNG")
    thin = max(width, height) > 20 * min(width, height)
    return out.getvalue(), formats is CORE_FORMATS and not thin


@st.composite
def thin_images(draw) -> bytes:
    """A real, valid, tiny file of a very thin image: what the preprocessing once scaled up to gigabytes."""
    short, long = draw(st.integers(1, 4)), draw(st.integers(21 * 4, 30_000))
    size = (short, long) if draw(st.booleans()) else (long, short)
    out = io.BytesIO()
    Image.new("1", size, draw(st.sampled_from([0, 1]))).save(out, draw(st.sampled_from(["PNG", "TIFF", "GIF", "BMP"])))
    return out.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


@st.composite
def header_only_images(draw) -> bytes:
    """Headers that claim a size (often huge or thin) with little or no pixel data behind them."""
    size = st.one_of(st.integers(0, 64), st.integers(0, 70_000), st.integers(0, 2**31 - 1))
    width, height = draw(size), draw(size)
    kind = draw(st.sampled_from(["png", "bmp", "gif", "tiff", "dds"]))
    tail = draw(st.binary(max_size=64))
    if kind == "png":
        color, depth = draw(st.sampled_from([(0, 1), (0, 8), (0, 16), (2, 8), (3, 8), (4, 8), (6, 8), (6, 16)]))
        ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, draw(st.sampled_from([0, 1])))
        body = zlib.compress(tail)
        return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")
    if kind == "bmp":
        bpp = draw(st.sampled_from([1, 4, 8, 16, 24, 32]))
        signed_height = height if draw(st.booleans()) else -min(height, 2**31 - 1)
        info = struct.pack("<IiiHHIIiiII", 40, width, signed_height, 1, bpp, 0, 0, 0, 0, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + len(tail), 0, 0, 54) + info + tail
    width, height = width % 65536, height % 65536
    if kind == "gif":
        screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
        descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
        return b"GIF89a" + screen + descriptor + b"\x08" + bytes([min(len(tail), 255)]) + tail[:255] + b"\x00;"
    if kind == "tiff":
        bits = draw(st.sampled_from([1, 8, 16]))
        entries = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, draw(st.sampled_from([1, 5, 32773])))]
        entries += [(262, 3, 1), (273, 4, 8 + 2 + 12 * 8 + 4), (278, 4, height), (279, 4, len(tail))]
        ifd = struct.pack("<H", len(entries))
        for tag, kind_, value in entries:
            packed = struct.pack("<HH", value % 65536, 0) if kind_ == 3 else struct.pack("<I", value)
            ifd += struct.pack("<HHI", tag, kind_, 1) + packed
        return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + tail
    flags = draw(st.sampled_from([0x4, 0x40, 0x41, 0x20000, 0x80000, 0x200, 0]))
    fourcc = draw(st.sampled_from([b"\x00\x00\x00\x00", b"DXT1", b"DXT5", b"DX10", b"ATI2", b"BC5U", b"ZZZZ"]))
    header = struct.pack("<7I", 124, 0x100F, height, width, 0, 0, 0) + b"\x00" * 44
    header += struct.pack("<2I", 32, flags) + fourcc + struct.pack("<5I", 32, 0xFF, 0xFF00, 0xFF0000, 0)
    header += struct.pack("<5I", 0x1000, 0, 0, 0, 0)
    return b"DDS " + header + tail


@st.composite
def mutated_images(draw) -> bytes:
    """A real image broken in one of the ways files break: cut short, bits flipped, bytes inserted, size patched."""
    formats = draw(st.sampled_from([CORE_FORMATS, OTHER_FORMATS]))
    data = bytearray(draw(real_images(formats))[0])
    how = draw(st.sampled_from(["truncate", "flip", "insert", "patch-size", "patch-png-size"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "insert":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at] + draw(st.binary(min_size=1, max_size=32)) + data[at:])
    if how == "patch-size" and len(data) > 8:
        at = draw(st.integers(0, min(len(data), 64) - 4))
        data[at : at + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), draw(st.integers(0, 2**32 - 1)))
        return bytes(data)
    if data.startswith(b"\x89PNG"):  # a consistent IHDR (right CRC) with another size
        width, height = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
        ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
        data[16:33] = ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def any_image_bytes() -> st.SearchStrategy[tuple[bytes, bool]]:
    """(bytes, must encode) for anything a client might send as an image."""
    broken = st.one_of(
        mutated_images(),
        header_only_images(),
        thin_images(),
        st.builds(lambda magic, tail: magic + tail, st.sampled_from(MAGICS), st.binary(max_size=512)),
        st.binary(max_size=256),
        real_images(OTHER_FORMATS).map(lambda pair: pair[0]),
    )
    return st.one_of(real_images(), broken.map(lambda data: (data, False)))


# --------------------------------------------------------------------------- texts and JSON

ODD_CHARACTERS = ["\u2028", "\u2029", "\x85", "\x00", "\ud800", "\udfff", "{}", "&amp;", "\ufeff", "\u200b", " "]
texts = st.lists(st.one_of(st.characters(), st.sampled_from(ODD_CHARACTERS)), max_size=60).map("".join)
plain_texts = st.from_regex(r"[a-z]{1,12}( [a-z]{1,12}){0,5}", fullmatch=True)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        texts,
    ),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=12,
)


def dump(value, ensure_ascii: bool) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii)  # NaN and Infinity are written as such: not strict JSON


hostile_json = st.one_of(
    st.integers(1, 150_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 150_000).map(lambda n: '{"inputs": ' + "[" * n + "]" * n + "}"),
    st.integers(4_000, 6_000).map(lambda n: '{"inputs": ["red shoe"], "n": ' + "9" * n + "}"),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", '{"inputs": NaN}', '{"inputs": ["x"], "prompt": 1e400}']),
    st.text(max_size=200),
)


@st.composite
def json_requests(draw, items: st.SearchStrategy) -> Request:
    shape = draw(st.sampled_from(["object", "array", "hostile", "junk"]))
    ensure_ascii = draw(st.booleans())
    if shape == "object":
        doc: dict = {"inputs": draw(st.one_of(st.lists(items, min_size=0, max_size=6), items, json_values))}
        if draw(st.booleans()):
            doc["prompt"] = draw(st.one_of(st.just("a photo of {}"), texts, json_values))
        body = dump(doc, ensure_ascii)
    elif shape == "array":
        body = dump(draw(st.lists(items, max_size=6)), ensure_ascii)
    elif shape == "hostile":
        body = draw(hostile_json)
    else:
        body = dump(draw(json_values), ensure_ascii)
    payload = body.encode("utf-8", "surrogatepass") if draw(st.booleans()) else body
    return Request(payload, draw(st.sampled_from(JSON_TYPES)), draw(st.sampled_from(ACCEPTS)))


@st.composite
def jsonlines_requests(draw, items: st.SearchStrategy) -> Request:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["string", "record", "record", "junk", "blank", "hostile"]))
        ensure_ascii = draw(st.booleans())
        if kind == "string":
            lines.append(dump(draw(items), ensure_ascii))
        elif kind == "record":
            record = {"inputs": draw(items)}
            if draw(st.booleans()):
                record["id"] = draw(json_values)
            lines.append(dump(record, ensure_ascii))
        elif kind == "junk":
            lines.append(dump(draw(json_values), ensure_ascii))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", " ", "\t", "\r"])))
        else:
            lines.append(draw(hostile_json))
    body = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n"]))
    payload = body.encode("utf-8", "surrogatepass") if draw(st.booleans()) else body
    return Request(payload, draw(st.sampled_from(JSONLINES_TYPES)), draw(st.sampled_from(ACCEPTS)))


@st.composite
def raw_image_requests(draw) -> Request:
    data, valid = draw(any_image_bytes())
    return Request(data, draw(st.sampled_from(IMAGE_TYPES)), draw(st.sampled_from(ACCEPTS)), must_encode=valid)


@st.composite
def valid_image_json(draw) -> Request:
    images = draw(st.lists(real_images(), min_size=1, max_size=4))
    body = json.dumps({"inputs": [base64.b64encode(data).decode() for data, _ in images]})
    return Request(body, JSON, draw(st.sampled_from(ACCEPTS)), must_encode=all(ok for _, ok in images))


@st.composite
def valid_text_json(draw) -> Request:
    body = json.dumps({"inputs": draw(st.lists(plain_texts, min_size=1, max_size=6))})
    return Request(body, draw(st.sampled_from(JSON_TYPES)), draw(st.sampled_from(ACCEPTS)), must_encode=True)


base64_images = any_image_bytes().map(lambda pair: base64.b64encode(pair[0]).decode())
image_items = st.one_of(base64_images, base64_images.map(lambda s: "data:image/png;base64," + s), texts, json_values)
text_items = st.one_of(plain_texts, texts, st.integers(19_990, 20_010).map(lambda n: "a" * n), base64_images)
junk_bodies = st.builds(
    Request,
    st.one_of(st.binary(max_size=300), st.text(max_size=300)),
    st.sampled_from(IMAGE_TYPES + JSON_TYPES + JSONLINES_TYPES + ["text/csv", ""]),
    st.sampled_from(ACCEPTS),
)

image_model_requests = st.one_of(
    raw_image_requests(),
    valid_image_json(),
    json_requests(image_items),
    jsonlines_requests(image_items),
    junk_bodies,
)
text_model_requests = st.one_of(
    valid_text_json(),
    json_requests(text_items),
    jsonlines_requests(text_items),
    raw_image_requests().map(lambda r: Request(r.payload, r.content_type, r.accept)),
    junk_bodies,
)


# --------------------------------------------------------------------------- the property


def _strict(text: str):
    def refuse(name: str):
        raise AssertionError(f"the response holds {name}: not strict JSON")

    return json.loads(text, parse_constant=refuse)


def check_answer(handler: LoadedHandler, request: Request, peak_memory) -> None:
    started = time.perf_counter()
    outcome, peak_mb = peak_memory(lambda: handler.invoke(request.payload, request.content_type, request.accept))
    elapsed = time.perf_counter() - started
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.1f} s for one request"
    assert peak_mb < MEMORY_LIMIT_MB, f"resident memory grew by {peak_mb:.0f} MB for one request"
    if isinstance(outcome, Exception):
        if not isinstance(outcome, handler.module.InputError):
            raise AssertionError(f"{type(outcome).__name__} is not the handler's InputError") from outcome
        assert str(outcome), "an InputError must say what is wrong"
        assert not request.must_encode, f"a valid input was refused: {outcome}"
        return
    text = outcome.decode("utf-8")
    docs = [_strict(line) for line in text.split("\n")] if request.accept == JSONLINES else [_strict(text)]
    if docs and set(docs[0]) == {"error"}:
        assert handler.model.error_mode == "record" and len(docs) == 1 and isinstance(docs[0]["error"], str)
        assert not request.must_encode, f"a valid input was answered with an error record: {docs[0]['error']}"
        return
    rows = [doc["embedding"] for doc in docs] if request.accept == JSONLINES else docs[0]["embeddings"]
    vectors = np.asarray(rows, dtype=np.float64)
    assert vectors.ndim == 2 and vectors.shape[0] >= 1 and vectors.shape[1] == EMBED_DIM
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir  # the session's tiny model (tests/conftest.py)


@pytest.fixture(scope="module")
def image_handler(model_dir: Path) -> LoadedHandler:
    return load_handler(model_dir, "IMAGE", {"ERROR_MODE": "record"})


@pytest.fixture(scope="module")
def text_handler(model_dir: Path) -> LoadedHandler:
    return load_handler(model_dir, "TEXT")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@FUZZ
@given(req=image_model_requests)
def test_fuzz_the_image_model(image_handler: LoadedHandler, peak_memory, req: Request):
    check_answer(image_handler, req, peak_memory)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@FUZZ
@given(req=text_model_requests)
def test_fuzz_the_text_model(text_handler: LoadedHandler, peak_memory, req: Request):
    check_answer(text_handler, req, peak_memory)
