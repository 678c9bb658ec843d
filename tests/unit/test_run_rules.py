"""Rules a run checks before any work: conf keys, trials, alias length; seeded samples."""

from __future__ import annotations

import pytest

from catalogue_search import index, ingest
from catalogue_search.errors import PermanentError
from catalogue_search.settings import Settings, SettingsError

PARAMS = ["shards", "language_tag", "max_products", "alias", "force_reencode", "allow_shrink"]


def test_an_unknown_conf_key_is_named_with_the_valid_params():
    ingest.check_conf({"shards": ["0"], "alias": "x"}, PARAMS)
    ingest.check_conf(None, PARAMS)
    with pytest.raises(PermanentError) as err:
        ingest.check_conf({"shard": ["0"]}, PARAMS)
    assert str(err.value) == (
        "unknown conf key(s) 'shard': valid Params are "
        "alias, allow_shrink, force_reencode, language_tag, max_products, shards"
    )


def test_max_products_never_publishes_to_the_default_alias():
    settings = Settings(index_alias="products")
    with pytest.raises(PermanentError, match="max_products=20 is for trials .* default alias 'products'"):
        ingest.plan_run(settings, None, run_id="r", params={"max_products": 20, "alias": "products"})


def test_an_alias_too_long_for_an_index_name_fails_at_once():
    with pytest.raises(PermanentError, match="is too long"):
        ingest.plan_run(Settings(), None, run_id="r", params={"alias": "a" * 240})


def test_deterministic_errors_are_permanent():
    assert issubclass(index.IndexValidationError, PermanentError)
    assert issubclass(SettingsError, PermanentError)


def test_sample_ids_are_seeded_by_the_run():
    ids = [f"B{n:04d}" for n in range(1000)]
    assert index.sample_ids(ids, 10, seed="run-1") == index.sample_ids(list(reversed(ids)), 10, seed="run-1")
    assert index.sample_ids(ids, 10, seed="run-1") != index.sample_ids(ids, 10, seed="run-2")
    assert index.sample_ids(ids[:3], 10, seed="x") == ids[:3]


def test_a_shard_with_no_listings_filters_to_no_products():
    import pandas as pd

    from catalogue_search import catalogue

    images = pd.DataFrame({"image_id": ["a"], "height": [10], "width": [10], "path": ["aa/a.jpg"]})
    products, report = catalogue.filter_listings([], images, language_tag="en_US", shard="1")
    assert products == [] and report.kept == 0
