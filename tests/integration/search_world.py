"""A small searchable catalogue, indexed directly (no DAG): generated JPEGs in a unique bucket, encoded
in-process by the tiny model's real handler, loaded with the project's own index functions."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from PIL import Image, ImageDraw

from catalogue_search import index
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.settings import Settings
from catalogue_search_dev import testenv
from catalogue_search_dev.model_build import build_model_artifact, upload_model_artifact

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"
COLOURS = ["red", "blue", "green", "orange", "purple", "black", "teal", "gold"]
SHAPES = ["ellipse", "rectangle"]


def jpeg(colour: str, shape: str, size: int = 96, inset: int = 12) -> bytes:
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    getattr(draw, shape)((inset, inset + 8, size - inset, size - inset - 8), fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@dataclass
class Product:
    item_id: str
    item_name: str
    product_type: str
    brand: str
    path: str
    image: bytes


@dataclass
class World:
    settings: Settings
    products: list[Product]
    index_name: str
    artifact: Path
    s3: object = field(repr=False, default=None)

    def product(self, item_id: str) -> Product:
        return next(p for p in self.products if p.item_id == item_id)

    def cleanup(self) -> None:
        client = index.make_client(self.settings.opensearch_url)
        client.indices.delete(index=self.index_name, ignore_unavailable=True)
        bucket = boto3.resource("s3", **self.settings.boto3_kwargs()).Bucket(self.settings.bucket)
        bucket.objects.all().delete()
        bucket.delete()


def make_products(n: int) -> list[Product]:
    """n products: colour x shape, two product types (in upper case, as ABO writes them), two brands."""
    out = []
    for i in range(n):
        colour, shape = COLOURS[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        inset = 6 + 4 * (i // (len(COLOURS) * len(SHAPES)))
        item_id = f"B0{colour.upper()[:4]}{shape[:3].upper()}{i:02d}"
        out.append(
            Product(
                item_id=item_id,
                item_name=f"A {colour} {shape}" + (f" ({i})" if i >= len(COLOURS) * len(SHAPES) else ""),
                product_type="TOY" if i % 3 else "FOOD",
                brand="Shapes Inc" if i % 2 else "Roundish",
                path=f"{item_id[-2:]}/{item_id.lower()}.jpg",
                image=jpeg(colour, shape, inset=inset),
            )
        )
    return out


def build_world(
    moto_url: str, opensearch_url: str, tmp_dir: Path, n: int = 16, model_cache_dir: str | None = None
) -> World:
    token = testenv.unique_name_part()  # the session's token: its end-of-session sweep finds what a crash leaves
    settings = Settings.from_env(
        aws_endpoint_url=moto_url,
        opensearch_url=opensearch_url,
        bucket=f"searchpage-{token}",
        index_alias=f"searchpage-{token}",
        model_name="tiny-clip",
        model_pretrained="",
        query_encoder="local",
        **({"model_cache_dir": model_cache_dir} if model_cache_dir else {}),
    )
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    s3.create_bucket(Bucket=settings.bucket)
    artifact = tmp_dir / "model.tar.gz"
    build_model_artifact(artifact, "tiny-clip", "", TINY)
    upload_model_artifact(settings, s3, artifact)
    products = make_products(n)
    for p in products:
        s3.put_object(
            Bucket=settings.bucket, Key=settings.images_prefix + p.path, Body=p.image, ContentType="image/jpeg"
        )
    handler = load_handler_from_artifact(settings.artifact_uri, "IMAGE", s3_client=s3, cache_dir=settings.model_cache)
    vectors = handler.encode_images([p.image for p in products])
    text = load_handler_from_artifact(settings.artifact_uri, "TEXT", s3_client=s3, cache_dir=settings.model_cache)
    titles = text.encode_texts([p.item_name for p in products])  # the title vectors (search modes name, hybrid)
    client = index.make_client(opensearch_url)
    name = f"{settings.index_alias}-v1"
    body = index.index_body(settings, alias=settings.index_alias, dimension=vectors.shape[1], run_key=token)
    index.create_index(client, name, body)
    docs = [
        index.document(
            {
                "item_id": p.item_id,
                "item_name": p.item_name,
                "image_id": f"img-{p.item_id}",
                "main_image_id": f"img-{p.item_id}",
                "path": p.path,
                "product_type": p.product_type,
                "brand": p.brand,
            },
            vec.tolist(),
            settings.model_name,
            name_vector=title.tolist(),
        )
        for p, vec, title in zip(products, vectors, titles)
    ]
    index.bulk_load(client, name, docs, total=len(docs))
    index.finish_loading(client, name, 0)
    index.swap_alias(client, settings.index_alias, name)
    return World(settings=settings, products=products, index_name=name, artifact=artifact, s3=s3)
