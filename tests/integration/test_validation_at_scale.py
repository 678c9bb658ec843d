"""The validation gate on a 30,000-document index (real OpenSearch node, Lucene HNSW).

The old gate (top-5 of an unfiltered k-NN query must contain the product at 1.0)
failed on correct indices of this size; the gate now checks each sampled
product's vector exactly (k-NN filtered on its item_id) and measures ANN
recall@10 against exact search.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from catalogue_search import index
from catalogue_search.settings import Settings

N = 30_000
DIM = 32


def _product(item_id: str) -> dict:
    return {"item_id": item_id, "item_name": item_id, "image_id": "i", "main_image_id": "i", "path": "p.jpg"}


@pytest.fixture(scope="module")
def big_index(opensearch_url):
    client = index.make_client(opensearch_url, timeout=120)
    name = f"t-scale-{np.random.default_rng().integers(1 << 30):x}"
    rng = np.random.default_rng(20261125)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"P{n:06d}" for n in range(N)]
    # Products that share one image share one vector: they tie at 1.0.
    vectors[1] = vectors[2] = vectors[0]
    started = time.monotonic()
    body = index.index_body(Settings(), alias="t-scale", dimension=DIM, run_key=name)
    assert index.create_index(client, name, body) == "created"  # loading state: refresh off, no replicas
    docs = (index.document(_product(i), v.tolist(), "random") for i, v in zip(ids, vectors))
    report = index.bulk_load(client, name, docs, total=N, chunk_size=2000)
    assert report.failed == [] and report.indexed == N
    index.finish_loading(client, name, 0)
    print(f"loaded {N} x {DIM}-d vectors in {time.monotonic() - started:.1f}s")
    yield client, name, dict(zip(ids, vectors))
    client.indices.delete(index=name, ignore_unavailable=True)


def _gate(client, name, vectors, run: str) -> dict:
    ids = sorted(vectors)
    checked = index.sample_ids(ids, 30, seed=f"self-match/{run}") + ["P000000", "P000001", "P000002"]
    queried = index.sample_ids(ids, 50, seed=f"recall/{run}")
    return index.validate(
        client,
        name,
        expected_count=N,
        expected={i: vectors[i].tolist() for i in checked},
        queries=[vectors[i].tolist() for i in queried],
        min_recall=0.9,
    )


def test_the_gate_passes_on_a_correct_index_of_30000_vectors(big_index):
    client, name, vectors = big_index
    started = time.monotonic()
    report = _gate(client, name, vectors, "run-1")
    print(f"gate: {report} in {time.monotonic() - started:.1f}s")
    assert report["count"] == N and report["self_matches"] == 33
    assert report["recall"] >= 0.9


def test_samples_change_from_run_to_run():
    ids = [f"P{n:06d}" for n in range(N)]
    assert index.sample_ids(ids, 20, seed="run-1") == index.sample_ids(ids, 20, seed="run-1")
    assert index.sample_ids(ids, 20, seed="run-1") != index.sample_ids(ids, 20, seed="run-2")


def test_the_gate_fails_on_an_index_with_one_wrong_vector(big_index):
    client, name, vectors = big_index
    victim = index.sample_ids(sorted(vectors), 30, seed="self-match/run-3")[7]
    wrong = np.roll(vectors[victim], 1)
    client.index(index=name, id=victim, body=index.document(_product(victim), wrong.tolist(), "random"))
    client.indices.refresh(index=name)
    try:
        with pytest.raises(index.IndexValidationError, match=f"self-match failed for {victim}"):
            _gate(client, name, vectors, "run-3")
    finally:
        client.index(index=name, id=victim, body=index.document(_product(victim), vectors[victim].tolist(), "random"))
        client.indices.refresh(index=name)
