"""Small S3 helpers and the parallel server-side image copy."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Threads that share one S3 client: the image copy, the embedding reads, the catalogue upload.
S3_WORKERS = 16


def client_config(workers: int = S3_WORKERS):
    """botocore config for a client shared by `workers` threads: one pooled connection per thread.

    botocore's pool holds 10 connections; with more threads every extra one is
    opened, used once and dropped with "Connection pool is full, discarding connection".
    """
    from botocore.config import Config

    return Config(max_pool_connections=max(10, workers, S3_WORKERS))


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


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


def put_bytes(s3, bucket: str, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code in {"404", "NoSuchKey", "NotFound"}


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
) -> tuple[list[dict[str, Any]], CopyReport]:
    """Server-side copy of each product's image; skip what is already there.

    An object already at the destination with the same size and ETag is not
    copied again. A product whose source image is missing is dropped (and
    named in the report), not an error: the run goes on without it.
    """
    products = list(products)
    existing = list_objects(s3, dest_bucket, dest_prefix)
    report = CopyReport()
    lock = threading.Lock()
    progress = Progress("images copied or checked", len(products), logger)

    def one(product: dict[str, Any]) -> bool:
        src_key = f"{source_prefix}images/small/{product['path']}"
        dest_key = f"{dest_prefix}{product['path']}"
        try:
            head = s3.head_object(Bucket=source_bucket, Key=src_key)
        except Exception as exc:
            if not _is_missing(exc):
                raise
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
        there = existing.get(dest_key)
        if there and there["size"] == head["ContentLength"] and there["etag"] == head["ETag"].strip('"'):
            with lock:
                report.skipped += 1
        else:
            s3.copy_object(
                Bucket=dest_bucket,
                Key=dest_key,
                CopySource={"Bucket": source_bucket, "Key": src_key},
                ContentType="image/jpeg",
                MetadataDirective="REPLACE",
            )
            with lock:
                report.copied += 1
        progress.tick()
        return True

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        keep = list(pool.map(one, products))
    kept = [p for p, ok in zip(products, keep) if ok]
    report.missing.sort()
    return kept, report
