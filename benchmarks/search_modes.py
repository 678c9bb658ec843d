"""Recall@1/5/10 of each search mode on the sample catalogue, each product's own title as the query.

    ./dev bench search-modes [--model-config tests/fixtures/tiny_clip.json | --model ViT-B-32]

Builds a throw-away index of the sample catalogue in-process (image vectors,
title vectors, the production mapping and analyzers) on the local OpenSearch
node, asks every product's title (and, as a harder set, the title's longest
word) in every mode, prints recall@k (the product itself among the first k
hits), an example where hybrid finds what the image vectors miss, and the
cosine spread of the image vectors (what a near-duplicate threshold means for
these weights). Deletes its index at the end.

Offline, the weights are RANDOM (no model hub here): the image and title
vectors carry no meaning, so image-mode figures are chance level and a title
finds its own title vector only because the query and the document are the
same string. The script says so in its output.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KS = (1, 5, 10)


def _recall(ranks: list[int], k: int) -> float:
    return sum(r <= k for r in ranks) / len(ranks) if ranks else 0.0


def _longest_word(title: str) -> str:
    words = re.findall(r"[^\W_]+", title)
    return max(words, key=len) if words else title


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-clip", help="open_clip architecture (random weights offline)")
    parser.add_argument(
        "--model-config",
        type=Path,
        default=REPO / "tests/fixtures/tiny_clip.json",
        help="model config JSON (default: the tiny test model; pass '' for a built-in architecture)",
    )
    parser.add_argument("--pretrained", default="", help="open_clip pretrained tag (needs the model hub)")
    parser.add_argument("--limit", type=int, default=0, help="ask only the first N products' titles")
    parser.add_argument("--layout", type=Path, default=None, help="sample catalogue build (default: ./dev demo's)")
    args = parser.parse_args(argv)

    import numpy as np

    from catalogue_search import index, search
    from catalogue_search.settings import Settings
    from catalogue_search_dev import sample_index
    from catalogue_search_dev.model_build import build_model_artifact

    title_only = search.Fusion(image_weight=0)  # BM25 + title vectors

    settings = Settings.from_env(model_name=args.model, model_pretrained=args.pretrained)
    if not settings.opensearch_url:
        print("CATSEARCH_OPENSEARCH_URL is not set: run through ./dev", file=sys.stderr)
        return 2
    started = time.monotonic()
    layout = sample_index.layout_dir(args.layout)
    products = sample_index.sample_products(layout)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "model.tar.gz"
        cfg = args.model_config if str(args.model_config) not in ("", ".") else None
        build_model_artifact(artifact, args.model, args.pretrained, cfg)
        encoded = sample_index.encode(layout, products, artifact, cache_dir=Path(tmp) / "cache")
    token = uuid.uuid4().hex[:8]
    alias = f"eval-modes-{token}"
    name = f"{alias}-v1"
    client = index.client_from_settings(settings)
    try:
        sample_index.load(client, settings.replace(index_alias=alias), name, alias, encoded)
        built = time.monotonic() - started
        searcher = search.SearchClient(settings.replace(index_alias=alias), client=client, encoder=_NoEncoder())
        items = encoded.products[: args.limit] if args.limit else encoded.products
        weights = "pretrained " + args.pretrained if args.pretrained else "RANDOM weights (no model hub offline)"
        print(
            f"search modes on the sample catalogue: {len(encoded.products)} products indexed, {len(items)} queries, "
            f"model {args.model} with {weights}; index built in {built:.0f}s"
        )
        from catalogue_search.handler import load_handler_from_artifact

        with tempfile.TemporaryDirectory() as tmp:
            artifact = Path(tmp) / "model.tar.gz"
            build_model_artifact(artifact, args.model, args.pretrained, cfg)
            text = load_handler_from_artifact(artifact, "TEXT", cache_dir=Path(tmp) / "cache")
            query_sets = {
                "title": [p["item_name"] for p in items],
                "longest word of the title": [_longest_word(p["item_name"]) for p in items],
            }
            vectors = {name_: text.encode_texts(qs) for name_, qs in query_sets.items()}
        examples = []
        for set_name, queries in query_sets.items():
            ranks: dict[str, list[int]] = {m: [] for m in ("image", "name", "lexical", "hybrid", "words")}
            t0 = time.monotonic()
            for product, query, vector in zip(items, queries, vectors[set_name]):
                vec = vector.tolist()
                got = {
                    "image": searcher.search_vector(vec, 10),
                    "name": searcher.search_vector(vec, 10, field=index.NAME_VECTOR_FIELD),
                    "lexical": searcher.search_lexical(query, 10),
                    "hybrid": searcher.search_hybrid(vec, 10, text=query),
                    "words": searcher.search_hybrid(vec, 10, text=query, fusion=title_only),
                }
                for mode, hits in got.items():
                    ranks[mode].append(next((h.rank for h in hits if h.item_id == product["item_id"]), 10**6))
                if ranks["hybrid"][-1] == 1 and ranks["image"][-1] > 10 and set_name not in {e[0] for e in examples}:
                    examples.append((set_name, query, product, got))
            per_query = (time.monotonic() - t0) / max(1, len(queries)) * 1000
            print(f"\nqueries: {set_name} ({len(queries)}, {per_query:.0f} ms per query for the five rankings)")
            print(f"  {'mode':<32} " + "  ".join(f"recall@{k:<2}" for k in KS))
            labels = {
                "image": "image  (text -> image vectors)",
                "name": "name   (text -> title vectors)",
                "lexical": "BM25 on the title alone",
                "hybrid": "hybrid (BM25 + both, RRF 60)",
                "words": "hybrid, image weight 0",
            }
            for mode, label in labels.items():
                print(f"  {label:<32} " + "  ".join(f"{_recall(ranks[mode], k):>9.3f}" for k in KS))
        for set_name, query, product, got in examples:
            print(f"\nexample ({set_name}): query {query!r} for {product['item_id']} {product['item_name']!r}")
            for mode in ("image", "hybrid"):
                top = ", ".join(f"{h.item_id} {h.item_name!r}" for h in got[mode][:3])
                print(f"  {mode:<6} top 3: {top}")
        _cosine_spread(np, encoded.images)
    finally:
        client.indices.delete(index=name, ignore_unavailable=True)
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


def _cosine_spread(np, images) -> None:
    unit = images / np.linalg.norm(images, axis=1, keepdims=True)
    sims = unit @ unit.T
    upper = sims[np.triu_indices(len(unit), k=1)]
    qs = np.quantile(upper, [0.01, 0.5, 0.99])
    print(
        f"\nimage vectors, cosine between two different products: 1% {qs[0]:.4f}, median {qs[1]:.4f}, "
        f"99% {qs[2]:.4f}; pairs >= 0.98: {(upper >= 0.98).mean():.1%}, >= 0.9999: {int((upper >= 0.9999).sum())}"
    )


class _NoEncoder:
    """The script encodes its queries in one batch itself; the client must not encode."""

    def encode(self, encode_type: str, payload: bytes, content_type: str) -> list[float]:
        raise AssertionError("queries are encoded in a batch by the script")


if __name__ == "__main__":
    raise SystemExit(main())
