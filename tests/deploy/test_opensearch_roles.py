"""deploy/aws/opensearch_roles.py: the FGAC roles cover the indices the ingest creates, and readers only read."""

from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path

from catalogue_search import index
from catalogue_search.settings import Settings

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("opensearch_roles", REPO / "deploy" / "aws" / "opensearch_roles.py")
roles_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roles_module)

WRITER_ARN = "arn:aws:iam::123456789012:role/service-role/mwaa-catalogue-search"
READER_ARN = "arn:aws:iam::123456789012:role/catalogue-search-search-us-east-1"


def _patterns(role: dict, action: str) -> list[str]:
    return [
        p for perm in role["index_permissions"] if action in perm["allowed_actions"] for p in perm["index_patterns"]
    ]


def test_writer_owns_every_index_of_the_alias_and_nothing_else():
    s = Settings()
    role = roles_module.roles(s.index_alias)[roles_module.WRITER]
    owned = _patterns(role, "indices_all")
    created = index.index_name(s.index_alias, s.model_slug, "scheduled__2026-11-23T00:00:00+00:00")
    for name in (created, s.index_alias):
        assert any(fnmatch.fnmatchcase(name, p) for p in owned), name
    assert not any(fnmatch.fnmatchcase("orders-2026", p) for p in owned)
    # On other indices: only the two lookups the security plugin checks against every index.
    beyond = [perm for perm in role["index_permissions"] if perm["index_patterns"] != [f"{s.index_alias}*"]]
    assert beyond == [
        {"index_patterns": ["*"], "allowed_actions": ["indices:admin/aliases/get", "indices:admin/analyze"]}
    ]
    assert "cluster_monitor" not in role["cluster_permissions"]


def test_reader_only_reads_the_alias():
    role = roles_module.roles("products")[roles_module.READER]
    (perm,) = role["index_permissions"]
    assert perm["index_patterns"] == ["products*"]
    assert all(a == "read" or a.endswith("/get") for a in perm["allowed_actions"])
    assert role["cluster_permissions"] == []


def test_requests_create_both_roles_then_map_the_backend_roles():
    calls = roles_module.requests("products", WRITER_ARN, READER_ARN)
    assert [(m, p) for m, p, _ in calls] == [
        ("PUT", "/_plugins/_security/api/roles/catalogue_search_writer"),
        ("PUT", "/_plugins/_security/api/roles/catalogue_search_reader"),
        ("PUT", "/_plugins/_security/api/rolesmapping/catalogue_search_writer"),
        ("PUT", "/_plugins/_security/api/rolesmapping/catalogue_search_reader"),
    ]
    # An assumed-role session carries the role's ARN without its path: both forms are mapped.
    assert calls[2][2] == {"backend_roles": [WRITER_ARN, "arn:aws:iam::123456789012:role/mwaa-catalogue-search"]}
    assert calls[3][2] == {"backend_roles": [READER_ARN]}
