"""Fine-tuning on the sample catalogue: held-out text -> image recall before and after, and time per epoch.

    ./dev bench finetune [--model ViT-B-32 | --model-config tests/fixtures/tiny_clip.json]
                         [--lr 1e-4] [--epochs 3] [--batch-size 64] [--unfreeze both] [--json out.json]

The sample catalogue's products (`sample_index`), split as `catalogue_finetune`
splits them (`finetune.split`: by product, seeded, stratified by product type,
20% test, 10% validation). The base artifact holds random weights of the real
architecture (no model hub here). The fine-tune entry point the training job
runs (`training_code/train.py`) runs here as a plain process with the job's
channels laid out on disk (the toolkit's start-up is not what is measured);
its `training.json` gives the seconds and images/s of each epoch. Then base and
fine-tuned answer the same queries on the held-out products with the DAG's own
measure (`finetune.gate.measure_pairs`) and gate (`finetune.gate.decide`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as bench

from catalogue_search import finetune
from catalogue_search.finetune import gate
from catalogue_search.model_package import write_deterministic_tar
from catalogue_search_dev import sample_index
from catalogue_search_dev.model_build import write_model_dir

TRAIN = bench.REPO / "training_code" / "train.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--model-config", type=Path, default=None, help="model config JSON (non built-in models)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unfreeze", default="both", choices=finetune.job.TOWERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    settings = bench.settings()
    layout = sample_index.layout_dir()
    parts = finetune.split(sample_index.sample_products(layout), seed=args.seed, test=0.2, validation=0.1)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        model_name = "tiny-clip" if args.model_config else args.model
        write_model_dir(work / "base", model_name, "", args.model_config, allow_random_weights=True)
        (work / "channels/model").mkdir(parents=True)
        write_deterministic_tar(work / "channels/model/model.tar.gz", work / "base")
        for part in ("train", "validation"):
            (work / "channels" / part).mkdir()
            rows = "".join(json.dumps(p) + "\n" for p in parts[part])
            (work / "channels" / part / f"{part}.jsonl").write_text(rows)
        command = [sys.executable, str(TRAIN), f"--lr={args.lr}", f"--epochs={args.epochs}"]
        command += [f"--batch-size={args.batch_size}", f"--unfreeze={args.unfreeze}", f"--seed={args.seed}"]
        command += [f"--checkpoint-dir={work / 'checkpoints'}", f"--model-dir={work / 'trained'}"]
        for channel in ("model", "train", "validation"):
            command.append(f"--{channel}-channel={work / 'channels' / channel}")
        command.append(f"--images-channel={layout / 'images/small'}")
        started = time.monotonic()
        subprocess.run(command, check=True)
        wall = time.monotonic() - started
        training = json.loads((work / "trained" / "training.json").read_text())
        tuned = work / "tuned"
        subprocess.run(["cp", "-r", str(work / "base"), str(tuned)], check=True)
        (tuned / "model.pt").write_bytes((work / "trained" / "model.pt").read_bytes())
        write_deterministic_tar(work / "tuned.tar.gz", tuned)
        models = {"base": str(work / "channels/model/model.tar.gz"), "tuned": str(work / "tuned.tar.gz")}
        test = parts["test"]
        images = [(layout / "images/small" / p["path"]).read_bytes() for p in test]
        began = time.monotonic()
        figures = gate.measure_pairs(settings, None, models, test, images)
        measured = time.monotonic() - began
    decision = gate.decide(figures)
    epochs = training["epochs"]
    print(f"\nfine-tune of {model_name} (random base weights) on the sample catalogue, {bench.machine()}")
    print(f"pairs: train {training['train_pairs']}, validation {training['validation_pairs']}, test {len(test)}")
    print(f"hyperparameters: {training['hyperparameters']}; device {training['device']}")
    for e in epochs:
        print(
            f"  epoch {e['epoch']}: {e['seconds']:.1f} s, {e['images_per_s']:.1f} images/s, "
            f"train loss {e['train_loss']:.3f}, validation loss {e['validation_loss']:.3f}"
        )
    print(
        f"entry point wall time (loading, preprocessing, training, saving): {wall:.1f} s; evaluation {measured:.1f} s"
    )
    print(f"{'text -> image':<14}" + "".join(f"{m:>11}" for m in ("recall@1", "recall@5", "recall@10", "mrr")))
    for name in ("chance", "base", "tuned"):
        print(
            f"{name:<14}" + "".join(f"{figures[name][m]:>11.4f}" for m in ("recall@1", "recall@5", "recall@10", "mrr"))
        )
    print(f"gate: {decision.reason}")
    bench.save_json(
        args.json, {"figures": figures, "decision": decision.as_dict(), "training": training, "wall_s": wall}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
