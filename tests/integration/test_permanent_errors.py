"""Errors no retry can fix fail a task at once: raised by the real OpenSearch node and moto server."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from catalogue_search import encoding, index, model_artifact
from catalogue_search.airflow_clients import fail_fast
from catalogue_search.errors import is_permanent
from catalogue_search.settings import Settings


def test_an_index_left_with_another_vector_dimension_fails_at_once(opensearch_url, unique):
    client = index.make_client(opensearch_url)
    name = f"dims-{unique}"
    try:
        index.create_index(client, name, index.index_body(Settings(), alias=f"a-{unique}", dimension=3, run_key=name))
        other = index.index_body(Settings(), alias=f"a-{unique}", dimension=4, run_key=name)
        with pytest.raises(AirflowFailException, match=f"index {name} exists with vector dimension 3, expected 4"):
            with fail_fast():
                index.create_index(client, name, other)
    finally:
        client.indices.delete(index=name, ignore_unavailable=True)


def test_a_missing_model_artifact_fails_at_once(settings, s3):
    with pytest.raises(model_artifact.ArtifactVersionError) as err:
        model_artifact.read_artifact_version(s3, settings.artifact_uri)
    assert is_permanent(err.value) and "build and upload it first" in str(err.value)


def test_a_bucket_that_does_not_exist_is_permanent_by_its_code(settings, s3):
    with pytest.raises(Exception) as err:
        s3.get_object(Bucket=f"{settings.bucket}-none", Key="x")
    assert is_permanent(err.value), err.value


def test_a_transform_output_that_is_not_the_pipeline_s_fails_at_once(settings, s3):
    s3.put_object(Bucket=settings.bucket, Key="runs/r/out.npz", Body=b"not an npz")
    with pytest.raises(AirflowFailException, match="is not a chunk output"):
        with fail_fast():
            encoding.parse_output(s3.get_object(Bucket=settings.bucket, Key="runs/r/out.npz")["Body"].read(), "x")
    with pytest.raises(AirflowFailException, match="prepare_encoding has not run"):
        with fail_fast():
            encoding.read_plan(s3, encoding.Store(settings), "manifests/never-run/")
