"""Shared pieces of the benchmarks: settings, clients, synthetic vectors, timing, memory.

Benchmarks only ever create indices named `bench-*` and buckets named
`bench-*`, and delete them when they finish (also on failure).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
for sub in ("include", "tools"):
    if str(REPO / sub) not in sys.path:
        sys.path.insert(0, str(REPO / sub))

from catalogue_search import index  # noqa: E402
from catalogue_search.settings import Settings  # noqa: E402
from catalogue_search_dev.vector_sets import unit_rows, vectors  # noqa: E402,F401  (the benchmarks' data sets)

# A stopped benchmark still deletes its bench- indices and buckets (finally blocks run).
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def settings(**overrides: Any) -> Settings:
    """The local stack's settings (as `./dev` exports them), with overrides."""
    defaults = {
        "aws_endpoint_url": os.environ.get("CATSEARCH_AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        "opensearch_url": os.environ.get("CATSEARCH_OPENSEARCH_URL", "http://127.0.0.1:9200"),
    }
    env = {k: v for k, v in os.environ.items() if k.startswith("CATSEARCH_")}
    base = Settings.from_env(env)
    values = {k: v for k, v in defaults.items() if not getattr(base, k)}
    values.update(overrides)
    return base.replace(**values)


def bench_name(what: str) -> str:
    return f"bench-{what}-{uuid.uuid4().hex[:6]}"


def client(timeout: int = 300):
    return index.make_client(settings().opensearch_url, timeout=timeout)


@contextmanager
def bench_index(c, what: str) -> Iterator[str]:
    """A unique `bench-` index name, deleted afterwards whatever happens."""
    name = bench_name(what)
    try:
        yield name
    finally:
        c.indices.delete(index=name, ignore_unavailable=True)


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    mem = psutil.virtual_memory().total / 2**30
    py = platform.python_version()
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, load average {load:.1f}, Python {py}"


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Peak RSS of this process over a block (sampled every 50 ms, so a peak earlier in
    the process does not hide the block's own)."""

    def __init__(self, pid: int | None = None, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.start_mib = self.proc.memory_info().rss / 2**20
        self.peak_mib = self.start_mib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_mib = max(self.peak_mib, self.proc.memory_info().rss / 2**20)
            except Exception:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.start_mib


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def exact_top(data, queries, k: int, mask=None):
    """Exact cosine top-k row indices (data and queries are unit rows)."""
    import numpy as np

    scores = queries @ data.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, 1)


def doc_id(i: int) -> str:
    return f"B{i:09d}"


PRODUCT_TYPES = [f"TYPE_{t:02d}" for t in range(10)]


def product_type(i: int) -> str:
    """A deterministic product type per row (10 types, about 10% each)."""
    return PRODUCT_TYPES[(i * 2654435761) % 2**32 % len(PRODUCT_TYPES)]


def product(i: int) -> dict[str, Any]:
    return {
        "item_id": doc_id(i),
        "item_name": f"synthetic product {i}",
        "image_id": f"IMG{i:08d}L",
        "main_image_id": f"IMG{i:08d}L",
        "path": f"{i % 256:02x}/{i:08x}.jpg",
        "product_type": product_type(i),
        "brand": "bench",
    }


def bulk_bodies(name: str, data, *, start: int = 0, chunk: int = 500, model: str = "bench") -> Iterator[str]:
    """NDJSON bulk bodies of project documents (vectors rounded to 7 decimals)."""
    import numpy as np

    for lo in range(0, len(data), chunk):
        lines = []
        rows = np.round(data[lo : lo + chunk].astype(np.float64), 7).tolist()
        for j, vec in enumerate(rows):
            i = start + lo + j
            doc = index.document(product(i), vec, model)
            lines.append(json.dumps({"index": {"_index": name, "_id": doc_id(i)}}))
            lines.append(json.dumps(doc))
        yield "\n".join(lines) + "\n"


def fast_load(c, name: str, data, *, threads: int = 2, chunk: int = 500) -> float:
    """Load rows with `threads` parallel _bulk requests; returns seconds. Raises on any rejected doc."""
    started = time.perf_counter()

    def send(body: str) -> None:
        for attempt in range(8):
            resp = c.bulk(body=body, request_timeout=300)
            if not resp.get("errors"):
                return
            statuses = {item["index"].get("status") for item in resp["items"]}
            if statuses - {200, 201, 429}:
                raise RuntimeError(f"bulk rejected documents: {resp['items'][0]}")
            time.sleep(2**attempt)
        raise RuntimeError("bulk kept being throttled (429)")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        # Bounded in-flight bodies: never more than 2 x threads serialized at once.
        pending = []
        for body in bulk_bodies(name, data, chunk=chunk):
            pending.append(pool.submit(send, body))
            if len(pending) >= 2 * threads:
                pending.pop(0).result()
        for fut in pending:
            fut.result()
    return time.perf_counter() - started


def segments(c, name: str) -> int:
    stats = c.indices.stats(index=name, metric="segments")
    return int(stats["indices"][name]["primaries"]["segments"]["count"])


def node_heap() -> str:
    stats = client().nodes.stats(metric="jvm")
    node = next(iter(stats["nodes"].values()))
    mem = node["jvm"]["mem"]
    return f"heap {mem['heap_used_in_bytes'] / 2**20:.0f} / {mem['heap_max_in_bytes'] / 2**20:.0f} MiB"


def save_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def random_artifact(model: str = "ViT-B-32") -> Path:
    """A model.tar.gz of `model` with random weights, built once per handler code into the cache."""
    import hashlib

    from catalogue_search_dev.localenv import cache_home
    from catalogue_search_dev.model_build import CODE_FILES, INFERENCE_CODE_DIR, build_model_artifact

    code = hashlib.sha256(b"".join((INFERENCE_CODE_DIR / name).read_bytes() for name in CODE_FILES)).hexdigest()
    path = cache_home() / "bench" / f"{model}-random-{code[:12]}" / "model.tar.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_model_artifact(path, model, "")
    return path
