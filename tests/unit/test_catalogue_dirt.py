"""The catalogue filter reads files a data provider writes: dirty rows are dropped and counted, never crash it.

Each case is a row a careless provider could ship (issue 10): listings without
a usable `item_id`, listing lines that are not JSON objects, images with
missing or non-numeric sizes. Errors that must stop a shard name the file and
the line.
"""

from __future__ import annotations

import gzip
import io
import json
import logging

import pandas as pd
import pytest

from catalogue_search import catalogue

EN = "en_US"


def listing(item_id, name: str = "a thing", image: str = "imgA", **extra) -> dict:
    row = {"item_name": [{"language_tag": EN, "value": name}], "main_image_id": image, **extra}
    if item_id is not ...:
        row["item_id"] = item_id
    return row


def gz(text: str | bytes) -> bytes:
    out = io.BytesIO()
    with gzip.open(out, "wb") as fh:
        fh.write(text.encode("utf-8") if isinstance(text, str) else text)
    return out.getvalue()


IMAGES = pd.DataFrame(
    [
        {"image_id": "imgA", "height": 10, "width": 20, "path": "aa/imgA.jpg"},
        {"image_id": "imgB", "height": 10, "width": 20, "path": "bb/imgB.jpg"},
    ]
)


def test_rows_without_a_usable_item_id_are_dropped_and_counted():
    rows = [
        listing("B1"),
        listing(...),  # no item_id at all
        listing(None),
        listing(""),
        listing("   "),
        listing(123),
        listing(["B2"]),
        listing({"id": "B3"}),
        listing("B4", image="imgB"),
    ]
    products, report = catalogue.filter_listings(rows, IMAGES, language_tag=EN, shard="0")
    assert [p["item_id"] for p in products] == ["B1", "B4"]
    assert "None" not in {p["item_id"] for p in products}
    assert report.listings == 9 and report.kept == 2
    assert report.dropped == {catalogue.DROP_NO_ITEM_ID: 7}  # not collapsed into one 'None' and counted as duplicates


def test_listing_lines_that_are_not_json_objects_are_dropped_and_counted():
    not_objects = ["[1, 2]", '"a string"', "null", "42", "true"]
    lines = [json.dumps(listing("B1")), *not_objects, json.dumps(listing("B4", image="imgB"))]
    rows = catalogue.read_listings(gz("\n".join(lines) + "\n"), source="listings_0.json.gz")
    assert len(rows) == 7
    products, report = catalogue.filter_listings(rows, IMAGES, language_tag=EN, shard="0")
    assert [p["item_id"] for p in products] == ["B1", "B4"]
    assert report.dropped == {catalogue.DROP_NOT_OBJECT: 5}


def images_csv(rows: list[str]) -> bytes:
    return gz("image_id,height,width,path\n" + "\n".join(rows) + "\n")


def test_images_with_missing_or_non_numeric_sizes_drop_their_products(caplog: pytest.LogCaptureFixture):
    raw_rows = [
        "imgOK,100,200,ok/imgOK.jpg",
        "imgEmptyH,,200,a/imgEmptyH.jpg",
        "imgEmptyW,100,,a/imgEmptyW.jpg",
        "imgText,abc,200,a/imgText.jpg",
        "imgZero,0,200,a/imgZero.jpg",
        "imgFrac,2.5,200,a/imgFrac.jpg",
        "imgNeg,-3,200,a/imgNeg.jpg",
        "imgHuge,1e30,200,a/imgHuge.jpg",
        "imgNaN,NaN,200,a/imgNaN.jpg",
        "imgFloat,100.0,200,ok/imgFloat.jpg",
    ]
    raw = images_csv(raw_rows)
    with caplog.at_level(logging.WARNING):
        images = catalogue.read_images_csv(raw, source="images.csv.gz")
    assert any("images.csv.gz: 8 image rows have a missing or invalid" in r.getMessage() for r in caplog.records)
    ids = [line.split(",")[0] for line in raw_rows]
    rows = [listing(f"B{n}", image=image_id) for n, image_id in enumerate(ids)]
    products, report = catalogue.filter_listings(rows, images, language_tag=EN, shard="0")
    assert [(p["item_id"], p["height"], p["width"]) for p in products] == [("B0", 100, 200), ("B9", 100, 200)]
    assert all(type(p["height"]) is int and type(p["width"]) is int for p in products)
    assert report.dropped == {catalogue.DROP_BAD_IMAGE_SIZE: 8}
    json.dumps(products, allow_nan=False)  # the products file stays strict JSON


def test_the_issue_s_dirty_rows_together():
    lines = [
        json.dumps(listing("B1")),
        json.dumps(listing(...)),
        json.dumps(listing(None)),
        json.dumps(listing(None, image="imgB")),
        json.dumps(listing("")),
        "[]",
        '"listing"',
        "null",
        json.dumps(listing("B2", image="imgEmpty")),
    ]
    images = catalogue.read_images_csv(images_csv(["imgA,10,20,aa/imgA.jpg", "imgEmpty,,20,ee/imgEmpty.jpg"]))
    rows = catalogue.read_listings(gz("\n".join(lines)))
    products, report = catalogue.filter_listings(rows, images, language_tag=EN, shard="3")
    assert [p["item_id"] for p in products] == ["B1"]
    assert report.as_dict() == {
        "shard": "3",
        "listings": 9,
        "kept": 1,
        "dropped": {
            catalogue.DROP_BAD_IMAGE_SIZE: 1,
            catalogue.DROP_NO_ITEM_ID: 4,
            catalogue.DROP_NOT_OBJECT: 3,
        },
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (gz('{"item_id": "B1"}\n\n{not json\n'), "s3://src/listings_0.json.gz line 3 is not valid JSON"),
        (gz('{"item_id": "B1"}\n{"n": ' + "1" * 5_000 + "}\n"), "listings_0.json.gz line 2 is not valid JSON: Exceeds"),
        (gz("[" * 100_000 + "]" * 100_000 + "\n"), "listings_0.json.gz line 1 is not valid JSON"),
        (gz(b'{"item_id": "B1"}\n{"item_id": "\xff"}\n'), "listings_0.json.gz line 2 is not valid JSON: 'utf-8'"),
        (gz("".join(f'{{"item_id": "B{n}"}}\n' for n in range(5000)))[:-40], "listings_0.json.gz cannot be read at"),
        (b"not gzip at all", "listings_0.json.gz cannot be read at line 1"),
    ],
    ids=["syntax", "long-int", "deep", "not-utf8", "truncated-gzip", "not-gzip"],
)
def test_a_listings_file_that_stops_the_shard_names_the_file_and_line(raw: bytes, message: str):
    with pytest.raises(ValueError, match=message):
        catalogue.read_listings(raw, source="s3://src/listings_0.json.gz")


def test_an_unreadable_images_csv_names_the_file_and_line():
    bad_row = images_csv(["imgA,10,20,aa/imgA.jpg", "imgB,10,20,bb/imgB.jpg,extra,fields"])
    with pytest.raises(ValueError, match=r"s3://src/images.csv.gz cannot be read: .*line 3"):
        catalogue.read_images_csv(bad_row, source="s3://src/images.csv.gz")
    with pytest.raises(ValueError, match=r"s3://src/images.csv.gz lacks the columns \['height'\]"):
        catalogue.read_images_csv(gz("image_id,width,path\nimgA,20,aa/imgA.jpg\n"), source="s3://src/images.csv.gz")


def test_products_jsonl_round_trips_line_separators_inside_strings():
    products = [
        {"item_id": "B1", "item_name": "lamp\u2028shade"},
        {"item_id": "B2", "item_name": "mug\x85cup\u2029\x0b\x0c\x1c"},
    ]
    raw = catalogue.to_jsonl(products)
    assert len(raw.decode("utf-8").splitlines()) > 2  # what splitlines() would have cut apart
    assert catalogue.from_jsonl(raw) == products
