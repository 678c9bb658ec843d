"""`SearchClient`: text, image and "more like this" queries against the read alias, and its facets.

Modes: `image` searches the image vectors (`embedding`), `name` the title
vectors (`name_vector`), `hybrid` fuses BM25 on the title (text queries only),
the title vectors and the image vectors by reciprocal rank fusion, here (the
node has no neural-search plugin, so no hybrid query of its own). A `Fold`
folds hits that show the same product image into one hit with a count.

Each public query method is an entry point: it checks its input once
(`query_text`, `query_image`, and the `Page` against the alias's result window
unless the caller did so with `fit`), then hands value objects to the engine
side (`engine.Alias`), which checks nothing again.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Generic, TypeVar

from catalogue_search import index
from catalogue_search.contract import IMAGE, JSON, TEXT, X_IMAGE
from catalogue_search.search.encoders import QueryEncoder, make_encoder
from catalogue_search.search.engine import Alias
from catalogue_search.search.errors import ModelVersionMismatchError, require_settings
from catalogue_search.search.query import (
    HYBRID_MODE,
    IMAGE_MODE,
    NAME_MODE,
    FacetValue,
    Filters,
    Fold,
    Hit,
    Page,
    check_mode,
    image_limit,
    query_image,
    query_text,
)
from catalogue_search.search.ranking import Fusion
from catalogue_search.settings import Settings

# How long a client trusts what it read about the alias (its result window, its artifact version), in seconds:
# an alias swap is seen within that time.
ALIAS_TTL = 60.0
T = TypeVar("T")


class Expiring(Generic[T]):
    """A value read again once it is older than `ttl` seconds (two threads may both read it: harmless)."""

    def __init__(self, read: Callable[[], T], ttl: float = ALIAS_TTL) -> None:
        self._read, self.ttl = read, ttl
        self._held: tuple[float, T] | None = None

    def get(self) -> T:
        held, now = self._held, time.monotonic()
        if held is None or now - held[0] >= self.ttl:
            held = self._held = (now, self._read())
        return held[1]


class SearchClient:
    """Queries against the read alias; hits never carry the vector.

    One client is safe to share between threads (the search page's API does):
    the encoders load their model once, on first use.
    """

    def __init__(self, settings: Settings | None = None, *, client=None, encoder: QueryEncoder | None = None) -> None:
        self.settings = settings or Settings.from_env()
        require_settings(self.settings, "opensearch_url")
        self.client = client or index.client_from_settings(self.settings)
        self.engine = Alias(self.client, self.settings)
        self._encoder = encoder
        self._encoder_lock = threading.Lock()
        self._limit = Expiring(self.engine.result_limit)
        self._version = Expiring(self.engine.artifact_version)

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

    @property
    def max_image_bytes(self) -> int:
        """The largest query image: the setting, within what a serverless endpoint accepts."""
        return image_limit(self.settings.max_query_image_bytes)

    # --- checks, each made once per query ---------------------------------------------------
    def result_limit(self) -> int:
        """The most hits (k + offset) the alias can answer (read again after ALIAS_TTL seconds)."""
        return self._limit.get()

    def fit(self, page: Page | int) -> Page:
        """`page` (or the first page of that many hits) checked against the alias's result window."""
        return (Page(page) if isinstance(page, int) else page).within(self.result_limit())

    def _fitted(self, page: Page | int) -> Page:
        return page if isinstance(page, Page) and page.limit is not None else self.fit(page)

    def index_artifact_version(self) -> str:
        """The artifact version recorded by the index behind the alias (read again after ALIAS_TTL seconds)."""
        return self._version.get()

    def check_model_version(self, encode_type: str) -> None:
        """Refuse to encode a query with a model other than the one that encoded the index."""
        wanted = self.index_artifact_version()
        if not wanted:
            raise ModelVersionMismatchError(
                f"index {self.alias!r} records no model artifact version (_meta.artifact_version), so no query "
                "encoder can be checked against it: re-run catalogue_ingest"
            )
        have = self.encoder.artifact_version(encode_type)
        if have != wanted:
            raise ModelVersionMismatchError(
                f"the {encode_type.lower()} query encoder runs model artifact {have or '(unversioned)'} but index "
                f"{self.alias!r} was encoded with artifact {wanted}: the vectors are not comparable. "
                "Deploy the index's artifact (query_endpoints_deploy) or re-run catalogue_ingest with the new one."
            )

    def _encode(self, encode_type: str, payload: bytes, content_type: str) -> list[float]:
        self.check_model_version(encode_type)
        return self.encoder.encode(encode_type, payload, content_type)

    # --- entry points ---------------------------------------------------------------------
    def search_text(
        self,
        query: str,
        page: Page | int = 5,
        *,
        filters: Filters | None = None,
        mode: str = IMAGE_MODE,
        fusion: Fusion | None = None,
        fold: Fold | None = None,
        prompt: str | None = None,
    ) -> list[Hit]:
        """Text -> image vectors (`image`), title vectors (`name`) or both fused with BM25 (`hybrid`)."""
        text = query_text(query, lexical=check_mode(mode) == HYBRID_MODE)
        page = self._fitted(page)
        body: dict[str, Any] = {"inputs": [text], **({"prompt": prompt} if prompt else {})}
        vector = self._encode(TEXT, json.dumps(body).encode(), JSON)
        return self._by_mode(vector, page, mode, text, filters or Filters(), fusion, fold)

    def search_image(
        self,
        image: bytes,
        page: Page | int = 5,
        *,
        filters: Filters | None = None,
        mode: str = IMAGE_MODE,
        fusion: Fusion | None = None,
        fold: Fold | None = None,
    ) -> list[Hit]:
        """Image -> image vectors (`image`), title vectors (`name`) or both fused (`hybrid`)."""
        check_mode(mode)
        data = query_image(image, self.max_image_bytes)
        page = self._fitted(page)
        vector = self._encode(IMAGE, data, X_IMAGE)
        return self._by_mode(vector, page, mode, None, filters or Filters(), fusion, fold)

    def more_like_this(
        self, item_id: str, page: Page | int = 5, *, filters: Filters | None = None, fold: Fold | None = None
    ) -> list[Hit]:
        """The products nearest to `item_id`'s stored vector, the product itself left out."""
        page = self._fitted(page)
        vector = self.engine.product_vector(item_id)
        return self.engine.knn(vector, page, filters or Filters(), index.VECTOR_FIELD, fold, exclude=item_id)

    def search_vector(
        self,
        vector: list[float],
        page: Page | int = 5,
        *,
        filters: Filters | None = None,
        field: str = index.VECTOR_FIELD,
        fold: Fold | None = None,
    ) -> list[Hit]:
        """k-NN on `field` (image vectors by default, `name_vector` for titles)."""
        return self.engine.knn(vector, self._fitted(page), filters or Filters(), field, fold)

    def search_lexical(
        self, text: str, page: Page | int = 5, *, filters: Filters | None = None, fold: Fold | None = None
    ) -> list[Hit]:
        """BM25 on the title alone (the lexical list of `hybrid`)."""
        text = query_text(text, lexical=True)
        return self.engine.lexical(text, self._fitted(page), filters or Filters(), fold)

    def search_hybrid(
        self,
        vector: list[float],
        page: Page | int = 5,
        *,
        text: str | None = None,
        filters: Filters | None = None,
        fusion: Fusion | None = None,
        fold: Fold | None = None,
    ) -> list[Hit]:
        """Reciprocal rank fusion of BM25 on the title (when there is `text`), k-NN on the title vectors and
        k-NN on the image vectors; `Hit.score` is the fused score."""
        text = query_text(text, lexical=True) if text is not None else None
        return self.engine.hybrid(vector, self._fitted(page), text, filters or Filters(), fusion, fold)

    def product_vector(self, item_id: str) -> list[float]:
        return self.engine.product_vector(item_id)

    def facets(self, filters: Filters | None = None, *, size: int = 100) -> dict[str, list[FacetValue]]:
        """The values present for each facet, with counts, under the other facets' filters."""
        return self.engine.facets(filters or Filters(), size)

    def _by_mode(self, vector, page: Page, mode: str, text, filters: Filters, fusion, fold) -> list[Hit]:
        if mode == HYBRID_MODE:
            return self.engine.hybrid(vector, page, text, filters, fusion, fold)
        field = index.NAME_VECTOR_FIELD if mode == NAME_MODE else index.VECTOR_FIELD
        return self.engine.knn(vector, page, filters, field, fold)
