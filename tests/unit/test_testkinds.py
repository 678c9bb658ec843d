"""The two lanes of `./dev test`: which markers a test gets, where screenshots go."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalogue_search_dev import testkinds


@pytest.mark.parametrize(
    ("path", "fixtures", "explicit", "expected"),
    [
        ("unit/test_core.py", set(), set(), {"unit"}),
        ("dags/test_dag_integrity.py", set(), set(), {"unit"}),
        ("deploy/test_aws_template.py", set(), set(), {"unit"}),
        # in tests/unit but needs moto (through `settings`): not in the quick lane
        ("unit/test_model_artifact.py", {"settings", "moto_url", "sagemaker_url"}, set(), {"stack"}),
        ("integration/test_search.py", {"opensearch_url"}, set(), {"stack"}),
        ("integration/test_search_page_browser.py", {"moto_url"}, set(), {"stack", "browser"}),
        ("e2e/test_catalogue_ingest_dag.py", {"moto_url"}, set(), {"stack", "e2e"}),
        ("integration/test_secure_opensearch.py", set(), set(), {"stack", "secure"}),
        ("unit/test_anything.py", set(), {"cluster"}, {"cluster"}),
        ("unit/test_inference.py", set(), {"slow"}, {"unit"}),  # slow stays a unit test, run in full
        ("system/test_catalogue_search_aws.py", set(), set(), {"aws"}),
    ],
)
def test_markers_follow_directory_file_name_and_fixtures(path, fixtures, explicit, expected):
    assert testkinds.kind_markers(Path(path), fixtures, explicit) == expected


def test_screenshots_go_to_the_build_folder_unless_the_docs_are_updated(monkeypatch, tmp_path):
    monkeypatch.setenv("CATSEARCH_REPO", str(tmp_path))
    monkeypatch.delenv(testkinds.UPDATE_DOCS_ENV, raising=False)
    assert testkinds.screenshot_path("page.png") == tmp_path / "build" / "screenshots" / "page.png"
    monkeypatch.setenv(testkinds.UPDATE_DOCS_ENV, "1")
    assert testkinds.screenshot_path("page.png") == tmp_path / "docs" / "page.png"
