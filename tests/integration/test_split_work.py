"""The copy and the load split into parts, as Celery workers run them: concurrently, one part retried.

On the light stack (moto, the one node): a small generated ABO catalogue with its vectors seeded.
Three copy parts and three load parts run at once in threads, one of each runs a second time (a
retry after a worker died), and the result is the one-task result: the same products, every copy in
the shared ledger, every product indexed exactly once. An incremental build (issue 24) splits only
its changed products among the parts, on a clone of the served index.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from catalogue_search import catalogue, index, ingest
from catalogue_search.contract import JSONLINES
from catalogue_search.errors import PermanentError
from catalogue_search.s3util import get_bytes, ledger_key, put_bytes, read_ledger
from catalogue_search_dev import abo_generator, demo

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"
IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-gpu-py312"
PARTS = 3


@pytest.fixture
def generated(settings, s3, opensearch_url, unique, tmp_path):
    settings = settings.replace(
        source_bucket=f"test-abo-{unique}",
        model_name="tiny-clip",
        model_pretrained="",
        opensearch_url=opensearch_url,
        bulk_chunk_size=20,
    )
    gen = abo_generator.generate(300, seed=2)
    demo.prepare_model(settings, s3, TINY)
    abo_generator.stage_seeded(gen, tmp_path, s3, settings, seed=2, chunk=16)
    client = index.client_from_settings(settings)
    yield settings, gen.summary.expected_products, client
    for name in client.indices.get(index=f"{settings.index_alias}-*"):
        client.indices.delete(index=name)


def _plan(settings, s3, run_id: str, parts: int) -> ingest.RunPlan:
    settings = settings.replace(split_parts=parts)
    plan = ingest.RunPlan.for_run(settings, run_id, shards=ingest.available_shards(s3, settings))
    for shard in plan.shards:
        ingest.filter_shard(settings, s3, plan, shard)
    return plan


def test_parts_run_at_once_and_retried_give_the_one_task_result(generated, s3, sagemaker_client):
    settings, expected, client = generated
    single = _plan(settings, s3, "one-task", 1)
    one = ingest.copy_run_images(settings, s3, single)

    split_settings = settings.replace(images_prefix="split-images/")
    plan = _plan(split_settings, s3, "split", PARTS)
    with ThreadPoolExecutor(PARTS) as pool:
        reports = list(pool.map(lambda part: ingest.copy_part(split_settings, s3, plan, part), range(PARTS)))
    again = ingest.copy_part(split_settings, s3, plan, 1)  # a retried part: nothing left to copy
    assert again["copied"] == 0 and again["skipped"] == reports[1]["copied"] + reports[1]["skipped"]
    reports[1] = again
    copied = ingest.record_copies(split_settings, s3, plan, reports)
    # The same products, in the same order, as one task wrote them.
    assert get_bytes(s3, settings.bucket, plan.products_key) == get_bytes(s3, settings.bucket, single.products_key)
    assert copied["products"] == one["products"] and copied["missing"] == one["missing"]
    # Every part's copies reached the shared ledger (one writer merged them).
    ledger = read_ledger(s3, settings.bucket, ledger_key(split_settings.images_prefix))
    kept = ingest.products(split_settings, s3, plan)
    assert {split_settings.images_prefix + p["path"] for p in kept} <= set(ledger)

    ingest.prepare_encoding(split_settings, s3, sagemaker_client, plan, IMAGE_URI)
    with ThreadPoolExecutor(PARTS) as pool:
        parts = list(pool.map(lambda part: ingest.load_part(split_settings, s3, client, plan, part), range(PARTS)))
    assert sum(p["chunks"] for p in parts) > PARTS  # every part had chunks of its own
    parts[0] = ingest.load_part(split_settings, s3, client, plan, 0)  # a retried part overwrites its own
    loaded = ingest.finish_index(split_settings, s3, client, plan, parts)
    assert loaded["indexed"] == expected
    assert client.count(index=plan.index)["count"] == expected
    ids = [h["_id"] for h in client.search(index=plan.index, body={"size": 10000, "_source": False})["hits"]["hits"]]
    assert len(ids) == len(set(ids)) == expected
    settings_now = client.indices.get_settings(index=plan.index)[plan.index]["settings"]["index"]
    assert settings_now["refresh_interval"] == "1s"


def test_a_missing_part_report_stops_the_record(generated, s3):
    settings, _, _ = generated
    plan = _plan(settings, s3, "short", PARTS)
    reports = [ingest.copy_part(settings, s3, plan, part) for part in (0, 2)]
    with pytest.raises(PermanentError, match=r"copy parts \[1\] of 3 reported nothing"):
        ingest.record_copies(settings, s3, plan, reports)


def test_an_incremental_build_shares_only_the_changed_products_among_the_parts(generated, s3, sagemaker_client):
    """Issue 24 on the split load: the run's index is a clone of the served one (choose_build); the load
    parts, run at once, upsert only the added and updated products, the removed ones are gone, and
    every other product is left as the served index holds it, exactly once."""
    settings, expected, client = generated
    settings = settings.replace(split_parts=PARTS)
    first = _plan(settings, s3, "week-1", PARTS)
    ingest.copy_run_images(settings, s3, first)
    ingest.prepare_encoding(settings, s3, sagemaker_client, first, IMAGE_URI)
    assert ingest.choose_build(settings, s3, client, first)["mode"] == "full"
    ingest.load_index(settings, s3, client, first)
    index.swap_alias(client, settings.index_alias, first.index)

    second = dataclasses.replace(_plan(settings, s3, "week-2", PARTS), base_index=first.index)
    ingest.copy_run_images(settings, s3, second)
    items = ingest.products(settings, s3, second)
    renamed = {p["item_id"] for p in items[:3]}
    for p in items[:3]:
        p["item_name"] = f"renamed {p['item_id']}"
    removed = {p["item_id"] for p in items[3:5]}
    put_bytes(s3, settings.bucket, second.products_key, catalogue.to_jsonl(items[5:] + items[:3]), JSONLINES)
    ingest.prepare_encoding(settings, s3, sagemaker_client, second, IMAGE_URI)
    build = ingest.choose_build(settings, s3, client, second)
    assert (build["mode"], build["updated"], build["removed"], build["added"]) == ("incremental", 3, 2, 0)
    with ThreadPoolExecutor(PARTS) as pool:
        parts = list(pool.map(lambda part: ingest.load_part(settings, s3, client, second, part), range(PARTS)))
    assert sum(p["indexed"] for p in parts) == 3  # only the renamed products were indexed again
    assert sum(p["chunks"] for p in parts) <= 3  # the chunks that hold them, each read by one part
    loaded = ingest.finish_index(settings, s3, client, second, parts)
    assert loaded["build"] == {"mode": "incremental", "base_index": first.index}
    ids = [h["_id"] for h in client.search(index=second.index, body={"size": 10000, "_source": False})["hits"]["hits"]]
    assert len(ids) == len(set(ids)) == expected - 2 and not removed & set(ids)
    for item_id in renamed:
        assert client.get(index=second.index, id=item_id)["_source"]["item_name"] == f"renamed {item_id}"
    assert client.count(index=first.index)["count"] == expected  # the served index is never written to
