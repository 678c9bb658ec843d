"""End to end at the full-size run's shape, small: the synthetic ABO catalogue, its
PRECOMPUTED vectors seeded into the embedding stores, then `catalogue_ingest`.

This is what `./dev bench full-dag` does at 147,702 listings (BENCHMARKS.md): here
2,000 listings, so that the suite checks the same path in a minute. It proves the
generator's own count of what a correct run indexes, that the seeded stores are
in the format the pipeline reads (nothing but the dirt is sent to the transform),
that the dirt is dropped with its reasons, and that the quality evaluation takes the
sampled titles' query vectors from the index once the model agrees with them.
"""

from __future__ import annotations

import re

import boto3
import numpy as np
import pytest
from dag_runs import TINY, _dags_test, tiny_stack_env

from catalogue_search import index
from catalogue_search.quality_queries import CHECKED_TITLES
from catalogue_search.s3util import client_config
from catalogue_search_dev import abo_generator, demo, testenv
from catalogue_search_dev.sample_catalogue import ensure_bucket

LISTINGS = 2_000
TINY_DIM = 32  # the tiny model's: the quality evaluation encodes titles with it and queries these vectors


@pytest.fixture(scope="module")
def generated_run(moto_url, sagemaker_url, opensearch_url, aws_env, tmp_path_factory):
    env, settings = tiny_stack_env("e2e-gen", moto_url, sagemaker_url, opensearch_url, aws_env)
    s3 = boto3.client("s3", **{**settings.boto3_kwargs(), "config": client_config(32)})
    out_dir = tmp_path_factory.mktemp("abo")
    gen = abo_generator.generate(LISTINGS, seed=3)
    abo_generator.write_layout(gen, out_dir)
    abo_generator.upload(gen, out_dir, s3, settings.source_bucket, log=lambda _: None)
    ensure_bucket(s3, settings.bucket)
    demo.prepare_model(settings, s3, TINY)
    paths, vecs = abo_generator.precomputed_vectors(gen, dim=TINY_DIM, seed=3)
    np.savez(out_dir / abo_generator.VECTORS_FILENAME, ids=np.asarray(paths, dtype=str), embeddings=vecs)
    # As the benchmark does: the titles the quality evaluation samples get the TEXT model's own vectors.
    own_titles = abo_generator.model_title_vectors(gen, s3, settings)
    seeded = abo_generator.seed_embedding_store(
        gen, out_dir, s3, settings, chunk=256, log=lambda _: None, title_vectors=own_titles
    )
    result = _dags_test(env)
    assert result.returncode == 0, testenv.run_failure(result)
    return gen, settings, seeded, result.stdout + result.stderr


def test_the_run_indexes_what_the_generator_says_a_correct_run_indexes(generated_run):
    gen, settings, seeded, log = generated_run
    client = index.client_from_settings(settings)
    assert client.count(index=settings.index_alias)["count"] == gen.summary.expected_products
    assert f"documents loaded: {gen.summary.expected_products} / {gen.summary.expected_products}" in log
    # Every indexed product got its seeded title vector.
    n = gen.summary.expected_products
    assert f"title vectors added to {n} of {n} documents" in log


def test_only_the_dirt_goes_to_the_transform(generated_run):
    """The seeded stores cover every image that exists and decodes and every title: the image
    transform gets only truncated JPEGs (which fail with a reason), the title one nothing."""
    gen, _, seeded, log = generated_run
    main = set(gen.main_paths.tolist())
    corrupt = len(gen.corrupt_paths & main)
    assert corrupt > 0 and seeded == len(main - gen.absent_paths - gen.corrupt_paths)
    pending = re.search(r"(\d+) of (\d+) images need encoding", log)
    assert pending and 0 < int(pending.group(1)) <= corrupt, pending
    assert "nothing new to encode: every title already has an embedding" in log
    assert "could not be encoded" in log


def test_a_product_s_seeded_vector_finds_it_first(generated_run):
    """The indexed vectors are the seeded ones: each sampled product's precomputed vector
    finds that product first, with cosine 1 (score 1.0)."""
    gen, settings, _, _ = generated_run
    client = index.client_from_settings(settings)
    paths, vecs = abo_generator.precomputed_vectors(gen, dim=TINY_DIM, seed=3)
    row = {p: i for i, p in enumerate(paths)}
    hits = client.search(
        index=settings.index_alias,
        body={"size": 5, "_source": ["item_id", "image_path"], "query": {"match_all": {}}},
    )["hits"]["hits"]
    assert len(hits) == 5
    for hit in hits:
        path = hit["_source"]["image_path"]
        vector = vecs[row[path]].tolist()
        # Unfiltered, through HNSW: a product with this image comes first, with cosine 1.
        top = client.search(
            index=settings.index_alias, body=index.knn_query(vector, 1, candidates=settings.knn_candidates)
        )
        top = top["hits"]["hits"][0]
        assert top["_source"]["image_path"] == path and top["_score"] == pytest.approx(1.0, abs=1e-5)
        # Filtered on the product: its own document holds exactly this vector.
        own = index.knn_query(
            vector, 1, [{"term": {"item_id": hit["_source"]["item_id"]}}], candidates=settings.knn_candidates
        )
        own = client.search(index=settings.index_alias, body=own)["hits"]["hits"][0]
        assert own["_id"] == hit["_id"] and own["_score"] == pytest.approx(1.0, abs=1e-5)


def test_the_evaluation_checks_32_titles_and_takes_the_others_from_the_index(generated_run):
    """The sampled titles' stored vectors are the TEXT model's (`model_title_vectors`): the evaluation
    encodes `CHECKED_TITLES` of them as a check and takes the rest from the index, as a real run does."""
    _, settings, _, log = generated_run
    found = re.search(
        r"evaluated (\d+) titles in [\d.]+ s: (\d+) encoded by the TEXT model \([\d.]+ s; (\d+) of them checked "
        r"against the index's title vectors\), (\d+) taken from the index's title vectors",
        log,
    )
    assert found, "no evaluation line in the run's log"
    sample, encoded, checked, stored = map(int, found.groups())
    assert sample == settings.quality_sample
    assert encoded == checked == CHECKED_TITLES and stored == sample - CHECKED_TITLES
