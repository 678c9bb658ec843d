"""Publishing across runs, against the real OpenSearch node and moto, without Airflow.

The shrink guard, retention of served indices only, the clean-up of indices
that never served, rollback (`./dev rollback`), reruns that never touch a
served index, and the image copy skip by recorded source ETag.
"""

from __future__ import annotations

import math

import pytest

from catalogue_search import index, ingest, state
from catalogue_search.errors import PermanentError
from catalogue_search.s3util import SOURCE_ETAG, copy_images, ledger_key
from catalogue_search_dev import dev


def _unit(n: int) -> list[float]:
    v = [1.0, float(n % 7), float(n % 5)]
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _product(n: int) -> dict:
    item_id = f"B{n:05d}"
    return {"item_id": item_id, "item_name": item_id, "image_id": "i", "main_image_id": "i", "path": "p.jpg"}


class Runs:
    """Index-building "runs" for one alias: each loads `count` products into its own index."""

    def __init__(self, settings, s3, client) -> None:
        self.settings, self.s3, self.client = settings, s3, client
        self.alias = settings.index_alias

    def plan(self, n: int, allow_shrink: bool = False) -> ingest.RunPlan:
        targets = index.alias_targets(self.client, self.alias)
        run_key = f"test/run-{n}"
        return ingest.RunPlan(
            run_key=run_key,
            shards=["0"],
            language_tag="en_US",
            max_products=None,
            alias=self.alias,
            force_reencode=False,
            index=index.index_name(self.alias, "test", run_key),
            prefix=f"manifests/run-{n}/",
            base_index=targets[0] if targets else None,
            allow_shrink=allow_shrink,
        )

    def load(self, plan: ingest.RunPlan, count: int) -> str:
        body = index.index_body(self.settings, alias=self.alias, dimension=3, run_key=plan.run_key)
        assert index.create_index(self.client, plan.index, body) == "created"
        docs = [index.document(_product(n), _unit(n), "test") for n in range(count)]
        assert index.bulk_load(self.client, plan.index, docs, total=count).failed == []
        index.finish_loading(self.client, plan.index, 0)
        state.write_state(
            self.s3, self.settings, self.alias, plan.index, {"0": []}, language_tag="en_US", run_key=plan.run_key
        )
        return plan.index

    def publish(self, n: int, count: int, allow_shrink: bool = False) -> str:
        plan = self.plan(n, allow_shrink)
        self.load(plan, count)
        ingest.publish(self.settings, self.s3, self.client, plan)
        return plan.index

    def target(self) -> str:
        return index.alias_targets(self.client, self.alias)[0]

    def indices(self) -> set[str]:
        return {i["index"] for i in index.indices_for_alias(self.client, self.alias)}


@pytest.fixture
def runs(settings, s3, opensearch_url):
    client = index.make_client(opensearch_url)
    r = Runs(settings.replace(opensearch_url=opensearch_url), s3, client)
    yield r
    for name in r.indices():
        client.indices.delete(index=name, ignore_unavailable=True)


def test_the_shrink_guard_refuses_a_much_smaller_catalogue_unless_allowed(runs):
    a = runs.publish(1, 20)
    small = runs.plan(2)
    runs.load(small, 10)
    with pytest.raises(PermanentError, match=r"shrink guard: .* holds 10 products, alias .* serves 20 now.*50\.0%"):
        ingest.publish(runs.settings, runs.s3, runs.client, small)
    assert runs.target() == a and runs.client.count(index=runs.alias)["count"] == 20
    # A 50% shrink passes when allowed for the run.
    ingest.publish(runs.settings, runs.s3, runs.client, runs.plan(2, allow_shrink=True))
    assert runs.target() == small.index


def test_retention_keeps_served_indices_only_and_clean_up_removes_the_rest(runs):
    a = runs.publish(1, 10)
    failed = runs.load(runs.plan(2), 10)  # validation failed: never served
    c = runs.publish(3, 10)
    # Retention 1 keeps the one served before c (a), not the newer index that never served.
    assert runs.indices() == {a, failed, c}
    assert state.served(runs.s3, runs.settings, runs.alias) == [a, c]
    report = ingest.clean_up(runs.settings, runs.s3, runs.client, runs.alias)
    assert report["removed"] == [failed]
    assert runs.indices() == {a, c}
    assert state.read_manifest(runs.s3, runs.settings, runs.alias, failed) is None
    d = runs.publish(4, 10)
    assert runs.indices() == {c, d}
    assert state.read_manifest(runs.s3, runs.settings, runs.alias, a) is None


def test_clean_up_lists_only_its_alias(runs, opensearch_url):
    other = index.index_name(runs.alias + "-trial", "test", "x")  # matches `<alias>-*`, another alias
    body = index.index_body(runs.settings, alias=runs.alias + "-trial", dimension=3, run_key="x")
    runs.client.indices.create(index=other, body=body)
    try:
        runs.publish(1, 5)
        assert ingest.clean_up(runs.settings, runs.s3, runs.client, runs.alias)["removed"] == []
        assert runs.client.indices.exists(index=other)
    finally:
        runs.client.indices.delete(index=other, ignore_unavailable=True)


def test_rollback_moves_the_alias_back_in_one_call(runs, monkeypatch, capsys):
    a = runs.publish(1, 10)
    b = runs.publish(2, 10)
    for key, value in {
        "CATSEARCH_BUCKET": runs.settings.bucket,
        "CATSEARCH_INDEX_ALIAS": "products-not-this-one",
        "CATSEARCH_AWS_ENDPOINT_URL": runs.settings.aws_endpoint_url,
        "CATSEARCH_OPENSEARCH_URL": runs.settings.opensearch_url,
    }.items():
        monkeypatch.setenv(key, value)
    assert dev.main(["rollback", "--alias", runs.alias]) == 0
    assert capsys.readouterr().out.strip() == f"alias {runs.alias}: {b} -> {a}"
    assert runs.target() == a
    assert state.served(runs.s3, runs.settings, runs.alias) == [a]
    # Nothing older to go back to: a clear message, the alias stays.
    assert dev.main(["rollback", "--alias", runs.alias]) == 1
    assert "no earlier served index to roll back to" in capsys.readouterr().err
    assert runs.target() == a
    # The index rolled back from is no rollback target any more: the next clean-up removes it.
    assert ingest.clean_up(runs.settings, runs.s3, runs.client, runs.alias)["removed"] == [b]


def test_a_rerun_never_modifies_a_served_index(runs):
    plan = runs.plan(1)
    a = runs.load(plan, 10)
    ingest.publish(runs.settings, runs.s3, runs.client, plan)
    before = runs.client.indices.get_settings(index=a)[a]["settings"]["index"]
    body = index.index_body(runs.settings, alias=runs.alias, dimension=3, run_key=plan.run_key)
    served = ingest.served_indices(runs.settings, runs.s3, runs.client, runs.alias)
    assert index.create_index(runs.client, a, body, served=served) == "served"
    assert runs.client.indices.get_settings(index=a)[a]["settings"]["index"] == before
    # Publishing the same run again is a no-op; an old run's swap does not roll the alias back.
    ingest.publish(runs.settings, runs.s3, runs.client, plan)
    assert runs.target() == a
    runs.publish(2, 10)
    with pytest.raises(PermanentError, match="already served .* was superseded"):
        ingest.publish(runs.settings, runs.s3, runs.client, plan)


def test_copy_skips_by_the_recorded_source_etag_not_the_copy_etag(s3, settings, unique):
    source = f"test-source-{unique}"
    s3.create_bucket(Bucket=source)
    # A multipart source: its ETag ("<md5 of md5s>-2") is never the ETag of a server-side copy.
    part = b"x" * (5 * 1024 * 1024)
    upload = s3.create_multipart_upload(Bucket=source, Key="images/small/ab/one.jpg")
    parts = []
    for number, body in enumerate([part, b"tail"], start=1):
        etag = s3.upload_part(
            Bucket=source, Key="images/small/ab/one.jpg", PartNumber=number, UploadId=upload["UploadId"], Body=body
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(
        Bucket=source, Key="images/small/ab/one.jpg", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    s3.put_object(Bucket=source, Key="images/small/ab/two.jpg", Body=b"two")
    products = [{"item_id": "B1", "path": "ab/one.jpg"}, {"item_id": "B2", "path": "ab/two.jpg"}]

    def copy():
        return copy_images(
            s3, products, source_bucket=source, source_prefix="", dest_bucket=settings.bucket, dest_prefix="img/"
        )[1]

    assert copy().copied == 2
    src_etag = s3.head_object(Bucket=source, Key="images/small/ab/one.jpg")["ETag"].strip('"')
    dest = s3.head_object(Bucket=settings.bucket, Key="img/ab/one.jpg")
    assert dest["Metadata"][SOURCE_ETAG] == src_etag
    assert dest["ETag"].strip('"') != src_etag  # the copy's ETag differs: comparing ETags would copy again
    again = copy()
    assert (again.copied, again.skipped) == (0, 2)
    s3.put_object(Bucket=source, Key="images/small/ab/two.jpg", Body=b"TWO")  # the source changed
    assert copy().copied == 1


def _calls(s3):
    """The S3 operations `s3` makes from now on, by name."""
    calls: list[str] = []
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def test_a_re_index_checks_its_copies_by_listing_with_no_request_per_image(s3, settings, unique):
    source = f"test-source-{unique}"
    s3.create_bucket(Bucket=source)
    products = [{"item_id": f"B{i:03d}", "path": f"{i % 4:02x}/{i:04d}.jpg"} for i in range(40)]
    for p in products:
        s3.put_object(Bucket=source, Key=f"images/small/{p['path']}", Body=f"jpeg {p['path']}".encode())

    def copy():
        return copy_images(
            s3, products, source_bucket=source, source_prefix="", dest_bucket=settings.bucket, dest_prefix="img/"
        )[1]

    calls = _calls(s3)
    assert copy().copied == 40
    assert calls.count("HeadObject") == 0 and calls.count("CopyObject") == 40  # the source folders were listed
    calls.clear()
    again = copy()
    assert (again.copied, again.skipped) == (0, 40)
    assert set(calls) == {"ListObjectsV2", "GetObject"}  # 4 source folders, the destination, the ledger
    assert len(calls) == 6

    # A source image changed: only that one is copied again.
    s3.put_object(Bucket=source, Key=f"images/small/{products[7]['path']}", Body=b"a new photo")
    assert (copy().copied, copy().copied) == (1, 0)

    # A copy rewritten behind the ledger's back (same size, other bytes) is checked and copied again.
    dest_key = f"img/{products[3]['path']}"
    size = s3.head_object(Bucket=settings.bucket, Key=dest_key)["ContentLength"]
    s3.put_object(Bucket=settings.bucket, Key=dest_key, Body=b"x" * size)
    calls.clear()
    assert copy().copied == 1
    assert calls.count("HeadObject") == 1
    assert s3.get_object(Bucket=settings.bucket, Key=dest_key)["Body"].read() == f"jpeg {products[3]['path']}".encode()

    # Without the ledger (copies made before it), the recorded source ETag still decides, one HEAD each;
    # the ledger is then rebuilt and the next run needs none.
    s3.delete_object(Bucket=settings.bucket, Key=ledger_key("img/"))
    calls.clear()
    assert copy().skipped == 40 and calls.count("HeadObject") == 40
    calls.clear()
    assert copy().skipped == 40 and calls.count("HeadObject") == 0


def test_a_missing_source_image_drops_its_product_in_both_lookups(s3, settings, unique):
    """Many images per folder: listed; one image per folder: a HEAD each. Either way the missing one is named."""
    source = f"test-source-{unique}"
    s3.create_bucket(Bucket=source)
    for per_folder in (True, False):
        products = [{"item_id": f"B{i}", "path": f"{0 if per_folder else i:02x}/{i}.jpg"} for i in range(6)]
        for p in products[1:]:
            s3.put_object(Bucket=source, Key=f"images/small/{p['path']}", Body=b"jpeg")
        calls = _calls(s3)
        kept, report = copy_images(
            s3,
            products,
            source_bucket=source,
            source_prefix="",
            dest_bucket=settings.bucket,
            dest_prefix=f"{per_folder}/",
        )
        assert report.missing == ["B0"] and [p["item_id"] for p in kept] == [f"B{i}" for i in range(1, 6)]
        assert calls.count("HeadObject") == (0 if per_folder else 6)
