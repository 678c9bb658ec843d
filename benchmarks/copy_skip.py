"""The image copy's skip check at full size in moto: time and S3 requests.

    ./dev bench copy                 (150,000 objects: ~20 min of moto work on 2 cores)
    ./dev bench copy --n 5000

Uploads `--n` small JPEGs to a `bench-` source bucket, runs the project's
`s3util.copy_images` once (everything copied), then again with everything
already at the destination: the skip check, which is what a weekly re-index
pays. Every S3 request is counted by operation. The references, measured in
the same run: a check from two listings alone (source and destination, 1,000
keys a request, ETags compared: the floor), and the check before the copy
ledger (a HEAD of each source image and of each copy).
Both buckets are deleted afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import _common as cm

from catalogue_search import s3util


class Requests:
    """Counts the S3 API calls a client makes, by operation."""

    def __init__(self, s3) -> None:
        self.counts: Counter[str] = Counter()
        s3.meta.events.register("before-call.s3", self._count)

    def _count(self, model, **_):
        self.counts[model.name] += 1

    def take(self) -> Counter[str]:
        out, self.counts = self.counts, Counter()
        return out


def _empty_bucket(s3, bucket: str) -> None:
    keys = list(s3util.list_objects(s3, bucket, ""))
    for lo in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[lo : lo + 1000]], "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


def main(argv: list[str] | None = None) -> int:
    import boto3

    from catalogue_search.s3util import client_config
    from catalogue_search_dev.abo_generator import jpeg_pool

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=150_000)
    parser.add_argument("--workers", type=int, default=16, help="copy_images workers (the copy_workers setting)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    s = cm.settings()
    s3 = boto3.client("s3", **{**s.boto3_kwargs(), "config": client_config(64)})
    source, dest = cm.bench_name("copy-src"), cm.bench_name("copy-dst")
    print(f"machine: {cm.machine()}; moto at {s.aws_endpoint_url}")
    pool = jpeg_pool(200)
    products = [{"item_id": cm.doc_id(i), "path": f"{i % 256:02x}/{i:08x}.jpg"} for i in range(args.n)]
    try:
        s3.create_bucket(Bucket=source)
        s3.create_bucket(Bucket=dest)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=32) as ex:
            list(
                ex.map(
                    lambda i: s3.put_object(
                        Bucket=source, Key=f"images/small/{products[i]['path']}", Body=pool[i % len(pool)]
                    ),
                    range(args.n),
                )
            )
        print(f"source: {args.n:,} images uploaded in {time.perf_counter() - started:.0f} s")
        counter = Requests(s3)
        kwargs = dict(
            source_bucket=source, source_prefix="", dest_bucket=dest, dest_prefix="images/small/", workers=args.workers
        )
        started = time.perf_counter()
        _, first = s3util.copy_images(s3, products, **kwargs)
        first_s, first_req = time.perf_counter() - started, counter.take()
        assert first.copied == args.n, first
        print(f"first copy: {first.copied:,} copied in {first_s:.0f} s, requests {dict(first_req)}")

        started = time.perf_counter()
        _, again = s3util.copy_images(s3, products, **kwargs)
        skip_s, skip_req = time.perf_counter() - started, counter.take()
        assert again.skipped == args.n and again.copied == 0, again
        print(
            f"skip check (project's copy_images, nothing to copy): {skip_s:.1f} s, "
            f"{sum(skip_req.values()):,} requests {dict(skip_req)}"
        )

        started = time.perf_counter()
        src = s3util.list_objects(s3, source, "images/small/")
        dst = s3util.list_objects(s3, dest, "images/small/")
        todo = [
            p
            for p in products
            if (d := dst.get("images/small/" + p["path"])) is None
            or d["etag"] != src["images/small/" + p["path"]]["etag"]
        ]
        ref_s, ref_req = time.perf_counter() - started, counter.take()
        assert not todo
        print(
            f"reference (two listings, ETags compared): {ref_s:.1f} s, "
            f"{sum(ref_req.values()):,} requests {dict(ref_req)}"
        )
        print(
            f"ratio: skip check / reference = x{skip_s / ref_s:.2f} time, "
            f"x{sum(skip_req.values()) / sum(ref_req.values()):.2f} requests"
        )

        # The check before the copy ledger: a HEAD of each source image and of each copy.
        started = time.perf_counter()

        def heads(p: dict) -> bool:
            src_head = s3.head_object(Bucket=source, Key="images/small/" + p["path"])
            dst_head = s3.head_object(Bucket=dest, Key="images/small/" + p["path"])
            return dst_head["Metadata"].get(s3util.SOURCE_ETAG) == src_head["ETag"].strip('"')

        with ThreadPoolExecutor(max_workers=args.workers) as ex:
            assert all(ex.map(heads, products))
        head_s, head_req = time.perf_counter() - started, counter.take()
        print(
            f"previous check (a HEAD per source image and per copy, {args.workers} threads): {head_s:.1f} s, "
            f"{sum(head_req.values()):,} requests; the skip check is x{head_s / skip_s:.1f} faster, "
            f"x{sum(head_req.values()) / sum(skip_req.values()):.0f} fewer requests"
        )
        cm.save_json(
            args.json,
            {
                "benchmark": "copy",
                "machine": cm.machine(),
                "n": args.n,
                "first_s": first_s,
                "first_requests": dict(first_req),
                "skip_s": skip_s,
                "skip_requests": dict(skip_req),
                "reference_s": ref_s,
                "reference_requests": dict(ref_req),
                "per_image_head_s": head_s,
                "per_image_head_requests": dict(head_req),
            },
        )
    finally:
        for bucket in (source, dest):
            try:
                _empty_bucket(s3, bucket)
            except Exception as exc:  # noqa: BLE001  (report, keep cleaning)
                print(f"could not delete {bucket}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
