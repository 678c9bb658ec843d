"""A full-size synthetic catalogue in the Amazon Berkeley Objects (ABO) layout.

    ./dev generate-abo [--listings 147702] [--out DIR] [--upload] [--all-images] [--vectors]

ABO's size and shape: 16 listing shards (`listings/metadata/listings_<0..f>.json.gz`),
147,702 listing lines, about 2.7 images per listing in `images/metadata/images.csv.gz`
(398,212 rows in ABO), and the same kinds and rates of dirt as the sample catalogue
(`sample_catalogue.DIRT_COUNTS` per 785 products, scaled): listings with no `en_US`
title, a second `en_US` title, no `main_image_id`, a main image missing from
images.csv, or missing from the bucket, or truncated, and listings repeated in
another shard. Titles come in the sample's languages; some listings have no
`brand` or no `product_type`.

Images: a pool of a few hundred small generated JPEGs, reused under every
image path (as ABO, `path` is `<2 hex>/<8 hex>.jpg`). `--upload` puts the
listings, images.csv and the main images (the ones the pipeline reads; all
images with `--all-images`) into a moto source bucket of its own.

Vectors: encoding 147,702 images with ViT-B-32 on a CPU takes hours, so
`--vectors` writes precomputed random unit vectors (512-d, one per main image
path; clustered in a 32-d latent space, as embeddings are, not uniform) in the
embedding store's chunk format, standing in for the transform.

Deterministic: the same arguments give the same bytes (seeded numpy, gzip with
no timestamp).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalogue_search_dev.sample_catalogue import (
    CSV_HEADER,
    DIRT_COUNTS,
    IMAGES_CSV,
    LANGUAGE,
    LANGUAGE_TAGS,
    LISTINGS_DIR,
    SMALL_DIR,
    _truncate_jpeg,
    _write_gzip,
)

ABO_LISTINGS = 147_702
ABO_IMAGES = 398_212
SHARDS = 16
SAMPLE_PRODUCTS = 785  # the sample catalogue the dirt rates come from
JPEG_POOL = 300
DEFAULT_BUCKET = "catalogue-search-abo-full"
SUMMARY_FILENAME = "abo_summary.json"
VECTORS_FILENAME = "vectors.npz"
MISSING_BRAND = 0.05
MISSING_PRODUCT_TYPE = 0.02
PRODUCT_TYPES = [
    "SHOES", "CHAIR", "SOFA", "TABLE", "LAMP", "RUG", "CELLULAR_PHONE_CASE", "HOME_BED_AND_BATH", "KITCHEN",
    "GROCERY", "TOYS", "SPORTING_GOODS", "JEWELRY", "HANDBAG", "WATCH", "HOME_FURNITURE_AND_DECOR",
]  # fmt: skip
BRANDS = [f"Brand {chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(400)]
WORDS = (
    "classic modern soft large small round square wooden metal leather cotton blue black white grey red green "
    "set pack chair table lamp shoe boot sofa rug case cover mug bowl plate bottle bag watch ring"
).split()
_BASE62 = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


@dataclass
class AboSummary:
    """What a generation wrote, and what a correct pipeline must make of it."""

    seed: int = 0
    listing_lines: int = 0
    unique_products: int = 0
    images_csv_rows: int = 0
    image_paths: int = 0
    dirt: dict[str, int] = field(default_factory=dict)
    missing_brand: int = 0
    missing_product_type: int = 0
    languages: dict[str, int] = field(default_factory=dict)
    expected_products: int = 0  # what catalogue_ingest should index (every clean product)
    jpeg_pool: int = JPEG_POOL
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def _mix(x: np.ndarray, salt: int) -> np.ndarray:
    """A bijection on uint32 (so distinct inputs give distinct ids), vectorised."""
    x = (x.astype(np.uint64) + np.uint64(salt)) & np.uint64(0xFFFFFFFF)
    x = (x * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x85EBCA77)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(13)
    return x


def _hex8(x: np.ndarray) -> np.ndarray:
    return np.char.zfill(np.char.upper(np.char.mod("%x", x.astype(np.int64))), 8)


def _image_ids(x: np.ndarray) -> np.ndarray:
    """ABO-like image ids: 10 base-62 characters + 'L', from distinct numbers."""
    n = x.astype(np.uint64) * np.uint64(2654435761) + np.uint64(12345)
    chars = []
    for _ in range(10):
        chars.append(_BASE62[(n % np.uint64(62)).astype(np.int64)])
        n //= np.uint64(62)
    out = chars[0].astype(object)
    for c in chars[1:]:
        out = out + c.astype(object)
    return out + "L"


def jpeg_pool(size: int = JPEG_POOL, seed: int = 0) -> list[bytes]:
    """`size` small distinct JPEGs (shapes on a coloured background, 96-256 px), deterministic."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, 99])
    out = []
    for _ in range(size):
        w, h = (int(v) for v in rng.integers(96, 257, 2))
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(120, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            box = (x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2)))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


@dataclass
class Generated:
    """The catalogue in memory: listing lines per shard, images.csv rows, which pool JPEG each path gets."""

    shards: list[list[str]]
    csv_rows: list[tuple[str, int, int, str]]
    paths: np.ndarray  # every image path
    pool_index: np.ndarray  # path -> index into the JPEG pool
    main_paths: np.ndarray  # the main image path of every listing that has one
    absent_paths: set[str]  # listed, but not in the bucket
    corrupt_paths: set[str]
    summary: AboSummary


def generate(listings: int = ABO_LISTINGS, seed: int = 0, images_per_listing: float = ABO_IMAGES / ABO_LISTINGS):
    """Build the catalogue in memory (vectorised); see the module doc for its shape."""
    rng = np.random.default_rng(seed)
    summary = AboSummary(seed=seed)
    scale = listings / SAMPLE_PRODUCTS
    dirt_n = {kind: max(1, round(count * scale)) for kind, count in DIRT_COUNTS.items()}
    unique = listings - dirt_n["duplicate"]
    idx = np.arange(unique)
    item_ids = np.char.add("B0", _hex8(_mix(idx, seed)))
    # Images: the main one plus a Poisson number of others, ~2.7 per listing.
    others = rng.poisson(images_per_listing - 1, unique)
    total_images = unique + int(others.sum())
    img_idx = np.arange(total_images)
    image_ids = _image_ids(_mix(img_idx, seed + 1))
    hexes = np.char.lower(_hex8(_mix(img_idx, seed + 2)))
    paths = np.array([f"{h[:2]}/{h}.jpg" for h in hexes.tolist()])
    heights = rng.integers(300, 2500, total_images)
    widths = rng.integers(300, 2500, total_images)
    pool_index = rng.integers(0, JPEG_POOL, total_images)
    starts = np.concatenate([[0], np.cumsum(1 + others)[:-1]])  # first image of each listing = main

    # Dirt: disjoint random picks, in DIRT_COUNTS order (as the sample does).
    order = rng.permutation(unique)
    picks: dict[str, np.ndarray] = {}
    at = 0
    for kind in DIRT_COUNTS:
        picks[kind], at = order[at : at + dirt_n[kind]], at + dirt_n[kind]
    kind_of = np.full(unique, "", dtype=object)
    for kind, rows in picks.items():
        kind_of[rows] = kind
    summary.dirt = {kind: len(rows) for kind, rows in picks.items()}

    not_in_csv = set(starts[picks["image_not_in_csv"]].tolist())
    absent = {paths[starts[i]] for i in picks["image_missing_from_bucket"]}
    corrupt = {paths[starts[i]] for i in picks["corrupt_image"]}
    no_main = set(picks["no_main_image"].tolist())

    # Languages: en_US plus a random subset of the sample's translations.
    tags = list(LANGUAGE_TAGS.values())
    lang_mask = rng.random((unique, len(tags))) < 0.25
    word_pick = rng.integers(0, len(WORDS), (unique, 4))
    types = rng.integers(0, len(PRODUCT_TYPES), unique)
    brands = rng.integers(0, len(BRANDS), unique)
    missing_brand = rng.random(unique) < MISSING_BRAND
    missing_type = rng.random(unique) < MISSING_PRODUCT_TYPE
    shard_of = (_mix(idx, seed + 3) % np.uint64(SHARDS)).astype(np.int64)
    summary.missing_brand = int(missing_brand.sum())
    summary.missing_product_type = int(missing_type.sum())
    languages: dict[str, int] = {}

    shards: list[list[tuple[str, str]]] = [[] for _ in range(SHARDS)]
    words = np.array(WORDS, dtype=object)
    titles = (
        words[word_pick[:, 0]]
        + " "
        + words[word_pick[:, 1]]
        + " "
        + words[word_pick[:, 2]]
        + " "
        + words[word_pick[:, 3]]
    )
    duplicates = set(picks["duplicate"].tolist())
    item_list, image_list, path_list = item_ids.tolist(), image_ids.tolist(), paths.tolist()
    for i in range(unique):
        kind = kind_of[i]
        title = str(titles[i]).capitalize() + f" {i}"
        names = [] if kind == "no_title_in_language" else [{"language_tag": LANGUAGE, "value": title}]
        for t in np.flatnonzero(lang_mask[i]):
            names.append({"language_tag": tags[t], "value": f"{title} ({tags[t]})"})
        if kind == "multiple_en_us_titles":
            names.append({"language_tag": LANGUAGE, "value": f"{title} (second title)"})
        for n in names:
            languages[n["language_tag"]] = languages.get(n["language_tag"], 0) + 1
        first = int(starts[i])
        listing: dict[str, Any] = {
            "item_id": item_list[i],
            "item_name": names,
            "other_image_id": image_list[first + 1 : first + 1 + int(others[i])],
            "domain_name": "amazon.com",
            "country": "US",
            "marketplace": "Amazon",
        }
        if not missing_brand[i]:
            listing["brand"] = [{"language_tag": LANGUAGE, "value": BRANDS[brands[i]]}]
        if not missing_type[i]:
            listing["product_type"] = [{"value": PRODUCT_TYPES[types[i]]}]
        if i not in no_main:
            listing["main_image_id"] = image_list[first]
        line = json.dumps(listing, ensure_ascii=False, sort_keys=True)
        shards[shard_of[i]].append((item_list[i], line))
        if i in duplicates:
            shards[(shard_of[i] + 1) % SHARDS].append((item_list[i], line))

    csv_rows = [
        (image_list[j], int(heights[j]), int(widths[j]), path_list[j])
        for j in range(total_images)
        if j not in not_in_csv
    ]
    main_rows = np.array([starts[i] for i in range(unique) if i not in no_main])
    excluded = {
        "no_title_in_language",
        "no_main_image",
        "image_not_in_csv",
        "image_missing_from_bucket",
        "corrupt_image",
    }
    summary.listing_lines = sum(len(s) for s in shards)
    summary.unique_products = unique
    summary.images_csv_rows = len(csv_rows)
    summary.image_paths = total_images
    summary.languages = dict(sorted(languages.items()))
    summary.expected_products = int(sum(1 for k in kind_of if k not in excluded))
    return Generated(
        shards=[[line for _, line in sorted(s)] for s in shards],
        csv_rows=sorted(csv_rows),
        paths=paths,
        pool_index=pool_index,
        main_paths=paths[main_rows],
        absent_paths=absent,
        corrupt_paths=corrupt,
        summary=summary,
    )


def write_layout(gen: Generated, out_dir: Path) -> None:
    """The listings and images.csv (not the images: they are served from the pool)."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def shard(n: int) -> None:
        body = "".join(line + "\n" for line in gen.shards[n]).encode("utf-8")
        _write_gzip(out_dir / LISTINGS_DIR / f"listings_{n:x}.json.gz", body)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(shard, range(SHARDS)))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(gen.csv_rows)
    _write_gzip(out_dir / IMAGES_CSV, buf.getvalue().encode("utf-8"))
    (out_dir / SUMMARY_FILENAME).write_text(gen.summary.to_json(), encoding="utf-8")


def image_bytes(gen: Generated, pool: list[bytes], path: str, pool_index: int) -> bytes:
    data = pool[pool_index]
    return _truncate_jpeg(data) if path in gen.corrupt_paths else data


def upload(
    gen: Generated, out_dir: Path, s3, bucket: str, *, all_images: bool = False, workers: int = 32, log=print
) -> dict[str, Any]:
    """Put the layout into `bucket` (created if needed); the images listed in the bucket are
    skipped when already there (a rerun uploads only what is missing)."""
    from catalogue_search.s3util import list_objects
    from catalogue_search_dev.sample_catalogue import ensure_bucket

    ensure_bucket(s3, bucket)
    pool = jpeg_pool(seed=gen.summary.seed)
    existing = list_objects(s3, bucket, "")
    files = [p.relative_to(out_dir).as_posix() for p in sorted(out_dir.rglob("*.gz"))]
    for rel in files:
        s3.put_object(Bucket=bucket, Key=rel, Body=(out_dir / rel).read_bytes())
    wanted = gen.paths if all_images else gen.main_paths
    index_of = {p: i for i, p in enumerate(gen.paths.tolist())} if not all_images else None
    todo = []
    for n, path in enumerate(wanted.tolist()):
        key = f"{SMALL_DIR.as_posix()}/{path}"
        if path in gen.absent_paths or key in existing:
            continue
        todo.append((key, path, int(gen.pool_index[n if all_images else index_of[path]])))
    done = [0]
    step = max(1, len(todo) // 10)

    def put(job: tuple[str, str, int]) -> None:
        key, path, pool_index = job
        s3.put_object(Bucket=bucket, Key=key, Body=image_bytes(gen, pool, path, pool_index), ContentType="image/jpeg")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for _ in ex.map(put, todo):
            done[0] += 1
            if done[0] % step == 0:
                rate = done[0] / (time.perf_counter() - started)
                log(f"  images uploaded: {done[0]:,} / {len(todo):,} ({rate:.0f}/s)")
    absent = sum(1 for p in wanted.tolist() if p in gen.absent_paths)
    return {
        "listing_files": len(files),
        "images_uploaded": len(todo),
        "images_already_there": len(wanted) - len(todo) - absent,
        "images_left_out_as_dirt": absent,
    }


def precomputed_vectors(gen: Generated, dim: int = 512, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Random unit vectors standing in for ViT-B-32's, one per main image path (float32).

    Not uniform on the sphere: embeddings of real images have low intrinsic dimension,
    and uniform random 512-d vectors are all nearly equidistant, which no ANN index
    (and no recall check) can tell apart. They are the benchmarks' "latent" set:
    200 clusters in a 32-d space projected to `dim` (`vector_sets.vectors`)."""
    from catalogue_search_dev.vector_sets import vectors

    paths = sorted(set(gen.main_paths.tolist()) - gen.absent_paths - gen.corrupt_paths)
    return paths, vectors("latent", len(paths), dim, seed=seed)


def seed_embedding_store(
    gen: Generated,
    out_dir: Path,
    s3,
    settings,
    *,
    chunk: int = 1024,
    log=print,
    title_vectors: dict[str, np.ndarray] | None = None,
) -> int:
    """Write the precomputed vectors into the project's embedding stores, as if a transform had
    encoded every main image and every title: chunk outputs (`.npz`: ids, float32 rows) under the
    artifact version of `settings.artifact_uri`, and each store's catalogue (an image's ETag is the
    pool JPEG's MD5, which a server-side copy keeps; a title's id is the digest of its text).
    `catalogue_ingest` then finds nothing to encode and loads these vectors. `title_vectors`
    (title id -> vector) replace the stand-ins of those titles (`model_title_vectors`)."""
    from catalogue_search import encoding
    from catalogue_search.model_artifact import read_artifact_version
    from catalogue_search_dev.vector_sets import vectors

    npz = np.load(out_dir / VECTORS_FILENAME)
    paths, vecs = [str(p) for p in npz["ids"]], npz["embeddings"]
    version = read_artifact_version(s3, settings.artifact_uri)
    pool = jpeg_pool(seed=gen.summary.seed)
    pool_md5 = [hashlib.md5(b).hexdigest() for b in pool]
    where = {p: int(gen.pool_index[i]) for i, p in enumerate(gen.paths.tolist())}
    etags = {p: pool_md5[where[p]] for p in paths}
    images = encoding.Store(settings, encoding.IMAGE)
    _seed_store(s3, images, version, paths, vecs, etags, chunk)
    log(f"embedding store {images.uri(images.prefix(version))}: {len(paths):,} PRECOMPUTED vectors")
    # The title the filter keeps of every listing (also of those it drops for other reasons).
    titles = {_title(line) for lines in gen.shards for line in lines} - {None}
    title_ids = sorted(encoding.title_id(title) for title in titles)
    title_vecs = vectors("latent", len(title_ids), vecs.shape[1], seed=gen.summary.seed + 1)
    own = [row for row, tid in enumerate(title_ids) if title_vectors and tid in title_vectors]
    for row in own:
        title_vecs[row] = title_vectors[title_ids[row]]  # type: ignore[index]
    title_store = encoding.Store(settings, encoding.TITLE)
    _seed_store(s3, title_store, version, title_ids, title_vecs, dict.fromkeys(title_ids, ""), chunk)
    log(
        f"title store {title_store.uri(title_store.prefix(version))}: "
        f"{len(title_ids):,} PRECOMPUTED title vectors (random, clustered; not CLIP text embeddings"
        + (f", but for {len(own):,} that the TEXT model encoded)" if own else ")")
    )
    return len(paths)


def model_title_vectors(gen: Generated, s3, settings, *, spare: int = 500) -> dict[str, np.ndarray]:
    """The TEXT model's own vectors (title id -> vector) for the titles the quality evaluation asks.

    `evaluate_index` takes a sampled product's query vector from the index's title vector once
    32 of them agree with the model; the stand-in vectors never do, so it would encode every
    sampled title, which a real run (title vectors by the model) does not. The sample is the
    first `quality_sample` indexed products in `quality.sample`'s hash order: the titles of the
    first `quality_sample + spare` listings in that order cover those the filter drops.
    """
    from catalogue_search import quality
    from catalogue_search.encoding import title_id
    from catalogue_search.model_artifact import read_artifact_version
    from catalogue_search.quality_queries import title_encoder

    titles_of_item: dict[str, set[str]] = {}
    for lines in gen.shards:
        for line in lines:
            try:
                item_id = json.loads(line).get("item_id")
            except (ValueError, AttributeError):
                continue
            title = _title(line)
            if isinstance(item_id, str) and isinstance(title, str) and title.strip():
                titles_of_item.setdefault(item_id, set()).add(title)
    chosen = quality.sample(
        [{"item_id": i} for i in titles_of_item], settings.quality_sample + spare, settings.quality_seed
    )
    titles = sorted({t for doc in chosen for t in titles_of_item[doc["item_id"]]})
    _, encode = title_encoder(settings, s3, read_artifact_version(s3, settings.artifact_uri))
    out = {}
    for lo in range(0, len(titles), 256):
        part = titles[lo : lo + 256]
        for title, vector in zip(part, encode(part)):
            if vector is not None:
                out[title_id(title)] = np.asarray(vector, dtype=np.float32)
    return out


def stage_seeded(gen: Generated, out_dir: Path, s3, settings, *, seed: int, chunk: int, dim: int = 512) -> int:
    """The generated catalogue ready for a run without encoding (tests, benchmarks): its ABO layout
    written to `out_dir` and uploaded to the source bucket, its precomputed vectors (`seed`) written
    into the embedding stores. The model artifact must be in the bucket already (`demo.prepare_model`)."""
    write_layout(gen, out_dir)
    upload(gen, out_dir, s3, settings.source_bucket, log=lambda _: None)
    paths, vecs = precomputed_vectors(gen, dim=dim, seed=seed)
    np.savez(out_dir / VECTORS_FILENAME, ids=np.asarray(paths, dtype=str), embeddings=vecs)
    return seed_embedding_store(gen, out_dir, s3, settings, chunk=chunk, log=lambda _: None)


def _title(line: str) -> str | None:
    """The title the filter keeps for one listing line (`catalogue.first_value`), dirt included."""
    from catalogue_search.catalogue import first_value

    try:
        listing = json.loads(line)
    except ValueError:
        return None
    return first_value(listing.get("item_name"), LANGUAGE) if isinstance(listing, dict) else None


def _seed_store(s3, store, version: str, ids: list[str], vecs, etags: dict[str, str], chunk: int) -> None:
    from catalogue_search import contract, encoding

    prefix = store.output_prefix(version, "precomputed/abo-synthetic/")
    catalogue = encoding.Catalogue.load(s3, store, version)

    def put(lo: int) -> tuple[str, list[str]]:
        part = ids[lo : lo + chunk]
        key = f"{prefix}{lo // chunk:05d}.jsonl.out"
        body = encoding.encode_output(part, vecs[lo : lo + chunk], version=version)
        s3.put_object(Bucket=store.bucket, Key=key, Body=body, ContentType=contract.NPZ)
        return key, part

    with ThreadPoolExecutor(max_workers=8) as ex:
        for key, part in ex.map(put, range(0, len(ids), chunk)):
            catalogue.add(key, part, etags, {})
    catalogue.save(s3, store)


def moto_rss_mib(url: str) -> float | None:
    """Resident memory of the moto server listening on `url` (None if it cannot be found)."""
    from urllib.parse import urlsplit

    import psutil

    port = urlsplit(url).port
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid).memory_info().rss / 2**20
    return None


def main(argv: list[str] | None = None) -> int:
    from catalogue_search_dev.localenv import cache_home

    parser = argparse.ArgumentParser(
        prog="./dev generate-abo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listings", type=int, default=ABO_LISTINGS, help=f"listing lines (ABO: {ABO_LISTINGS:,})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where the listings and images.csv go")
    parser.add_argument("--upload", action="store_true", help="upload to a moto source bucket of its own")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET)
    parser.add_argument("--all-images", action="store_true", help="upload every image, not only the main ones")
    parser.add_argument("--vectors", action="store_true", help="write precomputed unit vectors (512-d, clustered)")
    parser.add_argument(
        "--seed-store",
        action="store_true",
        help="put the precomputed vectors into the project's embedding store (for a full-size DAG run)",
    )
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args(argv)
    out_dir = args.out or cache_home() / f"abo-synthetic-{args.listings}-{args.seed}"

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    gen = generate(args.listings, args.seed)
    timings["generate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_layout(gen, out_dir)
    timings["write"] = time.perf_counter() - t0
    s = gen.summary
    print(f"synthetic ABO catalogue in {out_dir} (seed {args.seed}):")
    print(
        f"  {s.listing_lines:,} listing lines in {SHARDS} shards, {s.unique_products:,} products, "
        f"{s.images_csv_rows:,} images.csv rows ({s.image_paths / s.unique_products:.2f} images per product)"
    )
    print(f"  dirt: {s.dirt}; no brand {s.missing_brand:,}, no product_type {s.missing_product_type:,}")
    print(f"  languages (titles): {s.languages}")
    print(f"  a correct catalogue_ingest indexes {s.expected_products:,} products")
    print(f"  generated in {timings['generate']:.1f} s, written in {timings['write']:.1f} s")

    if args.upload:
        import boto3

        from catalogue_search.settings import Settings

        settings = Settings.from_env()
        from catalogue_search.s3util import client_config

        s3 = boto3.client("s3", **{**settings.boto3_kwargs(), "config": client_config(args.workers)})
        before = moto_rss_mib(settings.aws_endpoint_url) if settings.aws_endpoint_url else None
        t0 = time.perf_counter()
        report = upload(gen, out_dir, s3, args.bucket, all_images=args.all_images, workers=args.workers)
        timings["upload"] = time.perf_counter() - t0
        after = moto_rss_mib(settings.aws_endpoint_url) if settings.aws_endpoint_url else None
        rate = report["images_uploaded"] / timings["upload"] if timings["upload"] else 0
        print(
            f"uploaded to s3://{args.bucket}/: {report['images_uploaded']:,} images ({rate:.0f}/s), "
            f"{report['images_already_there']:,} already there, {report['images_left_out_as_dirt']} left out "
            f"(dirt: missing from the bucket), {report['listing_files']} metadata files "
            f"in {timings['upload']:.0f} s"
        )
        if before is not None and after is not None:
            print(f"  moto server RSS: {before:.0f} MiB before, {after:.0f} MiB after (+{after - before:.0f} MiB)")
        print(f"  use it: CATSEARCH_SOURCE_BUCKET={args.bucket}")
    if args.vectors:
        t0 = time.perf_counter()
        paths, vecs = precomputed_vectors(gen, seed=args.seed)
        np.savez(out_dir / VECTORS_FILENAME, ids=np.asarray(paths, dtype=str), embeddings=vecs)
        timings["vectors"] = time.perf_counter() - t0
        print(
            f"PRECOMPUTED vectors: {len(paths):,} random unit vectors (512-d, 200 clusters in a 32-d latent space), "
            "NOT CLIP embeddings: encoding them "
            f"with ViT-B-32 at the ~6 images/s two CPU cores reach would take {len(paths) / 6 / 3600:.1f} h. "
            f"Written to {out_dir / VECTORS_FILENAME} (ids = ABO paths, embeddings = float32 rows: "
            "the embedding store's chunk arrays)"
        )
    if args.seed_store:
        import boto3

        from catalogue_search.settings import Settings

        if not (out_dir / VECTORS_FILENAME).exists():
            paths, vecs = precomputed_vectors(gen, seed=args.seed)
            np.savez(out_dir / VECTORS_FILENAME, ids=np.asarray(paths, dtype=str), embeddings=vecs)
        settings = Settings.from_env()
        seed_embedding_store(gen, out_dir, boto3.client("s3", **settings.boto3_kwargs()), settings)
    s.seconds = {k: round(v, 1) for k, v in timings.items()}
    (out_dir / SUMMARY_FILENAME).write_text(s.to_json(), encoding="utf-8")
    return 0


def digest(out_dir: Path) -> str:
    """sha256 over the layout files (for determinism checks)."""
    h = hashlib.sha256()
    for p in sorted(Path(out_dir).rglob("*.gz")):
        h.update(p.relative_to(out_dir).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
