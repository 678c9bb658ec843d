"""SageMaker training entry point: fine-tune the artifact's CLIP on (image, title) pairs.

The SageMaker PyTorch training container's toolkit (`sagemaker-training`) runs
this file from the job's source directory with the hyperparameters as
arguments. It imports only what that container has (the standard library,
torch, PIL) plus open_clip, installed at start-up by the toolkit from the
wheels beside this file (`requirements.txt`, `--no-index`): the job runs with
no package index, as under network isolation.

Channels (File mode):
- `model`: the base `model.tar.gz` (its `code/inference.py` decodes and
  preprocesses the images exactly as the served model does);
- `train`, `validation`: `train.jsonl` / `validation.jsonl`, one pair per line
  (`item_id`, `item_name`, `path`, `image` S3 URI);
- `images`: the pairs' images, at their `path` (a ManifestFile channel).

The loss is CLIP's symmetric contrastive loss over each batch; `--unfreeze`
names the towers that learn (`image`, `text`, `both`). Mixed precision (bf16
autocast) runs on a GPU only. After every epoch a checkpoint (weights,
optimiser, epoch) goes to `/opt/ml/checkpoints` (SageMaker syncs it to S3 and
back after a spot interruption), and a job that finds one resumes from it.
The trained weights go to `model.pt` in the model directory, with
`training.json` (hyperparameters, losses, images/s per epoch).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("finetune")
TOWERS = ("image", "text", "both")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unfreeze", choices=TOWERS, default="both")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
    parser.add_argument("--checkpoint-dir", default=os.path.join(base, "checkpoints"))
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", os.path.join(base, "model")))
    for channel in ("model", "train", "validation", "images"):
        default = os.environ.get(f"SM_CHANNEL_{channel.upper()}", os.path.join(base, "input", "data", channel))
        parser.add_argument(f"--{channel}-channel", default=default)
    args, _ = parser.parse_known_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or args.lr < 0:
        parser.error("epochs must be >= 1, batch-size >= 2 and lr >= 0")
    return args


def load_base(channel: str, work: Path):
    """The base artifact unpacked, its handler module and its model (`inference.load_model`)."""
    archive = next(Path(channel).glob("*.tar.gz"), None)
    if archive is None:
        raise FileNotFoundError(f"no model.tar.gz in the model channel {channel}")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    spec = importlib.util.spec_from_file_location("artifact_inference", work / "code" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module, module.load_model(work, {"ENCODE_TYPE": "IMAGE"})


def read_pairs(channel: str, name: str, images: str, module, clip) -> tuple[torch.Tensor, list[str]]:
    """The pairs of `channel/name` as (preprocessed pixels, titles); an unreadable image is left out."""
    pixels, titles = [], []
    with open(os.path.join(channel, name)) as lines:
        for line in lines:
            if not line.strip():
                continue
            pair = json.loads(line)
            try:
                blob = Path(images, pair["path"]).read_bytes()
                pixels.append(module.image_tensor(blob, clip))
            except Exception as exc:  # a corrupt image: the pipeline leaves it out too
                log.warning("left out %s: %s", pair.get("item_id"), exc)
                continue
            titles.append(pair["item_name"].strip())
    if len(titles) < 2:
        raise ValueError(f"{name}: {len(titles)} usable pairs; contrastive training needs at least 2")
    return torch.stack(pixels), titles


def contrastive_loss(model, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    image = model.encode_image(pixels, normalize=True)
    text = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * image @ text.T
    labels = torch.arange(len(pixels), device=pixels.device)
    cross = torch.nn.functional.cross_entropy
    return (cross(logits, labels) + cross(logits.T, labels)) / 2


def set_trainable(model, unfreeze: str) -> list[torch.nn.Parameter]:
    """Freeze the model, then unfreeze the chosen towers and the temperature."""
    model.requires_grad_(False)
    visual = {id(p) for p in model.visual.parameters()}
    for param in model.parameters():
        is_image = id(param) in visual
        if (unfreeze == "both") or (unfreeze == "image") == is_image:
            param.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def evaluate_loss(model, pixels, tokens, batch: int, device, amp) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), amp():
        for lo in range(0, len(pixels), batch):
            rows = slice(lo, lo + batch)
            if len(pixels[rows]) < 2:
                continue
            loss = contrastive_loss(model, pixels[rows].to(device), tokens[rows].to(device))
            total, count = total + loss.item() * len(pixels[rows]), count + len(pixels[rows])
    return total / max(count, 1)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    # The unpacked base artifact is needed until its model and the pairs are loaded: a training job run on
    # a shared machine (the local stack, the tests) leaves nothing in the temporary directory.
    with tempfile.TemporaryDirectory(prefix="base-model-") as work:
        module, clip = load_base(args.model_channel, Path(work))
        pixels, titles = read_pairs(args.train_channel, "train.jsonl", args.images_channel, module, clip)
        val_pixels, val_titles = read_pairs(
            args.validation_channel, "validation.jsonl", args.images_channel, module, clip
        )
    model, device = clip.model, clip.device
    tokens, val_tokens = clip.tokenizer(titles), clip.tokenizer(val_titles)
    gpu = device.type == "cuda"

    def amp():
        return torch.autocast("cuda", dtype=torch.bfloat16) if gpu else torch.autocast("cpu", enabled=False)

    params = set_trainable(model, args.unfreeze)
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    checkpoint = Path(args.checkpoint_dir) / "checkpoint.pt"
    history, start = [], 0
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        history, start = saved["history"], saved["epoch"]
        log.info("resuming from %s after epoch %d", checkpoint, start)
    order = torch.Generator().manual_seed(args.seed)
    for _ in range(start):
        torch.randperm(len(titles), generator=order)  # the same batches as an uninterrupted run
    for epoch in range(start, args.epochs):
        model.train()
        began, seen, losses = time.monotonic(), 0, []
        permutation = torch.randperm(len(titles), generator=order)
        for lo in range(0, len(titles), args.batch_size):
            rows = permutation[lo : lo + args.batch_size]
            if len(rows) < 2:
                continue
            with amp():
                loss = contrastive_loss(model, pixels[rows].to(device), tokens[rows].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)  # CLIP's cap: a temperature of at most 100
            losses.append(loss.item())
            seen += len(rows)
        seconds = time.monotonic() - began
        val = evaluate_loss(model, val_pixels, val_tokens, args.batch_size, device, amp)
        record = {"epoch": epoch + 1, "train_loss": sum(losses) / max(len(losses), 1), "validation_loss": val}
        record.update(seconds=round(seconds, 3), images_per_s=round(seen / max(seconds, 1e-9), 2))
        history.append(record)
        log.info("epoch %d/%d: %s", epoch + 1, args.epochs, json.dumps(record))
        print(f"epoch {epoch + 1}/{args.epochs}: {json.dumps(record)}", flush=True)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        partial = checkpoint.with_suffix(".partial")
        state = {"model": model.state_dict(), "optimiser": optimiser.state_dict()}
        torch.save({**state, "epoch": epoch + 1, "history": history}, partial)
        partial.replace(checkpoint)
    out = Path(args.model_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    torch.save({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    hyper = {k: getattr(args, k) for k in ("lr", "epochs", "batch_size", "unfreeze", "weight_decay", "seed")}
    report = {
        "hyperparameters": hyper,
        "train_pairs": len(titles),
        "validation_pairs": len(val_titles),
        "device": device.type,
        "mixed_precision": "bf16" if gpu else None,
        "epochs": history,
    }
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    train(parse_args())
