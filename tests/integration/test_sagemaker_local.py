"""The local SageMaker server: InvokeEndpoint through boto3's real HTTP path, transform jobs that really run.

The server (this checkout's code, on a free port) sits in front of the moto
server; the tiny model's artifact lives in moto S3. Every model runs in AWS's
serving toolkit on TorchServe, started with no reachable package index; the
session's model servers are shared by the tests whose models have the same
artifact and environment. Every test has its own bucket and resource names.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image, ImageDraw

from catalogue_search.contract import vectors_close
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.settings import Settings, boto3_client
from catalogue_search_dev.model_build import upload_model_artifact

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"
IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"


def jpeg(colour: str = "red", size: int = 64) -> bytes:
    img = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(img).ellipse((8, 8, size - 8, size - 8), fill=colour)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def crashing_artifact(make_handler_artifact, path: Path, where: str) -> Path:
    """A model.tar.gz whose own handler raises in `model_fn` or in `transform_fn` (the toolkit's contract)."""
    return make_handler_artifact(
        path,
        f"""
        def model_fn(model_dir):
            if {where!r} == "load":
                raise RuntimeError("the weights are corrupt")
            return object()

        def transform_fn(model, body, content_type, accept):
            raise RuntimeError("CUDA error: device-side assert triggered")
        """,
    )


@pytest.fixture
def tiny(settings: Settings, s3, tiny_artifact) -> Settings:
    """Settings of the tiny model, its artifact uploaded to this test's bucket."""
    tiny = settings.replace(model_name="tiny-clip", model_pretrained="", endpoint_prefix=f"t{settings.bucket[-8:]}")
    upload_model_artifact(tiny, s3, tiny_artifact)
    return tiny


@pytest.fixture
def sagemaker(settings: Settings):
    """A control-plane client that goes through the local SageMaker server; cleans up what a test deployed."""
    client = boto3_client("sagemaker", settings)
    created: list[tuple[str, str]] = []
    client.created = created
    yield client
    for kind, name in reversed(created):
        try:
            getattr(client, f"delete_{kind}")(**{f"{''.join(w.title() for w in kind.split('_'))}Name": name})
        except ClientError:
            pass


def deploy(
    sagemaker, settings: Settings, encode_type: str, model_data_url: str | None = None, wait: bool = True, **variant
) -> str:
    """Model + serverless endpoint config + endpoint, as the deploy DAG creates them; waits until InService
    (the local server says Creating until the endpoint's TorchServe answers /ping)."""
    name = settings.endpoint_name(encode_type)
    sagemaker.create_model(
        ModelName=name,
        ExecutionRoleArn=settings.sagemaker_role_arn or "arn:aws:iam::123456789012:role/r",
        PrimaryContainer={
            "Image": IMAGE_URI,
            "ModelDataUrl": model_data_url or settings.artifact_uri,
            "Environment": {"ENCODE_TYPE": encode_type, "MODEL_NAME": settings.model_name},
        },
    )
    sagemaker.created.append(("model", name))
    config = {"VariantName": "AllTraffic", "ModelName": name, **variant}
    if "InstanceType" not in variant:
        config["ServerlessConfig"] = {"MemorySizeInMB": 2048, "MaxConcurrency": 1}
    sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[config])
    sagemaker.created.append(("endpoint_config", name))
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sagemaker.created.append(("endpoint", name))
    if wait:
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600}
        )
    return name


def runtime(settings: Settings):
    return boto3_client("sagemaker-runtime", settings)


# --- InvokeEndpoint ------------------------------------------------------------------
def test_text_and_binary_image_requests_answer_exactly_what_the_handler_answers_in_process(tiny, s3, sagemaker):
    text_endpoint = deploy(sagemaker, tiny, "TEXT")
    image_endpoint = deploy(sagemaker, tiny, "IMAGE")
    text = json.dumps({"inputs": ["a red flower", "a blue car"]}).encode()
    image = jpeg("red")

    answers = {
        "TEXT": runtime(tiny).invoke_endpoint(
            EndpointName=text_endpoint, ContentType="application/json", Accept="application/json", Body=text
        ),
        "IMAGE": runtime(tiny).invoke_endpoint(
            EndpointName=image_endpoint, ContentType="application/x-image", Body=image
        ),
    }

    for encode_type, payload, content_type in (
        ("TEXT", text, "application/json"),
        ("IMAGE", image, "application/x-image"),
    ):
        handler = load_handler_from_artifact(tiny.artifact_uri, encode_type, s3_client=s3, env={})
        answer = answers[encode_type]
        assert answer["ContentType"] == "application/json"
        assert answer["InvokedProductionVariant"] == "AllTraffic"
        body = answer["Body"].read()
        # TorchServe's worker is another process: the same code and weights, equal within the contract's tolerance
        vectors = json.loads(body)["embeddings"]
        assert vectors_close(vectors, json.loads(handler.invoke(payload, content_type))["embeddings"])
        assert len(vectors) == (2 if encode_type == "TEXT" else 1)
        assert len(vectors[0]) == json.loads(TINY.read_text())["embed_dim"]


def test_accept_chooses_the_response_format(tiny, sagemaker):
    name = deploy(sagemaker, tiny, "TEXT")
    answer = runtime(tiny).invoke_endpoint(
        EndpointName=name,
        ContentType="application/json",
        Accept="application/jsonlines",
        Body=json.dumps({"inputs": ["one", "two"]}).encode(),
    )
    assert answer["ContentType"] == "application/jsonlines"
    lines = answer["Body"].read().decode().splitlines()
    assert [len(json.loads(line)["embedding"]) > 0 for line in lines] == [True, True]


@pytest.mark.parametrize(
    ("encode_type", "body", "content_type", "accept", "status", "words"),
    [
        ("IMAGE", b"\xff\xd8 not a jpeg", "application/x-image", None, 400, "image"),
        ("TEXT", b'{"inputs": ["unclosed"', "application/json", None, 400, "not valid JSON"),
        ("TEXT", b"\xff\xfe binary, not CSV", "text/csv", None, 415, "unsupported Content-Type 'text/csv'"),
        ("TEXT", b'{"inputs": ["lamp"]}', "application/json", "text/html", 406, "unsupported Accept"),
    ],
    ids=["corrupt image", "invalid JSON", "unsupported content type", "unsupported accept"],
)
def test_bad_input_is_a_client_error_with_one_line_and_no_traceback(
    tiny, sagemaker, encode_type, body, content_type, accept, status, words
):
    name = deploy(sagemaker, tiny, encode_type)
    extra = {"Accept": accept} if accept else {}
    with pytest.raises(ClientError) as err:
        runtime(tiny).invoke_endpoint(EndpointName=name, ContentType=content_type, Body=body, **extra)
    response = err.value.response
    assert response["Error"]["Code"] == "ModelError" and type(err.value).__name__ == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == status
    assert f"Received client error ({status})" in response["Error"]["Message"]
    message = response["OriginalMessage"]
    assert words in message and "\n" not in message and "Traceback" not in message and "/opt/ml" not in message


def test_an_unknown_endpoint_is_a_validation_error(settings):
    with pytest.raises(ClientError) as err:
        runtime(settings).invoke_endpoint(EndpointName="never-deployed", ContentType="application/json", Body=b"{}")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "Endpoint never-deployed of account" in str(err.value) and "not found" in str(err.value)


def test_torchserve_takes_a_request_at_its_size_limit_and_refuses_one_byte_more(tiny, sagemaker, local_sagemaker):
    """TorchServe's max_request_size (6,553,500 bytes unless TS_MAX_REQUEST_SIZE says otherwise) is what a
    transform job's chunk meets: at the limit the handler answers, one byte over TorchServe answers 413."""
    from catalogue_search_dev.model_server import ModelEndpoint

    name = deploy(sagemaker, tiny, "IMAGE")
    runtime(tiny).invoke_endpoint(EndpointName=name, ContentType="application/x-image", Body=jpeg("red"))
    [server] = [s for s in local_sagemaker.servers.describe() if name in s["models"]]
    record = json.dumps({"id": "at/limit.jpg", "b64": base64.b64encode(jpeg("red")).decode()}).encode() + b"\n"
    limit = 6_553_500
    at_limit = record + b" " * (limit - len(record))  # a blank line: the chunk parser skips it
    container = ModelEndpoint(server["url"])

    answer = container.invoke(at_limit, "application/x-image-chunk", "application/x-npz", timeout=120)
    assert (len(at_limit), answer.status, answer.content_type) == (limit, 200, "application/x-npz")
    with np.load(io.BytesIO(answer.body)) as npz:
        assert list(npz["ids"]) == ["at/limit.jpg"]
    over = container.invoke(at_limit + b" ", "application/x-image-chunk", "application/x-npz", timeout=120)
    assert over.status == 413


def test_payloads_over_the_serverless_limit_are_refused(tiny, sagemaker):
    name = deploy(sagemaker, tiny, "IMAGE")
    with pytest.raises(ClientError) as err:
        runtime(tiny).invoke_endpoint(EndpointName=name, ContentType="application/x-image", Body=b"x" * (4 * 2**20 + 1))
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert "4 MB limit" in str(err.value)


def test_a_missing_artifact_or_a_crashing_handler_is_a_model_error_naming_the_cause(
    tiny, s3, sagemaker, tmp_path, make_handler_artifact
):
    missing = deploy(
        sagemaker,
        tiny.replace(endpoint_prefix=tiny.endpoint_prefix + "m"),
        "TEXT",
        "s3://nowhere-x/m.tar.gz",
        wait=False,
    )
    with pytest.raises(ClientError, match="ModelError") as err:
        runtime(tiny).invoke_endpoint(EndpointName=missing, ContentType="application/json", Body=b'{"inputs": ["x"]}')
    assert "s3://nowhere-x/m.tar.gz cannot be loaded" in err.value.response["OriginalMessage"]

    for where, wanted in (("encode", "CUDA error: device-side assert triggered"), ("load", "the weights are corrupt")):
        crash = crashing_artifact(make_handler_artifact, tmp_path / f"{where}.tar.gz", where)
        s3.upload_file(str(crash), tiny.bucket, f"models/crash-{where}/model.tar.gz")
        crashing = deploy(
            sagemaker,
            tiny.replace(endpoint_prefix=tiny.endpoint_prefix + where[0]),
            "TEXT",
            f"s3://{tiny.bucket}/models/crash-{where}/model.tar.gz",
        )
        with pytest.raises(ClientError, match="ModelError") as err:
            runtime(tiny).invoke_endpoint(
                EndpointName=crashing, ContentType="application/json", Body=b'{"inputs": ["x"]}'
            )
        response = err.value.response
        # A failure of the handler stays a server error (the toolkit's own 500, its traceback included).
        assert response["OriginalStatusCode"] == 500 and "Received server error (500)" in response["Error"]["Message"]
        assert wanted in response["OriginalMessage"]


def test_the_toolkit_serves_the_artifact_with_no_package_index_and_answers_the_handlers_vectors(
    tiny, s3, sagemaker, sagemaker_url, local_sagemaker
):
    """The container pip-installs code/requirements.txt from the archive's wheels alone: the toolkit's env
    has no open_clip, and pip's index is an address nothing listens on."""
    import subprocess

    from catalogue_search_dev import containers

    name = deploy(sagemaker, tiny, "IMAGE")
    answer = runtime(tiny).invoke_endpoint(EndpointName=name, ContentType="application/x-image", Body=jpeg("blue"))

    handler = load_handler_from_artifact(tiny.artifact_uri, "IMAGE", s3_client=s3, env={})
    expected = json.loads(handler.invoke(jpeg("blue"), "application/x-image"))["embeddings"]
    assert vectors_close(json.loads(answer["Body"].read())["embeddings"], expected)
    servers = [s for s in local_sagemaker.servers.describe() if name in s["models"]]
    assert len(servers) == 1 and servers[0]["url"].startswith("http://127.0.0.1:")
    log = Path(servers[0]["log"]).read_text()
    assert "Looking in links:" in log and "/model/code/wheels" in log
    assert "Successfully installed" in log and "open-clip-torch-3.3.0" in log
    bare = subprocess.run(
        [str(containers.environment() / "bin" / "python"), "-c", "import open_clip"], capture_output=True, text=True
    )
    assert bare.returncode != 0 and "No module named 'open_clip'" in bare.stderr
    with urllib.request.urlopen(sagemaker_url + "/ping") as ping:
        assert any(name in s["models"] for s in json.load(ping)["model_servers"])  # what `./dev stack status` shows


# --- Control plane and transform jobs ------------------------------------------------------
def test_other_control_plane_calls_reach_moto_unchanged(settings, sagemaker, moto_url):
    import boto3

    direct = boto3.client("sagemaker", endpoint_url=moto_url, region_name=settings.region)
    name = f"cp-{settings.bucket[-8:]}"
    sagemaker.create_model(
        ModelName=name, ExecutionRoleArn="arn:aws:iam::123456789012:role/r", PrimaryContainer={"Image": IMAGE_URI}
    )
    sagemaker.created.append(("model", name))
    assert direct.describe_model(ModelName=name)["PrimaryContainer"]["Image"] == IMAGE_URI
    with pytest.raises(ClientError) as err:
        sagemaker.describe_model(ModelName=name + "-missing")
    assert err.value.response["Error"]["Code"] == "ValidationException"


def wait_for_job(sagemaker, name: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sagemaker.describe_transform_job(TransformJobName=name)
        if described["TransformJobStatus"] not in {"InProgress", "Stopping"}:
            return described
        time.sleep(0.25)
    raise AssertionError(f"transform job {name} still running after {timeout}s")


def job_request(settings: Settings, name: str, model: str, prefix: str) -> dict:
    """A CreateTransformJob over every image under `prefix`, one request per image, error records on."""
    return {
        "TransformJobName": name,
        "ModelName": model,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
        "Environment": {"ERROR_MODE": "record"},
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{settings.bucket}/{prefix}"}},
            "ContentType": "application/x-image",
            "SplitType": "None",
        },
        "TransformOutput": {"S3OutputPath": f"s3://{settings.bucket}/out/{name}/", "Accept": "application/json"},
        "TransformResources": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1},
    }


def test_a_transform_job_runs_the_handler_and_reports_its_real_status(tiny, s3, sagemaker):
    model = deploy(sagemaker, tiny, "IMAGE")
    for colour in ("red", "green"):
        s3.put_object(Bucket=tiny.bucket, Key=f"in/{colour}.jpg", Body=jpeg(colour))
    s3.put_object(Bucket=tiny.bucket, Key="in/corrupt.jpg", Body=jpeg("blue")[:40])  # a record-level error
    name = f"job-{tiny.bucket[-8:]}"

    sagemaker.create_transform_job(**job_request(tiny, name, model, "in/"))
    started = sagemaker.describe_transform_job(TransformJobName=name)
    assert started["TransformJobStatus"] == "InProgress"  # moto alone would say Completed already
    assert "TransformEndTime" not in started
    listed = sagemaker.list_transform_jobs(NameContains=name)["TransformJobSummaries"]
    assert [(j["TransformJobName"], j["TransformJobStatus"]) for j in listed] == [(name, "InProgress")]

    done = wait_for_job(sagemaker, name)

    assert done["TransformJobStatus"] == "Completed", done.get("FailureReason")
    assert "FailureReason" not in done and done["TransformEndTime"] >= done["TransformStartTime"]
    handler = load_handler_from_artifact(tiny.artifact_uri, "IMAGE", s3_client=s3, env={})
    for colour in ("red", "green"):
        out = s3.get_object(Bucket=tiny.bucket, Key=f"out/{name}/{colour}.jpg.out")["Body"].read()
        # another process (the server's runner) and another batch: equal within the contract's tolerance
        assert vectors_close(
            json.loads(out)["embeddings"], json.loads(handler.invoke(jpeg(colour), "application/x-image"))["embeddings"]
        )
    corrupt = json.loads(s3.get_object(Bucket=tiny.bucket, Key=f"out/{name}/corrupt.jpg.out")["Body"].read())
    assert "error" in corrupt  # the bad record is answered, the job is not failed
    with pytest.raises(ClientError, match="must be unique"):
        sagemaker.create_transform_job(**job_request(tiny, name, model, "in/"))


@pytest.mark.parametrize("cause", ["missing artifact", "handler crashes at load"])
def test_a_job_that_cannot_run_is_failed_with_the_reason(tiny, s3, sagemaker, tmp_path, make_handler_artifact, cause):
    if cause == "missing artifact":
        url, wanted = f"s3://{tiny.bucket}/models/none/model.tar.gz", "models/none/model.tar.gz"
    else:
        bad = crashing_artifact(make_handler_artifact, tmp_path / "m.tar.gz", "load")
        s3.upload_file(str(bad), tiny.bucket, "models/bad/model.tar.gz")
        url, wanted = f"s3://{tiny.bucket}/models/bad/model.tar.gz", "the weights are corrupt"
    model = deploy(sagemaker, tiny, "IMAGE", url, wait=False)
    s3.put_object(Bucket=tiny.bucket, Key="in/red.jpg", Body=jpeg("red"))
    name = f"bad-{tiny.bucket[-8:]}"

    sagemaker.create_transform_job(**job_request(tiny, name, model, "in/"))
    done = wait_for_job(sagemaker, name)

    assert done["TransformJobStatus"] == "Failed"
    assert wanted in done["FailureReason"] and "log: " in done["FailureReason"]
    assert len(done["FailureReason"]) <= 1024


def test_a_job_the_server_never_ran_is_not_reported_completed(settings, sagemaker, moto_url):
    """moto marks every job Completed at once; without outputs that would be a lie."""
    import boto3

    direct = boto3.client("sagemaker", endpoint_url=moto_url, region_name=settings.region)
    name = f"ghost-{settings.bucket[-8:]}"
    direct.create_transform_job(**job_request(settings, name, "some-model", "in/"))
    assert direct.describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "Completed"
    described = sagemaker.describe_transform_job(TransformJobName=name)
    assert described["TransformJobStatus"] == "Failed"
    assert "did not run this job" in described["FailureReason"]


def test_stop_transform_job_stops_the_runner(tiny, s3, sagemaker):
    model = deploy(sagemaker, tiny, "IMAGE")
    s3.put_object(Bucket=tiny.bucket, Key="in/red.jpg", Body=jpeg("red"))
    name = f"stop-{tiny.bucket[-8:]}"
    sagemaker.create_transform_job(**job_request(tiny, name, model, "in/"))
    sagemaker.stop_transform_job(TransformJobName=name)
    assert wait_for_job(sagemaker, name)["TransformJobStatus"] == "Stopped"


# --- the cap on running containers --------------------------------------------------
LIGHT_HANDLER = """
    import json
    import os

    def model_fn(model_dir):
        return os.environ["ENCODE_TYPE"]

    def transform_fn(model, body, content_type, accept):
        texts = json.loads(body)["inputs"]
        return json.dumps({"embeddings": [[0.0, 1.0]] * len(texts), "encode_type": model}), "application/json"
    """


def _light_model(tmp_path_factory, name: str, make_handler_artifact, s3, settings) -> tuple[Path, str]:
    """A handler of its own that loads nothing, uploaded: (a containers root, its S3 URI)."""
    # a short root: TorchServe's worker socket lives in the container's tmp, and a Unix socket path has 107 bytes
    root = tmp_path_factory.mktemp(name) / "containers"
    light = make_handler_artifact(root.parent / "model.tar.gz", LIGHT_HANDLER)
    s3.upload_file(str(light), settings.bucket, f"models/{name}/model.tar.gz")
    return root, f"s3://{settings.bucket}/models/{name}/model.tar.gz"


def test_past_the_cap_the_least_recently_used_container_stops_and_starts_again_when_asked(
    settings, s3, tmp_path_factory, local_sagemaker, make_handler_artifact
):
    """A cap of one: a second model stops the first; asked again, the first starts again and answers; a
    container that a job or a request holds is never the one stopped. The model is a handler of its own that
    loads nothing (what is tested is the cap, and each of the three starts costs less)."""
    from catalogue_search_dev.model_server import ModelServers

    root, uri = _light_model(tmp_path_factory, "cap", make_handler_artifact, s3, settings)
    servers = ModelServers(root, s3, local_sagemaker.aws_env, cpus=1, max_servers=1)
    try:
        text = servers.get("m-text", uri, {"ENCODE_TYPE": "TEXT"})
        image = servers.get("m-image", uri, {"ENCODE_TYPE": "IMAGE"}, hold=True)
        assert text.process.wait(timeout=30) is not None  # the least recently used, held by nothing: stopped
        servers.settle()
        assert not text.root.exists()

        again = servers.get("m-text", uri, {"ENCODE_TYPE": "TEXT"})
        assert again is not text
        assert image.process.poll() is None  # held (a job runs on it): over the cap rather than stopped mid-job
        assert len(servers.describe()) == 2
        reply = again.endpoint.invoke(json.dumps({"inputs": ["a red flower"]}).encode(), "application/json", None, 60)
        assert reply.status == 200 and json.loads(reply.body) == {"embeddings": [[0.0, 1.0]], "encode_type": "TEXT"}

        servers.unhold(image)  # the job ended: the next start stops the least recently used of the two
        servers._stop_over_the_cap()
        assert image.process.wait(timeout=30) is not None and again.process.poll() is None
    finally:
        servers.close()


@pytest.mark.parametrize("value", ["0", "many", "-2"])
def test_a_cap_that_is_not_a_whole_number_is_refused(value):
    from catalogue_search_dev.model_server import max_servers_setting

    with pytest.raises(ValueError, match="CATSEARCH_LOCAL_MODEL_SERVERS"):
        max_servers_setting({"CATSEARCH_LOCAL_MODEL_SERVERS": value})


def test_a_port_taken_before_torchserve_binds_it_starts_the_container_again_on_other_ports(
    settings, s3, tmp_path_factory, local_sagemaker, make_handler_artifact, monkeypatch, caplog
):
    """`free_ports` closes its sockets before TorchServe binds them: another process can take one meanwhile (a
    suite saw TorchServe's gRPC port taken). That start fails on the bind; the next, on other ports, serves."""
    from catalogue_search_dev import containers
    from catalogue_search_dev.model_server import ModelServers

    root, uri = _light_model(tmp_path_factory, "ports", make_handler_artifact, s3, settings)
    taker = socket.socket()
    taker.bind(("127.0.0.1", 0))
    taker.listen()
    taken = taker.getsockname()[1]
    real, given = containers.free_ports, []

    def first_with_the_grpc_port_taken(count: int) -> list[int]:
        ports = real(count)
        if not given:
            ports[3] = taken  # port, management, metrics, gRPC inference, gRPC management
        given.append(ports)
        return ports

    monkeypatch.setattr(containers, "free_ports", first_with_the_grpc_port_taken)
    servers = ModelServers(root, s3, local_sagemaker.aws_env, cpus=1)
    try:
        with caplog.at_level(logging.WARNING, logger="catalogue_search_dev.model_server"):
            server = servers.get("m-ports", uri, {"ENCODE_TYPE": "TEXT"})
        assert len(given) == 2 and server.port == given[1][0]
        reply = server.endpoint.invoke(json.dumps({"inputs": ["a red flower"]}).encode(), "application/json", None, 60)
        assert reply.status == 200
        retried = [r.getMessage() for r in caplog.records if "starting it again on other ports" in r.getMessage()]
        assert len(retried) == 1 and f"127.0.0.1:{taken}" in retried[0], retried
    finally:
        servers.close()
        taker.close()
