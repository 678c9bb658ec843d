"""Loads the query encoders in the background when the API server starts, so no user waits for it.

Airflow's API server runs the lifespan of every FastAPI app it mounts, once per
worker process; `lifespan` starts one daemon thread there. The thread encodes
one short text and one tiny picture through the same search client the
requests share (`Warm.client`): with the local encoder that imports torch and
loads both handlers from the model artifact (the 10 s a first query used to
pay), with the endpoint encoder it finds the endpoints and wakes them. Then
one hybrid query touches the index's title text and both vector fields. The page
asks `/api/status` and says "warming up the model" until the state is `ready`;
a query sent meanwhile waits for the same load (the encoder loads once).

A failure is reported, not retried: the request that needs the encoder raises
the same error with the same plain sentence.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from catalogue_search import contract, search

log = logging.getLogger(__name__)

# A 32 x 32 PNG: enough for the image handler to decode, resize and encode.
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAK0lEQVR4nO3NQREAAAQAQeTSf8RSgt9egNuc7visXu8AAAAAAAAAAAD"
    "gsAW3HAGAoQdf+gAAAABJRU5ErkJggg=="
)
PAYLOADS = (
    (contract.TEXT, json.dumps({"inputs": ["warm-up"]}).encode(), contract.JSON),
    (contract.IMAGE, TINY_PNG, contract.X_IMAGE),
)


class WarmUp:
    """The state of one process's warm-up: `idle` (not started), `warming`, `ready` or `failed`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = "idle"
        self.started: float | None = None
        self.finished: float | None = None
        self.errors: list[dict[str, str]] = []
        self._thread: threading.Thread | None = None

    def start(self, warm: Any) -> None:
        """Start warming `warm.client` in a daemon thread (once; later calls do nothing)."""
        with self._lock:
            if self._thread is not None:
                return
            self.state, self.started = "warming", time.monotonic()
            self._thread = threading.Thread(target=self._run, args=(warm,), name="catsearch-warm-up", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the warm-up ended (tests, benchmarks); False if it is still running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.state in {"ready", "failed"}

    def _run(self, warm: Any) -> None:
        errors = []
        try:
            client = warm.client
            vectors = {}
            for encode_type, payload, content_type in PAYLOADS:
                try:
                    vectors[encode_type] = client.encoder.encode(encode_type, payload, content_type)
                except Exception as exc:  # reported on the status line; the query raises it again
                    log.warning("catalogue search: warming the %s encoder failed: %s", encode_type.lower(), exc)
                    errors.append({"encode_type": encode_type, **search.error_payload(exc)[1]})
            if contract.TEXT in vectors:
                _warm_index(client, vectors[contract.TEXT])
        except Exception as exc:  # no client at all (settings missing)
            log.warning("catalogue search: warm-up failed: %s", exc)
            errors.append({"encode_type": "", **search.error_payload(exc)[1]})
        self.errors = errors
        self.finished = time.monotonic()
        self.state = "failed" if errors else "ready"
        log.info("catalogue search: warm-up %s in %.1f s", self.state, self.finished - (self.started or 0))

    def snapshot(self) -> dict[str, Any]:
        """What `/api/status` reports: the state, seconds spent so far (or in all), and any errors."""
        end = self.finished if self.finished is not None else time.monotonic()
        seconds = round(end - self.started, 1) if self.started is not None else None
        return {"state": self.state, "seconds": seconds, "errors": list(self.errors)}


def _warm_index(client: Any, vector: list[float]) -> None:
    """One hybrid query (BM25 and both vector fields): the node reads the graphs and the client caches the
    alias's window before the first user asks. Best effort: the status line reports the index on its own."""
    try:
        client.search_hybrid(vector, 1, text="warm-up")
    except Exception as exc:
        log.info("catalogue search: the index could not be warmed (yet): %s", exc)


@asynccontextmanager
async def lifespan(app):
    """Run by the Airflow API server for each mounted app: start this process's warm-up."""
    app.state.warmup.start(app.state.warm)
    yield
