"""The fine-tune's entry point resumes from its checkpoint as if it had never stopped.

`training_code/train.py` runs here in process on the tiny model, with the
channels laid out as the training toolkit lays them out. A job interrupted
after its first epoch (a spot interruption: SageMaker brings the checkpoint
directory back from S3 on the new instance) and started again must train only
the epochs left, on the same batches, and end with the weights an
uninterrupted job ends with (within the contract's tolerance).
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from catalogue_search.contract import VECTOR_ATOL

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train_module():
    spec = importlib.util.spec_from_file_location("finetune_entry_point", REPO / "training_code" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def channels(tiny_artifact: Path, tmp_path_factory) -> Path:
    """/opt/ml/input/data as the toolkit stages it: model, train, validation and images."""
    root = tmp_path_factory.mktemp("channels")
    (root / "model").mkdir()
    shutil.copy(tiny_artifact, root / "model" / "model.tar.gz")
    (root / "images").mkdir()
    words = ["red", "oak", "blue", "steel", "soft", "green", "round", "tall"]
    pairs = []
    for i in range(20):
        shade = (i * 37 % 256, i * 91 % 256, i * 53 % 256)
        out = io.BytesIO()
        Image.new("RGB", (40, 40), shade).save(out, "PNG")
        (root / "images" / f"{i}.png").write_bytes(out.getvalue())
        pairs.append({"item_id": f"P{i}", "item_name": f"{words[i % 8]} thing {i}", "path": f"{i}.png"})
    for name, part in (("train", pairs[:16]), ("validation", pairs[16:])):
        (root / name).mkdir()
        (root / name / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in part))
    return root


def run(train_module, channels: Path, out: Path, epochs: int) -> dict:
    argv = [f"--{c}-channel={channels / c}" for c in ("model", "train", "validation", "images")]
    argv += [f"--epochs={epochs}", "--batch-size=4", "--lr=1e-3", "--seed=7"]
    argv += [f"--checkpoint-dir={out / 'checkpoints'}", f"--model-dir={out / 'model'}"]
    return train_module.train(train_module.parse_args(argv))


def test_an_interrupted_job_resumes_after_its_last_epoch_and_ends_as_an_uninterrupted_one(
    train_module, channels, tmp_path, caplog, monkeypatch
):
    scratch = tmp_path / "tmp"  # the process's temporary directory, watched for what the runs leave in it
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    whole = run(train_module, channels, tmp_path / "whole", epochs=3)

    interrupted = tmp_path / "interrupted"
    first = run(train_module, channels, interrupted, epochs=1)  # the instance is lost after epoch 1's checkpoint
    assert (interrupted / "checkpoints" / "checkpoint.pt").is_file()
    after_one = torch.load(interrupted / "model" / "model.pt")
    # Only the resumed run's records: where an earlier test left the logger at INFO, the two runs above
    # were captured too (the full suite's order).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="finetune"):
        resumed = run(train_module, channels, interrupted, epochs=3)

    assert "after epoch 1" in caplog.text  # it said it resumed, and from where
    trained_now = [line for line in caplog.messages if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in trained_now] == ["epoch 2/3", "epoch 3/3"]  # epoch 1 not trained again
    assert resumed["epochs"][0] == first["epochs"][0]  # the history carries on from the checkpoint
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
    for mine, theirs in zip(resumed["epochs"], whole["epochs"]):
        assert abs(mine["train_loss"] - theirs["train_loss"]) <= VECTOR_ATOL * max(1.0, abs(theirs["train_loss"]))

    weights = torch.load(interrupted / "model" / "model.pt")
    reference = torch.load(tmp_path / "whole" / "model" / "model.pt")
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.allclose(weights[name], tensor, atol=VECTOR_ATOL, rtol=0), name
    # The two epochs after the checkpoint moved the weights: the test would see a resume that trained nothing.
    assert any(not torch.allclose(after_one[k], t, atol=VECTOR_ATOL, rtol=0) for k, t in reference.items())
    assert list(scratch.iterdir()) == []  # each run removed the base artifact it unpacked
