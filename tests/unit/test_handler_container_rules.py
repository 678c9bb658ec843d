"""The handler's rules in the container: client errors with their status and one line, answers within
TorchServe's limits, and the model's Environment that sets those limits from MaxPayloadInMB.

`transform_fn` is called as the serving toolkit calls it, with a request
context that records the status it is given (TorchServe's context does the
same); the toolkit itself runs in tests/integration/test_sagemaker_local.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from catalogue_search.handler import LoadedHandler, load_handler
from catalogue_search.settings import Settings
from catalogue_search.transform import model_request, transform_request
from catalogue_search_dev.model_build import write_model_dir

TINY_MODEL_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"


class Context:
    """What `transform_fn` uses of TorchServe's request context."""

    def __init__(self) -> None:
        self.status: tuple[int, str] | None = None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status = (code, phrase)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    write_model_dir(path, "tiny-clip", "", TINY_MODEL_CONFIG)
    return path


@pytest.fixture(scope="module")
def images(model_dir: Path) -> LoadedHandler:
    return load_handler(model_dir, "IMAGE")


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, "JPEG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status", "words"),
    [
        (jpeg()[:200], "image/jpeg", "application/json", 400, "truncated or corrupt"),
        (b'{"inputs": [', "application/json", "application/json", 400, "not valid JSON"),
        (b"\xff\xfe\x00", "application/json", "application/json", 400, "not UTF-8"),
        (b"a,b\n1,2", "text/csv", "application/json", 415, "unsupported Content-Type 'text/csv'"),
        (jpeg(), "image/jpeg", "text/html", 406, "unsupported Accept 'text/html'"),
    ],
)
def test_bad_input_is_answered_with_its_client_error_and_one_line(images, body, content_type, accept, status, words):
    context = Context()
    answer, response_type = images.module.transform_fn(images.model, body, content_type, accept, context)
    assert context.status is not None and context.status[0] == status
    assert response_type == "text/plain" and words in answer.decode()
    assert b"\n" not in answer and b"Traceback" not in answer
    assert context.status[1].isascii() and "\n" not in context.status[1]  # the HTTP reason phrase


def test_without_a_context_bad_input_raises_as_in_process(images):
    with pytest.raises(images.module.InputError) as err:
        images.module.transform_fn(images.model, b"{", "application/json", "application/json")
    assert err.value.status == 400


def test_a_good_request_is_the_in_process_answer(images):
    context = Context()
    answer, response_type = images.module.transform_fn(images.model, jpeg(), "image/jpeg", "application/json", context)
    assert context.status is None and response_type == "application/json"
    assert answer == images.invoke(jpeg(), "image/jpeg")


def test_an_answer_above_torchserves_response_limit_is_refused_with_413_instead_of_killing_the_worker(model_dir):
    texts = load_handler(model_dir, "TEXT", env={"TS_MAX_RESPONSE_SIZE": "2000"})
    context = Context()
    body = json.dumps({"inputs": ["red shoe", "oak table", "steel kettle", "lamp", "mug", "sofa"]}).encode()
    answer, _ = texts.module.transform_fn(texts.model, body, "application/json", "application/json", context)
    assert context.status[0] == 413
    assert "above TorchServe's max_response_size of 2000" in answer.decode()
    assert "application/x-npz" in answer.decode()  # what would fit: the compact format


def test_the_models_environment_sets_torchserves_limits_from_max_payload():
    settings = Settings.from_env({}).replace(transform_max_payload_mb=12)
    env = model_request(settings, "IMAGE", "image", "v1")["PrimaryContainer"]["Environment"]
    assert env["TS_MAX_REQUEST_SIZE"] == env["TS_MAX_RESPONSE_SIZE"] == str(12 * 1024 * 1024)


def test_a_chunk_size_whose_answer_could_cross_the_limit_is_refused():
    settings = Settings.from_env({}).replace(transform_max_payload_mb=1)
    ok = settings.replace(transform_chunk_size=200)
    transform_request(ok, job="j", manifest_uri="s3://b/m.json", output_uri="s3://b/o/")
    with pytest.raises(ValueError, match="CATSEARCH_TRANSFORM_CHUNK_SIZE=300 records can answer up to"):
        transform_request(
            settings.replace(transform_chunk_size=300), job="j", manifest_uri="s3://b/m.json", output_uri="s3://b/o/"
        )
