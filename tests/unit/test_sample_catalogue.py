"""The Tux Paint sample catalogue: ABO layout, determinism, and the dirt it promises.

The files are re-read here independently of the builder (plain gzip/json/csv
and a full PIL decode), so the summary is checked against what is on disk,
not against itself.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from catalogue_search_dev.sample_catalogue import (
    DIRT_COUNTS,
    LANGUAGE_TAGS,
    SUMMARY_FILENAME,
    CatalogueSummary,
    SampleCatalogueError,
    build_sample_catalogue,
    default_cache_dir,
    fetch_tuxpaint,
    layout_files,
    main,
)

ITEM_ID = re.compile(r"^B0[0-9A-F]{8}$")
IMAGE_ID = re.compile(r"^[A-Za-z0-9]{11}$")
ABO_PATH = re.compile(r"^([0-9a-f]{2})/\1[0-9a-f]{6}\.jpg$")
DIRT_KINDS = (
    "no_title_in_language",
    "no_main_image",
    "image_not_in_csv",
    "image_missing_from_bucket",
    "corrupt_image",
    "duplicate",
)


@pytest.fixture(scope="session")
def stamps_root() -> Path:
    """The unpacked package (downloaded once into the cache if it is not there)."""
    return fetch_tuxpaint(default_cache_dir())


@pytest.fixture(scope="session")
def full_build(stamps_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CatalogueSummary]:
    out = tmp_path_factory.mktemp("full") / "abo"
    return out, build_sample_catalogue(stamps_root, out)


# --- an independent reader ----------------------------------------------------


def read_listing_lines(out: Path) -> list[tuple[str, dict]]:
    """(shard file name, listing) for every line of every shard."""
    lines = []
    for shard in sorted((out / "listings/metadata").glob("listings_*.json.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            lines += [(shard.name, json.loads(line)) for line in f if line.strip()]
    return lines


def read_images_csv(out: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with gzip.open(out / "images/metadata/images.csv.gz", "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = {row["image_id"]: row for row in reader}
        return list(reader.fieldnames or []), rows


def decodes(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:
        return False


def en_us_titles(listing: dict) -> list[str]:
    return [n["value"] for n in listing.get("item_name", []) if n.get("language_tag") == "en_US"]


def expected_clean(out: Path) -> set[str]:
    """What a correct en_US pipeline indexes, computed from the files alone."""
    _, rows = read_images_csv(out)
    products = {listing["item_id"]: listing for _, listing in read_listing_lines(out)}
    clean = set()
    for item_id, listing in products.items():
        row = rows.get(listing.get("main_image_id") or "")
        if en_us_titles(listing) and row and decodes(out / "images/small" / row["path"]):
            clean.add(item_id)
    return clean


# --- determinism and layout ---------------------------------------------------------


def test_same_input_gives_the_same_bytes(stamps_root: Path, tmp_path: Path) -> None:
    # 150 products carry every kind of dirt and every step of the build, at a quarter of a full build's cost
    out, again = tmp_path / "first", tmp_path / "again"
    build_sample_catalogue(stamps_root, out, max_products=150)
    build_sample_catalogue(stamps_root, again, max_products=150)
    first = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file())
    assert first == second
    differing = [rel for rel in first if (out / rel).read_bytes() != (again / rel).read_bytes()]
    assert differing == []


def test_layout_is_abo(full_build) -> None:
    out, summary = full_build
    files = layout_files(out)
    assert SUMMARY_FILENAME not in files
    assert [f for f in files if f.startswith("listings/")] == [
        "listings/metadata/listings_0.json.gz",
        "listings/metadata/listings_1.json.gz",
    ]
    assert "images/metadata/images.csv.gz" in files
    small = [f.removeprefix("images/small/") for f in files if f.startswith("images/small/")]
    assert small and all(ABO_PATH.match(p) for p in small)
    assert len(files) == summary.objects
    assert len(small) == summary.image_files

    header, rows = read_images_csv(out)
    assert header == ["image_id", "height", "width", "path"]
    assert len(rows) == summary.images_csv_rows
    assert all(IMAGE_ID.match(i) and ABO_PATH.match(r["path"]) for i, r in rows.items())
    raw = gzip.decompress((out / "images/metadata/images.csv.gz").read_bytes()).decode()
    assert raw.startswith("image_id,height,width,path\n")


def test_gzip_files_carry_no_time_or_name(full_build) -> None:
    out, _ = full_build
    for rel in layout_files(out):
        if rel.endswith(".gz"):
            head = (out / rel).read_bytes()[:10]
            assert head[:2] == b"\x1f\x8b"
            assert head[3] & 0x08 == 0, f"{rel} stores a file name"
            assert head[4:8] == b"\0\0\0\0", f"{rel} stores a modification time"


def test_sixteen_shards_are_named_in_hex(stamps_root: Path, tmp_path: Path) -> None:
    summary = build_sample_catalogue(stamps_root, tmp_path / "s16", shards=16, max_products=60)
    names = sorted(p.name for p in (tmp_path / "s16/listings/metadata").iterdir())
    assert names == sorted(f"listings_{n:x}.json.gz" for n in range(16))
    assert summary.objects == len(layout_files(tmp_path / "s16"))


def test_listings_have_abo_fields(full_build, stamps_root: Path) -> None:
    out, summary = full_build
    categories = {p.name.upper() for p in stamps_root.iterdir() if p.is_dir()}
    allowed_tags = {"en_US", *LANGUAGE_TAGS.values()}
    lines = read_listing_lines(out)
    assert len(lines) == summary.total_listing_lines
    assert len({listing["item_id"] for _, listing in lines}) == summary.unique_products
    for _, listing in lines:
        assert ITEM_ID.match(listing["item_id"])
        assert listing["item_name"] and {n["language_tag"] for n in listing["item_name"]} <= allowed_tags
        assert listing["brand"] == [{"language_tag": "en_US", "value": "Tux Paint"}]
        assert len(listing["product_type"]) == 1 and listing["product_type"][0]["value"] in categories
        assert (listing["domain_name"], listing["country"], listing["marketplace"]) == ("amazon.com", "US", "Amazon")
        assert isinstance(listing["other_image_id"], list)
        if "main_image_id" in listing:
            assert IMAGE_ID.match(listing["main_image_id"])
    # Tux Paint's `<name>_mirror.png` stamps are the other images of their products.
    assert sum(1 for _, listing in lines if listing["other_image_id"]) >= 5


def test_small_images_are_rgb_jpegs_at_most_256(full_build) -> None:
    out, summary = full_build
    _, rows = read_images_csv(out)
    corrupt = {
        listing["main_image_id"]
        for _, listing in read_listing_lines(out)
        if listing["item_id"] in summary.corrupt_image
    }
    checked = 0
    for image_id, row in rows.items():
        path = out / "images/small" / row["path"]
        if not path.exists() or image_id in corrupt:
            continue
        with Image.open(path) as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB"
            assert max(img.size) <= 256
            assert not img.getexif()
            # As in ABO, images.csv gives the original's size; the small file keeps its shape.
            height, width = int(row["height"]), int(row["width"])
            assert img.width <= width and img.height <= height
            assert abs(img.width / img.height - width / height) < 0.1 * max(1, width / height)
        checked += 1
    assert checked == summary.image_files - len(summary.corrupt_image)


def test_transparent_png_is_composited_on_white(full_build) -> None:
    out, _ = full_build
    # Stamps are cut-outs: their corners are transparent, so the JPEG corners are white.
    _, rows = read_images_csv(out)
    white_corners = 0
    for row in rows.values():
        path = out / "images/small" / row["path"]
        if path.exists() and decodes(path):
            with Image.open(path) as img:
                if all(min(img.getpixel(xy)) >= 240 for xy in [(0, 0), (img.width - 1, img.height - 1)]):
                    white_corners += 1
    assert white_corners > len(rows) // 2


# --- dirt -----------------------------------------------------------------------


def test_every_kind_of_dirt_is_present_and_recorded(full_build) -> None:
    """Each kind is found on disk, and the products found are exactly the ones the summary lists."""
    out, summary = full_build
    _, rows = read_images_csv(out)
    lines = read_listing_lines(out)
    products = {listing["item_id"]: listing for _, listing in lines}
    shards_of: dict[str, set[str]] = {}
    for shard, listing in lines:
        shards_of.setdefault(listing["item_id"], set()).add(shard)

    found: dict[str, set[str]] = {kind: set() for kind in DIRT_KINDS}
    for item_id, listing in products.items():
        main_id = listing.get("main_image_id")
        if not en_us_titles(listing):
            found["no_title_in_language"].add(item_id)
        if not main_id:
            found["no_main_image"].add(item_id)
        elif main_id not in rows:
            found["image_not_in_csv"].add(item_id)
        elif not (out / "images/small" / rows[main_id]["path"]).exists():
            found["image_missing_from_bucket"].add(item_id)
        elif not decodes(out / "images/small" / rows[main_id]["path"]):
            found["corrupt_image"].add(item_id)
        if len(shards_of[item_id]) > 1:
            found["duplicate"].add(item_id)

    for kind in DIRT_KINDS:
        assert found[kind], f"no {kind} in the catalogue"
        assert set(getattr(summary, kind)) == found[kind], kind
    assert len(summary.no_title_in_language) >= 3
    assert summary.total_listing_lines == summary.unique_products + len(summary.duplicate)


def test_untitled_products_keep_other_languages(full_build) -> None:
    out, summary = full_build
    products = {listing["item_id"]: listing for _, listing in read_listing_lines(out)}
    for item_id in summary.no_title_in_language:
        tags = [n["language_tag"] for n in products[item_id]["item_name"]]
        assert tags and "en_US" not in tags
        assert "en_GB" in tags  # a trap for `startswith("en")`


def test_first_en_us_title_is_the_caption(full_build, stamps_root: Path) -> None:
    out, summary = full_build
    assert len(summary.multiple_en_us_titles) >= 2
    captions = {}
    for txt in stamps_root.rglob("*.txt"):
        first = txt.read_text(encoding="utf-8").splitlines()[:1]
        if first:
            captions.setdefault(first[0].strip(), txt)
    products = {listing["item_id"]: listing for _, listing in read_listing_lines(out)}
    for item_id in summary.multiple_en_us_titles:
        titles = en_us_titles(products[item_id])
        assert len(titles) >= 2 and len(set(titles)) == len(titles)
        assert titles[0] in captions and titles[1] not in captions


def test_corrupt_image_opens_but_does_not_decode(full_build) -> None:
    out, summary = full_build
    _, rows = read_images_csv(out)
    products = {listing["item_id"]: listing for _, listing in read_listing_lines(out)}
    for item_id in summary.corrupt_image:
        path = out / "images/small" / rows[products[item_id]["main_image_id"]]["path"]
        with Image.open(path) as img:  # the header is intact ...
            assert img.format == "JPEG"
            with pytest.raises(OSError):
                img.load()  # ... the scan data is not


def test_duplicate_lines_are_identical_and_in_different_shards(full_build) -> None:
    out, summary = full_build
    for item_id in summary.duplicate:
        copies = [(shard, listing) for shard, listing in read_listing_lines(out) if listing["item_id"] == item_id]
        assert len(copies) == 2
        assert copies[0][0] != copies[1][0]
        assert copies[0][1] == copies[1][1]


def test_clean_item_ids_match_an_independent_reading(full_build) -> None:
    out, summary = full_build
    assert set(summary.clean_item_ids) == expected_clean(out)
    assert len(summary.clean_item_ids) == len(set(summary.clean_item_ids))
    assert set(summary.duplicate) <= set(summary.clean_item_ids)
    assert set(summary.multiple_en_us_titles) <= set(summary.clean_item_ids)
    assert not set(summary.excluded_item_ids) & set(summary.clean_item_ids)
    assert len(summary.clean_item_ids) + len(summary.excluded_item_ids) == summary.unique_products


def test_summary_file_round_trips(full_build) -> None:
    out, summary = full_build
    assert CatalogueSummary.load(out) == summary
    assert json.loads((out / SUMMARY_FILENAME).read_text())["clean_item_ids"] == summary.clean_item_ids


def test_small_build_still_has_every_kind_of_dirt(stamps_root: Path, tmp_path: Path) -> None:
    needed = sum(DIRT_COUNTS.values())
    summary = build_sample_catalogue(stamps_root, tmp_path / "small", max_products=needed + 5)
    assert summary.unique_products == needed + 5
    for kind in DIRT_KINDS:
        assert getattr(summary, kind), kind
    assert set(summary.clean_item_ids) == expected_clean(tmp_path / "small")


def test_rebuild_replaces_a_previous_build_but_refuses_other_directories(stamps_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_sample_catalogue(stamps_root, out, shards=4, max_products=30)
    summary = build_sample_catalogue(stamps_root, out, shards=2, max_products=25)
    assert len(layout_files(out)) == summary.objects  # no stale shards or images left behind

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(SampleCatalogueError, match="not empty"):
        build_sample_catalogue(stamps_root, foreign, max_products=25)
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_bad_arguments_are_refused(stamps_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shards"):
        build_sample_catalogue(stamps_root, tmp_path / "a", shards=17)
    with pytest.raises(ValueError, match="max_products"):
        build_sample_catalogue(stamps_root, tmp_path / "b", max_products=0)
    with pytest.raises(SampleCatalogueError, match="no captioned PNG"):
        build_sample_catalogue(tmp_path, tmp_path / "c")


# --- fetching -------------------------------------------------------------------


def _fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _tiny_deb(tmp_path: Path) -> Path:
    """A real .deb with one captioned stamp, built with dpkg-deb."""
    root = tmp_path / "pkg"
    stamp = root / "usr/share/tuxpaint/stamps/animals"
    stamp.mkdir(parents=True)
    Image.new("RGBA", (40, 20), (200, 10, 10, 255)).save(stamp / "fox.png")
    (stamp / "fox.txt").write_text("A red fox.\nde.utf8=Ein roter Fuchs.\n", encoding="utf-8")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: tuxpaint-stamps-default\nVersion: 0.1\nArchitecture: all\n"
        "Maintainer: test <test@example.org>\nDescription: test stamps\n"
    )
    deb = tmp_path / "tuxpaint-stamps-default_0.1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_fetch_extracts_a_cached_deb_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    _tiny_deb(tmp_path).rename(cache / "tuxpaint-stamps-default_0.1_all.deb")
    fake_bin = tmp_path / "bin"
    _fake_tool(fake_bin, "apt-get", "echo 'apt-get must not run' >&2; exit 99\n")
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    root = fetch_tuxpaint(cache)
    assert (root / "animals/fox.png").is_file()
    assert not (cache / "x.partial").exists()
    summary = build_sample_catalogue(root, tmp_path / "out")
    assert summary.unique_products == 1

    # Second call: already extracted, nothing runs (dpkg-deb would fail now).
    _fake_tool(fake_bin, "dpkg-deb", "echo 'dpkg-deb must not run' >&2; exit 99\n")
    assert fetch_tuxpaint(cache) == root


def _slow_dpkg_deb(fake_bin: Path, calls: Path) -> None:
    """A dpkg-deb that logs each call and is slow on both sides of the real one: two unlocked callers overlap."""
    real = shutil.which("dpkg-deb")
    _fake_tool(fake_bin, "dpkg-deb", f'echo "$@" >> "{calls}"\nsleep 0.3\n"{real}" "$@" || exit $?\nsleep 0.3\n')


def test_two_callers_fetching_into_a_fresh_cache_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's two pytest workers on a fresh machine: one unpacks, the other waits and finds it done.
    (Unlocked, the second emptied the first one's `x.partial` under it, and 21 setups failed.)"""
    cache = tmp_path / "cache"
    cache.mkdir()
    _tiny_deb(tmp_path).rename(cache / "tuxpaint-stamps-default_0.1_all.deb")
    calls = tmp_path / "dpkg-deb.calls"
    _slow_dpkg_deb(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")

    with ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(lambda _: fetch_tuxpaint(cache), range(2)))
    assert roots[0] == roots[1]
    assert (roots[0] / "animals/fox.png").is_file()
    assert len(calls.read_text().splitlines()) == 1
    assert sorted(p.name for p in cache.iterdir()) == [".fetch.lock", "tuxpaint-stamps-default_0.1_all.deb", "x"]


def test_two_callers_wanting_the_sample_build_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ensure_built` (the demo's and the tests' build in the cache) builds once when two ask at once."""
    from catalogue_search_dev import sample_catalogue

    cache = tmp_path / "home" / "tuxpaint"
    cache.mkdir(parents=True)
    _tiny_deb(tmp_path).rename(cache / "tuxpaint-stamps-default_0.1_all.deb")
    monkeypatch.setenv("CATSEARCH_HOME", str(tmp_path / "home"))
    builds = []

    def slow_build(*args, **kwargs):
        builds.append(args)
        time.sleep(0.3)  # long enough for the other caller to find no summary yet
        return build_sample_catalogue(*args, **kwargs)

    monkeypatch.setattr(sample_catalogue, "build_sample_catalogue", slow_build)
    out = tmp_path / "home" / "sample-catalogue"
    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(lambda _: sample_catalogue.ensure_built(out), range(2)))
    assert len(builds) == 1
    assert summaries[0] == summaries[1]
    assert summaries[0].unique_products == 1


def test_fetch_downloads_with_apt_get_in_the_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deb = _tiny_deb(tmp_path)
    fake_bin = tmp_path / "bin"
    # A stand-in apt-get that checks its arguments and "downloads" into its working directory.
    _fake_tool(
        fake_bin,
        "apt-get",
        f'[ "$1 $2" = "download tuxpaint-stamps-default" ] || exit 2\ncp "{deb}" "$PWD/"\n',
    )
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    cache = tmp_path / "cache"
    root = fetch_tuxpaint(cache)
    assert (cache / deb.name).is_file()
    assert (root / "animals/fox.txt").is_file()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".download")] == []


def test_fetch_quotes_apt_get_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bin = tmp_path / "bin"
    _fake_tool(fake_bin, "apt-get", "echo 'E: Unable to locate package tuxpaint-stamps-default' >&2; exit 100\n")
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SampleCatalogueError, match="Unable to locate package") as err:
        fetch_tuxpaint(tmp_path / "cache")
    assert "exit code 100" in str(err.value)


def test_fetch_says_when_apt_get_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_bin = tmp_path / "empty"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    with pytest.raises(SampleCatalogueError, match="`apt-get` is not available"):
        fetch_tuxpaint(tmp_path / "cache")


# --- command line -----------------------------------------------------------------


def test_cli_builds_and_prints_a_summary(capsys: pytest.CaptureFixture[str], stamps_root: Path, tmp_path: Path) -> None:
    cache = stamps_root.parents[4]  # <cache>/x/usr/share/tuxpaint/stamps
    out = tmp_path / "cli"
    assert main(["build", "--out", str(out), "--cache", str(cache), "--max-products", "30"]) == 0
    printed = capsys.readouterr().out
    summary = CatalogueSummary.load(out)
    assert summary.unique_products == 30
    assert f"clean (en_US): {len(summary.clean_item_ids)}" in printed
    assert "corrupt_image: 1" in printed


def test_cli_reports_errors_without_a_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "x/usr/share/tuxpaint/stamps").mkdir(parents=True)
    assert main(["build", "--out", str(tmp_path / "out"), "--cache", str(cache)]) == 1
    assert "no captioned PNG" in capsys.readouterr().err
