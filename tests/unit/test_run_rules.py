"""Rules a run checks before any work: conf keys, trials, alias length; seeded samples."""

from __future__ import annotations

import pytest

from catalogue_search import index, ingest
from catalogue_search.errors import PermanentError
from catalogue_search.settings import REQUIRED, Settings, SettingsError

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
    from catalogue_search import encoding, endpoints, model_artifact, smoke
    from catalogue_search.errors import InvalidValueError

    permanent = [
        index.IndexValidationError,
        SettingsError,
        InvalidValueError,
        model_artifact.ArtifactVersionError,
        encoding.EmbeddingStoreError,
        encoding.MissingOutputError,
        endpoints.ArtifactMissingError,
        endpoints.SmokeTestError,
        smoke.SearchSmokeError,
    ]
    for cls in permanent:
        assert issubclass(cls, PermanentError), cls
    # What callers caught before still catches them.
    assert issubclass(model_artifact.ArtifactVersionError, RuntimeError)
    assert issubclass(encoding.EmbeddingStoreError, RuntimeError)
    assert issubclass(InvalidValueError, ValueError) and issubclass(SettingsError, ValueError)
    # An endpoint still updating settles by itself: retried.
    assert not issubclass(endpoints.EndpointBusyError, PermanentError)


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        ("NoSuchBucket", True),
        ("InvalidAccessKeyId", True),
        ("SlowDown", False),
        ("InternalError", False),
        ("ThrottlingException", False),
        ("AccessDenied", False),
    ],
)
def test_aws_errors_are_classified_by_their_code(code, permanent):
    from botocore.exceptions import ClientError

    from catalogue_search.errors import is_permanent

    assert is_permanent(ClientError({"Error": {"Code": code, "Message": "x"}}, "GetObject")) is permanent


def test_opensearch_errors_are_classified_by_their_status():
    from opensearchpy import exceptions as ose

    from catalogue_search.errors import is_permanent

    assert is_permanent(ose.AuthenticationException(401, "security_exception", {}))
    assert not is_permanent(ose.TransportError(429, "es_rejected_execution_exception", {}))
    assert not is_permanent(ose.TransportError(503, "unavailable", {}))
    assert not is_permanent(ose.RequestError(400, "resource_already_exists_exception", {}))  # a retry reuses it
    assert not is_permanent(ose.ConnectionTimeout("TIMEOUT", "read timed out", None))


def test_fail_fast_fails_a_permanent_error_at_once_and_lets_a_transient_one_retry():
    from airflow.sdk.exceptions import AirflowFailException
    from botocore.exceptions import ClientError

    from catalogue_search.airflow_clients import fail_fast
    from catalogue_search.model_artifact import ArtifactVersionError

    with pytest.raises(AirflowFailException, match="no model artifact at s3://b/m.tar.gz.*ArtifactVersionError"):
        with fail_fast():
            raise ArtifactVersionError("no model artifact at s3://b/m.tar.gz")
    throttled = ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, "GetObject")
    with pytest.raises(ClientError):
        with fail_fast():
            raise throttled


def test_a_setting_that_is_not_a_number_is_a_settings_error():
    with pytest.raises(SettingsError, match="CATSEARCH_LOAD_TIMEOUT_S='soon' is not a whole number"):
        Settings.from_env({"CATSEARCH_LOAD_TIMEOUT_S": "soon"})


def test_time_limits_come_from_the_settings_and_must_be_positive():
    from datetime import timedelta

    settings = Settings.from_env({"CATSEARCH_LOAD_TIMEOUT_S": "90"})
    assert settings.timeout("load") == timedelta(seconds=90)
    assert settings.dag_default_args()["execution_timeout"] == settings.timeout("task")
    with pytest.raises(KeyError, match="no time limit 'lunch_timeout_s'"):
        settings.timeout("lunch")
    env = {name: "x" for name in (f"CATSEARCH_{n.upper()}" for n in REQUIRED)}
    with pytest.raises(SettingsError, match="CATSEARCH_COPY_TIMEOUT_S=0 must be at least 1"):
        Settings.from_env({**env, "CATSEARCH_QUERY_ENCODER": "local", "CATSEARCH_COPY_TIMEOUT_S": "0"}).check()


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
