"""The evaluate_index step on 1,000 products: its time, next to asking the same titles one by one.

    ./dev bench eval [--products 2000] [--sample 1000] [--encode-all] [--model ViT-B-32 | --model-config tiny.json]

Indexes a generated catalogue of `--products` products in a `bench-` index:
titles from a word list, each title's vector from the model's real TEXT
handler (so the name mode is what it is in production), image vectors from the
benchmarks' clustered latent set (`vector_sets`), 512-d for ViT-B-32 (the
title vectors are cached in $CATSEARCH_HOME/bench per artifact and size). The
artifact has random weights of the real architecture (no model hub here): the
time does not depend on the weights. Then times `quality_gate.evaluate_index`
(the task's body: scan, model load, 32 titles encoded and checked against the
index's title vectors, one `_msearch` per product in four threads, run report,
`_meta`) on a `--sample` of the products; with `--encode-all`, also the same
measure with every title encoded by the model (batched); and, as the reference
in the same run, `--reference` titles asked one by one through
`SearchClient.search_text` in the three modes (the user's path, one encode per
query). Removes its index and bucket at the end.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import _common as bench

from catalogue_search import index, quality_gate
from catalogue_search_dev.localenv import cache_home
from catalogue_search_dev.model_build import build_model_artifact, upload_model_artifact

WORDS = ["red", "blue", "green", "small", "large", "round", "square", "wooden", "metal", "soft", "bright", "dark"]
THINGS = ["chair", "lamp", "mug", "shoe", "ball", "flower", "phone case", "backpack", "table", "bottle", "kite"]


def title(i: int) -> str:
    a, b, c = WORDS[i % 12], WORDS[(i // 12) % 12], THINGS[(i // 144) % 11]
    return f"{a} {b} {c}, model {i}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=2000, help="products in the index")
    parser.add_argument("--encode-all", action="store_true", help="also time it with every title encoded")
    parser.add_argument("--sample", type=int, default=1000, help="products evaluated (CATSEARCH_QUALITY_SAMPLE)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--model-config", type=Path, default=None, help="model config JSON (non built-in models)")
    parser.add_argument("--reference", type=int, default=50, help="titles asked one by one through SearchClient")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("catalogue_search").setLevel(logging.INFO)  # the step's own lines (timings, the table)
    logging.getLogger("catalogue_search.handler").setLevel(logging.WARNING)
    import boto3
    import numpy as np

    from catalogue_search.handler import load_handler_from_artifact
    from catalogue_search.search import LocalEncoder, SearchClient

    name = bench.bench_name("eval")
    settings = bench.settings(
        bucket=name,
        model_name=args.model,
        model_pretrained="",
        index_alias=f"{name}-alias",
        quality_sample=args.sample,
        allow_random_weights=True,
    )
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    client = bench.client()
    print(f"machine: {bench.machine()}")
    s3.create_bucket(Bucket=settings.bucket)
    try:
        artifact = cache_home() / "artifacts" / f"{settings.model_slug}-random" / "model.tar.gz"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        info = build_model_artifact(artifact, args.model, "", args.model_config)
        upload_model_artifact(settings, s3, artifact)
        text = load_handler_from_artifact(artifact, "TEXT", cache_dir=settings.model_cache)
        titles = [title(i) for i in range(args.products)]
        started = time.perf_counter()
        cached = cache_home() / "bench" / f"eval-titles-{info.artifact_version}-{args.products}.npy"
        if cached.is_file():  # the setup's title vectors: encoded once per artifact and size
            names = np.load(cached)
        else:
            names = text.encode_texts(titles)
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, names)
        images = bench.vectors("latent", args.products, info.embed_dim, seed=0)
        print(f"setup: {args.products} titles encoded in {time.perf_counter() - started:.1f}s", flush=True)
        body = index.index_body(settings, alias=settings.index_alias, dimension=info.embed_dim, run_key=name)
        body["mappings"]["_meta"]["artifact_version"] = info.artifact_version
        index.create_index(client, name, body)
        docs = (
            index.document(
                {**bench.product(i), "item_name": titles[i]}, images[i].tolist(), args.model, names[i].tolist()
            )
            for i in range(args.products)
        )
        index.bulk_load(client, name, docs, total=args.products, threads=2)
        index.finish_loading(client, name, 0)

        started = time.perf_counter()
        summary = quality_gate.evaluate_index(
            settings, s3, client, index_name=name, alias=settings.index_alias, report_key=f"runs/{name}/quality.json"
        )
        took = time.perf_counter() - started
        all_encoded = None
        if args.encode_all:
            started = time.perf_counter()
            quality_gate.measure(settings, s3, client, name, encode_all=True)
            all_encoded = time.perf_counter() - started
        searcher = SearchClient(settings.replace(index_alias=name), client=client, encoder=LocalEncoder(settings, s3))
        searcher.search_text(titles[0], 10)  # loads the model: not timed
        started = time.perf_counter()
        for i in range(args.reference):
            for mode in ("image", "name", "hybrid"):
                searcher.search_text(titles[i * 7 % args.products], 10, mode=mode)
        one_by_one = (time.perf_counter() - started) / args.reference
    finally:
        client.indices.delete(index=name, ignore_unavailable=True)
        bucket = boto3.resource("s3", **settings.boto3_kwargs()).Bucket(settings.bucket)
        bucket.objects.all().delete()
        bucket.delete()
    per_product = took / summary["sample_size"]
    print(f"\nevaluate_index, {summary['sample_size']} of {args.products} products ({args.model}, {info.embed_dim}-d):")
    print(f"  total {took:.1f}s ({per_product * 1000:.0f} ms per product, three modes)")
    if all_encoded is not None:
        print(f"  with every title encoded (batched): {all_encoded:.1f}s ({all_encoded / took:.1f} x the default)")
    print(f"  reference, one by one through SearchClient.search_text: {one_by_one * 1000:.0f} ms per product")
    print(f"  ratio x{one_by_one / per_product:.1f} faster; target 1,000 products in under 60 s: ", end="")
    print("met" if took * 1000 / summary["sample_size"] < 60 else "NOT met")
    print(f"  figures: text -> image recall@10 {summary['recall@10']} (chance {summary['chance_recall@10']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
