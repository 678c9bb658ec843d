"""What the search page's browser test runs against: part of the sample catalogue, indexed in-process, and a
gate in front of the S3 server that holds the model artifact's download for as long as the test wants.

The products are real ones from the sample catalogue (Tux Paint stamps in ABO layout), encoded by the tiny
test model's handlers and loaded with the production mapping (`sample_index`); their pictures go to a
bucket of this session, the model artifact beside them.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import boto3
from search_world import TINY, Product, World

from catalogue_search import index
from catalogue_search.settings import Settings
from catalogue_search_dev import sample_index, testenv
from catalogue_search_dev.model_build import build_model_artifact, upload_model_artifact

DOG = "A dog."


def build_sample_world(moto_url: str, opensearch_url: str, tmp_dir: Path, n: int = 40) -> World:
    """`n` sample products: "A dog." and the first n - 1 others by item_id, indexed under a fresh alias."""
    token = testenv.unique_name_part()
    settings = Settings.from_env(
        aws_endpoint_url=moto_url,
        opensearch_url=opensearch_url,
        bucket=f"pagesample-{token}",
        index_alias=f"pagesample-{token}",
        model_name="tiny-clip",
        model_pretrained="",
        query_encoder="local",
    )
    layout = sample_index.layout_dir()
    products = sample_index.sample_products(layout)
    dog = [p for p in products if p["item_name"] == DOG]
    assert len(dog) == 1, f"the sample catalogue has {len(dog)} products called {DOG!r}, the test expects one"
    chosen = dog + [p for p in products if p["item_name"] != DOG][: n - 1]
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    s3.create_bucket(Bucket=settings.bucket)
    artifact = tmp_dir / "model.tar.gz"
    build_model_artifact(artifact, "tiny-clip", "", TINY)
    upload_model_artifact(settings, s3, artifact)
    encoded = sample_index.encode(layout, chosen, artifact, cache_dir=tmp_dir / "cache")
    out = []
    for p in encoded.products:
        image = (layout / "images/small" / p["path"]).read_bytes()
        s3.put_object(
            Bucket=settings.bucket, Key=settings.images_prefix + p["path"], Body=image, ContentType="image/jpeg"
        )
        out.append(Product(p["item_id"], p["item_name"], p["product_type"], p["brand"], p["path"], image))
    name = f"{settings.index_alias}-v1"
    client = index.client_from_settings(settings)
    sample_index.load(client, settings, name, settings.index_alias, encoded)
    return World(settings=settings, products=out, index_name=name, artifact=artifact, s3=s3)


class Gate:
    """A TCP forwarder to `target_url` that holds every connection until `open()`: a slow network to S3,
    for as long as the test needs to look at the page while the model artifact is on its way."""

    def __init__(self, target_url: str) -> None:
        target = urlparse(target_url)
        self.target = (target.hostname, target.port or 80)
        self._open = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.held = 0  # connections that waited at the closed gate
        threading.Thread(target=self._accept, daemon=True).start()

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def close(self) -> None:
        self._open.set()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(conn,), daemon=True).start()

    def _forward(self, conn: socket.socket) -> None:
        if not self._open.is_set():
            self.held += 1
            self._open.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=60)
        except OSError:
            conn.close()
            return
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
