"""The query path: encode a text or an image, search the read alias, rank, page.

The CLI and the search page's API share everything here, one job per module:

- `query`: what a query asks for and gets back (`Page`, `Filters`, `Fold`, `Hit`), and the input limits;
- `errors`: the errors, each with the HTTP status and the sentence the API answers with;
- `encoders`: the SageMaker endpoint encoder and the in-process (`local`) one;
- `ranking`: cosine, reciprocal rank fusion (`Fusion`), folding near-duplicates;
- `client`: `SearchClient`, the entry points (each checks its input once) and the encoder;
- `engine`: the OpenSearch side (`Alias`): query bodies, ranked lists, paging into hits;
- `formatting`: the CLI's output.

`from catalogue_search import search` then `search.SearchClient`, `search.Page`, ... as before the split.
"""

from __future__ import annotations

from catalogue_search.contract import IMAGE, TEXT
from catalogue_search.search.client import ALIAS_TTL, Expiring, SearchClient
from catalogue_search.search.encoders import EndpointEncoder, LocalEncoder, QueryEncoder, make_encoder
from catalogue_search.search.errors import (
    INTERNAL_ERROR,
    EmptyQueryError,
    EncoderResponseError,
    EndpointNotDeployedError,
    ImageTooLargeError,
    IndexMissingError,
    InputError,
    ModelArtifactMissingError,
    ModelVersionMismatchError,
    NotConfiguredError,
    OpenSearchUnavailableError,
    OutOfRangeError,
    ProductNotFoundError,
    QueryRefusedError,
    QueryTooLongError,
    RejectedQueryError,
    SearchError,
    UnreadableImageError,
    error_payload,
    one_line,
    require_settings,
)
from catalogue_search.search.formatting import format_hits
from catalogue_search.search.query import (
    FACETS,
    HYBRID_MODE,
    IMAGE_MODE,
    KNN_MAX_K,
    MAX_LEXICAL_TERMS,
    MAX_QUERY_CHARS,
    MODES,
    NAME_MODE,
    SERVERLESS_MAX_PAYLOAD,
    FacetValue,
    Filters,
    Fold,
    Hit,
    Page,
)
from catalogue_search.search.ranking import Fusion, cosine, cosine_similarity, fold_candidates, reciprocal_rank_fusion

__all__ = [
    "ALIAS_TTL",
    "FACETS",
    "HYBRID_MODE",
    "IMAGE",
    "IMAGE_MODE",
    "INTERNAL_ERROR",
    "KNN_MAX_K",
    "MAX_LEXICAL_TERMS",
    "MAX_QUERY_CHARS",
    "MODES",
    "NAME_MODE",
    "SERVERLESS_MAX_PAYLOAD",
    "TEXT",
    "EmptyQueryError",
    "EncoderResponseError",
    "EndpointEncoder",
    "EndpointNotDeployedError",
    "Expiring",
    "FacetValue",
    "Filters",
    "Fold",
    "Fusion",
    "Hit",
    "ImageTooLargeError",
    "IndexMissingError",
    "InputError",
    "LocalEncoder",
    "ModelArtifactMissingError",
    "ModelVersionMismatchError",
    "NotConfiguredError",
    "OpenSearchUnavailableError",
    "OutOfRangeError",
    "Page",
    "ProductNotFoundError",
    "QueryEncoder",
    "QueryRefusedError",
    "QueryTooLongError",
    "RejectedQueryError",
    "SearchClient",
    "SearchError",
    "UnreadableImageError",
    "cosine",
    "cosine_similarity",
    "error_payload",
    "fold_candidates",
    "format_hits",
    "make_encoder",
    "one_line",
    "reciprocal_rank_fusion",
    "require_settings",
]
