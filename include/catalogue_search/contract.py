"""The handler contract: encode types, content types and the one parser of its responses.

`inference_code/inference.py` (the SageMaker container's handler) speaks this
contract; the ingestion, the query endpoints and the search client all read
its answers with `parse_embeddings`, so a change of response shape is made
in one place. Light to import (no numpy, no torch): DAG files import it.
"""

from __future__ import annotations

import json
import math

TEXT = "TEXT"
IMAGE = "IMAGE"
ENCODE_TYPES = (TEXT, IMAGE)

# Content types: the handler's requests and answers, and what the pipeline writes to S3.
# Every module takes its content types from here.
JSON = "application/json"
JSONLINES = "application/jsonlines"
X_IMAGE = "application/x-image"
IMAGE_CHUNK = "application/x-image-chunk"  # a transform request: JSON Lines of {"id", "s3_uri"} image records
TEXT_CHUNK = "application/x-text-chunk"  # a transform request: JSON Lines of {"id", "text"} title records
NPZ = "application/x-npz"  # a chunk's answer: ids, float32 embeddings, error records
CHUNK_CONTENT_TYPES = {IMAGE: IMAGE_CHUNK, TEXT: TEXT_CHUNK}
GZIP = "application/gzip"
JPEG = "image/jpeg"
OCTET_STREAM = "application/octet-stream"

# Vectors from two processes, batch sizes or machines agree to this absolute
# tolerance per component, not bit for bit: BLAS kernels differ by CPU family
# (AMD and Intel differ in the 8th digit) and by batch shape. Every comparison
# of vectors across processes uses it.
VECTOR_ATOL = 1e-5


def vectors_close(a, b, atol: float = VECTOR_ATOL) -> bool:
    """Whether two vectors (or lists of vectors) agree within the contract's tolerance, shape included."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(vectors_close(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return False
    return abs(float(a) - float(b)) <= atol


class EncoderResponseError(RuntimeError):
    """An encoder (endpoint, local handler, transform output) answered something that is not a vector."""


class ErrorRecord(ValueError):
    """The handler answered an error record (`{"error": ...}`) for this input."""


def parse_embeddings(raw: bytes, source: str) -> list[float]:
    """The single vector of a handler response `{"embeddings": [[...]]}`.

    An error record raises `ErrorRecord` with its message; any other shape,
    or a non-finite value, raises `EncoderResponseError` naming `source`.
    """
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EncoderResponseError(f"{source} returned a response that is not JSON: {raw[:80]!r}") from exc
    if isinstance(doc, dict) and "error" in doc:
        raise ErrorRecord(str(doc["error"]))
    vectors = doc.get("embeddings") if isinstance(doc, dict) else None
    if (
        not isinstance(vectors, list)
        or len(vectors) != 1
        or not isinstance(vectors[0], list)
        or not vectors[0]
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vectors[0])
    ):
        raise EncoderResponseError(
            f"{source} returned an unexpected response shape (want {{'embeddings': [[floats]]}} with one vector): "
            f"{str(doc)[:120]}"
        )
    vector = [float(x) for x in vectors[0]]
    if not all(math.isfinite(x) for x in vector):
        raise EncoderResponseError(f"{source} returned a vector with non-finite values")
    return vector
