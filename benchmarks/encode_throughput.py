"""Images per second through the inference handler, one per call vs batched, side by side.

    ./dev bench            (or: python benchmarks/encode_throughput.py [--model ViT-B-32] [--images 64])

Uses random weights of the real architecture (throughput does not depend on
the weights) and real JPEGs from the sample catalogue when it is built, or
generated ones otherwise. Prints one line per batch size and the speed-up of
batching over single-image calls, measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path


def _images(n: int) -> list[bytes]:
    from catalogue_search_dev.localenv import cache_home

    files = sorted((cache_home() / "sample-catalogue" / "images" / "small").glob("*/*.jpg"))[:n]
    if len(files) >= n:
        return [f.read_bytes() for f in files]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def main() -> None:
    import torch

    from catalogue_search.handler import load_handler
    from catalogue_search.model_artifact import write_model_dir

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batches", default="1,8,32,64")
    args = parser.parse_args()
    images = _images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        write_model_dir(tmp, args.model, "")
        handler = load_handler(Path(tmp), "IMAGE")
        handler.encode_images(images[:2])  # warm-up
        print(f"model {args.model}, {len(images)} images, torch {torch.__version__}, {torch.get_num_threads()} threads")
        results = {}
        for size in [int(b) for b in args.batches.split(",")]:
            start = time.perf_counter()
            for i in range(0, len(images), size):
                handler.encode_images(images[i : i + size])
            rate = len(images) / (time.perf_counter() - start)
            results[size] = rate
            print(f"batch {size:>3}: {rate:6.1f} images/s")
        first = min(results)
        for size, rate in results.items():
            if size != first:
                print(f"batch {size} vs batch {first}: x{rate / results[first]:.2f}")


if __name__ == "__main__":
    main()
