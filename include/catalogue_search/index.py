"""The OpenSearch side: versioned k-NN index, bulk load, validation, alias swap.

Each run writes a new index named for the run; documents are keyed by
`item_id`, so a retry overwrites instead of duplicating. Readers only ever
see the alias, which moves to a new index in one atomic `_aliases` call after
the index passed validation.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from catalogue_search.errors import PermanentError
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

VECTOR_FIELD = "embedding"  # the product image, encoded by the IMAGE model
NAME_VECTOR_FIELD = "name_vector"  # the product's item_name, encoded by the TEXT model
VECTOR_FIELDS = (VECTOR_FIELD, NAME_VECTOR_FIELD)
TITLE_ANALYZER = "product_title"
TITLE_JOINED_ANALYZER = "product_title_joined"
OPTIONAL_FILTERS = ("asciifolding",)
SELF_MATCH_SCORE = 0.9999  # OpenSearch cosine score is (1 + cos) / 2: 1.0 for the same vector.
RETRY_STATUSES = (429, 500, 502, 503, 504)
# Filters on these keyword fields match whatever the case ("animals" finds ANIMALS); each keeps its value as
# written in a `.raw` sub-field, for display (facet labels).
NORMALIZED_KEYWORDS = ("product_type", "brand")
LOWERCASE_NORMALIZER = "catsearch_lowercase"
MAX_INDEX_NAME_BYTES = 255
RECALL_K = 10


class IndexValidationError(PermanentError, RuntimeError):
    """The new index is not fit to serve: the alias stays where it was."""


def make_client(
    url: str,
    *,
    auth: str = "none",
    user: str = "",
    password: str = "",
    region: str = "us-east-1",
    timeout: int = 60,
    credentials: Any = None,
    ca_certs: str = "",
):
    """An opensearch-py client; `auth` is "none", "basic" or "sigv4".

    SigV4 signs with `credentials` (botocore credentials, e.g. those of the
    Airflow AWS connection); without them, with the process's default chain.
    `ca_certs` names the CA bundle an https node's certificate is checked against.
    """
    from urllib.parse import urlsplit

    from opensearchpy import OpenSearch, RequestsHttpConnection

    parts = urlsplit(url if "://" in url else f"http://{url}")
    use_ssl = parts.scheme == "https"
    kwargs: dict[str, Any] = {
        "hosts": [{"host": parts.hostname, "port": parts.port or (443 if use_ssl else 9200)}],
        "use_ssl": use_ssl,
        "verify_certs": use_ssl,
        "timeout": timeout,
        "max_retries": 5,
        "retry_on_timeout": True,
        "retry_on_status": RETRY_STATUSES,
        "connection_class": RequestsHttpConnection,
    }
    if use_ssl and ca_certs:
        kwargs.update(ca_certs=ca_certs, connection_class=_own_ca_connection())
    if auth == "basic":
        if not user:
            raise ValueError("OpenSearch basic auth needs a user name")
        kwargs["http_auth"] = (user, password)
    elif auth == "sigv4":
        import boto3
        from opensearchpy import AWSV4SignerAuth

        credentials = credentials or boto3.Session().get_credentials()
        if credentials is None:
            raise ValueError("OpenSearch SigV4 auth needs AWS credentials, and none were found")
        kwargs["http_auth"] = AWSV4SignerAuth(credentials, region, "es")
    elif auth != "none":
        raise ValueError(f"unknown OpenSearch auth {auth!r}: use none, basic or sigv4")
    return OpenSearch(**kwargs)


@functools.cache
def _own_ca_connection():
    """A requests connection that checks the node against its own CA bundle only.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's bundle
    on every request (opensearch-py merges the environment's settings), so a
    node signed by a private CA would fail verification wherever those are set.
    """
    from opensearchpy import RequestsHttpConnection

    class OwnCaConnection(RequestsHttpConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.session.trust_env = False

    return OwnCaConnection


def client_from_settings(settings: Settings):
    return make_client(
        settings.opensearch_url,
        auth=settings.opensearch_auth,
        user=settings.opensearch_user,
        password=settings.opensearch_password,
        region=settings.region,
        ca_certs=settings.opensearch_ca_certs,
    )


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
    """Settings and mapping of a new index, in its loading state (no refresh, no replicas).

    Two vector fields of the same dimension (CLIP's image and text towers share
    the embedding space): `embedding` (the image) and `name_vector` (the title).
    """
    return {
        "settings": {
            "index": {
                "knn": True,
                "number_of_shards": settings.index_shards,
                "number_of_replicas": 0,
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


def create_index(client, name: str, body: dict[str, Any], served: Iterable[str] = ()) -> str:
    """Create the index; an index left by an earlier attempt of the same run is reused.

    An index that serves or has served (`served`) is never touched: "served" is
    returned and the caller must not load into it (a rerun of a finished run).
    """
    if client.indices.exists(index=name):
        if name in set(served):
            return "served"
        mapping = client.indices.get_mapping(index=name)[name]["mappings"]
        want = body["mappings"]["properties"][VECTOR_FIELD]["dimension"]
        have = mapping.get("properties", {}).get(VECTOR_FIELD, {}).get("dimension")
        if have != want:
            raise RuntimeError(f"index {name} exists with vector dimension {have}, expected {want}")
        client.indices.put_settings(index=name, body={"index": {"refresh_interval": "-1", "number_of_replicas": 0}})
        return "reused"
    client.indices.create(index=name, body=adapt_to_node(client, body))
    return "created"


def document(
    product: dict[str, Any], vector: list[float], model: str, name_vector: list[float] | None = None
) -> dict[str, Any]:
    """An index document; `name_vector` (the title's TEXT embedding) may come later, by an update."""
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


@dataclass
class LoadReport:
    index: str
    indexed: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bulk_load(
    client,
    index: str,
    docs: Iterable[dict[str, Any]],
    *,
    total: int,
    chunk_size: int = 500,
    threads: int = 1,
    logger: logging.Logger = log,
) -> LoadReport:
    """Upsert documents keyed by item_id, `threads` requests in flight; progress every 10%.

    Each request is `chunk_size` documents; a 429 is retried with back-off
    (per request, as `streaming_bulk` does it), and a rejected document is
    reported, not raised. At most `2 * threads` chunks are held in memory, so
    memory does not grow with `total`. One request in flight keeps one of the
    node's write threads busy building the HNSW graph; two keep two (BENCHMARKS.md).
    """
    import itertools
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from opensearchpy import helpers

    def send(chunk: list[dict[str, Any]]) -> tuple[int, list[str]]:
        indexed, failed = 0, []
        for ok, item in helpers.streaming_bulk(
            client,
            chunk,
            chunk_size=len(chunk),
            max_retries=5,
            initial_backoff=1,
            max_backoff=30,
            raise_on_error=False,
        ):
            if ok:
                indexed += 1
            else:
                failed.append(str(item))
        return indexed, failed

    actions = ({"_op_type": "index", "_index": index, "_id": doc["item_id"], "_source": doc} for doc in docs)
    report = LoadReport(index=index)
    step = max(1, total // 10)
    logged = 0

    def collect(done) -> None:
        nonlocal logged
        for future in done:
            indexed, failed = future.result()
            report.indexed += indexed
            report.failed.extend(failed)
        loaded = report.indexed + len(report.failed)
        if loaded // step > logged // step or loaded == total:
            logger.info("documents loaded: %d / %d", loaded, total)
            logged = loaded

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="bulk") as pool:
        pending: set = set()
        while chunk := list(itertools.islice(actions, chunk_size)):
            if len(pending) >= 2 * max(1, threads):
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
            pending.add(pool.submit(send, chunk))
        collect(wait(pending).done)
    return report


def finish_loading(client, index: str, replicas: int) -> None:
    """Restore the serving settings and make the documents visible."""
    client.indices.put_settings(index=index, body={"index": {"refresh_interval": "1s", "number_of_replicas": replicas}})
    client.indices.refresh(index=index)


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


def validate(
    client,
    index: str,
    *,
    expected_count: int,
    expected: dict[str, list[float]],
    queries: list[list[float]] | None = None,
    min_recall: float = 0.0,
    candidates: int = 0,
    logger: logging.Logger = log,
) -> dict[str, Any]:
    """Raise IndexValidationError unless the index is fit to serve.

    - the document count is `expected_count`;
    - every product of `expected` (item_id -> its stored embedding) is in the index
      with exactly that vector: a k-NN query filtered on its item_id scores 1.0, so
      products that share an image, or a big index, cannot hide it;
    - recall@10 of the ANN search against exact cosine search, over `queries`, is at
      least `min_recall` (ties at the 10th score count as found), with the candidate
      count searches use (`candidates`).
    """
    count = client.count(index=index)["count"]
    if count != expected_count:
        raise IndexValidationError(f"index {index} holds {count} documents, expected {expected_count}")
    for item_id, vector in expected.items():
        hits = client.search(index=index, body=self_match_query(vector, item_id))["hits"]["hits"]
        if not hits:
            raise IndexValidationError(f"self-match failed: product {item_id} is not in index {index}")
        score = hits[0]["_score"]
        if hits[0]["_id"] != item_id or score < SELF_MATCH_SCORE:
            raise IndexValidationError(
                f"self-match failed for {item_id}: its indexed vector scores {score:.6f} against its stored "
                f"embedding, expected 1.0 (the index holds a wrong vector for it)"
            )
    if expected:
        logger.info("self-match ok: %d sampled products hold exactly their stored embedding", len(expected))
    report: dict[str, Any] = {"count": count, "self_matches": len(expected)}
    if queries:
        recall = ann_recall(client, index, queries, k=min(RECALL_K, count), candidates=candidates)
        report.update(recall=round(recall, 4), recall_queries=len(queries))
        logger.info("ANN recall@%d against exact search: %.4f over %d queries", RECALL_K, recall, len(queries))
        if recall < min_recall:
            raise IndexValidationError(
                f"ANN recall@{RECALL_K} of index {index} is {recall:.4f}, below the minimum {min_recall:.2f} "
                "(CATSEARCH_MIN_RECALL_PERCENT)"
            )
    return report


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


def ann_recall(client, index: str, queries: list[list[float]], k: int = RECALL_K, candidates: int = 0) -> float:
    """Mean recall@k of the k-NN (HNSW) search against exact search, ties included."""
    if k <= 0 or not queries:
        return 1.0
    total = 0.0
    for vector in queries:
        exact = client.search(index=index, body=exact_query(vector, k))["hits"]["hits"]
        body = knn_query(vector, k, candidates=candidates)
        body["_source"] = False
        ann = client.search(index=index, body=body)["hits"]["hits"]
        if not exact:
            total += 1.0
            continue
        floor = exact[-1]["_score"] - 1e-6
        wanted = {h["_id"] for h in exact}
        found = sum(1 for h in ann if h["_id"] in wanted or h["_score"] >= floor)
        total += min(found, len(exact)) / len(exact)
    return total / len(queries)


def sample_ids(item_ids: Iterable[str], n: int, seed: str = "") -> list[str]:
    """`n` ids drawn at random with a seed (the run), so every run checks other products."""
    ids = sorted(set(item_ids))
    rng = random.Random(hashlib.sha256(seed.encode()).hexdigest())
    return sorted(rng.sample(ids, min(n, len(ids))))


def indices_for_alias(client, alias: str) -> list[dict[str, Any]]:
    """Indices this project created for `alias` (`<alias>-*` with `_meta.alias`), oldest first."""
    out = []
    found = client.indices.get(index=f"{alias}-*", expand_wildcards="open,closed", allow_no_indices=True)
    for name, info in found.items():
        meta = info.get("mappings", {}).get("_meta", {})
        if meta.get("alias") == alias:
            created = int(info["settings"]["index"]["creation_date"])
            out.append({"index": name, "created": created, "aliased": alias in info.get("aliases", {})})
    return sorted(out, key=lambda x: (x["created"], x["index"]))


def alias_targets(client, alias: str) -> list[str]:
    """The indices `alias` points at (none before the first publish)."""
    if client.indices.exists_alias(name=alias):
        return sorted(client.indices.get_alias(name=alias).keys())
    if client.indices.exists(index=alias):
        raise PermanentError(f"{alias!r} is a concrete index, not an alias: rename it before publishing")
    return []


def live_count(client, alias: str) -> int | None:
    """How many documents the alias serves now (None: the alias does not exist yet)."""
    if not alias_targets(client, alias):
        return None
    return int(client.count(index=alias)["count"])


def swap_alias(client, alias: str, index: str, logger: logging.Logger = log) -> list[str]:
    """Point `alias` at `index` and at nothing else, in one atomic `_aliases` call; return the old targets."""
    current = alias_targets(client, alias)
    actions: list[dict[str, Any]] = [{"remove": {"index": old, "alias": alias}} for old in current if old != index]
    actions.append({"add": {"index": index, "alias": alias}})
    client.indices.update_aliases(body={"actions": actions})
    logger.info("alias %s: %s -> %s", alias, ", ".join(current) or "(none)", index)
    return current


def delete_index(client, name: str, logger: logging.Logger = log) -> bool:
    """Delete an index that serves nothing (refuses one an alias points at)."""
    if not client.indices.exists(index=name):
        return False
    if client.indices.get_alias(index=name).get(name, {}).get("aliases"):
        raise PermanentError(f"index {name} is an alias target: it is never deleted")
    client.indices.delete(index=name)
    logger.info("deleted index %s", name)
    return True
