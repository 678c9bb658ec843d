"""The OpenSearch side: versioned k-NN index, bulk load, validation, alias swap.

Each run writes a new index named for the run; documents are keyed by
`item_id`, so a retry overwrites instead of duplicating. Readers only ever
see the alias, which moves to a new index in one atomic `_aliases` call after
the index passed validation.

- `client`: the OpenSearch client.
- `mapping`: the index's name, settings, mapping and documents.
- `build`: create, bulk-load, make servable.
- `clone`: a run's index cloned from the served one, its delta deleted.
- `queries`: k-NN, BM25 and exact query bodies.
- `validation`: count, self-match and ANN recall checks.
- `aliases`: the read alias and index deletion.
"""

from catalogue_search.index.aliases import alias_targets, delete_index, indices_for_alias, live_count, swap_alias
from catalogue_search.index.build import LoadReport, bulk_load, create_index, finish_loading
from catalogue_search.index.client import RETRY_STATUSES, client_from_settings, make_client, node_urls, parse_hosts
from catalogue_search.index.clone import clone_index, delete_documents, set_meta
from catalogue_search.index.mapping import (
    LOWERCASE_NORMALIZER,
    MAX_INDEX_NAME_BYTES,
    NAME_VECTOR_FIELD,
    NORMALIZED_KEYWORDS,
    OPTIONAL_FILTERS,
    TITLE_ANALYZER,
    TITLE_JOINED_ANALYZER,
    VECTOR_FIELD,
    VECTOR_FIELDS,
    adapt_to_node,
    document,
    index_body,
    index_name,
    title_analysis,
)
from catalogue_search.index.queries import (
    ONLY_IDS,
    exact_query,
    get_sources,
    hit_id,
    knn_query,
    scan_fields,
    self_match_query,
    title_query,
)
from catalogue_search.index.validation import (
    RECALL_K,
    SELF_MATCH_SCORE,
    IndexValidationError,
    ann_recall,
    sample_ids,
    validate,
)

__all__ = [
    "ONLY_IDS",
    "hit_id",
    "LOWERCASE_NORMALIZER",
    "MAX_INDEX_NAME_BYTES",
    "NAME_VECTOR_FIELD",
    "NORMALIZED_KEYWORDS",
    "OPTIONAL_FILTERS",
    "RECALL_K",
    "RETRY_STATUSES",
    "SELF_MATCH_SCORE",
    "TITLE_ANALYZER",
    "TITLE_JOINED_ANALYZER",
    "VECTOR_FIELD",
    "VECTOR_FIELDS",
    "IndexValidationError",
    "LoadReport",
    "adapt_to_node",
    "alias_targets",
    "ann_recall",
    "bulk_load",
    "client_from_settings",
    "clone_index",
    "create_index",
    "delete_documents",
    "delete_index",
    "document",
    "exact_query",
    "finish_loading",
    "get_sources",
    "index_body",
    "index_name",
    "indices_for_alias",
    "knn_query",
    "live_count",
    "make_client",
    "node_urls",
    "parse_hosts",
    "sample_ids",
    "scan_fields",
    "self_match_query",
    "set_meta",
    "swap_alias",
    "title_analysis",
    "title_query",
    "validate",
]
