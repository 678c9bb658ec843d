"""SageMaker PyTorch serving handler: encode product images or search texts with CLIP.

The SageMaker PyTorch inference container (`sagemaker-pytorch-inference` on
TorchServe) imports this file from `code/inference.py` of `model.tar.gz` and
calls `model_fn` once, then `transform_fn` for every request. The same file
also runs in-process (the local query encoder, unit tests) through
`load_model(model_dir, env)` and `encode(...)`, so both paths share one
implementation: `transform_fn` is `encode` plus the container's error and size
rules. It imports only the standard library, torch, open_clip, PIL and numpy:
it must run alone inside the container, where open_clip comes from the wheels
vendored in the archive (`code/requirements.txt`).

One container encodes one kind of input, chosen by the environment:
- `ENCODE_TYPE`: `IMAGE` (default) or `TEXT`.
- `MODEL_NAME`: optional; must equal `model_name` in `clip_config.json`.
- `MAX_BATCH_SIZE` (default 64): most inputs in one request.
- `MAX_IMAGE_PIXELS` (default 50,000,000): most pixels in one image
  (decompression-bomb cap), checked on the header before anything is decoded.
- `MAX_IMAGE_ASPECT_RATIO` (default 20): longest side over shortest side. The
  preprocessing scales the short side up to the model's size, so a 1 x 20,000
  image would become 224 x 4,480,000; thinner images are refused unread.
- `MAX_REQUEST_PIXELS` (default 200,000,000): pixels all images of one
  request may decode to (after JPEG draft scaling), summed over the headers
  before any image is decoded: a per-request time budget.
- `MAX_TEXT_CHARS` (default 20,000): longest text (CLIP reads 77 tokens).
- `TEXT_PROMPT`: optional template such as `this is a {}` applied to texts.
- `FETCH_WORKERS` (default 8): threads fetching and decoding the images of a chunk.
- `ARTIFACT_VERSION`: optional; must equal the archive's `artifact_version.txt`.
- `ERROR_MODE`: `raise` (default) or `record`. With `record`, a request whose
  inputs cannot be encoded (a corrupt image, an empty text) is answered with
  `{"error": "..."}` instead of failing, so one bad image does not fail a whole
  batch-transform job and its `.out` says why. Malformed requests (unknown
  content type, invalid JSON) still fail.

Every failure to read, parse, decode or preprocess an input, whatever PIL or
the JSON parser raised, becomes an `InputError` naming the problem. Request
bodies are parsed as strict JSON (no NaN/Infinity), so whatever is echoed
(ids) is strict JSON too; JSON lines are split on "\n" only.

In the container, an `InputError` is a client error: its HTTP status (400;
415 for an unsupported Content-Type, 406 for an unsupported Accept, 413 for
too much in one request or one answer) with its message as a one-line
`text/plain` body, no traceback. Any other exception is the toolkit's 500: the
handler failed. An answer larger than TorchServe's `max_response_size`
(`TS_MAX_RESPONSE_SIZE`, default 6,553,500 bytes) is refused with a 413 naming
the limit, instead of killing the worker.

Requests (`Content-Type`):
- `application/x-image`: the raw bytes of one image.
- `application/json`: `{"inputs": [...], "prompt": optional}`; texts for a TEXT
  model, base64 strings for an IMAGE model.
- `application/jsonlines`: one record a line, a JSON string or
  `{"inputs": <text or base64>, "id": optional}`; ids come back with the vectors.
- `application/x-image-chunk` (IMAGE models; what batch transform sends): a
  JSON Lines chunk of many images, one record a line,
  `{"id": "<ABO path>", "s3_uri": "s3://..."}` (fetched with boto3 and the
  container's credentials) or `{"id": ..., "b64": "<base64 image>"}`. Images
  are fetched and decoded by a thread pool while forward passes of
  MAX_BATCH_SIZE run; each record goes through the single-image request path
  (`parse_request` + `prepare`). A record whose image is missing (NoSuchKey) or
  cannot be decoded becomes an error record (id + reason); the chunk never fails
  for one bad image. A read that fails for any other reason (throttling, a
  timeout, a 5xx, a lost connection, access) is no verdict on the image: it
  raises `FetchError`, the request fails and is retried whole (SageMaker's
  InvocationsMaxRetries, then the task's retries and the next run).
  The answer (`Accept: application/x-npz`) is one NumPy `.npz`: `ids`,
  `embeddings` (float32, one row per id), `error_ids`, `errors`, `artifact_version`.
- `application/x-text-chunk` (TEXT models; batch transform of the titles): a
  JSON Lines chunk of `{"id": ..., "text": "<title>"}` records, encoded in
  forward passes of MAX_BATCH_SIZE; a blank text or a repeated id is an error
  record. The answer is the same `.npz`.

Responses (`Accept`): `application/json` -> `{"embeddings": [[...]], "ids": [...]}`
(ids only when the request had some), `application/jsonlines` -> one
`{"embedding": [...], "id": ...}` a line. Vectors are L2-normalised float32.
Bad requests raise `InputError` naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

CONFIG_FILE = "clip_config.json"
WEIGHTS_FILE = "model.pt"
ENCODE_TYPES = ("IMAGE", "TEXT")
ERROR_MODES = ("raise", "record")
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
DEFAULT_MAX_IMAGE_ASPECT_RATIO = 20
DEFAULT_MAX_REQUEST_PIXELS = 200_000_000
DEFAULT_MAX_TEXT_CHARS = 20_000
TS_DEFAULT_MAX_RESPONSE_SIZE = 6_553_500  # TorchServe's max_response_size unless TS_MAX_RESPONSE_SIZE says otherwise
MAX_ERROR_CHARS = 1000  # a client error's one line

JSON = "application/json"
JSONLINES = "application/jsonlines"
X_IMAGE = "application/x-image"
IMAGE_CHUNK = "application/x-image-chunk"
TEXT_CHUNK = "application/x-text-chunk"
NPZ = "application/x-npz"
VERSION_FILE = "artifact_version.txt"
DEFAULT_FETCH_WORKERS = 8
MAX_CHUNK_RECORDS = 100_000
_JSON_TYPES = {JSON, "text/json"}
_JSONLINES_TYPES = {JSONLINES, "application/jsonl", "application/x-jsonlines", "application/json-lines"}
_IMAGE_TYPES = {X_IMAGE, "image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
_ANY = {"", "*/*", "application/*"}

# Leading bytes of the image formats a client is likely to send as base64.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"II*\x00", b"MM\x00*")
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/\r\n]+={0,2}$")
_DATA_URI_RE = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


class InputError(ValueError):
    """A request this model cannot encode; the message names the problem, `status` the HTTP client error."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class FetchError(RuntimeError):
    """A chunk record's object could not be read for a reason that is not the record's own
    (throttling, a timeout, a 5xx, a lost connection, access): the request fails, so that it
    is retried whole, and nothing is recorded against the record."""


@dataclass
class ClipModel:
    """What `model_fn` returns: the network plus everything needed to feed it."""

    model: torch.nn.Module
    tokenizer: Any
    preprocess: Any
    encode_type: str
    model_name: str
    embed_dim: int
    device: torch.device
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_aspect_ratio: int = DEFAULT_MAX_IMAGE_ASPECT_RATIO
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    image_size: int = 224
    text_prompt: str | None = None
    pretrained: str = ""
    error_mode: str = "raise"
    artifact_version: str = ""
    fetch_workers: int = DEFAULT_FETCH_WORKERS
    max_response_bytes: int = TS_DEFAULT_MAX_RESPONSE_SIZE
    # The S3 client chunk records are fetched with; None = boto3's default client
    # (the container's role; AWS_ENDPOINT_URL and the other standard variables apply).
    s3_client: Any = None


@dataclass
class Batch:
    """A parsed request: raw image bytes (`kind="image"`) or JSON strings (`kind="string"`)."""

    items: list[Any]
    kind: str
    ids: list[Any] | None = None
    prompt: str | None = None


@dataclass
class Prediction:
    """One L2-normalised float32 row per input, in input order, plus the records' ids.

    `error` is set instead (and `embeddings` is empty) when ERROR_MODE=record
    turned an `InputError` into an answer.
    """

    embeddings: np.ndarray
    ids: list[Any] | None = None
    error: str | None = None


# --------------------------------------------------------------------------- model


def register_model_config(model_name: str, model_cfg: Mapping[str, Any]) -> str:
    """Make `model_cfg` known to open_clip and return the name to create it by.

    A built-in name whose registry config equals `model_cfg` is used as is. An
    unknown name is registered as given; a known name with a different config
    (a test config, an extra `quick_gelu`) gets a derived name, so the built-in
    entry is never overwritten.
    """
    cfg = json.loads(json.dumps(model_cfg))
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"model_cfg for {model_name!r} needs embed_dim, vision_cfg and text_cfg")
    existing = open_clip.get_model_config(model_name)
    if existing == cfg:
        return model_name
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", model_name)
    if existing is None and safe == model_name:
        name = model_name
    else:
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{safe}-cfg-{digest}"
    if open_clip.get_model_config(name) != cfg:
        with tempfile.TemporaryDirectory(prefix="open-clip-cfg-") as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(cfg))
            open_clip.add_model_config(path)
    return name


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "initialized randomly" before we load model.pt; that is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a whole number") from exc
    if value < 1:
        raise ValueError(f"{name}={raw!r} must be at least 1")
    return value


def _check_prompt(prompt: str, source: str) -> str:
    if "{}" not in prompt:
        raise InputError(f"{source} {prompt!r} has no '{{}}' placeholder for the text")
    return prompt


def load_model(model_dir: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> ClipModel:
    """Load `clip_config.json` + `model.pt` from `model_dir`, configured by `env`.

    `env` holds the container variables (ENCODE_TYPE, MODEL_NAME, ...); it
    defaults to `os.environ` and is never modified, so in-process callers can
    load an IMAGE and a TEXT model side by side.
    """
    env = os.environ if env is None else env
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {model_dir} an extracted catalogue-search model.tar.gz?")
    config = json.loads(config_path.read_text())
    model_name = config["model_name"]

    encode_type = (env.get("ENCODE_TYPE") or "IMAGE").strip().upper()
    if encode_type not in ENCODE_TYPES:
        raise ValueError(f"ENCODE_TYPE={env.get('ENCODE_TYPE')!r} is not supported: use IMAGE or TEXT")
    wanted_name = (env.get("MODEL_NAME") or "").strip()
    if wanted_name and wanted_name != model_name:
        raise ValueError(
            f"MODEL_NAME={wanted_name!r} but {model_dir} holds {model_name!r}: "
            "the endpoint or transform points at the wrong model.tar.gz"
        )
    error_mode = (env.get("ERROR_MODE") or "raise").strip().lower()
    if error_mode not in ERROR_MODES:
        raise ValueError(f"ERROR_MODE={env.get('ERROR_MODE')!r} is not supported: use raise or record")
    text_prompt = env.get("TEXT_PROMPT") or None
    if text_prompt:
        _check_prompt(text_prompt, "TEXT_PROMPT")

    version_path = model_dir / VERSION_FILE
    version = version_path.read_text().strip() if version_path.is_file() else ""
    wanted_version = (env.get("ARTIFACT_VERSION") or "").strip()
    if wanted_version and wanted_version != version:
        raise ValueError(
            f"ARTIFACT_VERSION={wanted_version!r} but {model_dir} holds version {version or '(none)'!r}: "
            "the model.tar.gz was replaced after the SageMaker model was created"
        )

    name = register_model_config(model_name, config["model_cfg"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(
            name,
            pretrained=None,
            load_weights=False,
            force_preprocess_cfg=config.get("preprocess_cfg") or None,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    del state
    model.to(device).eval().requires_grad_(False)

    pp = dict(model.visual.preprocess_cfg)
    if isinstance(pp.get("size"), list):
        pp["size"] = tuple(pp["size"])
    size = pp.get("size") or 224
    image_size = max(size) if isinstance(size, tuple) else int(size)
    preprocess = image_transform_v2(PreprocessCfg(**pp), is_train=False)
    pretrained = config.get("pretrained") or ""
    if not pretrained or config.get("random_weights", True):
        logger.warning(
            "Model %s in %s has RANDOM weights (no pretrained CLIP checkpoint was packaged): "
            "its vectors are consistent but search results will not be meaningful.",
            model_name,
            model_dir,
        )
    logger.info("Loaded %s (%s weights) to encode %s on %s", model_name, pretrained or "random", encode_type, device)
    return ClipModel(
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        preprocess=preprocess,
        encode_type=encode_type,
        model_name=model_name,
        embed_dim=int(config["embed_dim"]),
        device=device,
        max_batch_size=_env_int(env, "MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE),
        max_image_pixels=_env_int(env, "MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS),
        max_image_aspect_ratio=_env_int(env, "MAX_IMAGE_ASPECT_RATIO", DEFAULT_MAX_IMAGE_ASPECT_RATIO),
        max_request_pixels=_env_int(env, "MAX_REQUEST_PIXELS", DEFAULT_MAX_REQUEST_PIXELS),
        max_text_chars=_env_int(env, "MAX_TEXT_CHARS", DEFAULT_MAX_TEXT_CHARS),
        image_size=image_size,
        text_prompt=text_prompt,
        pretrained=pretrained,
        error_mode=error_mode,
        artifact_version=version,
        fetch_workers=_env_int(env, "FETCH_WORKERS", DEFAULT_FETCH_WORKERS),
        max_response_bytes=_env_int(env, "TS_MAX_RESPONSE_SIZE", TS_DEFAULT_MAX_RESPONSE_SIZE),
    )


def model_fn(model_dir: str) -> ClipModel:
    """SageMaker entry point: load the model configured by the container's environment."""
    torch.set_grad_enabled(False)
    model = load_model(model_dir, os.environ)
    # The container serves this one model, so PIL's process-wide cap can follow it.
    Image.MAX_IMAGE_PIXELS = model.max_image_pixels
    return model


# --------------------------------------------------------------------------- input


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _as_text(body: bytes | bytearray | str, content_type: str) -> str:
    if isinstance(body, str):
        return body
    try:
        return bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{content_type} body is not UTF-8 text: {exc}") from exc


class _NotStrictJSON(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotStrictJSON(f"{name} is not allowed (strict JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise _NotStrictJSON(f"{text[:40]} is out of range for a JSON number")
    return value


def parse_json(text: str, where: str) -> Any:
    """The one JSON parser for request data: strict JSON, and any failure is an `InputError`.

    NaN, Infinity and numbers that overflow a float are refused, so whatever the
    handler echoes (ids) is strict JSON again. Too deep nesting (RecursionError),
    over-long integers (ValueError) and MemoryError are input errors like a
    syntax error, naming `where`.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise InputError(f"{where} is nested too deeply to parse") from exc
    except MemoryError as exc:
        raise InputError(f"{where} is too large to parse") from exc
    except Exception as exc:  # JSONDecodeError, _NotStrictJSON, int digit limit, anything else
        raise InputError(f"{where} is not valid JSON: {exc}") from exc


def jsonlines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for each non-blank line, split on "\n" only.

    `str.splitlines()` also splits on U+2028, U+0085 and other characters that a
    JSON string may hold unescaped; only JSON whitespace counts as blank.
    """
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip(" \t\r"):
            lines.append((number, line))
    return lines


def _check_inputs_value(value: Any, where: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    raise InputError(f"{where} must be a string or a list of strings, got {type(value).__name__}")


def parse_request(request_body: bytes | bytearray | str, request_content_type: str | None) -> Batch:
    """Parse a request body into a `Batch`; nothing is decoded or tokenised yet."""
    ctype = media_type(request_content_type)
    if ctype in (IMAGE_CHUNK, TEXT_CHUNK):
        return parse_chunk(request_body)
    if ctype in _IMAGE_TYPES:
        if isinstance(request_body, str):
            raise InputError(f"{ctype} body must be the image's raw bytes, not text")
        return Batch(items=[bytes(request_body)], kind="image")

    if ctype in _JSON_TYPES:
        doc = parse_json(_as_text(request_body, ctype), "request body")
        if isinstance(doc, list):
            return Batch(items=doc, kind="string")
        if not isinstance(doc, dict) or "inputs" not in doc:
            raise InputError('application/json body must be {"inputs": [...]} (texts or base64 images)')
        prompt = doc.get("prompt")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InputError('"prompt" must be a string such as "this is a {}"')
            _check_prompt(prompt, '"prompt"')
        return Batch(items=_check_inputs_value(doc["inputs"], '"inputs"'), kind="string", prompt=prompt)

    if ctype in _JSONLINES_TYPES:
        text = _as_text(request_body, ctype)
        items: list[Any] = []
        ids: list[Any] = []
        for number, line in jsonlines(text):
            record = parse_json(line, f"jsonlines line {number}")
            if isinstance(record, str):
                items.append(record)
                ids.append(None)
            elif isinstance(record, dict) and "inputs" in record:
                if not isinstance(record["inputs"], str):
                    raise InputError(f'jsonlines line {number}: "inputs" must be one string')
                items.append(record["inputs"])
                ids.append(record.get("id"))
            else:
                raise InputError(f'jsonlines line {number} must be a JSON string or {{"inputs": ..., "id": ...}}')
        return Batch(items=items, kind="string", ids=ids if any(i is not None for i in ids) else None)

    raise InputError(
        f"unsupported Content-Type {request_content_type!r}: use {X_IMAGE}, {JSON} or {JSONLINES}", status=415
    )


def _looks_like_base64_image(text: str) -> bool:
    """True for a data URI or a base64 string whose bytes start like an image file."""
    if _DATA_URI_RE.match(text):
        return True
    head = text[:64]
    if len(text) < 16 or not _BASE64_RE.match(head):
        return False
    try:
        raw = base64.b64decode(head[: len(head) // 4 * 4])
    except (binascii.Error, ValueError):
        return False
    return raw.startswith(_IMAGE_MAGIC)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _decode_base64(item: Any, index: int) -> bytes:
    if not isinstance(item, str):
        raise InputError(f"input {index}: expected a base64 string, got {type(item).__name__}")
    data = _DATA_URI_RE.sub("", item.strip(), count=1)
    try:
        return base64.b64decode(data, validate=True)
    except Exception as exc:  # binascii.Error, non-ASCII text, MemoryError
        raise InputError(
            f"input {index} is not base64: this model encodes IMAGE, so send images as base64 "
            "strings (texts go to the TEXT model)"
        ) from exc


def check_image_size(width: int, height: int, model: ClipModel) -> None:
    """Refuse, from the header alone, an image whose decoding or preprocessing would exhaust memory."""
    if width < 1 or height < 1:
        raise InputError(f"image is {width}x{height}: it has no pixels")
    if width * height > model.max_image_pixels:
        raise InputError(
            f"image is {width}x{height} = {width * height} pixels, above the "
            f"MAX_IMAGE_PIXELS cap of {model.max_image_pixels} (decompression bomb guard)"
        )
    short, long = sorted((width, height))
    if long > model.max_image_aspect_ratio * short:
        scaled = -(-long * model.image_size // short)
        raise InputError(
            f"image is {width}x{height}, thinner than the MAX_IMAGE_ASPECT_RATIO cap of "
            f"{model.max_image_aspect_ratio}:1 (scaling its short side to {model.image_size} px "
            f"would make it {model.image_size}x{scaled})"
        )


def open_image(data: bytes, model: ClipModel) -> Image.Image:
    """Open image bytes lazily and check the header before any pixel is decoded.

    Refuses empty data, images above MAX_IMAGE_PIXELS and images thinner than
    MAX_IMAGE_ASPECT_RATIO with an `InputError`, as it does whatever PIL raises
    while reading the header. A JPEG is set to decode at the smallest DCT scale
    still at least the model's input size (draft mode: a 50 MP photo decodes
    to a 64th of its pixels), so `img.size` is what `load()` will allocate.
    """
    if not data:
        raise InputError("image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
    except Image.DecompressionBombError as exc:
        raise InputError(f"image refused by the decompression bomb guard: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError("image data is not in a format PIL can read (corrupt or not an image)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"image header could not be read (truncated or corrupt): {exc}") from exc
    except Exception as exc:  # any plugin's failure: NotImplementedError, struct.error, MemoryError...
        raise InputError(f"image header could not be read (unsupported or corrupt): {_describe(exc)}") from exc
    check_image_size(width, height, model)
    try:
        img.draft(None, (model.image_size, model.image_size))
    except Exception as exc:
        raise InputError(f"image could not be prepared for decoding: {_describe(exc)}") from exc
    return img


def decode_image(data: bytes | Image.Image, model: ClipModel) -> Image.Image:
    """Fully decode image bytes (or an image from `open_image`) into an RGB PIL image.

    The one safe image decoder: the header is checked first (`open_image`),
    `img.load()` forces the whole decode so a truncated file fails here rather
    than giving a half-grey picture, and any exception becomes an `InputError`.
    A large image is reduced before its mode is converted (`to_rgb`), so the
    decoded pixels are the only full-size copy.
    """
    img = data if isinstance(data, Image.Image) else open_image(data, model)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"image could not be decoded (truncated or corrupt): {exc}") from exc
    except Exception as exc:  # NotImplementedError, MemoryError, struct.error, IndexError...
        raise InputError(f"image could not be decoded: {_describe(exc)}") from exc
    check_image_size(*img.size, model)  # a plugin may pick another frame or size on load
    orientation = _exif_orientation(img)
    try:
        rgb = to_rgb(img, min_side=model.image_size)
    except Exception as exc:
        raise InputError(f"image mode {img.mode!r} cannot be converted to RGB: {_describe(exc)}") from exc
    return rgb.transpose(orientation) if orientation is not None else rgb


_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(img: Image.Image) -> Image.Transpose | None:
    """The transpose an EXIF Orientation tag asks for (as `ImageOps.exif_transpose`), if any."""
    try:
        return _ORIENTATIONS.get(img.getexif().get(0x0112))  # type: ignore[arg-type]
    except Exception:  # a broken EXIF block is no reason to refuse the picture
        return None


def to_rgb(img: Image.Image, min_side: int | None = None) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white, 16-bit is scaled.

    With `min_side` (the model's input size), an image whose short side is at
    least 6 x `min_side` is first reduced by a whole factor (a box filter) to a
    short side of at least 3 x `min_side`, what Pillow's `reducing_gap=3` does
    before a resize (its docs: indistinguishable from a direct resize in almost
    all cases). The mode conversions then work on the small copy.
    """
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA"):
        alpha = img.mode == "PA" or "transparency" in img.info or getattr(img.palette, "mode", "") == "RGBA"
        img = img.convert("RGBA" if alpha else "RGB")
    elif img.mode.startswith("I") and img.mode != "I":  # I;16, I;16B, ...: Image.reduce wants I
        img = img.convert("I")
    if min_side:
        factor = min(img.size) // (3 * min_side)
        if factor >= 2:
            img = img.reduce(factor)
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def image_tensor(data: bytes | Image.Image, model: ClipModel) -> torch.Tensor:
    """One image (bytes, or an image from `open_image`) -> the model's input tensor, or `InputError`."""
    img = decode_image(data, model)
    try:
        return model.preprocess(img)
    except Exception as exc:
        raise InputError(f"image could not be preprocessed: {_describe(exc)}") from exc


def check_request_pixels(images: Sequence[Image.Image], model: ClipModel) -> None:
    """Refuse a request whose opened images would decode to more than MAX_REQUEST_PIXELS in all."""
    total = sum(img.size[0] * img.size[1] for img in images)
    if total > model.max_request_pixels:
        raise InputError(
            f"the request's {len(images)} images hold {total} pixels, above MAX_REQUEST_PIXELS="
            f"{model.max_request_pixels}: send fewer or smaller images per request"
        )


def _texts(batch: Batch, model: ClipModel) -> list[str]:
    prompt = batch.prompt or model.text_prompt
    texts = []
    for index, item in enumerate(batch.items):
        if not isinstance(item, str):
            raise InputError(f"input {index}: expected a text string, got {type(item).__name__}")
        text = item.strip()
        if not text:
            raise InputError(f"input {index} is an empty or whitespace-only text")
        if len(text) > model.max_text_chars:
            raise InputError(
                f"input {index} is {len(text)} characters long, above MAX_TEXT_CHARS={model.max_text_chars} "
                "(the model reads only the first few dozen words)"
            )
        if _looks_like_base64_image(text):
            raise InputError(
                f"input {index} looks like a base64-encoded image but this model encodes TEXT: "
                "send images to the IMAGE model"
            )
        texts.append(prompt.replace("{}", text) if prompt else text)
    return texts


def tokenize(texts: list[str], model: ClipModel) -> torch.Tensor:
    """Texts -> token ids; a text the tokenizer fails on is an `InputError` naming it."""
    try:
        return model.tokenizer(texts)
    except Exception as exc:
        for index, text in enumerate(texts):
            try:
                model.tokenizer([text])
            except Exception as one:
                raise InputError(f"input {index} could not be tokenised: {_describe(one)}") from one
        raise InputError(f"the texts could not be tokenised: {_describe(exc)}") from exc


@contextlib.contextmanager
def _naming_input(index: int, batch: Batch) -> Iterator[None]:
    """Prefix an `InputError` with the input it is about (when there are several)."""
    try:
        yield
    except InputError as exc:
        message = f"input {index}: {exc}" if len(batch.items) > 1 else str(exc)
        if batch.kind == "string" and isinstance(exc.__cause__, UnidentifiedImageError):
            message += " (this model encodes IMAGE: JSON inputs must be base64-encoded images)"
        raise InputError(message) from exc


def prepare(batch: Batch, model: ClipModel) -> torch.Tensor:
    """Validate a batch and turn it into the model's input tensor (pixels or tokens).

    Split from `predict` so in-process callers can prepare several requests
    apart (one bad request does not sink the others) and run them in one pass.
    Images are opened and their headers checked, against the per-image caps and
    then against the request's pixel budget, before any of them is decoded.
    """
    if not batch.items:
        raise InputError("request has no inputs")
    if len(batch.items) > model.max_batch_size:
        raise InputError(
            f"request has {len(batch.items)} inputs, above MAX_BATCH_SIZE={model.max_batch_size}: split it",
            status=413,
        )
    if model.encode_type == "TEXT":
        if batch.kind == "image":
            raise InputError(
                "this model encodes TEXT but the request is an image: send texts as "
                f"{JSON} or {JSONLINES}, or send the image to the IMAGE model"
            )
        return tokenize(_texts(batch, model), model)

    if batch.prompt:
        raise InputError('"prompt" applies to texts, but this model encodes IMAGE')
    if batch.kind == "image":
        blobs = list(batch.items)
    else:
        blobs = [_decode_base64(item, index) for index, item in enumerate(batch.items)]
    opened: list[Image.Image | None] = []
    for index, blob in enumerate(blobs):
        with _naming_input(index, batch):
            opened.append(open_image(blob, model))
    check_request_pixels(opened, model)
    pixels = []
    for index in range(len(opened)):
        with _naming_input(index, batch):
            pixels.append(image_tensor(opened[index], model))
        opened[index] = None  # free the decoded pixels before the next image is decoded
    return torch.stack(pixels)


def embed(inputs: torch.Tensor, model: ClipModel) -> np.ndarray:
    """One forward pass for the whole batch -> L2-normalised float32 rows."""
    with torch.inference_mode():
        inputs = inputs.to(model.device)
        if model.encode_type == "IMAGE":
            features = model.model.encode_image(inputs, normalize=True)
        else:
            features = model.model.encode_text(inputs, normalize=True)
    vectors = features.float().cpu().numpy().astype(np.float32, copy=False)
    if not np.isfinite(vectors).all():
        raise RuntimeError("the model produced non-finite embeddings (NaN/inf): the weights are broken")
    return vectors


def predict(data: Batch, model: ClipModel) -> Prediction:
    """Encode a parsed batch in one forward pass; rows keep the input order."""
    if data.kind == "chunk":
        return predict_chunk(data, model)
    try:
        inputs = prepare(data, model)
    except InputError as exc:
        if model.error_mode != "record":
            raise
        return error_prediction(exc, model)
    return Prediction(embeddings=embed(inputs, model), ids=data.ids)


def error_prediction(exc: Exception, model: ClipModel) -> Prediction:
    """The answer ERROR_MODE=record gives for a request that could not be encoded."""
    logger.warning("Answering with an error record: %s", exc)
    return Prediction(embeddings=np.zeros((0, model.embed_dim), dtype=np.float32), error=str(exc))


# --------------------------------------------------------------------------- output


def negotiate_accept(accept: str | None) -> str:
    """The response media type for an Accept header; `*/*` or empty means JSON."""
    candidates = [media_type(part) for part in (accept or "").split(",")]
    for candidate in candidates:
        if candidate in _ANY or candidate in _JSON_TYPES:
            return JSON
        if candidate in _JSONLINES_TYPES:
            return JSONLINES
        if candidate == NPZ:
            return NPZ
    raise InputError(f"unsupported Accept {accept!r}: use {JSON}, {JSONLINES} or {NPZ}", status=406)


def serialize(prediction: Prediction, accept: str | None) -> bytes:
    """Serialise vectors as JSON (`{"embeddings": ...}`) or JSON lines (`{"embedding": ...}`).

    An error record is `{"error": "..."}` in both formats (one line for JSON lines).
    """
    kind = negotiate_accept(accept)
    if isinstance(prediction, ChunkPrediction):
        return chunk_output(prediction, kind)
    if kind == NPZ:
        raise InputError(f"{NPZ} answers {IMAGE_CHUNK} requests only: use {JSON} or {JSONLINES}", status=406)
    if prediction.error is not None:
        return json.dumps({"error": prediction.error}, allow_nan=False).encode("utf-8")
    rows = prediction.embeddings.tolist()
    ids = prediction.ids
    if kind == JSON:
        doc: dict[str, Any] = {"embeddings": rows}
        if ids is not None:
            doc["ids"] = ids
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
    lines = []
    for index, row in enumerate(rows):
        record: dict[str, Any] = {"embedding": row}
        if ids is not None and ids[index] is not None:
            record["id"] = ids[index]
        lines.append(json.dumps(record, separators=(",", ":"), allow_nan=False))
    return "\n".join(lines).encode("utf-8")


def encode(model: ClipModel, payload: bytes | str, content_type: str, accept: str | None = JSON) -> tuple[bytes, str]:
    """One request: parse, predict, serialise -> (body, response content type). Bad input raises `InputError`."""
    response_type = negotiate_accept(accept)
    prediction = predict(parse_request(payload, content_type), model)
    return serialize(prediction, response_type), response_type


def transform_fn(
    model: ClipModel, request_body: bytes | str, content_type: str, accept: str, context: Any = None
) -> tuple[bytes, str]:
    """The container's entry point for one request (the serving toolkit passes TorchServe's `context`).

    `encode`, plus the container's rules: bad input is answered with its
    client-error status and a one-line text body (without a context, as
    in-process, it raises), and an answer above TorchServe's max_response_size
    is refused before TorchServe would drop it with the worker.
    """
    try:
        body, response_type = encode(model, request_body, content_type, accept)
        if len(body) > model.max_response_bytes:
            raise InputError(
                f"the answer is {len(body)} bytes, above TorchServe's max_response_size of "
                f"{model.max_response_bytes} (TS_MAX_RESPONSE_SIZE): send fewer records per request"
                + ("" if response_type == NPZ else f", or ask for {NPZ}"),
                status=413,
            )
    except InputError as exc:
        if context is None:
            raise
        message = " ".join(str(exc).split())[:MAX_ERROR_CHARS]
        # The status line carries the message too: ASCII only, as the HTTP reason phrase must be.
        context.set_response_status(code=exc.status, phrase=message.encode("ascii", "replace").decode())
        logger.info("client error %d: %s", exc.status, message)
        return message.encode("utf-8"), "text/plain"
    return body, response_type


def _take_text_bodies_as_bytes() -> None:
    """Let the handler decode JSON and CSV bodies itself.

    The serving toolkit decodes `application/json` and `text/csv` bodies as
    UTF-8 before calling `transform_fn` and answers 500 with a traceback when
    they are not UTF-8; with its list of such types emptied, the body arrives
    as bytes and `parse_request` answers the same mistake with a 400 or 415.
    Outside the container the toolkit is absent and nothing changes.
    """
    try:
        from sagemaker_inference import content_types
    except ImportError:
        return
    if isinstance(getattr(content_types, "UTF8_TYPES", None), list):
        content_types.UTF8_TYPES.clear()


_take_text_bodies_as_bytes()


def batch_of(items: Sequence[Any], kind: str) -> Batch:
    """A `Batch` built directly from Python values (texts, or image bytes when kind="image")."""
    return Batch(items=list(items), kind=kind)


# --------------------------------------------------------------------------- chunks (batch transform)


@dataclass
class ChunkPrediction:
    """The answer to a chunk: vectors of the records that encoded, reasons for those that did not."""

    ids: list[str]
    embeddings: np.ndarray
    error_ids: list[str]
    errors: list[str]
    artifact_version: str = ""


def parse_chunk(body: bytes | bytearray | str) -> Batch:
    """A JSON Lines chunk -> `Batch(kind="chunk")` of records `{"id", "s3_uri" | "b64"}`.

    A line that is not a JSON object with a string `id` fails the request (the
    chunk is not one this pipeline wrote); a record with a usable id but a bad
    image reference is kept and answered with an error record.
    """
    text = _as_text(body, IMAGE_CHUNK)
    records: list[dict[str, Any]] = []
    for number, line in jsonlines(text):
        record = parse_json(line, f"chunk line {number}")
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record["id"]:
            raise InputError(f'chunk line {number} must be {{"id": "...", "s3_uri": "s3://..."}} or {{"id", "b64"}}')
        records.append(record)
        if len(records) > MAX_CHUNK_RECORDS:
            raise InputError(f"chunk has more than {MAX_CHUNK_RECORDS} records: split it", status=413)
    if not records:
        raise InputError("chunk has no records")
    return Batch(items=records, kind="chunk", ids=[r["id"] for r in records])


_default_s3 = None
_default_s3_lock = threading.Lock()


def _s3(model: ClipModel) -> Any:
    """The client to fetch chunk records with: the injected one, else boto3's default (created once)."""
    global _default_s3
    if model.s3_client is not None:
        return model.s3_client
    with _default_s3_lock:
        if _default_s3 is None:
            import boto3  # in the SageMaker PyTorch containers; only chunks need it

            _default_s3 = boto3.client("s3")
        return _default_s3


# The one fetch failure that is a verdict on the record: its object does not exist (GET: NoSuchKey, HEAD: 404).
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _record_bytes(record: Mapping[str, Any], model: ClipModel) -> bytes:
    """The image bytes a chunk record points at (S3 object or inline base64).

    A missing object is an `InputError` (an error record); any other failure to
    read it is a `FetchError`, classified by its error code, never its message.
    """
    has_uri, has_b64 = "s3_uri" in record, "b64" in record
    if has_uri == has_b64:
        raise InputError('record needs exactly one of "s3_uri" and "b64"')
    if has_b64:
        return _decode_base64(record["b64"], 0)
    uri = record["s3_uri"]
    if not isinstance(uri, str) or not uri.startswith("s3://") or "/" not in uri[5:]:
        raise InputError(f"s3_uri {str(uri)[:200]!r} is not an s3://bucket/key URI")
    bucket, key = uri[5:].split("/", 1)
    try:
        response = _s3(model).get_object(Bucket=bucket, Key=key)
        return response["Body"].read()
    except Exception as exc:
        code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))
        if code in _MISSING_CODES:
            raise InputError(f"image {uri} could not be fetched: {code}: {exc}") from exc
        raise FetchError(
            f"image {uri} could not be read ({code or type(exc).__name__}: {exc}): the request fails to be retried"
        ) from exc


def _record_pixels(record: Mapping[str, Any], model: ClipModel) -> torch.Tensor:
    """One record -> its (1, C, H, W) pixels, through the single-image request path."""
    blob = _record_bytes(record, model)
    return prepare(parse_request(blob, X_IMAGE), model)


def predict_chunk(batch: Batch, model: ClipModel) -> ChunkPrediction:
    """Encode a chunk: a thread pool fetches and decodes ahead while forward passes of
    `max_batch_size` rows run; memory stays bounded by a window of in-flight records."""
    if model.encode_type == "TEXT":
        return predict_text_chunk(batch, model)
    from concurrent.futures import ThreadPoolExecutor

    ids: list[str] = []
    rows: list[np.ndarray] = []
    error_ids: list[str] = []
    errors: list[str] = []
    pending_ids: list[str] = []
    pending: list[torch.Tensor] = []
    seen: set[str] = set()

    def flush() -> None:
        if pending:
            rows.append(embed(torch.cat(pending), model))
            ids.extend(pending_ids)
            pending.clear()
            pending_ids.clear()

    def work(record: Mapping[str, Any]) -> torch.Tensor:
        return _record_pixels(record, model)

    window = max(2 * model.max_batch_size, model.fetch_workers)
    records = list(batch.items)
    with ThreadPoolExecutor(max_workers=model.fetch_workers, thread_name_prefix="chunk-fetch") as pool:
        futures: dict[int, Any] = {}
        for index in range(min(window, len(records))):
            futures[index] = pool.submit(work, records[index])
        for index, record in enumerate(records):
            future = futures.pop(index)
            ahead = index + window
            if ahead < len(records):
                futures[ahead] = pool.submit(work, records[ahead])
            rid = record["id"]
            try:
                if rid in seen:
                    raise InputError("duplicate id in the chunk (encoded once)")
                pixels = future.result()
            except FetchError:  # not the image's fault: the whole request fails and is retried
                for waiting in futures.values():
                    waiting.cancel()
                raise
            except Exception as exc:  # one bad image never fails the chunk
                reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, InputError) else str(exc)
                logger.warning("chunk record %s: error record: %s", rid[:200], reason)
                error_ids.append(rid)
                errors.append(reason)
                continue
            seen.add(rid)
            pending.append(pixels)
            pending_ids.append(rid)
            if len(pending) >= model.max_batch_size:
                flush()
        flush()
    embeddings = np.concatenate(rows) if rows else np.zeros((0, model.embed_dim), dtype=np.float32)
    logger.info("chunk: %d records encoded, %d error records", len(ids), len(error_ids))
    return ChunkPrediction(ids, embeddings, error_ids, errors, model.artifact_version)


def predict_text_chunk(batch: Batch, model: ClipModel) -> ChunkPrediction:
    """Encode a chunk of titles (`{"id", "text"}` records) in forward passes of `max_batch_size`.

    A record without a usable text, or an id seen before, becomes an error record.
    """
    ids: list[str] = []
    rows: list[np.ndarray] = []
    error_ids: list[str] = []
    errors: list[str] = []
    pending_ids: list[str] = []
    pending: list[str] = []
    seen: set[str] = set()

    def flush() -> None:
        if not pending:
            return
        try:
            rows.append(embed(prepare(batch_of(pending, "string"), model), model))
            ids.extend(pending_ids)
        except InputError:  # one text the tokenizer refuses: the others still encode
            for rid, text in zip(pending_ids, pending):
                try:
                    rows.append(embed(prepare(batch_of([text], "string"), model), model))
                    ids.append(rid)
                except InputError as exc:
                    error_ids.append(rid)
                    errors.append(str(exc))
        pending.clear()
        pending_ids.clear()

    for record in batch.items:
        rid = record["id"]
        text = record.get("text")
        if rid in seen:
            error_ids.append(rid)
            errors.append("duplicate id in the chunk (encoded once)")
            continue
        if not isinstance(text, str) or not text.strip():
            error_ids.append(rid)
            errors.append('record needs a non-empty "text" (a TEXT model encodes titles)')
            continue
        seen.add(rid)
        pending.append(text)
        pending_ids.append(rid)
        if len(pending) >= model.max_batch_size:
            flush()
    flush()
    embeddings = np.concatenate(rows) if rows else np.zeros((0, model.embed_dim), dtype=np.float32)
    logger.info("text chunk: %d records encoded, %d error records", len(ids), len(error_ids))
    return ChunkPrediction(ids, embeddings, error_ids, errors, model.artifact_version)


def chunk_output(prediction: ChunkPrediction, kind: str) -> bytes:
    """`.npz` (ids, float32 embeddings, error_ids, errors, artifact_version), or the same as JSON."""
    if kind == NPZ:
        out = io.BytesIO()
        np.savez(
            out,
            ids=np.asarray(prediction.ids, dtype=str),
            embeddings=np.ascontiguousarray(prediction.embeddings, dtype=np.float32),
            error_ids=np.asarray(prediction.error_ids, dtype=str),
            errors=np.asarray(prediction.errors, dtype=str),
            artifact_version=np.asarray(prediction.artifact_version, dtype=str),
        )
        return out.getvalue()
    doc = {
        "ids": prediction.ids,
        "embeddings": prediction.embeddings.tolist(),
        "errors": dict(zip(prediction.error_ids, prediction.errors)),
        "artifact_version": prediction.artifact_version,
    }
    if kind == JSONLINES:
        lines = [json.dumps({"id": i, "embedding": v}) for i, v in zip(doc["ids"], doc["embeddings"])]
        lines += [json.dumps({"id": i, "error": e}) for i, e in doc["errors"].items()]
        return "\n".join(lines).encode("utf-8")
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")
