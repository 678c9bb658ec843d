"""Image encoding throughput: the handler and the local transform runner against open_clip's
raw forward pass at the same batch size, and against one image per request.

    ./dev bench encode            (ViT-B-32, random weights, 64 images, batch 32)
    ./dev bench encode --model ViT-B-32 --images 32 --batch 16 --no-runner

Random weights of the real architecture (throughput does not depend on the
weights), small generated JPEGs like the synthetic ABO catalogue's. References,
measured in the same run at the same batch size:
- raw forward: `model.encode_image` on tensors decoded and preprocessed beforehand;
- raw decode+preprocess+forward: PIL decode, the model's own preprocess, forward.
Measured: the handler's batched `encode_images`; one `invoke` per image
(one image per request, as an endpoint sees queries); the local transform
runner with the pipeline's own transform request (JSON Lines chunks of image
URIs in moto S3, one chunk a request).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import _common as cm


def _rate(n: int, fn) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def _runner_rate(handler_dir: Path, images: list[bytes], model: str, batch: int) -> float:
    """run_transform_job over the images in moto, images/s end to end, with the pipeline's own
    request (`transform.transform_request`: JSON Lines chunks of image URIs, one chunk a request,
    the handler fetching the images from S3 and batching the forward pass by `batch`)."""
    import json

    import boto3

    from catalogue_search import encoding, transform
    from catalogue_search_dev.local_transform import run_transform_job

    bucket = cm.bench_name("encode")
    s = cm.settings(bucket=bucket)
    s3 = boto3.client("s3", **s.boto3_kwargs())
    sm = boto3.client("sagemaker", **s.boto3_kwargs())
    artifact = cm.random_artifact(model)
    s3.create_bucket(Bucket=bucket)
    name = bucket
    try:
        paths = [f"{i % 256:02x}/{i:04d}.jpg" for i in range(len(images))]
        for path, data in zip(paths, images):
            s3.put_object(Bucket=bucket, Key=s.images_prefix + path, Body=data)
        chunks = []
        for number, lo in enumerate(range(0, len(paths), s.transform_chunk_size)):
            key = f"chunks/{number:05d}.jsonl"
            s3.put_object(
                Bucket=bucket, Key=key, Body=encoding.image_records(s, paths[lo : lo + s.transform_chunk_size])
            )
            chunks.append(key.split("/", 1)[1])
        manifest = [{"prefix": f"s3://{bucket}/chunks/"}, *chunks]
        s3.put_object(Bucket=bucket, Key="manifest.json", Body=json.dumps(manifest).encode())
        sm.create_model(
            ModelName=name,
            PrimaryContainer={
                "Image": "local",
                "ModelDataUrl": f"file://{artifact}",
                "Environment": {"ENCODE_TYPE": "IMAGE"},
            },
            ExecutionRoleArn=s.sagemaker_role_arn or "arn:aws:iam::123456789012:role/bench",
        )
        request = transform.transform_request(
            s, job=name, manifest_uri=f"s3://{bucket}/manifest.json", output_uri=f"s3://{bucket}/out/"
        )
        request["ModelName"] = name
        request["Environment"]["MAX_BATCH_SIZE"] = str(batch)
        cache = handler_dir.parent / "cache"
        # Warm-up: the first call extracts the artifact into the cache.
        run_transform_job(
            {**request, "TransformJobName": name + "-w"}, s3_client=s3, sagemaker_client=sm, cache_dir=cache
        )
        started = time.perf_counter()
        report = run_transform_job(request, s3_client=s3, sagemaker_client=sm, cache_dir=cache)
        elapsed = time.perf_counter() - started
        assert not report.failed, report.failed[:1]
        return len(images) / elapsed
    finally:
        sm.delete_model(ModelName=name)
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)


def main(argv: list[str] | None = None) -> int:
    import torch
    from PIL import Image

    from catalogue_search.handler import load_handler
    from catalogue_search_dev.abo_generator import jpeg_pool
    from catalogue_search_dev.model_build import write_model_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-runner", action="store_true", help="skip the local transform runner (needs moto)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    images = jpeg_pool(args.images, seed=3)
    n, b = len(images), args.batch

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        write_model_dir(model_dir, args.model, "")
        handler = load_handler(model_dir, "IMAGE")
        clip, preprocess = handler.model.model, handler.model.preprocess
        print(f"machine: {cm.machine()}")
        print(
            f"model {args.model} (RANDOM weights), {n} images of 96-256 px, batch {b}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        )
        handler.encode_images(images[:2])  # warm-up

        def decode(data: bytes):
            with Image.open(io.BytesIO(data)) as img:
                return preprocess(img.convert("RGB"))

        tensors = [torch.stack([decode(x) for x in images[i : i + b]]) for i in range(0, n, b)]

        def raw_forward():
            with torch.inference_mode():
                for t in tensors:
                    clip.encode_image(t, normalize=True)

        def raw_full():
            with torch.inference_mode():
                for i in range(0, n, b):
                    clip.encode_image(torch.stack([decode(x) for x in images[i : i + b]]), normalize=True)

        def handler_batched():
            for i in range(0, n, b):
                handler.encode_images(images[i : i + b])

        def one_per_request():
            for x in images:
                handler.invoke(x, "application/x-image")

        rates = {
            "raw forward (preprocessed tensors)": _rate(n, raw_forward),
            "raw decode+preprocess+forward": _rate(n, raw_full),
            "handler encode_images (batched)": _rate(n, handler_batched),
            "one image per request (invoke)": _rate(n, one_per_request),
        }
        if not args.no_runner:
            rates["local transform runner (moto, chunks)"] = _runner_rate(model_dir, images, args.model, args.batch)
        raw, full = rates["raw forward (preprocessed tensors)"], rates["raw decode+preprocess+forward"]
        print(f"{'path':<42} {'images/s':>9} {'vs raw fwd':>10} {'vs raw full':>11}")
        for name, rate in rates.items():
            print(f"{name:<42} {rate:>9.1f} {rate / raw:>10.2f} {rate / full:>11.2f}")
        one = rates["one image per request (invoke)"]
        print(f"batched handler vs one image per request: x{rates['handler encode_images (batched)'] / one:.2f}")
        if "local transform runner (moto, chunks)" in rates:
            ratio = rates["local transform runner (moto, chunks)"] / full
            print(f"runner vs raw decode+preprocess+forward: x{ratio:.2f} (target >= 0.9)")
        cm.save_json(
            args.json, {"benchmark": "encode", "machine": cm.machine(), "batch": b, "images": n, "rates": rates}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
