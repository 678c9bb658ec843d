"""The quality evaluation against the real OpenSearch node and moto, with the tiny model's real handler.

Part of the sample catalogue is indexed in-process (no DAG); two products are
made to share one main image id, as ABO lists colour variants. The evaluation's
batched queries must rank exactly as the search client does; a random-weight
index is measured at chance, recorded, and refused without the opt-in.
"""

from __future__ import annotations

import json

import pytest

from catalogue_search import index, quality, quality_gate
from catalogue_search.contract import vectors_close
from catalogue_search.errors import PermanentError
from catalogue_search.quality_queries import CHECKED_TITLES, QueryRunner, QueryVectors, title_encoder
from catalogue_search.search import LocalEncoder, SearchClient
from catalogue_search.settings import Settings
from catalogue_search_dev.model_archive import archive_version, upload_model_artifact

CONTRACT_KEYS = {
    "model",
    "artifact_version",
    "random_weights",
    "sample_size",
    "seed",
    "chance",
    "modes",
    "per_product_type",
    "duplicates",
}


@pytest.fixture(scope="module")
def indexed(tiny_artifact, moto_url, opensearch_url, tmp_path_factory):
    """(settings, s3, client, index name, products): 120 sample products, two of them sharing an image id."""
    import boto3

    from catalogue_search_dev import sample_index, testenv

    token = testenv.unique_name_part()
    settings = Settings.from_env(
        aws_endpoint_url=moto_url,
        opensearch_url=opensearch_url,
        bucket=f"quality-{token}",
        index_alias=f"quality-products-{token}",
        model_name="tiny-clip",
        model_pretrained="",
        allow_random_weights=False,
    )
    s3 = boto3.client("s3", **settings.boto3_kwargs())
    s3.create_bucket(Bucket=settings.bucket)
    tmp = tmp_path_factory.mktemp("quality")
    artifact = tiny_artifact
    upload_model_artifact(settings, s3, artifact)  # no random-weights metadata: counts as random
    layout = sample_index.layout_dir()
    products = sample_index.sample_products(layout)[:120]
    twin = products[1]
    products[1] = {**twin, **{k: products[0][k] for k in ("image_id", "main_image_id", "path")}}
    encoded = sample_index.encode(layout, products, artifact, cache_dir=tmp / "cache")
    client = index.client_from_settings(settings)
    name = f"{settings.index_alias}-v1"
    sample_index.load(client, settings, name, f"{settings.index_alias}-loaded", encoded)
    meta = client.indices.get_mapping(index=name)[name]["mappings"]["_meta"]
    client.indices.put_mapping(index=name, body={"_meta": {**meta, "artifact_version": archive_version(artifact)}})
    yield settings, s3, client, name, encoded.products
    client.indices.delete(index=name, ignore_unavailable=True)


def test_the_evaluation_ranks_exactly_as_the_search_client(indexed):
    settings, s3, client, name, products = indexed
    runner = QueryRunner(settings, client, name, quality.DEPTH)
    searcher = SearchClient(settings.replace(index_alias=name), client=client, encoder=LocalEncoder(settings, s3))
    handler, encode = title_encoder(settings, s3, searcher.index_artifact_version())
    chosen = products[:2] + products[40:44]  # the two that share an image, and four others
    for doc, vector in zip(chosen, encode([p["item_name"].strip() for p in chosen])):
        asked = runner.ask(doc, vector, duplicates=True)
        for mode in quality.MODES:
            hits = searcher.search_text(doc["item_name"], quality.DEPTH, mode=mode)
            assert asked[mode] == [h.item_id for h in hits], (mode, doc["item_name"])
        alike = searcher.more_like_this(doc["item_id"], quality.DEPTH)
        assert asked["duplicates"] == [h.item_id for h in alike]
        assert doc["item_id"] in asked["name"]  # a title finds its own title vector


def test_a_random_weight_index_is_measured_at_chance_recorded_and_refused_without_the_opt_in(indexed):
    settings, s3, client, name, products = indexed
    before = client.indices.get_mapping(index=name)[name]["mappings"]["_meta"]
    with pytest.raises(PermanentError, match="random weights: quality is chance level") as refused:
        quality_gate.evaluate_index(
            settings, s3, client, index_name=name, alias=settings.index_alias, report_key="r/q.json"
        )
    assert "CATSEARCH_ALLOW_RANDOM_WEIGHTS" in str(refused.value)
    assert not client.indices.exists_alias(name=settings.index_alias)  # nothing was published

    meta = client.indices.get_mapping(index=name)[name]["mappings"]["_meta"]
    assert {k: meta[k] for k in before} == before  # alias, run, artifact version kept
    assert meta["weights"] == {"random": True, "pretrained": None}
    record = meta["quality"]
    assert CONTRACT_KEYS <= set(record)
    assert record["random_weights"] is True and record["note"] == quality.RANDOM_WEIGHTS_NOTE
    assert record["sample_size"] == record["products"] == len(products)  # fewer than 1,000: all of them
    assert record["artifact_version"] == before["artifact_version"] and record["model"] == "tiny-clip"
    assert record["chance"] == quality.chance(len(products))
    image = record["modes"]["image"]["recall@10"]
    assert abs(image - record["chance"]["recall@10"]) <= 4 * quality.margin(
        record["chance"]["recall@10"], len(products)
    )
    assert record["modes"]["name"]["recall@10"] == 1.0  # the title is in the index as its own title vector
    assert set(record["per_product_type"]) == {p.get("product_type") or quality.NO_TYPE for p in products}
    assert sum(record["type_counts"].values()) == len(products)
    # the two products listed with one image: each finds the other by its image, itself left out
    assert record["duplicates"]["queries"] == 2 and record["duplicates"]["recall@10"] == 1.0

    report = json.loads(s3.get_object(Bucket=settings.bucket, Key="r/q.json")["Body"].read())
    assert report["quality"] == record and report["weights"] == meta["weights"]
    assert report["gate"]["reason"].startswith("no index is served yet")

    opted_in = settings.replace(allow_random_weights=True)
    summary = quality_gate.evaluate_index(
        opted_in, s3, client, index_name=name, alias=settings.index_alias, report_key="r/q2.json"
    )
    assert summary["random_weights"] is True and summary["recall@10"] == image  # the same sample, the same figures

    # a rerun once the index serves: reported, not compared with itself
    client.indices.update_aliases(body={"actions": [{"add": {"index": name, "alias": settings.index_alias}}]})
    again = quality_gate.evaluate_index(
        opted_in, s3, client, index_name=name, alias=settings.index_alias, report_key="r/q3.json"
    )
    assert again["gate"] == f"index {name} serves alias {settings.index_alias} already (a rerun): reported only"
    client.indices.update_aliases(body={"actions": [{"remove": {"index": name, "alias": settings.index_alias}}]})


def test_dev_eval_prints_the_recorded_figures_compares_and_measures_again(indexed, monkeypatch, capsys):
    from catalogue_search_dev import quality_eval

    settings, s3, client, name, products = indexed
    for key, value in {
        "CATSEARCH_BUCKET": settings.bucket,
        "CATSEARCH_MODEL_NAME": settings.model_name,
        "CATSEARCH_OPENSEARCH_URL": settings.opensearch_url,
        "CATSEARCH_AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "CATSEARCH_INDEX_ALIAS": f"{settings.index_alias}-loaded",  # the alias sample_index.load set
    }.items():
        monkeypatch.setenv(key, value)
    recorded = client.indices.get_mapping(index=name)[name]["mappings"]["_meta"]["quality"]
    assert quality_eval.main([]) == 0
    table = capsys.readouterr().out
    assert name in table and quality.RANDOM_WEIGHTS_NOTE in table
    assert f"{recorded['modes']['name']['recall@10']:.4f}" in table
    assert quality_eval.main(["--compare", name]) == 0
    assert "compared with" in capsys.readouterr().out
    assert quality_eval.main(["--measure", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["modes"] == recorded["modes"] and again["sample_size"] == len(products)
    assert quality_eval.main(["--compare", "no-such-index"]) == 1
    assert "no index or alias 'no-such-index'" in capsys.readouterr().err


def test_query_vectors_are_the_models_checked_against_the_index_title_vectors(indexed):
    settings, s3, client, name, products = indexed
    version = client.indices.get_mapping(index=name)[name]["mappings"]["_meta"]["artifact_version"]
    _, encode = title_encoder(settings, s3, version)
    docs = products[:60]
    vectors = QueryVectors(client, name, encode)
    got = vectors(docs)
    assert (vectors.encoded, vectors.checked, vectors.stored) == (CHECKED_TITLES, CHECKED_TITLES, 60 - CHECKED_TITLES)
    everything = QueryVectors(client, name, encode, encode_all=True)
    assert vectors_close(everything(docs), got)  # the model's own vectors, to the contract's tolerance
    assert everything.encoded == 60 and everything.stored == 0

    # a model that encodes titles otherwise than the index's title vectors: every title is encoded
    def other_text(titles):
        return encode([f"not {t}" for t in titles])

    fallback = QueryVectors(client, name, other_text)
    assert vectors_close(fallback(docs), other_text([d["item_name"].strip() for d in docs]))
    assert fallback.encoded == 60 and fallback.stored == 0


def test_an_index_of_vectors_of_another_dimension_is_a_clear_error(indexed):
    """Vectors that did not come from the artifact's model (another width) cannot be measured: said, not crashed."""
    settings, s3, client, name, products = indexed
    meta = client.indices.get_mapping(index=name)[name]["mappings"]["_meta"]
    other = f"{name}-wide"
    body = index.index_body(settings, alias=settings.index_alias, dimension=64, run_key="r")
    body["mappings"]["_meta"] = {**body["mappings"].get("_meta", {}), "artifact_version": meta["artifact_version"]}
    client.indices.create(index=other, body=body)
    try:
        with pytest.raises(PermanentError, match="holds 64-d vectors but the TEXT model .* encodes 32-d ones"):
            quality_gate.measure(settings, s3, client, other)
    finally:
        client.indices.delete(index=other, ignore_unavailable=True)
