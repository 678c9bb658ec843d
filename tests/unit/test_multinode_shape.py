"""The cluster stack's shape without starting it: its ports, its environment, the client's nodes, the parts."""

from __future__ import annotations

import json

import pytest

from catalogue_search import index, ingest
from catalogue_search_dev import cluster, localenv


@pytest.mark.parametrize("total, parts", [(0, 1), (1, 4), (7, 3), (10, 4), (1000, 4), (5, 5)])
def test_parts_cover_every_item_once_in_contiguous_ranges(total, parts):
    ranges = [ingest.part_range(total, part, parts) for part in range(parts)]
    assert [i for r in ranges for i in r] == list(range(total))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_a_part_outside_the_split_is_refused():
    with pytest.raises(ValueError, match="part 4 is not one of 0..3"):
        ingest.part_range(10, 4, 4)


def test_the_client_knows_every_node_of_a_comma_separated_url():
    hosts = index.parse_hosts("http://127.0.0.1:9220, http://127.0.0.1:9221,127.0.0.1:9222")
    assert hosts == [{"host": "127.0.0.1", "port": p} for p in (9220, 9221, 9222)]
    client = index.make_client("http://127.0.0.1:9220,http://127.0.0.1:9221")
    assert len(client.transport.connection_pool.connections) == 2
    with pytest.raises(ValueError, match="mix http and https"):
        index.parse_hosts("http://a:1,https://b:2")


@pytest.mark.parametrize("helper", range(9))
def test_each_helper_s_clusters_stay_within_its_own_ports(helper):
    """Helper N's OpenSearch base is 9200 + 10 N: its user and test clusters use base..base+6 and their
    transport ports +100, Redis 6379 + 10 N and the next: no two helpers (or clusters) share a port."""
    env = {"CATSEARCH_OPENSEARCH_URL": f"http://127.0.0.1:{9200 + 10 * helper}", "AIRFLOW__API__PORT": "8080"}
    user, test = cluster.Layout.for_user(env), cluster.Layout.for_tests(env)
    ports = [*user.http_ports, *test.http_ports, test.api_port]
    ports += [layout.transport_port(n) for layout in (user, test) for n in range(cluster.NODES)]
    assert len(set(ports)) == len(ports) == 13
    base = 9200 + 10 * helper
    assert all(base <= p < base + 10 or base + 100 <= p < base + 110 for p in ports)
    assert (user.redis_port, test.redis_port) == (6379 + 10 * helper, 6380 + 10 * helper)


def test_the_cluster_environment_names_every_node_and_the_celery_executor(monkeypatch, tmp_path):
    monkeypatch.setenv("CATSEARCH_HOME", str(tmp_path))
    env = {"CATSEARCH_OPENSEARCH_URL": "http://127.0.0.1:9220", "AIRFLOW__API__PORT": "8082"}
    light = localenv.local_environment({**env, "CATSEARCH_STACK": "light"})
    assert light["CATSEARCH_OPENSEARCH_URL"] == "http://127.0.0.1:9220"
    assert "AIRFLOW__CORE__EXECUTOR" not in light and "CATSEARCH_SPLIT_PARTS" not in light
    got = localenv.local_environment({**env, "CATSEARCH_STACK": "cluster"})
    nodes = "http://127.0.0.1:9220,http://127.0.0.1:9221,http://127.0.0.1:9222"
    assert got["CATSEARCH_OPENSEARCH_URL"] == nodes
    assert json.loads(got["AIRFLOW_CONN_OPENSEARCH_DEFAULT"])["extra"] == {"urls": nodes}
    assert got["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert got["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6399/0"
    assert got["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8082/execution/"
    assert (got["CATSEARCH_INDEX_REPLICAS"], got["CATSEARCH_SPLIT_PARTS"]) == ("1", "4")
    assert not {"AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"} & set(got)  # given at start only


def test_up_cluster_is_remembered_until_down(monkeypatch, tmp_path):
    monkeypatch.setenv("CATSEARCH_HOME", str(tmp_path))
    monkeypatch.delenv("CATSEARCH_STACK", raising=False)
    assert not cluster.enabled()
    cluster.mode_file().parent.mkdir(parents=True)
    cluster.mode_file().write_text("cluster\n")
    assert cluster.enabled()
    assert not cluster.enabled({"CATSEARCH_STACK": "light"})  # the variable wins
