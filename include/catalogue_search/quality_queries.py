"""The queries of the quality evaluation: the titles as query vectors, and the search client's
requests, one `_msearch` per product.

Query vectors (`QueryVectors`): a text search sends `{"inputs": [title]}` to the
TEXT model; the index holds each title encoded by that model already (its title
vector, the same handler and text). So the evaluation encodes, in batches, the
titles that have no title vector plus `CHECKED_TITLES` that have one, and uses
the index's title vectors for the others once the checked ones agree within the
contract's tolerance (`VECTOR_ATOL`); if any differs, every title is encoded.

A title's vector is asked in the three modes with the bodies `SearchClient`
sends for a text search (`index.knn_query` with the same k and candidate
count; for `hybrid`, BM25 on the title and both k-NN lists with the default
`search.Fusion`, fused by `search.reciprocal_rank_fusion`), and a product with
duplicates asks "more like this" with its image vector, itself left out. Only
the hit ids come back (`_source: false`, documents are keyed by item_id): the
ranking is the search client's, without fetching and parsing every hit's
source (two 512-d vectors each). tests/integration/test_quality_evaluation.py checks the
ranks against `SearchClient`'s own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from catalogue_search import index
from catalogue_search.contract import JSON, TEXT, vectors_close
from catalogue_search.errors import PermanentError
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

CHECKED_TITLES = 32


def title_encoder(settings: Settings, s3, version: str):
    """The TEXT handler of the artifact that encoded the index, and a batched encode of titles as queries."""
    from catalogue_search.contract import parse_embeddings
    from catalogue_search.handler import load_handler_from_artifact

    handler = load_handler_from_artifact(settings.artifact_uri, TEXT, s3_client=s3, cache_dir=settings.model_cache)
    if handler.artifact_version != version:
        raise PermanentError(
            f"the model artifact at {settings.artifact_uri} is version {handler.artifact_version or '(none)'} but "
            f"the index was encoded by version {version}: the artifact was replaced during the run; run again"
        )

    def encode(titles: list[str]) -> list[list[float] | None]:
        # The very request a text search sends, many per forward pass; a title the model refuses finds nothing.
        payloads = [json.dumps({"inputs": [title]}).encode() for title in titles]
        answers = handler.invoke_many(payloads, JSON)
        return [parse_embeddings(a.body, "the TEXT model") if a.error is None else None for a in answers]

    return handler, encode


class QueryVectors:
    """Products' titles as query vectors (see the module docstring); counts what it encoded."""

    def __init__(
        self,
        client,
        index_name: str,
        encode: Callable[[list[str]], list[list[float] | None]],
        *,
        encode_all: bool = False,
        logger: logging.Logger = log,
    ) -> None:
        self.client, self.index, self.encode, self.encode_all, self.log = client, index_name, encode, encode_all, logger
        self.encoded = self.checked = self.stored = 0
        self.seconds = 0.0

    def __call__(self, docs: list[dict[str, Any]]) -> list[list[float] | None]:
        began = time.monotonic()
        out = [None] * len(docs) if self.encode_all else self._stored([d["item_id"] for d in docs])
        have = [i for i, vector in enumerate(out) if vector is not None]
        ask = [i for i, vector in enumerate(out) if vector is None] + have[:CHECKED_TITLES]
        got = self._encode(docs, ask)
        differ = [docs[i]["item_id"] for i in have[:CHECKED_TITLES] if not _close(got[i], out[i])]
        if differ:
            self.log.warning(
                "%d of %d checked titles: the TEXT model does not give the index's title vector (first: %s); "
                "encoding every title",
                len(differ),
                min(CHECKED_TITLES, len(have)),
                differ[0],
            )
            got.update(self._encode(docs, have[CHECKED_TITLES:]))
        for i, vector in got.items():
            out[i] = vector
        self.encoded, self.checked = len(got), min(CHECKED_TITLES, len(have))
        self.stored, self.seconds = len(docs) - len(got), time.monotonic() - began
        return out

    def _encode(self, docs: list[dict[str, Any]], rows: list[int]) -> dict[int, list[float] | None]:
        return dict(zip(rows, self.encode([docs[i]["item_name"].strip() for i in rows]))) if rows else {}

    def _stored(self, ids: list[str]) -> list[list[float] | None]:
        found = index.get_sources(self.client, self.index, ids, [index.NAME_VECTOR_FIELD], batch=200)
        return [(found.get(i) or {}).get(index.NAME_VECTOR_FIELD) or None for i in ids]


def _close(a: list[float] | None, b: list[float] | None) -> bool:
    return a is not None and b is not None and vectors_close(a, b)


class QueryRunner:
    """Asks one product's title vector in every mode against `index_name`, in one round trip."""

    def __init__(self, settings: Settings, client, index_name: str, depth: int, fusion=None) -> None:
        from catalogue_search import search

        self.client = client
        self.index = index_name
        self.depth = depth
        self.fusion = fusion or search.Fusion()
        self.fuse = search.reciprocal_rank_fusion
        self.candidates = min(settings.knn_candidates, search.KNN_MAX_K)
        # search_hybrid's list size for a first page of `depth` hits, no folding
        self.hybrid_size = min(search.KNN_MAX_K, max(self.fusion.candidates, depth))

    def _knn(self, vector: list[float], k: int, field: str, exclude: str | None = None) -> dict[str, Any]:
        body = index.knn_query(vector, k, None, field=field, candidates=self.candidates)
        if exclude:  # as SearchClient.more_like_this: the product itself is filtered out
            body["query"]["knn"][field]["filter"] = {"bool": {"must_not": [{"ids": {"values": [exclude]}}]}}
        return body

    def bodies(self, title: str, vector: list[float], image_vector: list[float] | None, item_id: str):
        """(name, body) of every query one product asks."""
        size, fusion = self.hybrid_size, self.fusion
        out = [
            ("image", self._knn(vector, self.depth, index.VECTOR_FIELD)),
            ("name", self._knn(vector, self.depth, index.NAME_VECTOR_FIELD)),
        ]
        if fusion.lexical_weight:
            out.append(("hybrid/lexical", index.title_query(title, size, None)))
        if fusion.name_weight:
            out.append(("hybrid/name", self._knn(vector, size, index.NAME_VECTOR_FIELD)))
        if fusion.image_weight:
            out.append(("hybrid/image", self._knn(vector, size, index.VECTOR_FIELD)))
        if image_vector is not None:
            out.append(("duplicates", self._knn(image_vector, self.depth, index.VECTOR_FIELD, exclude=item_id)))
        return out

    def image_vector(self, item_id: str) -> list[float]:
        """The stored image vector of a product (what "more like this" queries with)."""
        got = self.client.get(index=self.index, id=item_id, _source_includes=[index.VECTOR_FIELD])
        return got["_source"][index.VECTOR_FIELD]

    def ask(self, doc: dict[str, Any], vector: list[float], duplicates: bool = False) -> dict[str, list[str]]:
        """Hit ids per mode (and `duplicates`), best first, at most `depth` each."""
        image_vector = self.image_vector(doc["item_id"]) if duplicates else None
        named = self.bodies(doc["item_name"].strip(), vector, image_vector, doc["item_id"])
        lines: list[dict[str, Any]] = []
        for _, body in named:
            lines += [{"index": self.index}, {**body, **index.ONLY_IDS}]
        answers = self.client.msearch(body=lines)["responses"]
        ids: dict[str, list[str]] = {}
        for (name, _), answer in zip(named, answers):
            if "error" in answer:
                problem = f"the {name} query of the quality evaluation failed: {str(answer['error'])[:300]}"
                if answer.get("status") in index.RETRY_STATUSES:
                    raise RuntimeError(problem)  # a busy or failing node: the task's retry asks again
                raise PermanentError(problem)
            ids[name] = [index.hit_id(hit) for hit in answer["hits"]["hits"]]
        lists = {name.split("/")[1]: ids.pop(name) for name in list(ids) if name.startswith("hybrid/")}
        weights = {"lexical": self.fusion.lexical_weight, "name": self.fusion.name_weight}
        weights["image"] = self.fusion.image_weight
        fused = self.fuse(lists, weights, self.fusion.rank_constant)
        ids["hybrid"] = [item_id for item_id, _ in fused[: self.depth]]
        return ids
