"""model.tar.gz: the layout the PyTorch container expects, which weights it holds, deterministic bytes, upload."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from catalogue_search.handler import INFERENCE_CODE_DIR, load_handler_from_artifact, load_inference_module
from catalogue_search.model_artifact import (
    ArtifactVersionError,
    inference_image_uri,
    read_artifact_metadata,
    read_artifact_version,
)
from catalogue_search.settings import Settings
from catalogue_search_dev import vendor_wheels
from catalogue_search_dev.model_build import (
    ArtifactInfo,
    RandomWeightsError,
    build_model_artifact,
    main,
    upload_model_artifact,
    write_model_dir,
)

TINY_MODEL_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"


def png_bytes() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> ArtifactInfo:
    out = tmp_path_factory.mktemp("artifact") / "model.tar.gz"
    return build_model_artifact(out, "tiny-clip", "", TINY_MODEL_CONFIG)


def test_archive_has_the_layout_the_pytorch_container_expects(artifact: ArtifactInfo):
    with tarfile.open(artifact.path) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert [n for n in names if not n.startswith("code/wheels")] == [
            "artifact_version.txt",
            "clip_config.json",
            "code",
            "code/inference.py",
            "code/requirements.txt",
            "model.pt",
        ]
        assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in members)
        assert tar.extractfile("code/inference.py").read() == (INFERENCE_CODE_DIR / "inference.py").read_bytes()
        requirements = tar.extractfile("code/requirements.txt").read().decode()
        config = json.loads(tar.extractfile("clip_config.json").read())
    lines = requirements.splitlines()
    assert "open-clip-torch==3.3.0" in lines and {"--no-index", "--find-links wheels"} <= set(lines)
    wheels = [n.removeprefix("code/wheels/") for n in names if n.startswith("code/wheels/") and n.endswith(".whl")]
    assert "open_clip_torch-3.3.0-py3-none-any.whl" in wheels
    # regex is compiled: one wheel for the container's Python (py312) and one for the local toolkit's
    assert {w.split("-")[2] for w in wheels if w.startswith("regex-")} == {"cp311", "cp312"}
    assert config["model_name"] == "tiny-clip"
    assert (config["pretrained"], config["random_weights"]) == (None, True)
    assert (config["embed_dim"], config["image_size"]) == (32, 32)
    assert config["model_cfg"] == json.loads(TINY_MODEL_CONFIG.read_text())
    assert (artifact.pretrained_loaded, artifact.random_weights, artifact.embed_dim) == (False, True, 32)
    assert artifact.sha256 == hashlib.sha256(Path(artifact.path).read_bytes()).hexdigest()
    with tarfile.open(artifact.path) as tar:
        assert tar.extractfile("artifact_version.txt").read().decode().strip() == artifact.artifact_version
    assert len(artifact.artifact_version) == 16


def test_every_vendored_package_is_pinned_at_the_projects_version():
    """The container's open_clip is the one the workers' encoder and the build use."""
    locked = {}
    for line in (INFERENCE_CODE_DIR.parent / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith(" "):
            name, version = line.split("==")
            locked[name.lower().replace("_", "-")] = version.strip()
    pins = vendor_wheels.pins(INFERENCE_CODE_DIR / "requirements.txt")
    assert pins and all(locked[p.split("==")[0].lower()] == p.split("==")[1] for p in pins)


def test_an_unpinned_requirement_cannot_be_vendored(tmp_path: Path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("--no-index\nopen-clip-torch>=3\n")
    with pytest.raises(vendor_wheels.VendorError, match="not pinned"):
        vendor_wheels.pins(requirements)


def test_the_container_python_comes_from_the_settings(settings: Settings):
    assert vendor_wheels.container_python(settings.replace(py_version="py312")) == "3.12"
    assert "3.12" in vendor_wheels.target_pythons(settings.replace(py_version="py312"))


def test_the_same_inputs_give_the_same_bytes(artifact: ArtifactInfo, tmp_path: Path):
    again = build_model_artifact(tmp_path / "again.tar.gz", "tiny-clip", "", TINY_MODEL_CONFIG, force=True)
    assert Path(again.path).read_bytes() == Path(artifact.path).read_bytes()
    assert again.artifact_version == artifact.artifact_version
    other_seed = build_model_artifact(tmp_path / "seed1.tar.gz", "tiny-clip", "", TINY_MODEL_CONFIG, seed=1)
    assert other_seed.sha256 != artifact.sha256
    assert other_seed.artifact_version != artifact.artifact_version  # new weights: a new version


def test_the_artifact_version_follows_the_handler_code(artifact: ArtifactInfo, tmp_path: Path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "requirements.txt").write_bytes((INFERENCE_CODE_DIR / "requirements.txt").read_bytes())
    (code / "inference.py").write_text((INFERENCE_CODE_DIR / "inference.py").read_text() + "\n# preprocessing v2\n")
    info = build_model_artifact(tmp_path / "model.tar.gz", "tiny-clip", "", TINY_MODEL_CONFIG, code_dir=code)
    assert info.artifact_version != artifact.artifact_version
    handler = load_handler_from_artifact(info.path, "IMAGE", cache_dir=tmp_path / "cache")
    assert handler.artifact_version == info.artifact_version
    with pytest.raises(ValueError, match="ARTIFACT_VERSION"):
        load_handler_from_artifact(
            info.path, "IMAGE", cache_dir=tmp_path / "cache", env={"ARTIFACT_VERSION": artifact.artifact_version}
        )


def test_random_weights_are_announced_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING):
        info = build_model_artifact(tmp_path / "model.tar.gz", "tiny-clip", "", TINY_MODEL_CONFIG)
    assert not info.pretrained_loaded
    assert any("NOT be meaningful" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_an_unchanged_recipe_is_not_rebuilt(tmp_path: Path):
    out = tmp_path / "model.tar.gz"
    first = build_model_artifact(out, "tiny-clip", "", TINY_MODEL_CONFIG)
    stamp = out.stat().st_mtime_ns
    assert build_model_artifact(out, "tiny-clip", "", TINY_MODEL_CONFIG) == first
    assert out.stat().st_mtime_ns == stamp
    build_model_artifact(out, "tiny-clip", "", TINY_MODEL_CONFIG, force=True)
    assert out.stat().st_mtime_ns != stamp


def test_two_builds_of_one_artifact_at_once_build_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The suite's two workers on a fresh machine both wanted the demo's artifact: unlocked, both wrote the
    same `model.tar.gz.partial` (a container then found an invalid wheel in it, and a rename failed)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from catalogue_search_dev import model_build

    writes = []

    def slow_write(out_path, source):
        writes.append(out_path)
        time.sleep(0.3)  # the other build finds no artifact yet
        return write_tar(out_path, source)

    write_tar = model_build.write_deterministic_tar
    monkeypatch.setattr(model_build, "write_deterministic_tar", slow_write)
    out = tmp_path / "model.tar.gz"
    with ThreadPoolExecutor(2) as pool:
        infos = list(pool.map(lambda _: build_model_artifact(out, "tiny-clip", "", TINY_MODEL_CONFIG), range(2)))
    assert len(writes) == 1
    assert infos[0] == infos[1]
    assert infos[0].sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    with tarfile.open(out) as tar:
        assert all(tar.extractfile(m).read() is not None for m in tar.getmembers() if m.isfile())


def test_a_checkpoint_file_is_packaged_as_pretrained_weights(tmp_path: Path):
    import open_clip

    inference = load_inference_module()
    name = inference.register_model_config("tiny-clip", json.loads(TINY_MODEL_CONFIG.read_text()))
    torch.manual_seed(123)
    state = open_clip.create_model(name).state_dict()
    checkpoint = tmp_path / "tiny-weights.pt"
    torch.save(state, checkpoint)

    info = build_model_artifact(tmp_path / "model.tar.gz", "tiny-clip", str(checkpoint), TINY_MODEL_CONFIG)
    assert info.pretrained_loaded and not info.random_weights
    with tarfile.open(info.path) as tar:
        packaged = torch.load(tar.extractfile("model.pt"), weights_only=True)
        config = json.loads(tar.extractfile("clip_config.json").read())
    assert (config["pretrained"], config["random_weights"]) == ("tiny-weights.pt", False)
    assert packaged.keys() == state.keys()
    assert all(torch.equal(packaged[k], state[k]) for k in state)


@pytest.mark.parametrize(
    ("model", "pretrained", "config"),
    [("ViT-B-32", "no-such-tag", None), ("tiny-clip", "openai", TINY_MODEL_CONFIG)],
)
def test_an_unknown_tag_is_an_error_not_a_download(tmp_path: Path, model, pretrained, config):
    with pytest.raises(ValueError, match="pretrained"):
        build_model_artifact(tmp_path / "model.tar.gz", model, pretrained, config)
    assert not (tmp_path / "model.tar.gz").exists()


def test_an_unknown_model_without_config_is_an_error(tmp_path: Path):
    with pytest.raises(ValueError, match="--config"):
        build_model_artifact(tmp_path / "model.tar.gz", "no-such-model", "")


def test_the_artifact_loads_once_into_the_cache_and_encodes(artifact: ArtifactInfo, tmp_path: Path):
    cache = tmp_path / "cache"
    handler = load_handler_from_artifact(artifact.path, "IMAGE", cache_dir=cache)
    vec = handler.encode_images([png_bytes()])
    assert vec.shape == (1, 32)
    marker = handler.model_dir / ".complete"
    stamp = marker.stat().st_mtime_ns
    again = load_handler_from_artifact(artifact.path, "TEXT", cache_dir=cache)
    assert again.model_dir == handler.model_dir and marker.stat().st_mtime_ns == stamp
    assert again.encode_texts(["lamp"]).shape == (1, 32)
    assert [p.name for p in cache.iterdir()] == [handler.model_dir.name]


def test_the_handler_runs_the_code_shipped_in_the_artifact(tmp_path: Path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "requirements.txt").write_bytes((INFERENCE_CODE_DIR / "requirements.txt").read_bytes())
    (code / "inference.py").write_text((INFERENCE_CODE_DIR / "inference.py").read_text() + "\nSHIPPED = True\n")
    info = build_model_artifact(tmp_path / "model.tar.gz", "tiny-clip", "", TINY_MODEL_CONFIG, code_dir=code)
    handler = load_handler_from_artifact(info.path, "TEXT", cache_dir=tmp_path / "cache")
    assert getattr(handler.module, "SHIPPED", False) is True
    assert not hasattr(load_inference_module(), "SHIPPED")


def test_upload_puts_the_artifact_at_the_settings_uri(artifact: ArtifactInfo, settings: Settings, s3):
    uri = upload_model_artifact(settings, s3, artifact.path)
    assert uri == settings.artifact_uri == f"s3://{settings.bucket}/models/vit-b-32/model.tar.gz"
    obj = s3.get_object(Bucket=settings.bucket, Key="models/vit-b-32/model.tar.gz")
    assert obj["Body"].read() == Path(artifact.path).read_bytes()
    assert obj["Metadata"] == {
        "sha256": artifact.sha256,
        "artifact-version": artifact.artifact_version,
        "random-weights": "true",
    }
    assert upload_model_artifact(settings, s3, artifact.path) == uri  # unchanged: nothing to do
    metadata = read_artifact_metadata(s3, uri)  # one HEAD
    assert (metadata.version, metadata.random_weights) == (artifact.artifact_version, True)
    assert read_artifact_version(s3, uri) == artifact.artifact_version
    s3.put_object(Bucket=settings.bucket, Key="models/old/model.tar.gz", Body=b"built before versions")
    with pytest.raises(ArtifactVersionError, match="no 'artifact-version' metadata"):
        read_artifact_version(s3, f"s3://{settings.bucket}/models/old/model.tar.gz")
    with pytest.raises(ArtifactVersionError, match="no model artifact at"):
        read_artifact_version(s3, f"s3://{settings.bucket}/models/none/model.tar.gz")


def test_an_artifact_that_does_not_say_counts_as_random_weights(settings: Settings, s3):
    key = "models/unsaid/model.tar.gz"
    s3.put_object(Bucket=settings.bucket, Key=key, Body=b"x", Metadata={"artifact-version": "abc"})
    assert read_artifact_metadata(s3, f"s3://{settings.bucket}/{key}").random_weights is True


def test_pretrained_weights_are_recorded_as_such_in_the_upload(settings: Settings, s3, tmp_path: Path):
    import open_clip

    name = load_inference_module().register_model_config("tiny-clip", json.loads(TINY_MODEL_CONFIG.read_text()))
    checkpoint = tmp_path / "tiny-weights.pt"
    torch.save(open_clip.create_model(name).state_dict(), checkpoint)
    info = build_model_artifact(tmp_path / "model.tar.gz", "tiny-clip", str(checkpoint), TINY_MODEL_CONFIG)
    uri = upload_model_artifact(settings, s3, info.path)
    assert s3.head_object(Bucket=settings.bucket, Key=uri.split("/", 3)[3])["Metadata"]["random-weights"] == "false"
    assert read_artifact_metadata(s3, uri).random_weights is False


@pytest.fixture
def no_model_hub(monkeypatch: pytest.MonkeyPatch) -> list:
    """open_clip cannot reach the model hub (as on this machine) and must not try the network."""
    import socket

    import huggingface_hub.constants

    connections: list = []
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: connections.append(address))
    return connections


def test_a_pretrained_build_without_its_weights_is_refused(
    tmp_path: Path, no_model_hub: list, capsys: pytest.CaptureFixture
):
    out = tmp_path / "model.tar.gz"
    code = main(["build", "--model", "ViT-B-32", "--pretrained", "openai", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and no_model_hub == []
    assert "pretrained ViT-B-32/openai could not be loaded" in err and "--allow-random-weights" in err
    with pytest.raises(RandomWeightsError):
        write_model_dir(tmp_path / "dir", "ViT-B-32", "openai")


def test_s3_artifact_is_fetched_into_the_cache_keyed_by_etag(
    artifact: ArtifactInfo, settings: Settings, s3, tmp_path: Path
):
    uri = upload_model_artifact(settings, s3, artifact.path)
    handler = load_handler_from_artifact(uri, "TEXT", s3_client=s3, cache_dir=tmp_path)
    local = load_handler_from_artifact(artifact.path, "TEXT", cache_dir=tmp_path / "local")
    np.testing.assert_allclose(handler.encode_texts(["red shoe"]), local.encode_texts(["red shoe"]), atol=1e-6)


def test_inference_image_uri(settings: Settings):
    assert inference_image_uri(settings.replace(inference_image_uri="my/image:1")) == "my/image:1"
    gpu = inference_image_uri(settings.replace(transform_instance_type="ml.g4dn.xlarge"))
    cpu = inference_image_uri(settings, instance_type="ml.m5.xlarge")
    assert gpu.endswith(".amazonaws.com/pytorch-inference:2.6-gpu-py312")
    assert cpu.endswith(".amazonaws.com/pytorch-inference:2.6-cpu-py312")


def test_cli_build_reports_what_it_built(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "model.tar.gz"
    assert (
        main(
            ["build", "--model", "tiny-clip", "--pretrained", "", "--config", str(TINY_MODEL_CONFIG), "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr()
    info = json.loads(printed.out)
    assert info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (info["pretrained_loaded"], info["random_weights"]) == (False, True)
    assert "RANDOM weights" in printed.err
