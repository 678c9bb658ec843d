"""A model server whose directory is too deep for TorchServe's worker socket is refused, naming why; the
ports a container is given."""

from __future__ import annotations

import socket

import pytest

from catalogue_search_dev import containers
from catalogue_search_dev.model_server import MAX_SOCKET_PATH, ModelServerError, ModelServers


def test_a_container_directory_too_deep_for_the_worker_socket_is_refused_naming_the_limit(tmp_path):
    deep = tmp_path / ("d" * 120)
    servers = ModelServers(deep, s3_client=None, aws_env={})
    with pytest.raises(ModelServerError, match=f"past the {MAX_SOCKET_PATH} a Unix socket path may have"):
        servers._start(("etag", ()), "s3://bucket/model.tar.gz", tmp_path / "model.tar.gz", {})
    assert not deep.exists()  # refused before anything was created


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range(monkeypatch, tmp_path):
    """Outgoing connections take their local ports from the ephemeral range: a port picked below it and
    closed again is not taken by one before its server binds it."""
    below = containers._ephemeral_start()
    ports = containers.free_ports(50)
    assert len(set(ports)) == 50
    if below - containers.LISTEN_PORTS_FROM >= 1000:
        assert all(containers.LISTEN_PORTS_FROM <= port < below for port in ports), (below, ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    # An ephemeral range that leaves no room below it: the kernel's choice, as before.
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text("20500\t60999\n")
    monkeypatch.setattr(containers, "EPHEMERAL_RANGE", narrow)
    assert all(port >= 20500 for port in containers.free_ports(5))
