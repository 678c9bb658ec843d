"""The model in AWS's serving toolkit on TorchServe against the same handler in process.

    ./dev bench torchserve                       (ViT-B-32, random weights, 256-record chunk, 20 single images)
    ./dev bench torchserve --model ViT-B-32 --records 256 --singles 20 --cpus 2

Measured, on the local stack's moto (the chunk's images are S3 objects the
handler fetches, as in a transform job):
- start-up: from starting the container (pip from the archive's wheels, Java,
  the workers' `model_fn`) to a healthy `/ping`, and to a worker that has
  loaded the model (what the local server waits for);
- one image: median and p90 latency of `application/x-image` requests, over
  HTTP to TorchServe and in process (`transform_fn` called directly);
- a chunk: records/s of one 256-record `application/x-image-chunk` request
  answered as `.npz`, TorchServe over in process (target: at least 0.9x).
Vectors of the two paths are compared within the contract's tolerance.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common as cm


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def _timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=2, help="timed chunk requests on each path")
    parser.add_argument("--cpus", type=int, default=None, help="TorchServe workers (default: one per CPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import boto3
    import numpy as np

    from catalogue_search import transform
    from catalogue_search.contract import vectors_close
    from catalogue_search_dev.inprocess import InProcessModel
    from catalogue_search_dev.model_archive import archive_version
    from catalogue_search_dev.model_build import upload_model_artifact
    from catalogue_search_dev.model_server import ModelServers

    bucket = cm.bench_name("torchserve")
    s = cm.settings(bucket=bucket, model_name=args.model)
    s3 = boto3.client("s3", **s.boto3_kwargs())
    s3.create_bucket(Bucket=bucket)
    root = Path(tempfile.mkdtemp(prefix="bench-torchserve-"))
    aws = {"AWS_ENDPOINT_URL": s.aws_endpoint_url, "AWS_DEFAULT_REGION": s.region, "AWS_REGION": s.region}
    aws |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    servers = ModelServers(root, s3, aws, cpus=args.cpus, idle_s=0)
    results: dict = {"model": args.model, "records": args.records, "cpus": args.cpus or "all"}
    try:
        artifact = cm.random_artifact(args.model)
        uri = upload_model_artifact(s, s3, artifact)
        # The pipeline's own container Environment (model + transform job), as the encode step creates it.
        version = archive_version(artifact)
        env = transform.model_request(s, transform.IMAGE, "local", version)["PrimaryContainer"]["Environment"]
        env = {**env, "MAX_BATCH_SIZE": str(s.transform_batch_size), "FETCH_WORKERS": str(transform.FETCH_WORKERS)}
        holder: dict = {}
        started = time.monotonic()
        server = servers.get("bench", uri, env)
        results["startup_to_ping_s"] = server.ping_s
        results["startup_to_model_loaded_s"] = server.ready_s
        results["startup_with_download_s"] = round(time.monotonic() - started, 1)
        local = InProcessModel.from_artifact(uri, env, s3, cache_dir=root / "cache")

        image = _jpeg(0)
        remote_answer = server.endpoint.invoke(image, "application/x-image", "application/json", 120)
        local_answer = local.invoke(image, "application/x-image", "application/json")
        assert remote_answer.status == local_answer.status == 200
        same = vectors_close(json.loads(remote_answer.body)["embeddings"], json.loads(local_answer.body)["embeddings"])
        remote: list[float] = []
        inproc: list[float] = []
        for _ in range(args.singles):  # interleaved, so both see the same machine load
            remote += _timed(lambda: server.endpoint.invoke(image, "application/x-image", "application/json", 120), 1)
            inproc += _timed(lambda: local.invoke(image, "application/x-image", "application/json"), 1)
        results["one_image_ms"] = {
            "torchserve_median": round(statistics.median(remote) * 1000, 1),
            "torchserve_p90": round(sorted(remote)[int(0.9 * (len(remote) - 1))] * 1000, 1),
            "in_process_median": round(statistics.median(inproc) * 1000, 1),
            "in_process_p90": round(sorted(inproc)[int(0.9 * (len(inproc) - 1))] * 1000, 1),
        }
        print(json.dumps(results), flush=True)

        lines = []
        for i in range(args.records):
            key = f"images/{i:04d}.jpg"
            s3.put_object(Bucket=bucket, Key=key, Body=_jpeg(i + 1))
            lines.append(json.dumps({"id": key, "s3_uri": f"s3://{bucket}/{key}"}))
        chunk = ("\n".join(lines) + "\n").encode()
        kind = ("application/x-image-chunk", "application/x-npz")
        server.endpoint.invoke(chunk, *kind, 900)  # warm-up: the handler's S3 client, its fetch pool
        local.invoke(chunk, *kind)
        remote_t: list[float] = []
        inproc_t: list[float] = []
        for _ in range(args.chunks):  # interleaved
            remote_t += _timed(lambda: holder.__setitem__("r", server.endpoint.invoke(chunk, *kind, 900)), 1)
            inproc_t += _timed(lambda: holder.__setitem__("l", local.invoke(chunk, *kind)), 1)
            assert holder["r"].status == holder["l"].status == 200, holder["r"].body[:300]
        with np.load(io.BytesIO(holder["r"].body)) as a, np.load(io.BytesIO(holder["l"].body)) as b:
            same = same and list(a["ids"]) == list(b["ids"])
            same = same and vectors_close(a["embeddings"].tolist(), b["embeddings"].tolist())
            assert len(a["ids"]) == args.records, a["errors"][:3]
        results["chunk_records_per_s"] = {
            "torchserve": round(args.records / statistics.median(remote_t), 1),
            "in_process": round(args.records / statistics.median(inproc_t), 1),
        }
        rate = results["chunk_records_per_s"]
        results["chunk_ratio"] = round(rate["torchserve"] / rate["in_process"], 2)
        results["vectors_equal_within_tolerance"] = bool(same)
    finally:
        servers.close()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)
    print(json.dumps(results, indent=2))
    cm.save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
