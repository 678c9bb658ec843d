"""Production code and local tooling stay apart, and settings fail closed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from catalogue_search.settings import REQUIRED, Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = [REPO / "include", REPO / "dags", REPO / "plugins", REPO / "inference_code"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    sorted(p for root in PRODUCTION for p in root.rglob("*.py")),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_production_code_never_imports_the_local_tooling(path):
    tooling = sorted(name for name in _imports(path) if name.split(".")[0] == "catalogue_search_dev")
    assert not tooling, f"{path.relative_to(REPO)} imports local tooling: {tooling}"


def test_the_import_walk_sees_a_tooling_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from catalogue_search_dev.localenv import cache_home\n")
    assert "catalogue_search_dev.localenv" in _imports(bad)


def test_settings_have_no_local_defaults():
    bare = Settings.from_env({})
    assert bare.aws_endpoint_url == ""
    assert set(bare.missing()) == {f"CATSEARCH_{name.upper()}" for name in REQUIRED}


def test_one_missing_setting_is_named_in_one_message():
    env = {
        "CATSEARCH_BUCKET": "b",
        "CATSEARCH_SAGEMAKER_ROLE_ARN": "arn:aws:iam::1:role/r",
        "CATSEARCH_QUERY_ENCODER": "endpoint",
    }
    with pytest.raises(SettingsError, match="CATSEARCH_OPENSEARCH_URL is not set") as err:
        Settings.from_env(env).check()
    assert "CATSEARCH_BUCKET" not in str(err.value)
    Settings.from_env({**env, "CATSEARCH_OPENSEARCH_URL": "https://search.example:443"}).check()


def test_an_unknown_backend_is_refused():
    env = {name: "x" for name in (f"CATSEARCH_{n.upper()}" for n in REQUIRED)}
    with pytest.raises(SettingsError, match="CATSEARCH_QUERY_ENCODER='x' is not one of local, endpoint"):
        Settings.from_env(env).check()
