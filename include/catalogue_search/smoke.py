"""After a read alias moves (a publish or a rollback): does search answer on it as a user would see?

The `catalogue_smoke_test` DAG runs `check_search` whenever the alias's index
Asset gets an event. Through the configured query encoder
(`CATSEARCH_QUERY_ENCODER`: the in-process model, or the SageMaker endpoints),
one product of the served index, drawn with the run as seed, must come back
first by its own image and by its own title: the query encoder and the index
hold the same model, the alias answers, the product's image is in the bucket.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from catalogue_search.errors import PermanentError
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

SMOKE_K = 10


class SearchSmokeError(PermanentError):
    """Search does not find a product of the served index by its own image or title."""


def check_search(
    settings: Settings, s3, client, alias: str, announced: str = "", *, seed: str = "", logger: logging.Logger = log
) -> dict[str, Any]:
    """One seeded product of `alias` found first by its image and by its title; raise SearchSmokeError if not.

    `announced` is the index the asset event named: a later move of the alias is
    logged, and what the alias serves now is checked.
    """
    from catalogue_search import index
    from catalogue_search.search import ModelVersionMismatchError, SearchClient

    settings = settings.replace(index_alias=alias)
    targets = index.alias_targets(client, alias)
    if not targets:
        raise SearchSmokeError(f"alias {alias} serves no index: nothing to search")
    if announced and targets != [announced]:
        logger.warning("alias %s serves %s, not %s as announced: it moved since", alias, ", ".join(targets), announced)
    product = sample_product(client, alias, seed)
    image_key = settings.images_prefix + product["image_path"]
    image = s3.get_object(Bucket=settings.bucket, Key=image_key)["Body"].read()
    searcher = SearchClient(settings, client=client)
    try:
        found = {
            "image": _perfect(searcher.search_image(image, SMOKE_K)),
            "title": _perfect(searcher.search_text(product["item_name"], SMOKE_K, mode="name")),
        }
    except ModelVersionMismatchError as exc:  # the encoder serves another model: a retry finds the same
        raise SearchSmokeError(str(exc)) from exc
    for query, ids in found.items():
        if product["item_id"] not in ids:
            raise SearchSmokeError(
                f"searching {alias} by the {query} of product {product['item_id']} (s3://{settings.bucket}/"
                f"{image_key}) did not find it first (perfect matches: {sorted(ids) or 'none'}): the query "
                f"encoder ({settings.query_encoder}) and the index {', '.join(targets)} disagree"
            )
    logger.info("search smoke test on %s (%s): product %s found by its image and its title", alias, targets[0], product)
    return {"alias": alias, "index": targets[0], "item_id": product["item_id"], "encoder": settings.query_encoder}


def sample_product(client, alias: str, seed: str) -> dict[str, Any]:
    """One product with an image and a title vector, drawn with `seed` (each run checks another)."""
    from catalogue_search import index

    number = int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)
    query = {"exists": {"field": index.NAME_VECTOR_FIELD}}
    body = {
        "size": 1,
        "query": {"function_score": {"query": query, "random_score": {"seed": number, "field": "_seq_no"}}},
        "_source": ["item_id", "item_name", "image_path"],
    }
    hits = client.search(index=alias, body=body)["hits"]["hits"]
    if not hits:
        raise SearchSmokeError(f"alias {alias} holds no product with a title vector")
    return {"item_id": hits[0]["_id"], **hits[0]["_source"]}


def _perfect(hits) -> set[str]:
    """The hits that score as the query itself: the same vector (ties: products sharing it)."""
    from catalogue_search.index import SELF_MATCH_SCORE

    return {hit.item_id for hit in hits if hit.score >= SELF_MATCH_SCORE}
