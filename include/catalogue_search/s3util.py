"""Small S3 helpers and the parallel server-side image copy."""

from __future__ import annotations

import gzip
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable
from urllib.parse import urlsplit

from catalogue_search.aws import is_s3_missing
from catalogue_search.contract import GZIP, JPEG, OCTET_STREAM
from catalogue_search.errors import InvalidValueError

log = logging.getLogger(__name__)

# User metadata on each copied image: the source object's ETag when it was copied.
SOURCE_ETAG = "source-etag"

# Threads that share one S3 client: the image copy, the embedding reads, the catalogue upload.
S3_WORKERS = 16
# Attempts per AWS call (the first included) under botocore's "standard" retry mode (CATSEARCH_AWS_MAX_ATTEMPTS).
MAX_ATTEMPTS = 5


def client_config(workers: int = S3_WORKERS, max_attempts: int = MAX_ATTEMPTS):
    """botocore config for a client shared by `workers` threads: one pooled connection per thread, and
    botocore's "standard" retry mode: throttling (SlowDown), timeouts, connection errors and 5xx are
    retried with jittered exponential backoff, at most `max_attempts` attempts in all (the default
    "legacy" mode retries a narrower set of errors).

    botocore's pool holds 10 connections; with more threads every extra one is
    opened, used once and dropped with "Connection pool is full, discarding connection".
    """
    from botocore.config import Config

    if max_attempts < 1:
        raise ValueError(f"CATSEARCH_AWS_MAX_ATTEMPTS={max_attempts} is not at least 1")
    return Config(
        max_pool_connections=max(10, workers, S3_WORKERS),
        retries={"mode": "standard", "total_max_attempts": max_attempts},
    )


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise InvalidValueError(f"not an s3:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def list_objects(s3, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Every object under `prefix`: key -> {"size", "etag", "modified"}."""
    out: dict[str, dict[str, Any]] = {}
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = {"size": obj["Size"], "etag": obj["ETag"].strip('"'), "modified": obj["LastModified"]}
    return out


def get_bytes(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def get_or_none(s3, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None when it does not exist (any other error raises)."""
    try:
        return get_bytes(s3, bucket, key)
    except Exception as exc:
        if is_s3_missing(exc):
            return None
        raise


def put_bytes(s3, bucket: str, key: str, body: bytes, content_type: str = OCTET_STREAM) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


class Progress:
    """Thread-safe "done / total" logging at about every tenth of the work."""

    def __init__(self, what: str, total: int, logger: logging.Logger = log) -> None:
        self.what, self.total, self.log = what, total, logger
        self.done = 0
        self.step = max(1, total // 10)
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.done += 1
            if self.done % self.step == 0 or self.done == self.total:
                self.log.info("%s: %d / %d", self.what, self.done, self.total)


@dataclass
class CopyReport:
    copied: int = 0
    skipped: int = 0
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ledger_key(dest_prefix: str) -> str:
    """Where the copy ledger of the images under `dest_prefix` lives (beside them, not among them)."""
    return f"{dest_prefix.rstrip('/') or 'images'}.copies.json.gz"


def read_ledger(s3, bucket: str, key: str) -> dict[str, list[str]]:
    """The copy ledger: destination key -> [source ETag, the copy's own ETag]; empty if none yet."""
    raw = get_or_none(s3, bucket, key)
    if raw is None:
        return {}
    ledger = json.loads(gzip.decompress(raw))
    return {k: v for k, v in ledger.items() if isinstance(v, list) and len(v) == 2}


def _write_ledger(s3, bucket: str, key: str, entries: dict[str, list[str]], present: set[str]) -> None:
    """Merge this run's entries into the stored ledger (re-read: another run may have written since)."""
    ledger = {k: v for k, v in read_ledger(s3, bucket, key).items() if k in present}
    ledger.update(entries)
    body = gzip.compress(json.dumps(ledger, separators=(",", ":"), sort_keys=True).encode(), mtime=0)
    put_bytes(s3, bucket, key, body, GZIP)


def merge_ledgers(s3, bucket: str, dest_prefix: str, part_ledgers: Iterable[str]) -> int:
    """Merge the ledgers of a split copy's parts into the shared one (one writer); returns the entries merged."""
    entries: dict[str, list[str]] = {}
    for key in part_ledgers:
        entries.update(read_ledger(s3, bucket, key))
    if entries:
        present = set(read_ledger(s3, bucket, ledger_key(dest_prefix))) | set(entries)
        _write_ledger(s3, bucket, ledger_key(dest_prefix), entries, present)
    return len(entries)


def _source_listing(s3, bucket: str, prefix: str, paths: list[str], workers: int) -> dict[str, dict[str, Any]] | None:
    """The source objects of the folders `paths` live in (ABO: `images/small/<2 hex>/`), or None
    where a HEAD per image is cheaper: fewer than 2 images per folder, or images at the top level."""
    folders = {path.rpartition("/")[0] for path in paths}
    if "" in folders or len(paths) < 2 * len(folders):
        return None
    listing: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for part in pool.map(lambda folder: list_objects(s3, bucket, f"{prefix}{folder}/"), sorted(folders)):
            listing.update(part)
    return listing


def copy_images(
    s3,
    products: Iterable[dict[str, Any]],
    *,
    source_bucket: str,
    source_prefix: str,
    dest_bucket: str,
    dest_prefix: str,
    workers: int = S3_WORKERS,
    logger: logging.Logger = log,
    part_ledger: str | None = None,
) -> tuple[list[dict[str, Any]], CopyReport]:
    """Server-side copy of each product's image; skip what is already there.

    What a re-index of an unchanged catalogue pays is listings, not a request
    per image: the source folders the images live in are listed (a HEAD per
    image only where that is cheaper), and so is the destination. A copy ledger
    beside the copies (`ledger_key`) holds, per copied object, the source's ETag
    and the copy's own ETag; an image is skipped when the destination lists it
    with the size of the source and the ETag the ledger recorded for a copy of
    this very source ETag. The copy's ETag is not compared with the source's: it
    differs under SSE-KMS default encryption or for multipart sources. Objects
    the ledger does not know (copies made before it, or rewritten since) fall
    back to the `source-etag` metadata each copy also carries (one HEAD), then
    to equal ETags, and enter the ledger.
    A product whose source image is missing is dropped (and named in the
    report), not an error: the run goes on without it.

    One part of a copy split across workers (`part_ledger`: a key of its own)
    writes what it learnt there instead of into the shared ledger, which one
    writer then merges (`merge_ledgers`): parts never overwrite each other's entries.
    """
    products = list(products)
    source_base = f"{source_prefix}images/small/"
    existing = list_objects(s3, dest_bucket, dest_prefix)
    sources = _source_listing(s3, source_bucket, source_base, [p["path"] for p in products], workers)
    ledger_at = part_ledger or ledger_key(dest_prefix)
    ledger = read_ledger(s3, dest_bucket, ledger_key(dest_prefix))
    if part_ledger:  # a retry of this part: what its first try copied
        ledger.update(read_ledger(s3, dest_bucket, part_ledger))
    entries: dict[str, list[str]] = {}
    report = CopyReport()
    lock = threading.Lock()
    progress = Progress("images copied or checked", len(products), logger)

    def source(key: str) -> tuple[str, int] | None:
        if sources is not None:
            obj = sources.get(key)
            return (obj["etag"], obj["size"]) if obj else None
        try:
            head = s3.head_object(Bucket=source_bucket, Key=key)
        except Exception as exc:
            if not is_s3_missing(exc):
                raise
            return None
        return head["ETag"].strip('"'), head["ContentLength"]

    def already_copied(key: str, etag: str, size: int) -> bool:
        there = existing.get(key)
        if not there or there["size"] != size:
            return False
        recorded = ledger.get(key)
        if recorded is not None and recorded[1] == there["etag"]:
            return recorded[0] == etag
        metadata = s3.head_object(Bucket=dest_bucket, Key=key).get("Metadata", {})
        same = metadata.get(SOURCE_ETAG, there["etag"]) == etag
        if same:
            with lock:
                entries[key] = [etag, there["etag"]]
        return same

    def one(product: dict[str, Any]) -> bool:
        src_key = f"{source_base}{product['path']}"
        dest_key = f"{dest_prefix}{product['path']}"
        found = source(src_key)
        if found is None:
            with lock:
                report.missing.append(product["item_id"])
            logger.warning(
                "item %s: source image s3://%s/%s is missing, product dropped",
                product["item_id"],
                source_bucket,
                src_key,
            )
            progress.tick()
            return False
        etag, size = found
        if already_copied(dest_key, etag, size):
            with lock:
                report.skipped += 1
        else:
            result = s3.copy_object(
                Bucket=dest_bucket,
                Key=dest_key,
                CopySource={"Bucket": source_bucket, "Key": src_key},
                ContentType=JPEG,
                Metadata={SOURCE_ETAG: etag},
                MetadataDirective="REPLACE",
            )
            with lock:
                entries[dest_key] = [etag, result["CopyObjectResult"]["ETag"].strip('"')]
                report.copied += 1
        progress.tick()
        return True

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            keep = list(pool.map(one, products))
    finally:
        # Also after a failure: a retry then skips what this try copied without a HEAD each.
        if entries:
            _write_ledger(s3, dest_bucket, ledger_at, entries, set(existing) | set(entries))
    kept = [p for p, ok in zip(products, keep) if ok]
    report.missing.sort()
    return kept, report
