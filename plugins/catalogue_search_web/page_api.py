"""The page's own endpoints: what the index is and how good it is, and why a hybrid hit matched.

- `GET /api/status`: the warm-up state, the index's model, artifact version,
  weights and measured quality (from the index `_meta` the pipeline writes),
  and the default search mode.
- `GET /api/explain` (text) and `POST /api/explain/image` (an uploaded
  image): one hit's rank in each list hybrid fuses (BM25 on the title, the
  title vectors, the image vectors) and what each rank added to its score.
- `fusion_params`: the hybrid weights as query parameters (the page's
  advanced options), shared by the search endpoints.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from pydantic import BaseModel, Field

from catalogue_search import contract, index, search

# The default mode, by measurement: benchmarks/search_modes.py on the sample catalogue (docs/search-page.md,
# "Which mode is the default"). With one word of a title as the query, what shoppers type, hybrid found the
# product first 0.229 of the time, name 0.036, image 0.001 (random weights: image is chance level).
MEASURED_DEFAULT_MODE = "hybrid"
MODE_PREFERENCE = ("hybrid", "name", "image")  # ties go to the first
LISTS = {"lexical": "BM25 on the title", "name": "title vectors", "image": "image vectors"}
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # where the search client states no cap of its own (`max_image_bytes`)

router = APIRouter()


def _warm(request: Request):
    return request.app.state.warm


def fusion_params(
    lexical_weight: Annotated[float | None, Query(ge=0, le=100, description="hybrid: weight of BM25")] = None,
    name_weight: Annotated[float | None, Query(ge=0, le=100, description="hybrid: weight of the titles")] = None,
    image_weight: Annotated[float | None, Query(ge=0, le=100, description="hybrid: weight of the images")] = None,
) -> search.Fusion | None:
    """The hybrid weights a request names (the others keep their default); None when it names none."""
    given = {
        name: value
        for name, value in (
            ("lexical_weight", lexical_weight),
            ("name_weight", name_weight),
            ("image_weight", image_weight),
        )
        if value is not None
    }
    if not given:
        return None
    try:
        return dataclasses.replace(search.Fusion(), **given)
    except ValueError as exc:
        raise search.OutOfRangeError("the hybrid weights cannot all be 0: give at least one list a weight") from exc


FusionDep = Annotated[search.Fusion | None, Depends(fusion_params)]


class IndexInfo(BaseModel):
    alias: str
    model: str | None = Field(description="the CLIP architecture that encoded the index")
    artifact_version: str | None = Field(description="the model artifact's version, from the index _meta")
    random_weights: bool | None = Field(description="true: randomly initialised weights (results carry no meaning)")
    pretrained: str | None
    quality: dict[str, Any] | None = Field(description="the measured quality from the index _meta, null if none")


class StatusOut(BaseModel):
    warmup: dict[str, Any] = Field(description="state: idle, warming, ready or failed; seconds; errors")
    index: IndexInfo | None
    index_error: dict[str, str] | None = Field(description="why the index could not be read, as the API's errors")
    default_mode: Literal["image", "name", "hybrid"]
    default_mode_reason: str
    fusion: dict[str, float] = Field(description="the hybrid defaults: rank constant, weights, candidates")


def default_mode(info: IndexInfo | None) -> tuple[str, str]:
    """The best mode by the index's measured MRR when the weights are real, else the benchmark's choice."""
    quality = (info.quality if info else None) or {}
    modes = quality.get("modes") or {}
    measured = [m for m in MODE_PREFERENCE if isinstance((modes.get(m) or {}).get("mrr"), (int, float))]
    if measured and quality.get("random_weights") is False:
        best = max(measured, key=lambda m: modes[m]["mrr"])
        return best, f"the best MRR measured on this index ({modes[best]['mrr']:.3f})"
    why = "random weights: the measured figures are chance level" if measured else "no quality measured"
    return MEASURED_DEFAULT_MODE, f"{why}; hybrid won on the sample catalogue's one-word queries"


def read_index_info(client) -> IndexInfo:
    """The `_meta` of the index behind the alias (the newest, during a swap)."""
    from opensearchpy import exceptions as osx

    alias = client.alias
    try:
        mappings = client.client.indices.get_mapping(index=alias)
    except osx.NotFoundError as exc:
        raise search.IndexMissingError(f"index or alias {alias!r} does not exist: run catalogue_ingest") from exc
    except osx.ConnectionError as exc:
        raise search.OpenSearchUnavailableError(
            f"OpenSearch at {client.settings.opensearch_url} is unreachable"
        ) from exc
    metas = [(name, (m.get("mappings") or {}).get("_meta") or {}) for name, m in sorted(mappings.items())]
    meta = metas[-1][1] if metas else {}
    weights = meta.get("weights") or {}
    quality = meta.get("quality") if isinstance(meta.get("quality"), dict) else None
    random_weights = weights.get("random")
    if random_weights is None and quality is not None:
        random_weights = quality.get("random_weights")
    return IndexInfo(
        alias=alias,
        model=meta.get("model") or (quality or {}).get("model"),
        artifact_version=meta.get("artifact_version") or (quality or {}).get("artifact_version"),
        random_weights=random_weights,
        pretrained=weights.get("pretrained"),
        quality=quality,
    )


@router.get("/api/status", response_model=StatusOut, summary="Warm-up, the index's model and quality, defaults")
def status(request: Request) -> StatusOut:
    warm = _warm(request)
    info, problem = None, None
    try:
        info = read_index_info(warm.client)
    except (search.SearchError, ValueError) as exc:
        problem = search.error_payload(exc)[1]
    mode, reason = default_mode(info)
    fusion = dataclasses.asdict(search.Fusion())
    return StatusOut(
        warmup=request.app.state.warmup.snapshot(),
        index=info,
        index_error=problem,
        default_mode=mode,
        default_mode_reason=reason,
        fusion={k: float(v) for k, v in fusion.items()},
    )


class ListRank(BaseModel):
    list: Literal["lexical", "name", "image"]
    label: str
    used: bool = Field(description="false: not part of this query (BM25 for an image, or weight 0)")
    rank: int | None = Field(description="the hit's rank in this list, null if not in its first `depth`")
    weight: float
    contribution: float = Field(description="weight / (rank_constant + rank), 0 if unranked or unused")


class ExplainOut(BaseModel):
    item_id: str
    rank_constant: int
    depth: int = Field(description="how many hits of each list were looked at")
    lists: list[ListRank]
    score: float = Field(description="the sum of the contributions: the hit's fused score")


def filter_args(product_type: str | None, brand: str | None) -> dict[str, Any]:
    """The search client's filter arguments: a `search.Filters` where the search package has one (since its
    split into a package), the two keywords before it."""
    if hasattr(search, "Filters"):
        return {"filters": search.Filters(product_type=product_type, brand=brand)}
    return {"product_type": product_type, "brand": brand}


def explain(client, vector: list[float], text: str | None, item_id: str, fusion, depth: int, filters: dict):
    """The rank of `item_id` in each of hybrid's lists, searched as hybrid searches them."""
    searches = {
        "lexical": (lambda: client.search_lexical(text, depth, **filters)) if text else None,
        "name": lambda: client.search_vector(vector, depth, field=index.NAME_VECTOR_FIELD, **filters),
        "image": lambda: client.search_vector(vector, depth, **filters),
    }
    weights = {"lexical": fusion.lexical_weight, "name": fusion.name_weight, "image": fusion.image_weight}
    out = []
    for name, run in searches.items():
        rank = None if run is None else next((h.rank for h in run() if h.item_id == item_id), None)
        used = run is not None and weights[name] > 0
        contribution = weights[name] / (fusion.rank_constant + rank) if used and rank else 0.0
        out.append(
            ListRank(
                list=name, label=LISTS[name], used=used, rank=rank, weight=weights[name], contribution=contribution
            )
        )
    return ExplainOut(
        item_id=item_id,
        rank_constant=fusion.rank_constant,
        depth=depth,
        lists=out,
        score=sum(r.contribution for r in out),
    )


ItemId = Annotated[str, Query(min_length=1, max_length=200, description="the hit to explain")]
Depth = Annotated[int, Query(ge=1, le=1000, description="offset + k of the page the hit is on")]
TypeFilter = Annotated[str | None, Query(description="only this product type (any case)")]
BrandFilter = Annotated[str | None, Query(description="only this brand (any case)")]


@dataclasses.dataclass(frozen=True)
class Ask:
    """Which hit to explain, and the hybrid search it came from (weights, filters, how deep its page was)."""

    item_id: str
    depth: int
    filters: dict[str, Any]
    fusion: search.Fusion


def ask_params(
    fusion: FusionDep, item_id: ItemId, depth: Depth = 12, product_type: TypeFilter = None, brand: BrandFilter = None
) -> Ask:
    fusion = fusion or search.Fusion()
    return Ask(item_id, max(depth, fusion.candidates), filter_args(product_type, brand), fusion)


AskDep = Annotated[Ask, Depends(ask_params)]


def _explain_query(request: Request, ask: Ask, encode_type: str, payload: bytes, text: str | None) -> ExplainOut:
    client = _warm(request).client
    client.check_model_version(encode_type)
    content_type = contract.JSON if encode_type == contract.TEXT else contract.X_IMAGE
    vector = client.encoder.encode(encode_type, payload, content_type)
    return explain(client, vector, text, ask.item_id, ask.fusion, ask.depth, ask.filters)


@router.get("/api/explain", response_model=ExplainOut, summary="Why a hybrid hit of a text query matched")
def explain_text(request: Request, ask: AskDep, q: Annotated[str, Query(description="the text query")]) -> ExplainOut:
    if not q.strip():
        raise search.EmptyQueryError("the text query is empty")
    payload = json.dumps({"inputs": [q.strip()]}).encode()
    return _explain_query(request, ask, contract.TEXT, payload, q.strip())


@router.post("/api/explain/image", response_model=ExplainOut, summary="Why a hybrid hit of an image query matched")
def explain_image(
    request: Request, ask: AskDep, image: Annotated[UploadFile, File(description="the query image")]
) -> ExplainOut:
    limit = getattr(_warm(request).client, "max_image_bytes", MAX_IMAGE_BYTES)
    data = image.file.read(limit + 1)
    if not data or len(data) > limit:
        raise search.UnreadableImageError("the image is empty or too large")
    return _explain_query(request, ask, contract.IMAGE, data, None)


def install(app, url_prefix: str, responses: dict[int | str, dict[str, Any]]) -> None:
    """Wire the page's endpoints, the warm-up state and the login redirect into the app."""
    from catalogue_search_web.login import LoginRedirect
    from catalogue_search_web.warmup import WarmUp

    app.state.warmup = WarmUp()
    app.include_router(router, responses=responses)
    app.add_middleware(LoginRedirect, url_prefix=url_prefix)
