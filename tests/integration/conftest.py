"""The search tests' one shared catalogue: built once per session, removed at its end."""

from __future__ import annotations

import pytest
from search_world import World, build_world


@pytest.fixture(scope="session")
def search_world(tmp_path_factory, moto_url, opensearch_url, tiny_artifact) -> World:
    """Shape products, titled products, twins and a shared image id (search_world.py), in one index."""
    world = build_world(
        moto_url, opensearch_url, tmp_path_factory.mktemp("search-world"), titled=True, artifact=tiny_artifact
    )
    yield world
    world.cleanup()


@pytest.fixture(scope="session")
def searcher(search_world: World):
    """A search client on the shared catalogue, encoding in-process with its artifact."""
    return search_world.searcher()
