"""Warm search API latency next to the CLI's per-query time, in one run.

    ./dev bench search-api [--model ViT-B-32] [--queries 50] [--products 100] [--cli-runs 3]

Indexes a generated catalogue (random-weight model of the real architecture:
latency does not depend on the weights), starts `airflow api-server` on
127.0.0.1 with the search page plugin, logs in, then times over HTTP:
the first query (loads the model), then `--queries` text and `--queries`
image queries, each a full request (auth, encode, k-NN, JSON). Then runs the
CLI (`python -m catalogue_search.cli search ...`, a fresh process per query,
as `./dev search` does) `--cli-runs` times for text and for image queries.
Everything it creates (bucket, index, server, Airflow home) is removed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ["red", "blue", "green", "small", "large", "round", "square", "wooden", "metal", "soft", "bright", "dark"]
THINGS = ["chair", "lamp", "mug", "shoe", "ball", "flower", "phone case", "backpack", "table", "bottle", "kite"]


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def make_images(n: int, seed: int = 7) -> list[bytes]:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        img = Image.new("RGB", (256, 256), tuple(rng.randrange(180, 256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randrange(1, 5)):
            box = sorted(rng.sample(range(10, 246), 2))
            box2 = sorted(rng.sample(range(10, 246), 2))
            shape = rng.choice([draw.ellipse, draw.rectangle])
            shape((box[0], box2[0], box[1], box2[1]), fill=tuple(rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def build_index(settings, images: list[bytes], s3) -> str:
    from catalogue_search import index
    from catalogue_search.handler import load_handler_from_artifact

    handler = load_handler_from_artifact(settings.artifact_uri, "IMAGE", s3_client=s3, cache_dir=settings.model_cache)
    vectors = handler.encode_images(images)
    titles = [f"{WORDS[i % len(WORDS)]} {THINGS[i % len(THINGS)]}" for i in range(len(images))]
    text = load_handler_from_artifact(settings.artifact_uri, "TEXT", s3_client=s3, cache_dir=settings.model_cache)
    title_vectors = text.encode_texts(titles)  # the title vectors: every mode can be timed (hybrid, name)
    client = index.client_from_settings(settings)
    name = f"{settings.index_alias}-v1"
    body = index.index_body(settings, alias=settings.index_alias, dimension=vectors.shape[1], run_key="b")
    body["mappings"]["_meta"]["artifact_version"] = handler.artifact_version  # the search client checks it
    index.create_index(client, name, body)
    docs = []
    for i, vec in enumerate(vectors):
        path = f"{i % 256:02x}/bench{i:05d}.jpg"
        s3.put_object(
            Bucket=settings.bucket, Key=settings.images_prefix + path, Body=images[i], ContentType="image/jpeg"
        )
        product = {
            "item_id": f"B0BENCH{i:05d}",
            "item_name": titles[i],
            "image_id": f"img{i}",
            "main_image_id": f"img{i}",
            "path": path,
            "product_type": ["HOME", "TOY", "SHOES"][i % 3],
            "brand": ["Acme", "Globex"][i % 2],
        }
        docs.append(index.document(product, vec.tolist(), settings.model_name, name_vector=title_vectors[i].tolist()))
    index.bulk_load(client, name, docs, total=len(docs))
    index.finish_loading(client, name, 0)
    index.swap_alias(client, settings.index_alias, name)
    return name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api_server(settings, home: Path) -> tuple[subprocess.Popen, str, str]:
    (home / "dags").mkdir(parents=True)
    password = secrets.token_urlsafe(12)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"bench": password}))
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "bench:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        **settings_env(settings),
    }
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)  # its own DB
    proc = subprocess.Popen(
        ["airflow", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=open(home / "api-server.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"api-server exited: {(home / 'api-server.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/api/v2/monitor/health", timeout=5).close()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    request = urllib.request.Request(
        url + "/auth/token",
        data=json.dumps({"username": "bench", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    token = json.loads(urllib.request.urlopen(request, timeout=30).read())["access_token"]
    return proc, url, token


def settings_env(settings) -> dict[str, str]:
    return {
        "CATSEARCH_OPENSEARCH_URL": settings.opensearch_url,
        "CATSEARCH_AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "CATSEARCH_BUCKET": settings.bucket,
        "CATSEARCH_INDEX_ALIAS": settings.index_alias,
        "CATSEARCH_MODEL_NAME": settings.model_name,
        "CATSEARCH_MODEL_PRETRAINED": settings.model_pretrained,
        "CATSEARCH_QUERY_ENCODER": "local",
        "CATSEARCH_MODEL_CACHE_DIR": str(settings.model_cache),
        "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]),
    }


def time_api(url: str, token: str, texts: list[str], images: list[bytes], k: int) -> dict[str, list[float]]:
    import httpx

    out: dict[str, list[float]] = {"first": [], "text": [], "image": []}
    with httpx.Client(
        base_url=url + "/catalogue-search", headers={"Authorization": f"Bearer {token}"}, timeout=600
    ) as http:

        def text(q: str) -> float:
            t = time.perf_counter()
            got = http.get("/api/search", params={"q": q, "k": k})
            elapsed = time.perf_counter() - t
            got.raise_for_status()
            assert got.json()["hits"]
            return elapsed

        def image(data: bytes) -> float:
            t = time.perf_counter()
            got = http.post("/api/search/image", params={"k": k}, files={"image": ("q.jpg", data, "image/jpeg")})
            elapsed = time.perf_counter() - t
            got.raise_for_status()
            assert got.json()["hits"][0]["similarity"] > 0.999  # the catalogue's own image
            return elapsed

        out["first"] = [text("a first query"), image(images[0])]  # each loads its encoder
        out["text"] = [text(q) for q in texts]
        out["image"] = [image(images[i % len(images)]) for i in range(len(texts))]
    return out


def time_cli(settings, texts: list[str], image_file: Path, runs: int, k: int) -> dict[str, list[float]]:
    env = {**os.environ, **settings_env(settings)}
    out: dict[str, list[float]] = {"text": [], "image": []}
    for i in range(runs):
        for kind, query in (("text", [texts[i]]), ("image", ["--image", str(image_file)])):
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "catalogue_search.cli", "search", *query, "-k", str(k)],
                env=env,
                capture_output=True,
                text=True,
            )
            out[kind].append(time.perf_counter() - t)
            if proc.returncode != 0:
                raise RuntimeError(f"CLI failed: {proc.stderr[-500:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--config", type=Path, help="an open_clip model config (e.g. tests/fixtures/tiny_clip.json)")
    parser.add_argument("--queries", type=int, default=50, help="text queries and image queries (each)")
    parser.add_argument("--products", type=int, default=100)
    parser.add_argument("--cli-runs", type=int, default=3)
    parser.add_argument("-k", type=int, default=12)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.queries < 50:
        say("note: fewer than 50 queries per kind")

    import boto3

    from catalogue_search import index
    from catalogue_search.settings import Settings
    from catalogue_search_dev.localenv import cache_home
    from catalogue_search_dev.model_build import build_model_artifact, upload_model_artifact

    token = uuid.uuid4().hex[:8]
    settings = Settings.from_env(
        bucket=f"bench-search-{token}",
        index_alias=f"bench-search-{token}",
        model_name=args.model,
        model_pretrained="",
        query_encoder="local",
    )
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    s3.create_bucket(Bucket=settings.bucket)
    home = Path(tempfile.mkdtemp(prefix="bench-search-airflow-"))
    proc = None
    name = None
    try:
        artifact = cache_home() / "artifacts" / f"{settings.model_slug}-random" / "model.tar.gz"
        say(f"model artifact {artifact} ({args.model}, random weights: latency does not depend on them)")
        build_model_artifact(artifact, args.model, "", args.config)
        upload_model_artifact(settings, s3, artifact)
        images = make_images(args.products)
        say(f"indexing {args.products} generated products")
        name = build_index(settings, images, s3)
        say("starting airflow api-server with the search page plugin")
        proc, url, jwt = start_api_server(settings, home)
        rng = random.Random(1)
        texts = [f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(THINGS)} {i}" for i in range(args.queries)]
        say(f"timing {args.queries} text and {args.queries} image queries against the warm API")
        api = time_api(url, jwt, texts, images, args.k)
        image_file = home / "query.jpg"
        image_file.write_bytes(images[1])
        say(f"timing the CLI, {args.cli_runs} text and {args.cli_runs} image queries (a process each)")
        cli = time_cli(settings, texts, image_file, args.cli_runs, args.k)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        client = index.client_from_settings(settings)
        if name:
            client.indices.delete(index=name, ignore_unavailable=True)
        bucket = boto3.resource("s3", **settings.boto3_kwargs()).Bucket(settings.bucket)
        bucket.objects.all().delete()
        bucket.delete()
        shutil.rmtree(home, ignore_errors=True)

    ms = 1000.0
    rows = [
        ("API, first text query (loads the model)", [api["first"][0]]),
        ("API, first image query (loads the model)", [api["first"][1]]),
        (f"API, warm text query (n={len(api['text'])})", api["text"]),
        (f"API, warm image query (n={len(api['image'])})", api["image"]),
        (f"CLI, text query (n={len(cli['text'])}, a process each)", cli["text"]),
        (f"CLI, image query (n={len(cli['image'])}, a process each)", cli["image"]),
    ]
    print(f"\nsearch latency, {args.model}, {args.products} products, k={args.k}, {os.cpu_count()} CPUs")
    print(f"{'':<48} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9}")
    figures = {}
    for label, values in rows:
        p50, p95, mean = percentile(values, 0.5) * ms, percentile(values, 0.95) * ms, statistics.fmean(values) * ms
        figures[label] = {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "mean_ms": round(mean, 1), "n": len(values)}
        print(f"{label:<48} {p50:>9.1f} {p95:>9.1f} {mean:>9.1f}")
    text_p50 = percentile(api["text"], 0.5) * ms
    cli_text = statistics.median(cli["text"]) * ms
    print(
        f"\nwarm API text p50 {text_p50:.1f} ms (target < 100 ms): {'met' if text_p50 < 100 else 'NOT met'}; "
        f"the CLI takes {cli_text / text_p50:.0f}x longer per text query"
    )
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "products": args.products, "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
