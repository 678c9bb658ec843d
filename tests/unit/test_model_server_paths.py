"""A model server whose directory is too deep for TorchServe's worker socket is refused, naming why."""

from __future__ import annotations

import pytest

from catalogue_search_dev.model_server import MAX_SOCKET_PATH, ModelServerError, ModelServers


def test_a_container_directory_too_deep_for_the_worker_socket_is_refused_naming_the_limit(tmp_path):
    deep = tmp_path / ("d" * 120)
    servers = ModelServers(deep, s3_client=None, aws_env={})
    with pytest.raises(ModelServerError, match=f"past the {MAX_SOCKET_PATH} a Unix socket path may have"):
        servers._start(("etag", ()), "s3://bucket/model.tar.gz", tmp_path / "model.tar.gz", {})
    assert not deep.exists()  # refused before anything was created
