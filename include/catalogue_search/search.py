"""The query path: encode a text or an image, k-NN search the read alias.

The encoder is either the SageMaker runtime (the serverless endpoints the
`query_endpoints_deploy` DAG creates) or the same inference handler run in
this process (the local stack). Both send the same bytes with the same
content types to the same handler code, so they give the same vectors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class QueryEncoder(Protocol):
    def encode(self, encode_type: str, payload: bytes, content_type: str) -> list[float]: ...


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

    def search_text(self, query: str, k: int = 5, *, prompt: str | None = None, **options: Any) -> list[Hit]:
        if not isinstance(query, str) or not query.strip():
            raise EmptyQueryError("the text query is empty")
        body: dict[str, Any] = {"inputs": [query.strip()]}
        if prompt:
            body["prompt"] = prompt
        vector = self.encoder.encode(TEXT, json.dumps(body).encode(), "application/json")
        return self.search_vector(vector, k, **options)

    def search_image(self, image_bytes: bytes, k: int = 5, **options: Any) -> list[Hit]:
        if not image_bytes:
            raise UnreadableImageError("the image is empty")
        vector = self.encoder.encode(IMAGE, image_bytes, "application/x-image")
        return self.search_vector(vector, k, **options)

    def search_vector(
        self,
        vector: list[float],
        k: int = 5,
        *,
        offset: int = 0,
        product_type: str | None = None,
        brand: str | None = None,
    ) -> list[Hit]:
        if k < 1 or offset < 0:
            raise ValueError("k must be >= 1 and offset >= 0")
        alias = self.settings.index_alias
        if not self.client.indices.exists(index=alias):
            raise IndexMissingError(f"index or alias {alias!r} does not exist: run the catalogue_ingest DAG first")
        filters = []
        if product_type:
            filters.append({"term": {"product_type": product_type}})
        if brand:
            filters.append({"term": {"brand": brand}})
        body = index.knn_query(vector, offset + k, filters or None, candidates=self.settings.knn_candidates)
        body["from"], body["size"] = offset, k
        hits = self.client.search(index=alias, body=body)["hits"]["hits"]
        out = []
        for rank, hit in enumerate(hits, start=offset + 1):
            src = hit["_source"]
            out.append(
                Hit(
                    rank=rank,
                    score=float(hit["_score"]),
                    item_id=src["item_id"],
                    item_name=src["item_name"],
                    image_path=src["image_path"],
                    image_id=src.get("image_id"),
                    product_type=src.get("product_type"),
                    brand=src.get("brand"),
                )
            )
        return out


def format_hits(hits: list[Hit]) -> str:
    """A readable table: rank, score, item name, item id, image path."""
    if not hits:
        return "(no hits)"
    name_width = min(60, max(9, *(len(h.item_name) for h in hits)))
    lines = [f"{'rank':>4}  {'score':>7}  {'item name':<{name_width}}  {'item id':<12}  image path"]
    for h in hits:
        name = h.item_name if len(h.item_name) <= name_width else h.item_name[: name_width - 1] + "…"
        lines.append(f"{h.rank:>4}  {h.score:>7.4f}  {name:<{name_width}}  {h.item_id:<12}  {h.image_path}")
    return "\n".join(lines)
