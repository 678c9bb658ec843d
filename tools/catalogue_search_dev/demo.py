"""The main job on the local stack: index the sample catalogue, answer sample queries.

1. Build the sample ABO catalogue (cached) and upload it to the moto bucket
   that plays the public ABO bucket.
2. Build `model.tar.gz` (cached) and upload it to the project bucket.
3. Run the `catalogue_ingest` DAG with `airflow dags test`.
4. Print the five best hits for a text query and for an image query.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from catalogue_search.settings import Settings
from catalogue_search_dev.localenv import cache_home

log = logging.getLogger(__name__)

TEXT_QUERY = "two people in front of a swimming pool"
# Progress lines worth showing on screen; everything else stays in the log file.
INTERESTING = re.compile(
    r"(shard \w+: \d+ listings|images: \d+ copied|need encoding|nothing new to encode|SageMaker job \S+ completed|"
    r"Error while running transform job|documents loaded:|self-match ok|alias \S+: |deleted superseded|"
    r"could not be encoded|has no embedding|is missing|more than one shard|builds on|serves nothing yet|ANN recall|"
    r"shrink guard|clean-up of|quality gate|evaluated \d+ titles|random weights: quality|"
    r"\[error|Traceback|DagRun Finished)"
)
STRUCTLOG = re.compile(r"^\S+Z \[(\w+)\s*\] (.*?)(?: \[[\w.]+\](?: \S+=\S+)*)?$")


def _short(line: str) -> str:
    """`2026-..Z [info ] message [logger] loc=...` -> `message` (other lines unchanged)."""
    if "DagRun Finished" in line:
        found = dict(re.findall(r"(state|run_duration|run_id)=([^,]+)", line))
        seconds = float(found.get("run_duration", 0))
        return f"DAG run {found.get('run_id')} finished: {found.get('state')} in {seconds:.0f}s"
    match = STRUCTLOG.match(line.rstrip())
    if not match:
        return line.rstrip()
    level, message = match.groups()
    message = re.sub(r" \[[\w.]+\] loc=\S+.*$", "", message)
    return message if level == "info" else f"{level.upper()}: {message}"


def _say(msg: str) -> None:
    print(f"\033[1m[demo]\033[0m {msg}", flush=True)


def s3_client(settings: Settings):
    import boto3

    return boto3.client("s3", **settings.boto3_kwargs())


def prepare_catalogue(settings: Settings, s3, out_dir: Path | None = None):
    """Build (once) and upload (idempotently) the sample catalogue; return its summary."""
    from catalogue_search_dev import sample_catalogue as sc

    out_dir = out_dir or sc.default_build_dir()
    summary = sc.ensure_built(out_dir)
    report = sc.upload_catalogue(out_dir, settings.source_bucket, s3, prefix=settings.source_prefix)
    _say(
        f"sample catalogue: {summary.unique_products} products, {len(summary.clean_item_ids)} clean; "
        f"s3://{settings.source_bucket}/: {report.uploaded} uploaded, {report.skipped} already there"
    )
    return summary


def prepare_model(settings: Settings, s3, model_cfg_path: Path | None = None) -> dict[str, Any]:
    """Build (once) and upload the model artifact; random weights are allowed here, and said so loudly."""
    from catalogue_search_dev.model_build import build_model_artifact, upload_model_artifact

    tag = settings.model_pretrained or "random"
    path = cache_home() / "artifacts" / f"{settings.model_slug}-{tag}" / "model.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    _say(
        "the local stack builds the model with --allow-random-weights: where no model hub is in reach, the "
        "artifact holds RANDOM weights instead of failing (a deployment builds without it)"
    )
    info = build_model_artifact(
        path, settings.model_name, settings.model_pretrained, model_cfg_path, allow_random_weights=True
    )
    upload_model_artifact(settings, s3, path)
    if info.random_weights:
        _say(
            "WARNING: no pretrained CLIP weights could be loaded (no model hub here): the model has the real "
            f"{settings.model_name} architecture with RANDOM weights. Text search results are not meaningful; "
            "an image still finds itself. With internet, the same command packages real weights. The local "
            "stack publishes it anyway (CATSEARCH_ALLOW_RANDOM_WEIGHTS=true); a deployment refuses such an index."
        )
    return info.as_dict()


def prepare(settings: Settings, model_cfg_path: Path | None = None):
    s3 = s3_client(settings)
    from catalogue_search_dev.sample_catalogue import ensure_bucket

    ensure_bucket(s3, settings.bucket)
    summary = prepare_catalogue(settings, s3)
    info = prepare_model(settings, s3, model_cfg_path)
    return summary, info


def run_dag(dag_id: str, conf: dict[str, Any], env: dict[str, str] | None = None, log_path: Path | None = None) -> int:
    """`airflow dags test` with the full log in a file and the progress lines on screen."""
    log_path = log_path or cache_home() / "logs" / f"{dag_id}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["airflow", "dags", "test", dag_id, "--conf", json.dumps(conf)]
    _say(f"running {' '.join(cmd[:4])} (full log: {log_path})")
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if INTERESTING.search(line):
                print("   " + _short(line)[:240], flush=True)
        code = proc.wait()
    if code != 0:
        _say(f"the DAG run failed (exit {code}); see {log_path}")
    return code


def answer_queries(settings: Settings, summary, k: int = 5) -> bool:
    """Print a text query's and an image query's best hits; True when the image found itself first."""
    from catalogue_search.search import SearchClient, format_hits

    for noisy in ("opensearch", "root", "catalogue_search", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    client = SearchClient(settings)
    print(f"\nText query: {TEXT_QUERY!r}")
    print(format_hits(client.search_text(TEXT_QUERY, k)))
    s3 = s3_client(settings)
    item_id = summary.clean_item_ids[0]
    doc = client.client.get(index=settings.index_alias, id=item_id)["_source"]
    image = s3.get_object(Bucket=settings.bucket, Key=settings.images_prefix + doc["image_path"])["Body"].read()
    print(f"\nImage query: the catalogue's own image of {item_id} ({doc['item_name']!r}, {doc['image_path']})")
    hits = client.search_image(image, k)
    print(format_hits(hits))
    # Identical images tie at 1.0, so "first" means: among the top hits that score 1.0.
    found = bool(hits) and hits[0].score >= 0.9999 and any(h.item_id == item_id and h.score >= 0.9999 for h in hits)
    print(f"\nself-match: {'OK, the product came back first' if found else 'FAILED'}")
    return bool(found)


def show_quality(settings: Settings) -> None:
    """The search quality the run measured (the served index's `_meta`), as `./dev eval` prints it."""
    from catalogue_search import index, quality

    client = index.client_from_settings(settings)
    for name, mapping in client.indices.get_mapping(index=settings.index_alias).items():
        record = (mapping["mappings"].get("_meta") or {}).get("quality")
        if record:
            print(f"\nSearch quality of {name} (each product's title as the query; `./dev eval` shows it again):")
            print(quality.format_table(record))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev demo", description=__doc__)
    parser.add_argument(
        "--max-products",
        type=int,
        default=0,
        help="a trial: index at most this many products (0 = all), on the alias <alias>-trial",
    )
    parser.add_argument("--skip-dag", action="store_true", help="only answer the queries (the index exists)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    started = time.monotonic()
    summary, _ = prepare(settings)
    conf: dict[str, Any] = {}
    if args.max_products:  # a partial catalogue never goes to the default alias
        settings = settings.replace(index_alias=f"{settings.index_alias}-trial")
        conf = {"max_products": args.max_products, "alias": settings.index_alias}
    if not args.skip_dag:
        code = run_dag("catalogue_ingest", conf)
        if code != 0:
            return code
    show_quality(settings)
    ok = answer_queries(settings, summary)
    _say(f'done in {time.monotonic() - started:.0f}s; search again with: ./dev search "a red flower"')
    return 0 if ok else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
