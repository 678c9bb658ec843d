"""Query bodies: k-NN on either vector field, BM25 on the title, and the exact searches validation compares with."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from catalogue_search.index.mapping import VECTOR_FIELD, VECTOR_FIELDS

# What a ranked list needs of each hit is its id, from the doc values: reading `_id` or `_source`
# decompresses the hit's stored fields, vectors included. A list of 100 on 2,000 x 512 took 12-13 ms
# with `_id`, 25 ms with a `_source` field, 1 ms with this (BENCHMARKS.md, search quality evaluation).
ID_FIELD = "item_id"  # the document id (build.bulk_load) and a keyword with doc values (mapping)
ONLY_IDS = {"_source": False, "stored_fields": "_none_", "docvalue_fields": [ID_FIELD]}


def hit_id(hit: dict[str, Any]) -> str:
    """The item id of a hit asked with `ONLY_IDS` (or with its `_source`)."""
    return hit["fields"][ID_FIELD][0] if "fields" in hit else hit["_source"][ID_FIELD]


def scan_fields(
    client, index: str, fields: Sequence[str], *, query: dict[str, Any] | None = None, page: int = 5000
) -> Iterator[dict[str, Any]]:
    """Each document's `fields` (keywords) from their doc values, streamed with a scroll: a dict of
    field -> first value, a field the document has no value for left out.

    Reading them from `_source` instead parses each document's whole source, its two vectors
    included, and even `_id` decompresses the stored block the source is in: 145,000 documents with
    two 512-d vectors took 25.2 s from `_source`, 11.0 s from doc values with `_id`, 0.52 s without
    (`./dev bench id-scan`; BENCHMARKS.md, "Reading every product's ids").
    """
    from opensearchpy import helpers

    body = {
        "_source": False,
        "stored_fields": "_none_",
        "docvalue_fields": list(fields),
        "query": query or {"match_all": {}},
    }
    for hit in helpers.scan(client, index=index, query=body, size=page, preserve_order=False):
        yield {name: values[0] for name, values in (hit.get("fields") or {}).items() if values}


def get_sources(client, index: str, ids: Sequence[str], fields: Sequence[str], batch: int = 500) -> dict[str, Any]:
    """id -> `_source` (only `fields`) of the documents of `ids` that `index` holds, `batch` ids per `_mget`."""
    found: dict[str, Any] = {}
    for lo in range(0, len(ids), batch):
        got = client.mget(index=index, body={"ids": list(ids[lo : lo + batch])}, _source_includes=list(fields))
        found.update({doc["_id"]: doc.get("_source") or {} for doc in got["docs"] if doc.get("found")})
    return found


def knn_query(
    vector: list[float],
    k: int,
    filters: list[dict[str, Any]] | None = None,
    *,
    candidates: int = 0,
    field: str = VECTOR_FIELD,
) -> dict[str, Any]:
    """A k-NN query on `field` (`embedding`: image vectors, `name_vector`: title vectors) for
    the top `k`, searching `candidates` neighbours (at least k); no vector in `_source`.

    With the Lucene engine the query's `k` is also HNSW's candidate list
    (ef_search): asking for only 10 out of 150,000 vectors misses true
    neighbours. The query asks for max(k, candidates) and `size` keeps the top k.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    knn: dict[str, Any] = {"vector": list(map(float, vector)), "k": max(k, candidates)}
    if filters:
        knn["filter"] = {"bool": {"filter": filters}}
    return {"size": k, "query": {"knn": {field: knn}}, "_source": {"excludes": list(VECTOR_FIELDS)}}


def title_query(text: str, size: int, filters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """BM25 on the title: words (`item_name`), words joined (`item_name.joined`: model numbers
    written apart or together), and a boost for the exact phrase, so the title that says what
    the shopper typed comes first."""
    should = [
        {"match": {"item_name": {"query": text}}},
        {"match": {"item_name.joined": {"query": text}}},
        {"match_phrase": {"item_name": {"query": text, "boost": 2.0}}},
    ]
    query: dict[str, Any] = {"bool": {"should": should, "minimum_should_match": 1}}
    if filters:
        query["bool"]["filter"] = filters
    return {"size": size, "query": query, "_source": {"excludes": list(VECTOR_FIELDS)}}


def self_match_query(vector: list[float], item_id: str) -> dict[str, Any]:
    """k-NN restricted to one item_id: Lucene searches the filtered documents exactly."""
    knn = {"vector": list(map(float, vector)), "k": 1, "filter": {"term": {"item_id": item_id}}}
    return {"size": 1, "_source": False, "query": {"knn": {VECTOR_FIELD: knn}}}


def exact_query(vector: list[float], k: int) -> dict[str, Any]:
    """Exact cosine search over every document (the k-NN plugin's scoring script)."""
    script = {
        "source": "knn_score",
        "lang": "knn",
        "params": {"field": VECTOR_FIELD, "query_value": list(map(float, vector)), "space_type": "cosinesimil"},
    }
    return {"size": k, "_source": False, "query": {"script_score": {"query": {"match_all": {}}, "script": script}}}
