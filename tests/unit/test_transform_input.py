"""How a CreateTransformJob's inputs become requests, as SageMaker's transform agent sends them."""

from __future__ import annotations

import pytest

from catalogue_search_dev.transform_input import MB, TransformJobError, parse_job, requests_of


def job_request(**overrides) -> dict:
    request = {
        "TransformJobName": "j",
        "ModelName": "m",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}},
            "ContentType": "application/jsonlines",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out"},
    }
    request.update(overrides)
    return request


def test_the_jobs_settings_and_what_sagemaker_adds_to_the_containers_environment():
    job, source = parse_job(
        job_request(
            BatchStrategy="MultiRecord",
            MaxPayloadInMB=2,
            MaxConcurrentTransforms=4,
            ModelClientConfig={"InvocationsTimeoutInSeconds": 30, "InvocationsMaxRetries": 1},
        )
    )
    assert (job.strategy, job.max_payload, job.concurrency, job.timeout_s, job.max_retries) == (
        "MultiRecord",
        2 * MB,
        4,
        30.0,
        1,
    )
    assert (job.out_bucket, job.out_prefix, source["S3Uri"]) == ("b", "out/", "s3://b/in/")
    assert job.environment() == {
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "4",
    }
    defaults, _ = parse_job(job_request())
    assert (defaults.strategy, defaults.max_payload, defaults.concurrency, defaults.max_retries) == (
        "SingleRecord",
        6 * MB,
        1,
        3,
    )


def test_multi_record_packs_lines_up_to_max_payload_and_single_record_sends_one_a_request():
    lines = [b"x" * (300 * 1024) for _ in range(7)]  # 300 KB lines: three fit in 1 MB
    data = b"\n".join(lines) + b"\n\n"
    multi, _ = parse_job(job_request(BatchStrategy="MultiRecord", MaxPayloadInMB=1))
    single, _ = parse_job(job_request(BatchStrategy="SingleRecord", MaxPayloadInMB=1))
    packed = requests_of(data, multi)
    assert [p.count(b"\n") + 1 for p in packed] == [3, 3, 1] and all(len(p) <= MB for p in packed)
    assert b"\n".join(packed) == b"\n".join(lines)  # every line once, in order
    assert requests_of(data, single) == lines


def test_what_cannot_be_sent_is_named():
    job, _ = parse_job(job_request(MaxPayloadInMB=1))
    with pytest.raises(ValueError, match="record 2 is 1048577 bytes, above MaxPayloadInMB=1"):
        requests_of(b"ok\n" + b"x" * (MB + 1), job)
    with pytest.raises(ValueError, match="no records"):
        requests_of(b"\n \n", job)
    whole, _ = parse_job(
        job_request(MaxPayloadInMB=1, TransformInput={**job_request()["TransformInput"], "SplitType": "None"})
    )
    with pytest.raises(ValueError, match="object is 1048577 bytes"):
        requests_of(b"x" * (MB + 1), whole)
    with pytest.raises(TransformJobError, match="BatchStrategy='Bulk'"):
        parse_job(job_request(BatchStrategy="Bulk"))
