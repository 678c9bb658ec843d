"""A small searchable catalogue, indexed directly (no DAG): generated JPEGs in a unique bucket, encoded
in-process by the tiny model's real handler, loaded with the project's own index functions, its model's
artifact version recorded in the index's `_meta` as the pipeline records it.

`build_world(..., titled=True)` is the search tests' one shared catalogue (the `search_world` fixture):
shape products (colour x shape, two product types, two brands) plus products whose titles carry words no
picture of a shape can carry, two listings of one photo under two image ids, and two that share an image id.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import boto3
from PIL import Image, ImageDraw

from catalogue_search import endpoints, index, search
from catalogue_search.handler import load_handler_from_artifact
from catalogue_search.model_artifact import read_artifact_version
from catalogue_search.settings import Settings, boto3_client
from catalogue_search_dev import testenv
from catalogue_search_dev.model_build import build_model_artifact, upload_model_artifact

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json"
COLOURS = ["red", "blue", "green", "orange", "purple", "black", "teal", "gold"]
SHAPES = ["ellipse", "rectangle"]
# item_id -> (title, colour, shape, image id)
TITLED = {
    "B0ZEBRA001": ("Striped zebra plush toy ZX-200", "black", "rectangle", "imgZEBRA"),
    "B0KETTLE02": ("Stainless steel kettle 1.7 litre", "grey", "ellipse", "imgKETTLE"),
    "B0LAMP0003": ("Bedside lamp with linen shade", "yellow", "ellipse", "imgLAMP"),
    "B0MUG00004": ("Crème brûlée ramekin set", "white", "rectangle", "imgMUG"),
    "B0RED00005": ("Red ball", "red", "ellipse", "imgRED"),
    "B0BLUE0006": ("Blue box", "blue", "rectangle", "imgBLUE"),
    "B0GREEN007": ("Green leaf", "green", "ellipse", "imgGREEN"),
    # Two listings of one product photo under two image ids (identical bytes): near-identical vectors.
    "B0TWIN0008": ("Fireman figure", "orange", "ellipse", "imgTWIN1"),
    "B0TWIN0009": ("Fireman figure", "orange", "ellipse", "imgTWIN2"),
    # Two colour variants that share one main image id.
    "B0SHARE010": ("Rain boots, size 38", "purple", "rectangle", "imgSHARED"),
    "B0SHARE011": ("Rain boots, size 40", "purple", "rectangle", "imgSHARED"),
}
TEST_IMAGE_URI = "pytorch-inference:2.6-cpu-py312"


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
    image_id: str = ""

    def __post_init__(self) -> None:
        self.image_id = self.image_id or f"img-{self.item_id}"


@dataclass
class World:
    settings: Settings
    products: list[Product]
    index_name: str
    artifact: Path
    s3: object = field(repr=False, default=None)
    artifact_version: str = ""

    def product(self, item_id: str) -> Product:
        return next(p for p in self.products if p.item_id == item_id)

    def searcher(self, settings: Settings | None = None) -> search.SearchClient:
        """A search client on this world (or `settings`) that encodes with the world's artifact in-process."""
        return search.SearchClient(settings or self.settings, encoder=search.LocalEncoder(self.settings, self.s3))

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


def titled_products() -> list[Product]:
    return [
        Product(
            item_id, title, "THINGS", "Shapes", f"{image_id[-4:].lower()}/{image_id}.jpg", jpeg(colour, shape), image_id
        )
        for item_id, (title, colour, shape, image_id) in TITLED.items()
    ]


def build_world(
    moto_url: str,
    opensearch_url: str,
    tmp_dir: Path,
    n: int = 16,
    model_cache_dir: str | None = None,
    *,
    titled: bool = False,
    artifact: Path | None = None,
) -> World:
    """`artifact`: the session's tiny model (the `tiny_artifact` fixture); built here only if not given."""
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
    if artifact is None:
        artifact = tmp_dir / "model.tar.gz"
        build_model_artifact(artifact, "tiny-clip", "", TINY)
    upload_model_artifact(settings, s3, artifact)
    version = read_artifact_version(s3, settings.artifact_uri)
    products = make_products(n) + (titled_products() if titled else [])
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
    body["mappings"]["_meta"]["artifact_version"] = version  # as catalogue_ingest records it
    index.create_index(client, name, body)
    docs = [
        index.document(
            {
                "item_id": p.item_id,
                "item_name": p.item_name,
                "image_id": p.image_id,
                "main_image_id": p.image_id,
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
    return World(settings, products, name, artifact, s3, version)


@contextmanager
def deployed(settings: Settings, encode_type: str, model_data_url: str | None = None) -> Iterator[str]:
    """A serverless endpoint as query_endpoints_deploy makes it (the pipeline's own requests), through the
    local SageMaker server at settings.sagemaker_endpoint_url; deleted on exit. Yields its name."""
    version = read_artifact_version(boto3_client("s3", settings), settings.artifact_uri)
    plan = endpoints.deploy_plan(settings, encode_type, TEST_IMAGE_URI, version)
    container = plan.model["PrimaryContainer"]
    container["ModelDataUrl"] = model_data_url or container["ModelDataUrl"]
    plan.model["ExecutionRoleArn"] = settings.sagemaker_role_arn or "arn:aws:iam::123456789012:role/r"
    sm = boto3_client("sagemaker", settings)
    sm.create_model(**plan.model)
    sm.create_endpoint_config(**plan.endpoint_config)
    sm.create_endpoint(**plan.endpoint)
    try:
        # Creating until its TorchServe container answers /ping, as on SageMaker.
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName=plan.endpoint_name, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
        )
        yield plan.endpoint_name
    finally:
        sm.delete_endpoint(EndpointName=plan.endpoint_name)
        sm.delete_endpoint_config(EndpointConfigName=plan.endpoint_config["EndpointConfigName"])
        sm.delete_model(ModelName=plan.model["ModelName"])
