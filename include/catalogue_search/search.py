"""The query path: encode a text or an image, k-NN search the read alias.

Query modes (`mode=`): `image` searches the image vectors (`embedding`),
`name` the title vectors (`name_vector`, each `item_name` encoded by the TEXT
model), `hybrid` fuses BM25 on the title (text queries only), the title
vectors and the image vectors by reciprocal rank fusion, in this client (the
node has no neural-search plugin, so no hybrid query of its own). `fold=True`
folds hits that show the same product image (same image id, or image vectors
with cosine >= the threshold) into one hit with a count.

The encoder is either the SageMaker runtime (the serverless endpoints the
`query_endpoints_deploy` DAG creates) or the same inference handler run in
this process (the local stack). Both send the same bytes with the same
content types to the same handler code, so they give the same vectors.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from catalogue_search import contract, index
from catalogue_search.contract import IMAGE, TEXT
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)


class SearchError(RuntimeError):
    """A query that cannot be answered, with a message a user can act on."""


class EmptyQueryError(SearchError, ValueError):
    pass


class UnreadableImageError(SearchError, ValueError):
    pass


class IndexMissingError(SearchError):
    pass


class EndpointNotDeployedError(SearchError):
    pass


class EncoderResponseError(SearchError, contract.EncoderResponseError):
    pass


class ModelVersionMismatchError(SearchError):
    """The query encoder's model is not the one that encoded the index's images."""


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
    score: float
    item_id: str
    item_name: str
    image_path: str
    image_id: str | None = None
    product_type: str | None = None
    brand: str | None = None
    # With folding: how many other hits showed the same product image, and their item ids.
    duplicates: int = 0
    duplicate_ids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["duplicate_ids"] = list(self.duplicate_ids)
        return doc


IMAGE_MODE = "image"
NAME_MODE = "name"
HYBRID_MODE = "hybrid"
MODES = (IMAGE_MODE, NAME_MODE, HYBRID_MODE)
FOLD_CANDIDATES_FACTOR = 4  # folding looks at this many times offset + k candidates
MAX_CANDIDATES = 10_000  # OpenSearch's index.max_result_window


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

    def _handler(self, encode_type: str):
        if encode_type not in self._handlers:
            from catalogue_search.handler import load_handler_from_artifact

            s3 = self.s3
            if s3 is None:
                import boto3

                s3 = boto3.client("s3", **self.settings.boto3_kwargs())
            try:
                self._handlers[encode_type] = load_handler_from_artifact(
                    self.settings.artifact_uri, encode_type, s3_client=s3, cache_dir=self.cache_dir
                )
            except Exception as exc:
                if "NoSuchKey" in str(exc) or "404" in str(exc) or "NoSuchBucket" in str(exc):
                    raise SearchError(
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
            raw = handler.invoke(payload, content_type, "application/json")
        except ValueError as exc:  # the handler's InputError
            raise _input_error(encode_type, exc) from exc
        return parse_embeddings(raw, f"the local {encode_type.lower()} encoder")


class EndpointEncoder:
    """Calls the serverless endpoints through the SageMaker runtime."""

    def __init__(self, settings: Settings, runtime_client=None, sagemaker_client=None) -> None:
        import boto3

        self.settings = settings
        self.runtime = runtime_client or boto3.client("sagemaker-runtime", **settings.boto3_kwargs())
        self.control = sagemaker_client or boto3.client("sagemaker", **settings.boto3_kwargs())
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
    """`search_text` / `search_image` against the read alias; hits never carry the vector."""

    def __init__(self, settings: Settings | None = None, *, client=None, encoder: QueryEncoder | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.client = client or index.client_from_settings(self.settings)
        self.encoder = encoder or make_encoder(self.settings)

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
        vector = self.encoder.encode(IMAGE, image_bytes, "application/x-image")
        if mode == HYBRID_MODE:
            return self.search_hybrid(vector, k, text=None, fusion=fusion, **options)
        return self.search_vector(vector, k, field=_field_of(mode), **options)

    def index_artifact_version(self) -> str:
        """The artifact version recorded in the `_meta` of the index behind the alias ("" if none)."""
        from opensearchpy.exceptions import NotFoundError

        alias = self.settings.index_alias
        try:
            mappings = self.client.indices.get_mapping(index=alias)
        except NotFoundError as exc:
            raise IndexMissingError(
                f"index or alias {alias!r} does not exist: run the catalogue_ingest DAG first"
            ) from exc
        versions = {(m.get("mappings") or {}).get("_meta", {}).get("artifact_version", "") for m in mappings.values()}
        if len(versions) > 1:
            raise ModelVersionMismatchError(f"alias {alias!r} spans indices of several artifact versions: {versions}")
        return versions.pop() if versions else ""

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
                f"{self.settings.index_alias!r} was encoded with artifact {wanted}: the vectors are not comparable. "
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
        field: str = index.VECTOR_FIELD,
        fold: bool = False,
        fold_threshold: float | None = None,
    ) -> list[Hit]:
        """k-NN on `field` (image vectors by default, `name_vector` for titles)."""
        if k < 1 or offset < 0:
            raise ValueError("k must be >= 1 and offset >= 0")
        self._check_alias()
        filters = _filters(product_type, brand)
        size = _candidates(offset + k, fold)
        raw = self._search(
            index.knn_query(vector, size, filters or None, field=field, candidates=self.settings.knn_candidates),
            fold=fold,
        )
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
        if k < 1 or offset < 0:
            raise ValueError("k must be >= 1 and offset >= 0")
        self._check_alias()
        size = _candidates(offset + k, fold)
        raw = self._search(index.title_query(text.strip(), size, _filters(product_type, brand) or None), fold=fold)
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
        if k < 1 or offset < 0:
            raise ValueError("k must be >= 1 and offset >= 0")
        fusion = fusion or Fusion()
        self._check_alias()
        filters = _filters(product_type, brand) or None
        size = min(MAX_CANDIDATES, max(fusion.candidates, _candidates(offset + k, fold)))
        bodies: dict[str, dict[str, Any]] = {}
        if text and fusion.lexical_weight:
            bodies["lexical"] = index.title_query(text, size, filters)
        if fusion.name_weight:
            bodies["name"] = index.knn_query(
                vector, size, filters, field=index.NAME_VECTOR_FIELD, candidates=self.settings.knn_candidates
            )
        if fusion.image_weight:
            bodies["image"] = index.knn_query(
                vector, size, filters, field=index.VECTOR_FIELD, candidates=self.settings.knn_candidates
            )
        sources: dict[str, dict[str, Any]] = {}
        ranked: dict[str, list[str]] = {}
        for name, body in bodies.items():
            hits = self._search(body, fold=fold)
            ranked[name] = [h["_source"]["item_id"] for h in hits]
            for h in hits:
                sources.setdefault(h["_source"]["item_id"], h["_source"])
        weights = {"lexical": fusion.lexical_weight, "name": fusion.name_weight, "image": fusion.image_weight}
        fused = reciprocal_rank_fusion(ranked, weights, fusion.rank_constant)
        cands = [_Candidate(score, sources[item_id]) for item_id, score in fused]
        return self._page(cands, k, offset, fold, fold_threshold)

    # --- helpers ---------------------------------------------------------------
    def _check_alias(self) -> None:
        alias = self.settings.index_alias
        if not self.client.indices.exists(index=alias):
            raise IndexMissingError(f"index or alias {alias!r} does not exist: run the catalogue_ingest DAG first")

    def _search(self, body: dict[str, Any], *, fold: bool = False) -> list[dict[str, Any]]:
        """Run one query on the alias; with `fold`, hits carry their image vector (for folding only)."""
        from opensearchpy.exceptions import RequestError

        if fold:
            body["_source"] = {"excludes": [index.NAME_VECTOR_FIELD]}
        try:
            return self.client.search(index=self.settings.index_alias, body=body)["hits"]["hits"]
        except RequestError as exc:
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
        return out


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")


def _field_of(mode: str) -> str:
    return index.NAME_VECTOR_FIELD if mode == NAME_MODE else index.VECTOR_FIELD


def _filters(product_type: str | None, brand: str | None) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if product_type:
        filters.append({"term": {"product_type": product_type}})
    if brand:
        filters.append({"term": {"brand": brand}})
    return filters


def _candidates(wanted: int, fold: bool) -> int:
    return min(MAX_CANDIDATES, wanted * FOLD_CANDIDATES_FACTOR if fold else wanted)


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
