"""AWS's limits, checked before a request is sent, and the retry policy of every AWS client the code builds."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.validate import validate_parameters

from catalogue_search import transform
from catalogue_search.settings import Settings, SettingsError, boto3_client


def _request(s: Settings) -> dict:
    return transform.transform_request(
        s, job=transform.job_name(s, "r"), manifest_uri="s3://p/m", output_uri="s3://p/o/"
    )


@pytest.mark.parametrize("concurrent, payload", [(1, 100), (4, 25), (10, 10), (4, 6)])
def test_a_transform_within_the_per_instance_payload_limit_is_sent(concurrent, payload):
    req = _request(Settings(transform_max_concurrent=concurrent, transform_max_payload_mb=payload))
    assert req["MaxConcurrentTransforms"] * req["MaxPayloadInMB"] <= 100
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(req, model.operation_model("CreateTransformJob").input_shape)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"transform_max_concurrent": 4, "transform_max_payload_mb": 26}, "4 x 26 MB is above SageMaker's 100 MB"),
        ({"transform_max_concurrent": 101, "transform_max_payload_mb": 1}, "101 x 1 MB"),
        ({"transform_max_payload_mb": 101, "transform_max_concurrent": 1}, "MAX_PAYLOAD_MB=101 is not 1..100"),
        ({"transform_max_concurrent": 0}, "MAX_CONCURRENT=0 is not at least 1"),
        ({"transform_instance_count": 0}, "INSTANCE_COUNT=0 is not at least 1"),
    ],
)
def test_a_transform_sagemaker_would_refuse_is_refused_here_with_the_setting_to_change(changes, message):
    """A SettingsError is permanent: the task fails at once instead of retrying what cannot pass."""
    with pytest.raises(SettingsError, match=message):
        _request(Settings(**changes))


def test_sagemaker_names_too_long_are_refused_before_the_request():
    long_prefix = Settings(endpoint_prefix="p" * 60)
    with pytest.raises(ValueError, match="at most 63 characters"):
        transform.model_request(long_prefix, "IMAGE", "image:tag", "v1")
    with pytest.raises(ValueError, match="at most 63 characters"):
        _request(long_prefix)
    assert len(transform.job_name(Settings(model_name="x" * 200), "r")) <= 63


@pytest.mark.parametrize("service", ["s3", "sagemaker", "sagemaker-runtime"])
def test_aws_clients_use_the_standard_retry_mode_with_the_attempts_of_the_settings(service):
    client = boto3_client(service, Settings(aws_max_attempts=7))
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 7}  # the first one included
    assert boto3_client(service, Settings()).meta.config.retries["total_max_attempts"] == 5


def test_the_retry_policy_is_enforced_on_a_call():
    """The client really retries a 503 up to the bound: a local server that always answers 503 counts them."""
    import http.server
    import threading

    hits = []

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s = Settings(aws_endpoint_url=f"http://127.0.0.1:{server.server_port}", aws_max_attempts=3)
        client = boto3_client("s3", s)
        with pytest.raises(Exception):
            client.head_object(Bucket="b", Key="k")
        assert len(hits) == 3
    finally:
        server.shutdown()
        server.server_close()
