"""The index itself: its versioned name, settings and mapping (two vector fields, title analyzers), its documents."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

VECTOR_FIELD = "embedding"  # the product image, encoded by the IMAGE model
NAME_VECTOR_FIELD = "name_vector"  # the product's item_name, encoded by the TEXT model
VECTOR_FIELDS = (VECTOR_FIELD, NAME_VECTOR_FIELD)
TITLE_ANALYZER = "product_title"
TITLE_JOINED_ANALYZER = "product_title_joined"
OPTIONAL_FILTERS = ("asciifolding",)
# Filters on these keyword fields match whatever the case ("animals" finds ANIMALS); each keeps its value as
# written in a `.raw` sub-field, for display (facet labels).
NORMALIZED_KEYWORDS = ("product_type", "brand")
LOWERCASE_NORMALIZER = "catsearch_lowercase"
MAX_INDEX_NAME_BYTES = 255


def index_name(alias: str, model_slug: str, run_key: str) -> str:
    """A versioned index name, the same for every attempt of one run."""
    digest = hashlib.sha1(run_key.encode()).hexdigest()[:12]
    return f"{alias}-{model_slug}-{digest}"


def title_analysis() -> dict[str, Any]:
    """Analyzers for product titles (BM25 on `item_name`), with core Lucene filters only.

    `product_title`: standard tokenizer + lowercase. `product_title_joined`
    (the `item_name.joined` subfield) adds shingles of 2-3 words joined with no
    separator, so a model number written apart or together matches: "WH-1000XM4",
    "wh1000xm4", "ZX 200" and "zx200" give the same token. `create_index` adds
    asciifolding ("Crème" finds "creme") where the node has OpenSearch's
    analysis-common module: every distribution, Amazon's included, but not the
    local integ-test node. So this body is valid on any node.
    """
    return {
        "filter": {
            "title_joined": {
                "type": "shingle",
                "min_shingle_size": 2,
                "max_shingle_size": 3,
                "output_unigrams": False,
                "token_separator": "",
            }
        },
        "analyzer": {
            TITLE_ANALYZER: {"type": "custom", "tokenizer": "standard", "filter": ["lowercase"]},
            TITLE_JOINED_ANALYZER: {"type": "custom", "tokenizer": "standard", "filter": ["lowercase", "title_joined"]},
        },
    }


def adapt_to_node(client, body: dict[str, Any], logger: logging.Logger = log) -> dict[str, Any]:
    """`body` with the title analyzers' optional filters (asciifolding) where the node has them."""
    import copy

    from opensearchpy.exceptions import RequestError

    available = []
    for name in OPTIONAL_FILTERS:
        try:
            client.indices.analyze(body={"tokenizer": "standard", "filter": [name], "text": "a"})
            available.append(name)
        except RequestError:
            logger.info("the OpenSearch node has no %r token filter (analysis-common module): titles go without", name)
    if not available:
        return body
    body = copy.deepcopy(body)
    index_settings = body.get("settings", {})
    analysis = index_settings.get("index", {}).get("analysis") or index_settings.get("analysis") or {}
    analyzers = analysis.get("analyzer", {})
    for name in (TITLE_ANALYZER, TITLE_JOINED_ANALYZER):
        if name in analyzers:
            filters = analyzers[name]["filter"]
            at = filters.index("lowercase") + 1 if "lowercase" in filters else 0
            analyzers[name]["filter"] = filters[:at] + available + filters[at:]
    return body


def _knn_field(settings: Settings, dimension: int) -> dict[str, Any]:
    return {
        "type": "knn_vector",
        "dimension": dimension,
        "method": {
            "name": "hnsw",
            "engine": "lucene",
            "space_type": "cosinesimil",
            "parameters": {"m": settings.knn_m, "ef_construction": settings.knn_ef_construction},
        },
    }


def index_body(settings: Settings, *, alias: str, dimension: int, run_key: str) -> dict[str, Any]:
    """Settings and mapping of a new index, in its loading state (no refresh).

    It is loaded with the replicas it serves with: on a cluster, a node lost
    mid-load then loses no acknowledged document (its replica is promoted).
    One node has none to add (`index_replicas` = 0).

    Two vector fields of the same dimension (CLIP's image and text towers share
    the embedding space): `embedding` (the image) and `name_vector` (the title).
    """
    return {
        "settings": {
            "index": {
                "knn": True,
                "number_of_shards": settings.index_shards,
                "number_of_replicas": settings.index_replicas,
                "refresh_interval": "-1",
                "analysis": {
                    **title_analysis(),
                    "normalizer": {LOWERCASE_NORMALIZER: {"type": "custom", "filter": ["lowercase"]}},
                },
            },
        },
        "mappings": {
            "_meta": {"alias": alias, "model": settings.model_name, "run": run_key},
            "dynamic": "strict",
            "properties": {
                "item_id": {"type": "keyword"},
                "item_name": {
                    "type": "text",
                    "analyzer": TITLE_ANALYZER,
                    "fields": {
                        "keyword": {"type": "keyword", "ignore_above": 512},
                        # Queries are analysed as plain words: "zx200" meets the indexed shingle "zx200".
                        "joined": {
                            "type": "text",
                            "analyzer": TITLE_JOINED_ANALYZER,
                            "search_analyzer": TITLE_ANALYZER,
                        },
                    },
                },
                "image_id": {"type": "keyword"},
                "main_image_id": {"type": "keyword"},
                "image_path": {"type": "keyword"},
                **{
                    name: {
                        "type": "keyword",
                        "normalizer": LOWERCASE_NORMALIZER,
                        "fields": {"raw": {"type": "keyword"}},
                    }
                    for name in NORMALIZED_KEYWORDS
                },
                "model": {"type": "keyword"},
                VECTOR_FIELD: _knn_field(settings, dimension),
                NAME_VECTOR_FIELD: _knn_field(settings, dimension),
            },
        },
    }


def document(
    product: dict[str, Any], vector: list[float], model: str, name_vector: list[float] | None = None
) -> dict[str, Any]:
    """An index document, indexed once with both vectors: the image's (`vector`) and the title's TEXT
    embedding (`name_vector`; None where the title store has none: the field is left out)."""
    doc = {
        "item_id": product["item_id"],
        "item_name": product["item_name"],
        "image_id": product["image_id"],
        "main_image_id": product["main_image_id"],
        "image_path": product["path"],
        "product_type": product.get("product_type"),
        "brand": product.get("brand"),
        "model": model,
        VECTOR_FIELD: vector,
    }
    if name_vector is not None:
        doc[NAME_VECTOR_FIELD] = name_vector
    return doc
