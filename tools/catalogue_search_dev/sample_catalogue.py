"""A small real catalogue in the Amazon Berkeley Objects (ABO) layout.

Built from Debian's `tuxpaint-stamps-default` package: captioned PNG photos and
drawings become products (caption -> `item_name`, translations -> other
languages, top-level stamp folder -> `product_type`), and the PNGs become ABO
"small" JPEGs. Real listings are dirty, so the build mixes in, deterministically,
the kinds of dirt a correct ingestion pipeline must survive, and records every
case in a `CatalogueSummary`. Tests compare what the pipeline indexed with
`summary.clean_item_ids`.

Layout written under `out_dir` (exactly ABO's, see the ABO README):

    listings/metadata/listings_<0..f>.json.gz   JSON lines, one product each
    images/metadata/images.csv.gz               image_id,height,width,path
    images/small/<path>                         JPEG, longest side <= 256
    sample_summary.json                         not ABO: what was built (not uploaded)

As in ABO, `path` is `<2 hex>/<8 hex>.jpg` (not named after the image_id), and
`height`/`width` in images.csv are those of the original image (the PNG), not
of the small JPEG.

Run `python -m catalogue_search_dev.sample_catalogue build --out DIR [--upload]`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "tuxpaint-stamps-default"
STAMPS_SUBDIR = Path("usr/share/tuxpaint/stamps")
EXTRACT_DIRNAME = "x"
SUMMARY_FILENAME = "sample_summary.json"
LISTINGS_DIR = Path("listings/metadata")
IMAGES_CSV = Path("images/metadata/images.csv.gz")
SMALL_DIR = Path("images/small")
CSV_HEADER = ("image_id", "height", "width", "path")
SMALL_MAX_SIDE = 256
JPEG_QUALITY = 90
MAX_SHARDS = 16  # ABO's listings_0 .. listings_f
LANGUAGE = "en_US"
BRAND = "Tux Paint"

# Tux Paint locale -> ABO language_tag. A handful, not all ~70 locales.
LANGUAGE_TAGS: dict[str, str] = {
    "en_GB": "en_GB",
    "de": "de_DE",
    "fr": "fr_FR",
    "es": "es_ES",
    "it": "it_IT",
    "nl": "nl_NL",
    "pl": "pl_PL",
    "pt_BR": "pt_BR",
    "sv": "sv_SE",
    "tr": "tr_TR",
    "ja": "ja_JP",
    "zh_CN": "zh_CN",
}

# How many products get each kind of dirt (in this order, disjoint sets).
DIRT_COUNTS: dict[str, int] = {
    "no_title_in_language": 6,
    "multiple_en_us_titles": 4,  # not excluded: the first en_US value wins
    "no_main_image": 3,
    "image_not_in_csv": 1,
    "image_missing_from_bucket": 1,
    "corrupt_image": 1,
    "duplicate": 1,  # not excluded: indexed once
}

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class SampleCatalogueError(RuntimeError):
    """The sample catalogue could not be fetched or built."""


# --- Fetching the Debian package ------------------------------------------------


def default_cache_dir() -> Path:
    """Where the downloaded package is kept between runs."""
    from catalogue_search_dev.localenv import cache_home

    return cache_home() / "tuxpaint"


def default_build_dir() -> Path:
    """Where the local build of the whole catalogue is kept (the one `./dev demo` and the tests use)."""
    from catalogue_search_dev.localenv import cache_home

    return cache_home() / "sample-catalogue"


def fetch_tuxpaint(cache_dir: Path) -> Path:
    """Download and unpack `tuxpaint-stamps-default` into `cache_dir` (once); return the stamps root.

    `apt-get download` fetches the .deb without installing it; `dpkg-deb -x`
    unpacks it. Both steps are skipped when their result is already there, and
    both write to a temporary name first, so an interrupted run is redone. They
    run under a lock in `cache_dir`: processes that start together on a fresh
    machine (the suite's pytest workers) take turns, and the second finds the
    stamps unpacked.
    """
    from catalogue_search_dev.localenv import exclusive

    cache_dir = Path(cache_dir)
    stamps_root = cache_dir / EXTRACT_DIRNAME / STAMPS_SUBDIR
    if stamps_root.is_dir():
        return stamps_root
    with exclusive(cache_dir / ".fetch.lock"):
        if not stamps_root.is_dir():
            _unpack(_download_deb(cache_dir), cache_dir)
    return stamps_root


def _download_deb(cache_dir: Path) -> Path:
    deb = _find_deb(cache_dir)
    if deb is not None:
        return deb
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        _run(["apt-get", "download", PACKAGE], cwd=Path(tmp), hint="try `apt-get update` first")
        got = _find_deb(Path(tmp))
        if got is None:
            raise SampleCatalogueError(f"apt-get download {PACKAGE} produced no .deb in {tmp}")
        deb = cache_dir / got.name
        got.replace(deb)
    return deb


def _unpack(deb: Path, cache_dir: Path) -> None:
    partial = cache_dir / f"{EXTRACT_DIRNAME}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(deb), str(partial)], cwd=cache_dir)
    if not (partial / STAMPS_SUBDIR).is_dir():
        raise SampleCatalogueError(f"{deb.name} has no {STAMPS_SUBDIR}")
    target = cache_dir / EXTRACT_DIRNAME
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)


def _find_deb(directory: Path) -> Path | None:
    debs = sorted(directory.glob(f"{PACKAGE}_*_all.deb"))
    return debs[-1] if debs else None


def _run(cmd: list[str], cwd: Path, hint: str = "") -> None:
    if shutil.which(cmd[0]) is None:
        raise SampleCatalogueError(
            f"`{cmd[0]}` is not available: building the sample catalogue needs a Debian/Ubuntu "
            f"system with apt (or pass --cache a directory that already holds {PACKAGE}_*_all.deb)"
        )
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.strip() or proc.stdout.strip() or "(no output)"
        extra = f" ({hint})" if hint else ""
        raise SampleCatalogueError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}{extra}:\n{stderr}")


# --- Summary ----------------------------------------------------------------


@dataclass
class CatalogueSummary:
    """What a build wrote, and which products a correct pipeline must index."""

    language_tag: str = LANGUAGE
    shards: int = 0
    total_listing_lines: int = 0
    unique_products: int = 0
    # Per kind of dirt: item_ids, sorted.
    no_title_in_language: list[str] = field(default_factory=list)
    multiple_en_us_titles: list[str] = field(default_factory=list)
    no_main_image: list[str] = field(default_factory=list)
    image_not_in_csv: list[str] = field(default_factory=list)
    image_missing_from_bucket: list[str] = field(default_factory=list)
    corrupt_image: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    # Products with an en_US title and a main image that is listed, present and decodable.
    clean_item_ids: list[str] = field(default_factory=list)
    images_csv_rows: int = 0
    image_files: int = 0
    # Every file of the ABO layout (listing shards + images.csv.gz + image files).
    objects: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> CatalogueSummary:
        """Read a summary written by `build_sample_catalogue` (a file or its out_dir)."""
        path = Path(path)
        if path.is_dir():
            path = path / SUMMARY_FILENAME
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    @property
    def excluded_item_ids(self) -> list[str]:
        """Products a correct pipeline must not index."""
        return sorted(
            set(self.no_title_in_language)
            | set(self.no_main_image)
            | set(self.image_not_in_csv)
            | set(self.image_missing_from_bucket)
            | set(self.corrupt_image)
        )


# --- Building ---------------------------------------------------------------


@dataclass(frozen=True)
class _Stamp:
    rel: str  # posix path of the PNG relative to the stamps root
    png: Path
    caption: str
    translations: dict[str, str]  # ABO language_tag -> caption
    mirror: Path | None

    @property
    def category(self) -> str:
        return self.rel.split("/", 1)[0].upper()


@dataclass(frozen=True)
class _Image:
    image_id: str
    path: str  # ABO path relative to images/small
    png: Path


def ensure_built(out_dir: Path) -> CatalogueSummary:
    """The whole sample catalogue in `out_dir`, built from the cached stamps unless a build is there.

    Its summary is written last, so it marks a finished build. The build runs under a lock beside `out_dir`:
    processes that find it missing together (the suite's pytest workers on a fresh machine) take turns.
    """
    from catalogue_search_dev.localenv import exclusive

    out_dir = Path(out_dir)
    summary_file = out_dir / SUMMARY_FILENAME
    if not summary_file.exists():
        with exclusive(out_dir.with_name(f".{out_dir.name}.lock")):
            if not summary_file.exists():
                build_sample_catalogue(fetch_tuxpaint(default_cache_dir()), out_dir)
    return CatalogueSummary.load(summary_file)


def build_sample_catalogue(
    stamps_root: Path,
    out_dir: Path,
    *,
    shards: int = 2,
    max_products: int | None = None,
) -> CatalogueSummary:
    """Write the ABO layout for the stamps under `stamps_root` into `out_dir`.

    Byte-for-byte deterministic: products, dirt and shards are chosen by hashes
    of the stamps' relative paths, gzip carries no time or name, JPEG settings
    are fixed. `max_products` keeps the first N products in item_id order; the
    dirt is then assigned among those (fewer kinds if N is very small).
    """
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    if max_products is not None and max_products < 1:
        raise ValueError(f"max_products must be at least 1, got {max_products}")
    stamps_root = Path(stamps_root)
    out_dir = Path(out_dir)
    stamps = _read_stamps(stamps_root)
    if not stamps:
        raise SampleCatalogueError(f"no captioned PNG stamps under {stamps_root}")

    by_item = _unique({_item_id(s.rel): s for s in stamps}, "item_id", len(stamps))
    item_ids = sorted(by_item)
    if max_products is not None:
        item_ids = item_ids[:max_products]
    dirt = _assign_dirt(item_ids)
    dirty_of = {item: kind for kind, items in dirt.items() for item in items}

    _prepare_out_dir(out_dir)

    # Images: every image a listing names, except those the dirt removes.
    images: dict[str, _Image] = {}  # image_id -> image
    csv_ids: set[str] = set()
    file_ids: set[str] = set()
    listings: dict[str, dict[str, Any]] = {}
    for item in item_ids:
        stamp = by_item[item]
        kind = dirty_of.get(item)
        main = _image_for(stamp.rel, stamp.png)
        others = [_image_for(_rel_of(stamp.mirror, stamps_root), stamp.mirror)] if stamp.mirror else []
        listings[item] = _listing(item, stamp, main.image_id, [o.image_id for o in others], kind)
        owned = others if kind == "no_main_image" else [main, *others]
        for img in owned:
            images[img.image_id] = img
            if not (kind == "image_not_in_csv" and img is main):
                csv_ids.add(img.image_id)
            if not (kind in ("image_not_in_csv", "image_missing_from_bucket") and img is main):
                file_ids.add(img.image_id)
    _unique({img.path: img for img in images.values()}, "image path", len(images))
    corrupt_ids = {listings[i]["main_image_id"] for i in dirt["corrupt_image"]}

    # JPEGs (in parallel: PIL releases the GIL while decoding and encoding).
    def write_image(image_id: str) -> tuple[str, int, int]:
        img = images[image_id]
        data, (width, height) = _small_jpeg(img.png)
        if image_id in corrupt_ids:
            data = _truncate_jpeg(data)
        target = out_dir / SMALL_DIR / img.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return image_id, height, width

    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = {i: (h, w) for i, h, w in pool.map(write_image, sorted(file_ids))}
    for image_id in csv_ids - file_ids:  # listed, but missing from the bucket: size from the PNG
        sizes[image_id] = _png_size(images[image_id].png)

    _write_images_csv(out_dir / IMAGES_CSV, [(i, *sizes[i], images[i].path) for i in sorted(csv_ids)])

    # Listing shards: by item_id hash; the duplicate line goes to another shard as well.
    shard_lines: list[list[tuple[str, str]]] = [[] for _ in range(shards)]
    for item in item_ids:
        line = json.dumps(listings[item], ensure_ascii=False, sort_keys=True)
        shard = _shard_of(item, shards)
        shard_lines[shard].append((item, line))
        if item in dirt["duplicate"]:
            shard_lines[(shard + 1) % shards].append((item, line))
    for n, lines in enumerate(shard_lines):
        body = "".join(line + "\n" for _, line in sorted(lines))
        _write_gzip(out_dir / LISTINGS_DIR / f"listings_{n:x}.json.gz", body.encode("utf-8"))

    clean = [i for i in item_ids if dirty_of.get(i) not in _EXCLUDING]
    summary = CatalogueSummary(
        shards=shards,
        total_listing_lines=sum(len(lines) for lines in shard_lines),
        unique_products=len(item_ids),
        clean_item_ids=clean,
        images_csv_rows=len(csv_ids),
        image_files=len(file_ids),
        objects=len(file_ids) + shards + 1,
        **{kind: sorted(items) for kind, items in dirt.items()},
    )
    (out_dir / SUMMARY_FILENAME).write_text(summary.to_json(), encoding="utf-8")
    return summary


_EXCLUDING = frozenset(
    {"no_title_in_language", "no_main_image", "image_not_in_csv", "image_missing_from_bucket", "corrupt_image"}
)


def _read_stamps(root: Path) -> list[_Stamp]:
    """Every PNG with a caption file; `<name>_mirror.png` becomes its other image."""
    stamps = []
    for png in sorted(root.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        lines = txt.read_text(encoding="utf-8").splitlines()
        caption = lines[0].strip() if lines else ""
        if not caption:
            continue
        translations: dict[str, str] = {}
        for line in lines[1:]:
            locale, sep, value = line.partition(".utf8=")
            tag = LANGUAGE_TAGS.get(locale.strip())
            if sep and tag and value.strip():
                translations[tag] = value.strip()
        mirror = png.with_name(png.stem + "_mirror.png")
        stamps.append(
            _Stamp(
                rel=_rel_of(png, root),
                png=png,
                caption=caption,
                translations=translations,
                mirror=mirror if mirror.is_file() else None,
            )
        )
    return stamps


def _rel_of(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _sha1(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


def _item_id(rel: str) -> str:
    """An ASIN-like id: `B0` + 8 uppercase hex digits."""
    return "B0" + _sha1("item:" + rel).hex()[:8].upper()


def _image_for(rel: str, png: Path) -> _Image:
    """An ABO-like image_id (11 characters, ending in L as Amazon's do) and a hex path."""
    number = int.from_bytes(_sha1("image:" + rel), "big")
    chars = []
    for _ in range(10):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    hex8 = _sha1("path:" + rel).hex()[:8]
    return _Image(image_id="".join(chars) + "L", path=f"{hex8[:2]}/{hex8}.jpg", png=png)


def _shard_of(item_id: str, shards: int) -> int:
    return int.from_bytes(_sha1("shard:" + item_id)[:4], "big") % shards


def _unique(mapping: dict[str, Any], what: str, expected: int) -> dict[str, Any]:
    if len(mapping) != expected:
        raise SampleCatalogueError(f"{what} collision: {expected} stamps gave {len(mapping)} ids")
    return mapping


def _assign_dirt(item_ids: Sequence[str]) -> dict[str, list[str]]:
    """Disjoint, hash-ordered picks for each kind of dirt (in DIRT_COUNTS order)."""
    pool = sorted(item_ids, key=lambda i: _sha1("dirt:" + i))
    dirt: dict[str, list[str]] = {}
    for kind, count in DIRT_COUNTS.items():
        dirt[kind], pool = list(pool[:count]), pool[count:]
    return dirt


def _listing(item_id: str, stamp: _Stamp, main_image_id: str, others: list[str], kind: str | None) -> dict[str, Any]:
    names = [{"language_tag": LANGUAGE, "value": stamp.caption}]
    names += [{"language_tag": tag, "value": value} for tag, value in stamp.translations.items()]
    if kind == "no_title_in_language":
        names = [n for n in names if n["language_tag"] != LANGUAGE]
    elif kind == "multiple_en_us_titles":
        # A second, later en_US title (as ABO has): the first one is the real caption.
        names.append({"language_tag": LANGUAGE, "value": f"{stamp.caption} ({BRAND} stamp)"})
    listing: dict[str, Any] = {
        "item_id": item_id,
        "item_name": names,
        "brand": [{"language_tag": LANGUAGE, "value": BRAND}],
        "product_type": [{"value": stamp.category}],
        "other_image_id": others,
        "domain_name": "amazon.com",
        "country": "US",
        "marketplace": "Amazon",
    }
    if kind != "no_main_image":  # ABO leaves the attribute out
        listing["main_image_id"] = main_image_id
    return listing


def _small_jpeg(png: Path) -> tuple[bytes, tuple[int, int]]:
    """The ABO "small" JPEG of a PNG: on white, RGB, longest side <= 256; returns (bytes, original size)."""
    from PIL import Image

    with Image.open(png) as src:
        src.load()
        original = src.size
        rgba = src.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB")
    width, height = rgb.size
    scale = SMALL_MAX_SIDE / max(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False, progressive=False)
    return buf.getvalue(), original


def _png_size(png: Path) -> tuple[int, int]:
    """(height, width) of a PNG."""
    from PIL import Image

    with Image.open(png) as src:
        width, height = src.size
    return height, width


def _truncate_jpeg(data: bytes) -> bytes:
    """Cut a JPEG half way through its scan data: the header still opens, a full decode fails."""
    sos = data.find(b"\xff\xda")
    if sos < 0:
        return data[: len(data) // 2]
    return data[: sos + (len(data) - sos) // 2]


def _write_gzip(path: Path, data: bytes) -> None:
    """gzip with no timestamp and no file name, so equal input gives equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


def _write_images_csv(path: Path, rows: list[tuple[str, int, int, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(rows)
    _write_gzip(path, buf.getvalue().encode("utf-8"))


def _prepare_out_dir(out_dir: Path) -> None:
    """Start from an empty layout; refuse to touch a non-empty directory that is not a previous build."""
    if out_dir.exists():
        entries = {p.name for p in out_dir.iterdir()}
        if entries and SUMMARY_FILENAME not in entries:
            raise SampleCatalogueError(
                f"{out_dir} is not empty and holds no {SUMMARY_FILENAME}: choose an empty or new directory"
            )
        for name in ("listings", "images", SUMMARY_FILENAME):
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def layout_files(out_dir: Path) -> list[str]:
    """Every file of the ABO layout under `out_dir`, as sorted posix paths (no summary)."""
    out_dir = Path(out_dir)
    files = []
    for top in ("listings", "images"):
        base = out_dir / top
        if base.is_dir():
            files += [p.relative_to(out_dir).as_posix() for p in base.rglob("*") if p.is_file()]
    return sorted(files)


# --- Uploading --------------------------------------------------------------


@dataclass
class UploadReport:
    """What `upload_catalogue` did."""

    bucket: str
    prefix: str
    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0

    @property
    def total(self) -> int:
        return self.uploaded + self.skipped


def upload_catalogue(out_dir: Path, bucket: str, s3_client: Any, prefix: str = "", workers: int = 16) -> UploadReport:
    """Upload the layout under `out_dir` to `s3://bucket/prefix`, skipping objects already there.

    An object counts as already there when its size and its (single-part) MD5
    ETag match the local file, so a rerun uploads nothing and a changed file is
    replaced. The summary file is not part of the layout and is not uploaded.
    """
    out_dir = Path(out_dir)
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    files = layout_files(out_dir)
    if not files:
        raise SampleCatalogueError(f"no ABO layout under {out_dir}: build it first")
    ensure_bucket(s3_client, bucket)
    existing: dict[str, tuple[int, str]] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            existing[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'))

    def upload(rel: str) -> int:
        data = (out_dir / rel).read_bytes()
        key = prefix + rel
        digest = hashlib.md5(data)
        if existing.get(key) == (len(data), digest.hexdigest()):
            return -1
        s3_client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentMD5=base64.b64encode(digest.digest()).decode("ascii"),
            ContentType=_content_type(rel),
        )
        return len(data)

    report = UploadReport(bucket=bucket, prefix=prefix)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for size in pool.map(upload, files):
            if size < 0:
                report.skipped += 1
            else:
                report.uploaded += 1
                report.bytes_uploaded += size
    return report


def source_listings_key(settings: Any, shard: str) -> str:
    """The key of one listing shard (`shard`: "0" to "f") in the source bucket."""
    return settings.source_prefix + str(LISTINGS_DIR / f"listings_{shard}.json.gz")


def source_listings(s3_client: Any, settings: Any, shard: str) -> list[dict[str, Any]]:
    """The rows of one listing shard as the source bucket holds them."""
    raw = s3_client.get_object(Bucket=settings.source_bucket, Key=source_listings_key(settings, shard))["Body"].read()
    return [json.loads(line) for line in gzip.decompress(raw).decode("utf-8").splitlines() if line.strip()]


def put_source_listings(s3_client: Any, settings: Any, shard: str, rows: Sequence[dict[str, Any]]) -> None:
    """Replace one listing shard in the source bucket (a catalogue change between two runs, in tests)."""
    body = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
    s3_client.put_object(Bucket=settings.source_bucket, Key=source_listings_key(settings, shard), Body=body)


def ensure_bucket(s3_client: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    from catalogue_search.aws import is_s3_missing

    try:
        s3_client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if not is_s3_missing(exc, bucket=True):
            raise
    region = s3_client.meta.region_name
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3_client.create_bucket(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise


def _content_type(rel: str) -> str:
    if rel.endswith(".jpg"):
        return "image/jpeg"
    if rel.endswith(".json.gz"):
        return "application/x-ndjson"
    if rel.endswith(".csv.gz"):
        return "text/csv"
    return "application/octet-stream"


# --- Command line -----------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`build --out DIR [--cache DIR] [--shards N] [--max-products N] [--upload]`."""
    parser = argparse.ArgumentParser(
        prog="python -m catalogue_search_dev.sample_catalogue",
        description="Build a small real catalogue in ABO layout from Tux Paint's stamps.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="fetch the package, write the ABO layout, optionally upload it")
    build.add_argument("--out", type=Path, required=True, help="output directory (new, empty or a previous build)")
    build.add_argument("--cache", type=Path, default=None, help=f"download cache (default: {default_cache_dir()})")
    build.add_argument("--shards", type=int, default=2, help="listing shards, 1..16 (default 2)")
    build.add_argument("--max-products", type=int, default=None, help="keep only the first N products")
    build.add_argument(
        "--upload", action="store_true", help="upload to the source bucket (CATSEARCH_SOURCE_BUCKET / _PREFIX)"
    )
    args = parser.parse_args(argv)

    try:
        started = time.monotonic()
        stamps_root = fetch_tuxpaint(args.cache or default_cache_dir())
        summary = build_sample_catalogue(stamps_root, args.out, shards=args.shards, max_products=args.max_products)
        built_in = time.monotonic() - started
    except (SampleCatalogueError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"built {args.out} in {built_in:.1f}s")
    print(
        f"  {summary.total_listing_lines} listing lines, {summary.unique_products} products, "
        f"{summary.images_csv_rows} images.csv rows, {summary.image_files} image files, {summary.objects} objects"
    )
    print(f"  clean ({summary.language_tag}): {len(summary.clean_item_ids)}")
    for kind in DIRT_COUNTS:
        print(f"  {kind}: {len(getattr(summary, kind))}")

    if args.upload:
        import boto3

        from catalogue_search.settings import Settings

        settings = Settings.from_env()
        s3 = boto3.client("s3", **settings.boto3_kwargs())
        report = upload_catalogue(args.out, settings.source_bucket, s3, prefix=settings.source_prefix)
        print(
            f"uploaded to s3://{report.bucket}/{report.prefix}: {report.uploaded} uploaded, "
            f"{report.skipped} already there"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
