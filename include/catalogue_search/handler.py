"""Run the SageMaker inference handler in-process.

The local query encoder (`CATSEARCH_QUERY_ENCODER=local`) calls the very same
`inference.py` the SageMaker container runs: this module loads it from an
extracted `model.tar.gz` (its `code/inference.py`, else the repository's
`inference_code/`), applies the container environment (ENCODE_TYPE,
MODEL_NAME, ...) without touching `os.environ`, and offers `invoke` plus
numpy conveniences. Batch transform and the endpoints run the handler in the
serving toolkit instead (locally: `catalogue_search_dev.model_server`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from catalogue_search.s3util import parse_s3_uri
from catalogue_search.settings import default_model_cache

logger = logging.getLogger(__name__)

INFERENCE_CODE_DIR = Path(__file__).resolve().parents[2] / "inference_code"
_COMPLETE = ".complete"

_modules: dict[str, ModuleType] = {}
_modules_lock = threading.Lock()
_extract_lock = threading.Lock()


def load_inference_module(path: str | os.PathLike[str] | None = None) -> ModuleType:
    """Import an `inference.py` file as a module of its own (cached by content).

    Each distinct file gets a unique module name, so the repository's handler
    and one shipped inside an older artifact can live side by side.
    """
    path = Path(path) if path is not None else INFERENCE_CODE_DIR / "inference.py"
    source = path.read_bytes()
    name = "catalogue_search_inference_" + hashlib.sha256(source).hexdigest()[:12]
    with _modules_lock:
        if name in _modules:
            return _modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path} as a module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _modules[name] = module
        return module


def inference_code_path(model_dir: str | os.PathLike[str]) -> Path:
    """The handler a model directory ships (`code/inference.py`), else the repository's."""
    shipped = Path(model_dir) / "code" / "inference.py"
    return shipped if shipped.is_file() else INFERENCE_CODE_DIR / "inference.py"


@dataclass
class Answer:
    """One request's outcome in `invoke_many`: the body the container would send, or why it failed."""

    body: bytes | None = None
    error: Exception | None = None


@dataclass
class LoadedHandler:
    """An inference module plus the model its `load_model` returned."""

    module: ModuleType
    model: Any
    model_dir: Path

    @property
    def encode_type(self) -> str:
        return self.model.encode_type

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def max_batch_size(self) -> int:
        return self.model.max_batch_size

    @property
    def model_name(self) -> str:
        return self.model.model_name

    @property
    def artifact_version(self) -> str:
        """The artifact version of the loaded model.tar.gz ("" for one built before versions existed)."""
        return getattr(self.model, "artifact_version", "")

    def invoke(self, payload: bytes | str, content_type: str, accept: str = "application/json") -> bytes:
        """One request, exactly as the container would answer it."""
        body, _ = self.module.encode(self.model, payload, content_type, accept)
        return body

    def invoke_many(
        self, payloads: Sequence[bytes | str], content_type: str, accept: str = "application/json"
    ) -> list[Answer]:
        """Answer many small requests (queries, not chunks), sharing forward passes between them.

        Each request is parsed and validated on its own, so a bad one gets its
        own failed `Answer` while the others succeed; the good ones are stacked
        into passes of at most `max_batch_size` rows. Each body equals what
        `invoke` returns for that request (to float rounding).
        """
        import torch

        mod = self.module
        accept = mod.negotiate_accept(accept)
        results = [Answer() for _ in payloads]
        pending: list[tuple[int, Any, Any]] = []
        rows = 0

        def flush() -> None:
            if not pending:
                return
            try:
                vectors = mod.embed(torch.cat([inputs for _, _, inputs in pending]), self.model)
            except Exception as exc:  # one broken pass fails only the requests in it
                for index, _, _ in pending:
                    results[index].error = exc
            else:
                offset = 0
                for index, batch, inputs in pending:
                    prediction = mod.Prediction(embeddings=vectors[offset : offset + len(inputs)], ids=batch.ids)
                    results[index].body = mod.serialize(prediction, accept)
                    offset += len(inputs)
            pending.clear()

        for index, payload in enumerate(payloads):
            try:
                batch = mod.parse_request(payload, content_type)
                if batch.kind == "chunk":
                    raise mod.InputError("invoke_many answers queries, not transform chunks")
                inputs = mod.prepare(batch, self.model)
            except Exception as exc:  # a malformed or refused request fails alone
                results[index].error = exc
                continue
            if pending and rows + len(inputs) > self.max_batch_size:
                flush()
                rows = 0
            pending.append((index, batch, inputs))
            rows += len(inputs)
        flush()
        return results

    def _encode(self, items: Sequence[Any], kind: str) -> np.ndarray:
        chunks = []
        for start in range(0, len(items), self.max_batch_size):
            batch = self.module.batch_of(items[start : start + self.max_batch_size], kind)
            chunks.append(self.module.predict(batch, self.model).embeddings)
        if not chunks:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(chunks)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, embed_dim) float32 unit vectors (TEXT models only)."""
        return self._encode(list(texts), "string")

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Image file bytes -> (n, embed_dim) float32 unit vectors (IMAGE models only)."""
        return self._encode([bytes(image) for image in images], "image")


def load_handler(
    model_dir: str | os.PathLike[str],
    encode_type: str,
    env: Mapping[str, str] | None = None,
) -> LoadedHandler:
    """Load the handler of an extracted model directory for `encode_type` (IMAGE/TEXT).

    `env` holds further container variables (MODEL_NAME, MAX_BATCH_SIZE, ...);
    the process environment is neither read nor changed.
    """
    model_dir = Path(model_dir)
    module = load_inference_module(inference_code_path(model_dir))
    container_env = {**(env or {}), "ENCODE_TYPE": encode_type}
    return LoadedHandler(module=module, model=module.load_model(model_dir, container_env), model_dir=model_dir)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(archive: Path, target: Path) -> None:
    """Extract `archive` into `target` atomically (a complete directory or none)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(staging)
        (staging / _COMPLETE).write_text(str(archive))
        try:
            staging.rename(target)
        except OSError:  # another process finished first: theirs is as good as ours
            if not (target / _COMPLETE).exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def fetch_model_dir(
    model_data_url: str | os.PathLike[str],
    s3_client: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Download (if on S3) and extract a model.tar.gz once; return the extracted directory.

    The cache key is the S3 object's ETag or the local file's sha256, so a new
    artifact at the same address is fetched again while an unchanged one is not.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_model_cache()
    url = str(model_data_url)
    if url.startswith("s3://"):
        if s3_client is None:
            raise ValueError(f"an s3_client is needed to fetch {url}")
        bucket, key = parse_s3_uri(url)
        etag = s3_client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        digest = hashlib.sha256(f"{url}\n{etag}".encode()).hexdigest()[:16]
        target = cache / digest
        with _extract_lock:
            if not (target / _COMPLETE).exists():
                logger.info("Downloading %s to the model cache %s", url, cache)
                cache.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=cache) as tmp:
                    archive = Path(tmp) / "model.tar.gz"
                    s3_client.download_file(bucket, key, str(archive))
                    _extract(archive, target)
        return target
    archive = Path(url.removeprefix("file://"))
    if not archive.is_file():
        raise FileNotFoundError(f"model artifact {archive} does not exist")
    target = cache / sha256_file(archive)[:16]
    with _extract_lock:
        if not (target / _COMPLETE).exists():
            logger.info("Extracting %s to the model cache %s", archive, cache)
            _extract(archive, target)
    return target


def load_handler_from_artifact(
    model_data_url: str | os.PathLike[str],
    encode_type: str,
    s3_client: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> LoadedHandler:
    """Fetch a model.tar.gz (s3:// URI or local path) into the cache and load its handler."""
    return load_handler(fetch_model_dir(model_data_url, s3_client, cache_dir), encode_type, env)
