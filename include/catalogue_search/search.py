"""The query path: encode a text or an image, k-NN search the read alias.

Query modes (`mode=`): `image` searches the image vectors (`embedding`),
`name` the title vectors (`name_vector`, each `item_name` encoded by the TEXT
model), `hybrid` fuses BM25 on the title (text queries only), the title
vectors and the image vectors by reciprocal rank fusion, in this client (the
node has no neural-search plugin, so no hybrid query of its own). `fold=True`
folds hits that show the same product image (same image id, or image vectors
with cosine >= the threshold) into one hit with a count.

The encoder is either the SageMaker runtime (`CATSEARCH_QUERY_ENCODER=endpoint`:
the serverless endpoints the `query_endpoints_deploy` DAG creates; on the local
stack, the local SageMaker server) or the same inference handler run in this
process (`local`: no endpoint needed). Both send the same bytes with the same
content types to the same handler code, so they give the same vectors.

The CLI and the search page's API share everything here: the page checks
(k + offset within the engine's limit, before any query), "more like this",
the facets (a terms aggregation with counts), the cosine similarity, and the
errors, each with the HTTP status the API answers it with.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Protocol

from catalogue_search import contract, index
from catalogue_search.contract import IMAGE, TEXT
from catalogue_search.settings import Settings, SettingsError

log = logging.getLogger(__name__)

# The k-NN plugin refuses a `k` above 10,000, whatever the index settings say.
KNN_MAX_K = 10_000
# OpenSearch's default `index.max_result_window` (from + size).
DEFAULT_MAX_RESULT_WINDOW = 10_000
# How long a client trusts the alias's max_result_window it read (seconds).
WINDOW_TTL = 60.0
# Filters and facets, by their name in the CLI, the API and the index.
FACETS = {"product_type": "product types", "brand": "brands"}


class SearchError(RuntimeError):
    """A query that cannot be answered, with a message a user can act on.

    `status` is the HTTP status the search API answers with, `code` a stable
    machine-readable name for it.
    """

    status = 500
    code = "search_failed"


class EmptyQueryError(SearchError, ValueError):
    status, code = 400, "empty_query"


class UnreadableImageError(SearchError, ValueError):
    status, code = 400, "unreadable_image"


class OutOfRangeError(SearchError, ValueError):
    """k or offset outside what the engine can answer."""

    status, code = 400, "out_of_range"


class ProductNotFoundError(SearchError, LookupError):
    status, code = 404, "product_not_found"


class IndexMissingError(SearchError):
    status, code = 503, "index_missing"


class EndpointNotDeployedError(SearchError):
    status, code = 503, "endpoint_not_deployed"


class ModelArtifactMissingError(SearchError):
    status, code = 503, "model_artifact_missing"


class NotConfiguredError(SearchError):
    status, code = 503, "not_configured"


class OpenSearchUnavailableError(SearchError):
    status, code = 503, "opensearch_unreachable"


class QueryRefusedError(SearchError):
    status, code = 502, "query_refused"


class EncoderResponseError(SearchError, contract.EncoderResponseError):
    status, code = 502, "encoder_response"


def error_payload(exc: BaseException) -> tuple[int, dict[str, str]]:
    """The API's answer to an error: (HTTP status, {"error": code, "detail": one line})."""
    if isinstance(exc, SearchError):
        return exc.status, {"error": exc.code, "detail": one_line(str(exc))}
    if isinstance(exc, SettingsError):
        return NotConfiguredError.status, {"error": NotConfiguredError.code, "detail": one_line(str(exc))}
    return 500, {"error": "internal_error", "detail": one_line(f"{type(exc).__name__}: {exc}")}


def one_line(text: str, limit: int = 400) -> str:
    """A message squeezed onto one line (the CLI prints errors one per line, the API returns them as JSON)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def cosine_similarity(score: float) -> float:
    """The cosine similarity of a hit: the engine's cosinesimil score is (1 + cos) / 2."""
    return max(-1.0, min(1.0, 2.0 * float(score) - 1.0))


def check_page(k: Any, offset: Any, limit: int = KNN_MAX_K) -> tuple[int, int]:
    """Refuse k and offset the engine cannot answer, before anything is queried or encoded.

    `limit` is the engine's ceiling on k + offset: the alias's
    `index.max_result_window` and the k-NN plugin's largest k, whichever is lower.
    """
    if isinstance(k, bool) or not isinstance(k, int) or isinstance(offset, bool) or not isinstance(offset, int):
        raise OutOfRangeError("k and offset must be whole numbers")
    if k < 1:
        raise OutOfRangeError(f"k must be at least 1, got {_short_int(k)}")
    if offset < 0:
        raise OutOfRangeError(f"offset must be 0 or more, got {_short_int(offset)}")
    if k + offset > limit:
        raise OutOfRangeError(
            f"k + offset must be at most {limit} (the engine's limit: index.max_result_window and the k-NN "
            f"plugin's largest k), got k={_short_int(k)} offset={_short_int(offset)}"
        )
    return k, offset


def _short_int(n: int) -> str:
    text = str(n)
    return text if len(text) <= 24 else f"{text[:6]}…({len(text)} digits)"


def require_settings(settings: Settings, *names: str) -> None:
    """The query path's own fail-closed check: only the settings a query needs."""
    missing = [f"CATSEARCH_{name.upper()}" for name in names if not str(getattr(settings, name)).strip()]
    if missing:
        raise NotConfiguredError(
            "catalogue-search is not configured: " + ", ".join(missing) + " not set (see the README's settings table)"
        )


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^)'\"\]]+)")


@contextmanager
def opensearch_errors(url: str, alias: str) -> Iterator[None]:
    """OpenSearch's exceptions as search errors with one readable line."""
    from opensearchpy import exceptions as osx

    try:
        yield
    except osx.ConnectionError as exc:
        found = _ERRNO.search(str(exc))
        why = found.group(1).strip() if found else type(getattr(exc, "info", exc)).__name__
        raise OpenSearchUnavailableError(f"OpenSearch at {url} is unreachable ({why})") from exc
    except osx.TransportError as exc:
        kind, reason = _transport_reason(exc)
        if kind == "index_not_found_exception":
            raise IndexMissingError(
                f"index or alias {alias!r} does not exist: run the catalogue_ingest DAG first"
            ) from exc
        status = exc.status_code if isinstance(exc.status_code, int) else "?"
        raise QueryRefusedError(f"OpenSearch refused the query (HTTP {status} {kind}): {reason}") from exc


def _transport_reason(exc: Any) -> tuple[str, str]:
    info = getattr(exc, "info", None)
    if isinstance(info, dict) and isinstance(info.get("error"), dict):
        err = info["error"]
        root = (err.get("root_cause") or [err])[0]
        caused = err.get("caused_by") or {}
        reason = caused.get("reason") or root.get("reason") or err.get("reason") or ""
        return str(root.get("type") or err.get("type") or exc.error), one_line(str(reason), 240)
    return str(getattr(exc, "error", "error")), one_line(str(info or exc), 240)


class ModelVersionMismatchError(SearchError):
    """The query encoder's model is not the one that encoded the index's images."""

    status, code = 409, "model_version_mismatch"


def parse_embeddings(raw: bytes, source: str) -> list[float]:
    """The contract's parser, with its errors as search errors."""
    try:
        return contract.parse_embeddings(raw, source)
    except contract.EncoderResponseError as exc:
        raise EncoderResponseError(str(exc)) from exc
    except contract.ErrorRecord as exc:
        raise EncoderResponseError(f"{source} answered an error: {exc}") from exc


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # the engine's score, (1 + cos) / 2
    item_id: str
    item_name: str
    image_path: str
    image_id: str | None = None
    product_type: str | None = None
    brand: str | None = None
    # With folding: how many other hits showed the same product image, and their item ids.
    duplicates: int = 0
    duplicate_ids: tuple[str, ...] = ()
    similarity: float = field(init=False)  # the cosine similarity, -1 .. 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "similarity", cosine_similarity(self.score))

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["duplicate_ids"] = list(self.duplicate_ids)
        return doc


IMAGE_MODE = "image"
NAME_MODE = "name"
HYBRID_MODE = "hybrid"
MODES = (IMAGE_MODE, NAME_MODE, HYBRID_MODE)
FOLD_CANDIDATES_FACTOR = 4  # folding looks at this many times offset + k candidates


@dataclass(frozen=True)
class Fusion:
    """Reciprocal rank fusion: score(d) = sum over lists of weight / (rank_constant + rank of d).

    Each list (BM25 on the title, k-NN on the title vectors, k-NN on the image
    vectors) contributes its top `candidates`; a weight of 0 leaves a list out.
    60 is the rank constant of Cormack et al. (2009) and of OpenSearch's own RRF.
    """

    rank_constant: int = 60
    lexical_weight: float = 1.0
    name_weight: float = 1.0
    image_weight: float = 1.0
    candidates: int = 100

    def __post_init__(self) -> None:
        if self.rank_constant < 1 or self.candidates < 1:
            raise ValueError("rank_constant and candidates must be >= 1")
        weights = (self.lexical_weight, self.name_weight, self.image_weight)
        if min(weights) < 0 or not any(weights):
            raise ValueError("fusion weights must be >= 0 and not all 0")


def reciprocal_rank_fusion(
    ranked: dict[str, list[str]], weights: dict[str, float], rank_constant: int = 60
) -> list[tuple[str, float]]:
    """Fuse ranked id lists: (id, score) by descending score, ties by id (deterministic)."""
    scores: dict[str, float] = {}
    for name, ids in ranked.items():
        weight = weights.get(name, 1.0)
        if not weight:
            continue
        for rank, doc_id in enumerate(ids, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (rank_constant + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


@dataclass
class _Candidate:
    score: float
    source: dict[str, Any]
    folded: list[str] = field(default_factory=list)
    knn_score: float | None = None  # fused candidates: the best k-NN score (0: found by BM25 alone)


def fold_candidates(candidates: list[_Candidate], threshold: float) -> list[_Candidate]:
    """Fold, in rank order, each candidate into the first kept one with the same image
    (image id or image path) or an image vector with cosine >= `threshold`."""
    kept: list[_Candidate] = []
    for cand in candidates:
        src = cand.source
        for lead in kept:
            ls = lead.source
            same_image = (src.get("image_id") and src.get("image_id") == ls.get("image_id")) or (
                src.get("image_path") and src.get("image_path") == ls.get("image_path")
            )
            vec, lvec = src.get(index.VECTOR_FIELD), ls.get(index.VECTOR_FIELD)
            if same_image or (vec and lvec and cosine(vec, lvec) >= threshold):
                lead.folded.append(src["item_id"])
                break
        else:
            kept.append(cand)
    return kept


@dataclass(frozen=True)
class FacetValue:
    value: str  # as written in the catalogue (the most common spelling of the normalised value)
    count: int


class QueryEncoder(Protocol):
    def encode(self, encode_type: str, payload: bytes, content_type: str) -> list[float]: ...

    # Optional: `artifact_version(encode_type) -> str`, the model.tar.gz version the
    # encoder runs; the search client compares it with the index's before encoding.


class LocalEncoder:
    """Runs the SageMaker handler in-process, from the same model.tar.gz the endpoints use."""

    def __init__(self, settings: Settings, s3_client=None, cache_dir=None) -> None:
        self.settings = settings
        self.s3 = s3_client
        self.cache_dir = cache_dir or settings.model_cache
        self._handlers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._executor = None

    def _runner(self):
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catsearch-encoder")
        return self._executor

    def _handler(self, encode_type: str):
        handler = self._handlers.get(encode_type)
        if handler is not None:
            return handler
        with self._lock:  # concurrent first queries load the model once
            return self._load(encode_type)

    def _load(self, encode_type: str):
        if encode_type not in self._handlers:
            from catalogue_search.handler import load_handler_from_artifact

            s3 = self.s3
            if s3 is None:
                from catalogue_search.settings import boto3_client

                s3 = boto3_client("s3", self.settings)
            try:
                self._handlers[encode_type] = load_handler_from_artifact(
                    self.settings.artifact_uri, encode_type, s3_client=s3, cache_dir=self.cache_dir
                )
            except Exception as exc:
                if "NoSuchKey" in str(exc) or "404" in str(exc) or "NoSuchBucket" in str(exc):
                    raise ModelArtifactMissingError(
                        f"no model artifact at {self.settings.artifact_uri}: run `./dev demo` or build it with "
                        "`python -m catalogue_search.model_artifact build --upload`"
                    ) from exc
                raise
        return self._handlers[encode_type]

    def artifact_version(self, encode_type: str) -> str:
        """The loaded artifact's version (the file inside model.tar.gz)."""
        return self._handler(encode_type).artifact_version

    def encode(self, encode_type: str, payload: bytes, content_type: str) -> list[float]:
        handler = self._handler(encode_type)
        try:
            # One thread runs every forward pass: a server's many request threads would each start their own
            # OpenMP team, and on a small machine those teams spin against each other.
            raw = self._runner().submit(handler.invoke, payload, content_type, "application/json").result()
        except ValueError as exc:  # the handler's InputError
            raise _input_error(encode_type, exc) from exc
        return parse_embeddings(raw, f"the local {encode_type.lower()} encoder")


class EndpointEncoder:
    """Calls the serverless endpoints through the SageMaker runtime."""

    def __init__(self, settings: Settings, runtime_client=None, sagemaker_client=None) -> None:
        from catalogue_search.settings import boto3_client

        self.settings = settings
        self.runtime = runtime_client or boto3_client("sagemaker-runtime", settings)
        self.control = sagemaker_client or boto3_client("sagemaker", settings)
        self._in_service: set[str] = set()
        self._versions: dict[str, str] = {}

    def _check_deployed(self, name: str) -> None:
        """One DescribeEndpoint per endpoint and client: a clear error beats a cryptic invoke failure."""
        if name in self._in_service:
            return
        from catalogue_search.aws import describe_or_none

        described = describe_or_none(self.control.describe_endpoint, EndpointName=name)
        if described is None:
            raise EndpointNotDeployedError(f"endpoint {name} is not deployed: trigger the query_endpoints_deploy DAG")
        status = described["EndpointStatus"]
        if status not in {"InService", "Updating"}:
            raise EndpointNotDeployedError(f"endpoint {name} is {status}, not InService")
        self._in_service.add(name)
        self._versions[name] = self._model_version(described)

    def _model_version(self, described: dict[str, Any]) -> str:
        """ARTIFACT_VERSION in the environment of the model the endpoint serves ("" if none)."""
        config = self.control.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
        variants = config.get("ProductionVariants") or [{}]
        model = self.control.describe_model(ModelName=variants[0]["ModelName"])
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        return (container.get("Environment") or {}).get("ARTIFACT_VERSION", "")

    def artifact_version(self, encode_type: str) -> str:
        """The endpoint model's ARTIFACT_VERSION (DescribeEndpoint -> config -> DescribeModel, once)."""
        name = self.settings.endpoint_name(encode_type)
        self._check_deployed(name)
        return self._versions.get(name, "")

    def encode(self, encode_type: str, payload: bytes, content_type: str) -> list[float]:
        name = self.settings.endpoint_name(encode_type)
        self._check_deployed(name)
        try:
            response = self.runtime.invoke_endpoint(
                EndpointName=name, ContentType=content_type, Accept="application/json", Body=payload
            )
        except Exception as exc:
            text = str(exc)
            if "Could not find endpoint" in text or "not found" in text.lower():
                raise EndpointNotDeployedError(
                    f"endpoint {name} is not deployed: trigger the query_endpoints_deploy DAG"
                ) from exc
            if "ModelError" in type(exc).__name__ or "ModelError" in text:
                raise _input_error(encode_type, exc) from exc
            raise
        return parse_embeddings(response["Body"].read(), f"endpoint {name}")


def _input_error(encode_type: str, exc: Exception) -> SearchError:
    if encode_type == IMAGE:
        return UnreadableImageError(f"the image could not be read: {exc}")
    return EmptyQueryError(f"the query was rejected: {exc}")


def make_encoder(settings: Settings) -> QueryEncoder:
    if settings.query_encoder == "local":
        return LocalEncoder(settings)
    if settings.query_encoder == "endpoint":
        return EndpointEncoder(settings)
    raise ValueError(f"CATSEARCH_QUERY_ENCODER={settings.query_encoder!r}: use local or endpoint")


class SearchClient:
    """Text, image and "more like this" queries against the read alias; hits never carry the vector.

    One client is safe to share between threads (the search page's API does):
    the encoders load their model once, on first use.
    """

    def __init__(self, settings: Settings | None = None, *, client=None, encoder: QueryEncoder | None = None) -> None:
        self.settings = settings or Settings.from_env()
        require_settings(self.settings, "opensearch_url")
        self.client = client or index.client_from_settings(self.settings)
        self._encoder = encoder
        self._encoder_lock = threading.Lock()
        self._window: tuple[float, int] | None = None
        self._version: tuple[float, str] | None = None

    @property
    def encoder(self) -> QueryEncoder:
        """Made on the first query that needs one: listing facets or paging errors load no model."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    require_settings(self.settings, "query_encoder")
                    self._encoder = make_encoder(self.settings)
        return self._encoder

    @property
    def alias(self) -> str:
        return self.settings.index_alias

    @contextmanager
    def _opensearch(self) -> Iterator[None]:
        with opensearch_errors(self.settings.opensearch_url, self.alias):
            yield

    # --- checks ---------------------------------------------------------------
    def result_limit(self) -> int:
        """The most hits (k + offset) the alias can answer; also fails early when the alias is missing.

        The lower of `index.max_result_window` (of every index behind the alias)
        and the k-NN plugin's largest k; cached for WINDOW_TTL seconds.
        """
        now = time.monotonic()
        if self._window is not None and now - self._window[0] < WINDOW_TTL:
            return self._window[1]
        with self._opensearch():
            got = self.client.indices.get_settings(
                index=self.alias, name="index.max_result_window", include_defaults=True, flat_settings=True
            )
        windows = []
        for info in got.values():
            value = info.get("settings", {}).get("index.max_result_window") or info.get("defaults", {}).get(
                "index.max_result_window", DEFAULT_MAX_RESULT_WINDOW
            )
            windows.append(int(value))
        if not windows:
            raise IndexMissingError(f"index or alias {self.alias!r} does not exist: run the catalogue_ingest DAG first")
        limit = min(KNN_MAX_K, *windows)
        self._window = (now, limit)
        return limit

    def check_page(self, k: int, offset: int = 0) -> None:
        check_page(k, offset)  # obvious mistakes need no round trip
        check_page(k, offset, self.result_limit())

    # --- queries ----------------------------------------------------------------
    def search_text(
        self,
        query: str,
        k: int = 5,
        *,
        prompt: str | None = None,
        mode: str = IMAGE_MODE,
        fusion: Fusion | None = None,
        **options: Any,
    ) -> list[Hit]:
        """Text -> image vectors (`image`), title vectors (`name`) or both fused with BM25 (`hybrid`)."""
        _check_mode(mode)
        if not isinstance(query, str) or not query.strip():
            raise EmptyQueryError("the text query is empty")
        self.check_page(k, options.get("offset", 0))
        body: dict[str, Any] = {"inputs": [query.strip()]}
        if prompt:
            body["prompt"] = prompt
        self.check_model_version(TEXT)
        vector = self.encoder.encode(TEXT, json.dumps(body).encode(), "application/json")
        if mode == HYBRID_MODE:
            return self.search_hybrid(vector, k, text=query.strip(), fusion=fusion, **options)
        return self.search_vector(vector, k, field=_field_of(mode), **options)

    def search_image(
        self, image_bytes: bytes, k: int = 5, *, mode: str = IMAGE_MODE, fusion: Fusion | None = None, **options: Any
    ) -> list[Hit]:
        """Image -> image vectors (`image`), title vectors (`name`) or both fused (`hybrid`)."""
        _check_mode(mode)
        if not image_bytes:
            raise UnreadableImageError("the image is empty")
        self.check_model_version(IMAGE)
        self.check_page(k, options.get("offset", 0))
        vector = self.encoder.encode(IMAGE, image_bytes, "application/x-image")
        if mode == HYBRID_MODE:
            return self.search_hybrid(vector, k, text=None, fusion=fusion, **options)
        return self.search_vector(vector, k, field=_field_of(mode), **options)

    def more_like_this(self, item_id: str, k: int = 5, **options: Any) -> list[Hit]:
        """The products nearest to `item_id`'s stored vector, the product itself left out."""
        self.check_page(k, options.get("offset", 0))
        return self.search_vector(self.product_vector(item_id), k, exclude_item_id=item_id, **options)

    def product_vector(self, item_id: str) -> list[float]:
        if not isinstance(item_id, str) or not item_id.strip():
            raise EmptyQueryError("the product id is empty")
        body = {"size": 1, "query": {"ids": {"values": [item_id]}}, "_source": {"includes": [index.VECTOR_FIELD]}}
        with self._opensearch():
            hits = self.client.search(index=self.alias, body=body)["hits"]["hits"]
        if not hits:
            raise ProductNotFoundError(f"no product {item_id!r} in {self.alias!r}")
        vector = hits[0].get("_source", {}).get(index.VECTOR_FIELD)
        if not isinstance(vector, list) or not vector:
            raise QueryRefusedError(f"product {item_id!r} has no stored vector in {self.alias!r}")
        return vector

    def index_artifact_version(self) -> str:
        """The artifact version recorded in the `_meta` of the index behind the alias ("" if none).

        Cached for WINDOW_TTL seconds, like the result window: an alias swap is seen within that time.
        """
        now = time.monotonic()
        if self._version is not None and now - self._version[0] < WINDOW_TTL:
            return self._version[1]
        alias = self.alias
        with self._opensearch():
            mappings = self.client.indices.get_mapping(index=alias)
        versions = {(m.get("mappings") or {}).get("_meta", {}).get("artifact_version", "") for m in mappings.values()}
        if len(versions) > 1:
            raise ModelVersionMismatchError(f"alias {alias!r} spans indices of several artifact versions: {versions}")
        version = versions.pop() if versions else ""
        self._version = (now, version)
        return version

    def check_model_version(self, encode_type: str) -> None:
        """Refuse to encode a query with a model other than the one that encoded the index."""
        version_of = getattr(self.encoder, "artifact_version", None)
        if version_of is None:
            return
        wanted = self.index_artifact_version()
        if not wanted:  # an index loaded before versions were recorded
            return
        have = version_of(encode_type)
        if have != wanted:
            raise ModelVersionMismatchError(
                f"the {encode_type.lower()} query encoder runs model artifact {have or '(unversioned)'} but index "
                f"{self.alias!r} was encoded with artifact {wanted}: the vectors are not comparable. "
                "Deploy the index's artifact (query_endpoints_deploy) or re-run catalogue_ingest with the new one."
            )

    def search_vector(
        self,
        vector: list[float],
        k: int = 5,
        *,
        offset: int = 0,
        product_type: str | None = None,
        brand: str | None = None,
        exclude_item_id: str | None = None,
        field: str = index.VECTOR_FIELD,
        fold: bool = False,
        fold_threshold: float | None = None,
    ) -> list[Hit]:
        """k-NN on `field` (image vectors by default, `name_vector` for titles)."""
        self.check_page(k, offset)
        body = index.knn_query(
            vector,
            _candidates(offset + k, fold),
            filter_clauses(product_type=product_type, brand=brand) or None,
            field=field,
            candidates=min(self.settings.knn_candidates, KNN_MAX_K),
        )
        if exclude_item_id:
            knn = body["query"]["knn"][field]
            knn.setdefault("filter", {"bool": {}})["bool"]["must_not"] = [{"ids": {"values": [exclude_item_id]}}]
        raw = self._search(body, fold=fold)
        cands = [_Candidate(float(h["_score"]), h["_source"]) for h in raw]
        return self._page(cands, k, offset, fold, fold_threshold)

    def search_lexical(
        self,
        text: str,
        k: int = 5,
        *,
        offset: int = 0,
        product_type: str | None = None,
        brand: str | None = None,
        fold: bool = False,
        fold_threshold: float | None = None,
    ) -> list[Hit]:
        """BM25 on the title alone (the lexical list of `hybrid`)."""
        if not isinstance(text, str) or not text.strip():
            raise EmptyQueryError("the text query is empty")
        self.check_page(k, offset)
        filters = filter_clauses(product_type=product_type, brand=brand) or None
        raw = self._search(index.title_query(text.strip(), _candidates(offset + k, fold), filters), fold=fold)
        cands = [_Candidate(float(h["_score"]), h["_source"]) for h in raw]
        return self._page(cands, k, offset, fold, fold_threshold)

    def search_hybrid(
        self,
        vector: list[float],
        k: int = 5,
        *,
        text: str | None = None,
        fusion: Fusion | None = None,
        offset: int = 0,
        product_type: str | None = None,
        brand: str | None = None,
        fold: bool = False,
        fold_threshold: float | None = None,
    ) -> list[Hit]:
        """Reciprocal rank fusion of BM25 on the title (when there is `text`), k-NN on the
        title vectors and k-NN on the image vectors; `Hit.score` is the fused score."""
        fusion = fusion or Fusion()
        self.check_page(k, offset)
        filters = filter_clauses(product_type=product_type, brand=brand) or None
        size = min(KNN_MAX_K, max(fusion.candidates, _candidates(offset + k, fold)))
        cand = min(self.settings.knn_candidates, KNN_MAX_K)
        bodies: dict[str, dict[str, Any]] = {}
        if text and fusion.lexical_weight:
            bodies["lexical"] = index.title_query(text, size, filters)
        if fusion.name_weight:
            bodies["name"] = index.knn_query(vector, size, filters, field=index.NAME_VECTOR_FIELD, candidates=cand)
        if fusion.image_weight:
            bodies["image"] = index.knn_query(vector, size, filters, field=index.VECTOR_FIELD, candidates=cand)
        sources: dict[str, dict[str, Any]] = {}
        ranked: dict[str, list[str]] = {}
        nearest: dict[str, float] = {}  # item -> its best k-NN score (for Hit.similarity)
        for name, body in bodies.items():
            hits = self._search(body, fold=fold)
            ranked[name] = [h["_source"]["item_id"] for h in hits]
            for h in hits:
                item_id = h["_source"]["item_id"]
                sources.setdefault(item_id, h["_source"])
                if name != "lexical":
                    nearest[item_id] = max(nearest.get(item_id, 0.0), float(h["_score"]))
        weights = {"lexical": fusion.lexical_weight, "name": fusion.name_weight, "image": fusion.image_weight}
        fused = reciprocal_rank_fusion(ranked, weights, fusion.rank_constant)
        cands = [_Candidate(score, sources[i], knn_score=nearest.get(i, 0.0)) for i, score in fused]
        return self._page(cands, k, offset, fold, fold_threshold)

    # --- helpers ---------------------------------------------------------------
    def _search(self, body: dict[str, Any], *, fold: bool = False) -> list[dict[str, Any]]:
        """Run one query on the alias; with `fold`, hits carry their image vector (for folding only)."""
        if fold:
            body["_source"] = {"excludes": [index.NAME_VECTOR_FIELD]}
        try:
            with self._opensearch():
                return self.client.search(index=self.alias, body=body)["hits"]["hits"]
        except QueryRefusedError as exc:
            if index.NAME_VECTOR_FIELD in str(exc):
                raise SearchError(
                    f"index {self.settings.index_alias!r} has no title vectors ({index.NAME_VECTOR_FIELD}): "
                    "re-run catalogue_ingest to add them, or search with mode=image"
                ) from exc
            raise

    def _page(
        self, cands: list[_Candidate], k: int, offset: int, fold: bool, fold_threshold: float | None
    ) -> list[Hit]:
        if fold:
            threshold = self.settings.duplicate_cosine_threshold if fold_threshold is None else fold_threshold
            cands = fold_candidates(cands, threshold)
        out = []
        for rank, cand in enumerate(cands[offset : offset + k], start=offset + 1):
            src = cand.source
            out.append(
                Hit(
                    rank=rank,
                    score=cand.score,
                    item_id=src["item_id"],
                    item_name=src["item_name"],
                    image_path=src["image_path"],
                    image_id=src.get("image_id"),
                    product_type=src.get("product_type"),
                    brand=src.get("brand"),
                    duplicates=len(cand.folded),
                    duplicate_ids=tuple(cand.folded),
                )
            )
            if cand.knn_score is not None:  # a fused hit: its score is RRF's, its similarity its best k-NN one's
                object.__setattr__(out[-1], "similarity", cosine_similarity(cand.knn_score) if cand.knn_score else 0.0)
        return out

    def facets(self, *, size: int = 100, **filters: str | None) -> dict[str, list[FacetValue]]:
        """The values present for each facet, with counts (a terms aggregation).

        Each facet counts the products that match the other facets' filters, so
        a chip's count is what choosing it would give.
        """
        unknown = set(filters) - set(FACETS)
        if unknown:
            raise ValueError(f"unknown facet {sorted(unknown)[0]!r}: use one of {', '.join(FACETS)}")
        aggs = {}
        for name in FACETS:
            others = filter_clauses(**{f: v for f, v in filters.items() if f != name})
            aggs[name] = {
                "filter": {"bool": {"filter": others}} if others else {"match_all": {}},
                "aggs": {
                    "values": {
                        "terms": {"field": name, "size": size},
                        "aggs": {"label": {"terms": {"field": f"{name}.raw", "size": 1}}},
                    }
                },
            }
        with self._opensearch():
            got = self.client.search(index=self.alias, body={"size": 0, "aggs": aggs})
        out: dict[str, list[FacetValue]] = {}
        for name in FACETS:
            values = []
            for bucket in got["aggregations"][name]["values"]["buckets"]:
                labels = bucket.get("label", {}).get("buckets") or [{"key": bucket["key"]}]
                values.append(FacetValue(value=str(labels[0]["key"]), count=int(bucket["doc_count"])))
            out[name] = values
        return out


def filter_clauses(*, product_type: str | None = None, brand: str | None = None) -> list[dict[str, Any]]:
    """Term filters; the index's lowercase normalizer makes them match whatever the case."""
    clauses = []
    for name, value in (("product_type", product_type), ("brand", brand)):
        if value is not None and str(value).strip():
            clauses.append({"term": {name: str(value).strip()}})
    return clauses


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")


def _field_of(mode: str) -> str:
    return index.NAME_VECTOR_FIELD if mode == NAME_MODE else index.VECTOR_FIELD


def _candidates(wanted: int, fold: bool) -> int:
    return min(KNN_MAX_K, wanted * FOLD_CANDIDATES_FACTOR if fold else wanted)


def format_hits(hits: list[Hit]) -> str:
    """A readable table: rank, score, item name, item id, image path."""
    if not hits:
        return "(no hits)"
    name_width = min(60, max(9, *(len(h.item_name) for h in hits)))
    lines = [f"{'rank':>4}  {'score':>7}  {'item name':<{name_width}}  {'item id':<12}  image path"]
    for h in hits:
        name = h.item_name if len(h.item_name) <= name_width else h.item_name[: name_width - 1] + "…"
        folded = f"  (+{h.duplicates} with the same image: {', '.join(h.duplicate_ids)})" if h.duplicates else ""
        lines.append(f"{h.rank:>4}  {h.score:>7.4f}  {name:<{name_width}}  {h.item_id:<12}  {h.image_path}{folded}")
    return "\n".join(lines)
