"""The search page's app: a JSON API, product images and a plain HTML/CSS/JS page, for logged-in users.

Mounted by the Airflow API server under URL_PREFIX. Airflow does not protect
plugin apps, so every route depends on Airflow's own login check
(`requires_access_asset("GET")`: the user's JWT, from the UI's `_token`
cookie or an `Authorization: Bearer` header, must be valid, and the user
allowed to read Assets; the catalogue is the `products` alias Asset the
ingest DAG publishes). No token: 401; an invalid token or no permission: 403.

The query encoder is loaded once per API-server process, in the background
when the server starts (warmup.py), and shared by all requests; with
CATSEARCH_QUERY_ENCODER=endpoint nothing here imports torch. The page's own
endpoints (status, explanations) and the login redirect are in page_api.py
and login.py.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Annotated, Any, Callable, Literal
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from catalogue_search import search
from catalogue_search.settings import Settings, SettingsError
from catalogue_search_web import page_api
from catalogue_search_web.warmup import lifespan

log = logging.getLogger(__name__)

URL_PREFIX = "/catalogue-search"
STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    **{name: "text/javascript" for name in ("app.js", "state.js", "messages.js", "cards.js")},
    "style.css": "text/css",
    "icon.svg": "image/svg+xml",
}
DEFAULT_K = 12
IMAGE_CACHE = "private, max-age=86400"  # behind a login: browsers may keep it, shared caches may not
# ABO image paths look like `3e/3eb5feba.jpg`
SAFE_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


def login_required() -> Callable[..., Any]:
    """Airflow's own check: a valid login that may read Assets (401 without a token, 403 otherwise)."""
    from airflow.api_fastapi.core_api.security import requires_access_asset

    return requires_access_asset("GET")


class Warm:
    """What one API-server process shares between requests: settings, the search client (whose
    encoder loads its model on the first query, once) and an S3 client for the images."""

    def __init__(self, settings: Settings | None = None, client: search.SearchClient | None = None, s3=None):
        self._settings, self._client, self._s3 = settings, client, s3
        self._lock = threading.Lock()

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def client(self) -> search.SearchClient:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = search.SearchClient(self.settings)
        return self._client

    @property
    def s3(self):
        if self._s3 is None:
            with self._lock:
                if self._s3 is None:
                    import boto3

                    search.require_settings(self.settings, "bucket")
                    self._s3 = boto3.client("s3", **self.settings.boto3_kwargs())
        return self._s3


class HitOut(BaseModel):
    rank: int
    item_id: str
    item_name: str
    product_type: str | None
    brand: str | None
    similarity: float = Field(
        description="cosine similarity of the query and the product's image (mode name: its title), -1 .. 1; "
        "hybrid: the best of its vector lists' (0 when only BM25 found it)"
    )
    score: float = Field(description="the engine's score, (1 + cosine) / 2; hybrid: the reciprocal rank fusion score")
    duplicates: int = Field(0, description="with fold: how many other hits showed the same image")
    duplicate_ids: list[str] = Field(default_factory=list, description="with fold: their item ids")
    image_path: str
    image_url: str


class SearchPage(BaseModel):
    kind: Literal["text", "image", "similar"]
    query: str | None = Field(description="the text, the uploaded file's name, or the item_id")
    k: int
    offset: int
    hits: list[HitOut]
    next_offset: int | None = Field(description="the offset of the next page, null on the last one")
    prev_offset: int | None


class FacetOut(BaseModel):
    value: str
    count: int


class Facets(BaseModel):
    product_type: list[FacetOut]
    brand: list[FacetOut]


class ErrorOut(BaseModel):
    error: str
    detail: str = Field(description="a plain sentence; never an exception's text, a bucket or a URL")
    error_id: str | None = Field(None, description="where the detail is withheld: the id of the server log's entry")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": what}
    for code, what in {
        400: "empty or too long query, unreadable or too large image (over 4 MB), k or offset out of range",
        401: "not logged in",
        403: "invalid token, or no permission to read Assets",
        404: "unknown product",
        409: "the query encoder's model is not the index's",
        500: "an unexpected error: a plain sentence and an error id that leads to the server log",
        502: "the encoder or OpenSearch answered something unusable",
        503: "alias missing (run catalogue_ingest), endpoint not deployed, OpenSearch unreachable",
    }.items()
}


PageSize = Annotated[int, Query(description="number of hits per page")]
Offset = Annotated[int, Query(description="hits to skip (paging)")]
TypeFilter = Annotated[str | None, Query(description="only this product type (any case)")]
BrandFilter = Annotated[str | None, Query(description="only this brand (any case)")]
Mode = Annotated[
    Literal["image", "name", "hybrid"],
    Query(
        description="image: the products' image vectors; name: their title vectors; "
        "hybrid: BM25 on the title (text queries) + both vector lists, fused by reciprocal rank"
    ),
]
FoldParam = Annotated[bool, Query(description="fold hits that show the same image (same image id or near-identical)")]


def _warm(request: Request) -> Warm:
    return request.app.state.warm


WarmDep = Annotated[Warm, Depends(_warm)]


def _page(warm: WarmDep, k: PageSize = DEFAULT_K, offset: Offset = 0) -> search.Page:
    """The page a request asks for, checked once, here: the engine's limits and the alias's result window."""
    return warm.client.fit(search.Page(k, offset))


def _filters(product_type: TypeFilter = None, brand: BrandFilter = None) -> search.Filters:
    return search.Filters(product_type=product_type, brand=brand)


PageDep = Annotated[search.Page, Depends(_page)]
FiltersDep = Annotated[search.Filters, Depends(_filters)]


def _fold(fold: bool) -> search.Fold | None:
    return search.Fold() if fold else None


def create_app(warm: Warm | None = None) -> FastAPI:
    warm = warm or Warm()
    app = FastAPI(
        title="Catalogue search",
        description="Search the product catalogue by text, by image or by product (more like this).",
        version="1",
        dependencies=[Depends(login_required())],
        docs_url=None,  # Swagger UI loads its assets from a CDN; the schema is at /openapi.json
        redoc_url=None,
        openapi_url=None,  # served below, behind the login like everything else
        lifespan=lifespan,  # the API server runs it: the encoder warms up in the background
    )
    app.state.warm = warm
    page_api.install(app, URL_PREFIX, ERRORS)

    @app.exception_handler(search.SearchError)
    @app.exception_handler(SettingsError)
    @app.exception_handler(Exception)
    async def _error(request: Request, exc: Exception) -> JSONResponse:
        """JSON with a plain sentence; where that withholds the error's text, an id, and the text in the log."""
        status, body = search.error_payload(exc)
        if "error_id" in body:
            expected = isinstance(exc, (search.SearchError, SettingsError))
            log.log(
                logging.WARNING if expected else logging.ERROR,
                "catalogue search: %s %s failed, error id %s: %s: %s",
                request.method,
                request.url.path,
                body["error_id"],
                type(exc).__name__,
                exc,
                exc_info=None if expected else exc,
            )
        return JSONResponse(body, status_code=status)

    def answer(
        request: Request,
        kind: str,
        query: str | None,
        page: search.Page,
        run: Callable[[search.Page], list[search.Hit]],
    ) -> SearchPage:
        hits = run(page.probe())  # one hit more than asked tells whether a next page follows
        k, offset = page.k, page.offset
        root = request.scope.get("root_path", "")
        return SearchPage(
            kind=kind,
            query=query,
            k=k,
            offset=offset,
            hits=[
                HitOut(
                    rank=h.rank,
                    item_id=h.item_id,
                    item_name=h.item_name,
                    product_type=h.product_type,
                    brand=h.brand,
                    similarity=round(h.similarity, 6),
                    score=h.score,
                    duplicates=h.duplicates,
                    duplicate_ids=list(h.duplicate_ids),
                    image_path=h.image_path,
                    image_url=f"{root}/images/{quote(h.image_path)}",
                )
                for h in hits[:k]
            ],
            next_offset=offset + k if len(hits) > k else None,
            prev_offset=max(0, offset - k) if offset > 0 else None,
        )

    @app.get("/api/search", response_model=SearchPage, responses=ERRORS, summary="Search by text")
    def search_text(
        request: Request,
        warm: WarmDep,
        page: PageDep,
        filters: FiltersDep,
        q: Annotated[
            str, Query(description=f"free text, e.g. 'a red flower' ({search.MAX_QUERY_CHARS} characters at most)")
        ] = "",
        mode: Mode = "image",
        fold: FoldParam = False,
        fusion: page_api.FusionDep = None,
    ) -> SearchPage:
        return answer(
            request,
            "text",
            q,
            page,
            lambda p: warm.client.search_text(q, p, filters=filters, mode=mode, fold=_fold(fold), fusion=fusion),
        )

    @app.post("/api/search/image", response_model=SearchPage, responses=ERRORS, summary="Search by an uploaded image")
    def search_image(
        request: Request,
        warm: WarmDep,
        image: Annotated[UploadFile, File(description="a JPEG, PNG, ... image of 4 MB at most")],
        page: PageDep,
        filters: FiltersDep,
        mode: Mode = "image",
        fold: FoldParam = False,
        fusion: page_api.FusionDep = None,
    ) -> SearchPage:
        data = image.file.read(warm.client.max_image_bytes + 1)  # enough to tell the client's size check "too large"
        return answer(
            request,
            "image",
            image.filename,
            page,
            lambda p: warm.client.search_image(data, p, filters=filters, mode=mode, fold=_fold(fold), fusion=fusion),
        )

    @app.get(
        "/api/products/{item_id}/similar",
        response_model=SearchPage,
        responses=ERRORS,
        summary="More like this product (its stored vector); the product itself is left out",
    )
    def similar(
        request: Request,
        warm: WarmDep,
        item_id: str,
        page: PageDep,
        filters: FiltersDep,
    ) -> SearchPage:
        return answer(
            request, "similar", item_id, page, lambda p: warm.client.more_like_this(item_id, p, filters=filters)
        )

    @app.get("/api/facets", response_model=Facets, responses=ERRORS, summary="Filter values present, with counts")
    def facets(warm: WarmDep, filters: FiltersDep) -> Facets:
        got = warm.client.facets(filters)
        return Facets(
            **{name: [FacetOut(value=v.value, count=v.count) for v in values] for name, values in got.items()}
        )

    @app.get(
        "/images/{path:path}",
        responses={200: {"content": {"image/jpeg": {}}}, 304: {"description": "not modified"}, **ERRORS},
        response_class=Response,
        summary="A product image from the project bucket, with cache headers",
    )
    def image(path: str, request: Request, warm: WarmDep) -> Response:
        from catalogue_search.aws import error_code, is_s3_missing

        if len(path) > 512 or not SAFE_PATH.fullmatch(path) or ".." in path.split("/"):
            return JSONResponse({"error": "image_not_found", "detail": "not an image path"}, status_code=404)
        settings = warm.settings
        kwargs: dict[str, Any] = {"Bucket": settings.bucket, "Key": settings.images_prefix + path}
        if etag := request.headers.get("if-none-match"):
            kwargs["IfNoneMatch"] = etag
        try:
            obj = warm.s3.get_object(**kwargs)
        except Exception as exc:
            code = error_code(exc)
            if code in {"304", "NotModified"}:
                return Response(status_code=304, headers={"ETag": etag or "", "Cache-Control": IMAGE_CACHE})
            if is_s3_missing(exc, bucket=True):
                return JSONResponse({"error": "image_not_found", "detail": f"no image {path}"}, status_code=404)
            raise
        media = obj.get("ContentType") or ""
        headers = {
            "Cache-Control": IMAGE_CACHE,
            "ETag": obj["ETag"],
            "Content-Length": str(obj["ContentLength"]),
            "X-Content-Type-Options": "nosniff",
        }
        if obj.get("LastModified"):
            headers["Last-Modified"] = format_datetime(obj["LastModified"].astimezone(timezone.utc), usegmt=True)
        return StreamingResponse(
            obj["Body"].iter_chunks(64 * 1024),
            media_type=media if media.startswith("image/") else "image/jpeg",
            headers=headers,
        )

    @app.get("/", response_class=FileResponse, summary="The search page")
    def index_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", response_class=FileResponse, summary="The page's script and style sheet")
    def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app
