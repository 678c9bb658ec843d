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
        ("e2e/test_catalogue_lifecycle.py", {"moto_url"}, set(), {"stack", "e2e"}),
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


def test_the_quick_lane_splits_its_files_once_each_by_what_they_load():
    from catalogue_search_dev.localenv import repo_root

    repo = repo_root()
    model, rest = testkinds.quick_shards(repo)
    every = sorted(str(p.relative_to(repo)) for d in testkinds.QUICK_PATHS for p in (repo / d).rglob("test_*.py"))
    assert sorted(model + rest) == every and not set(model) & set(rest)
    assert {"tests/unit/test_inference.py", "tests/unit/test_handler_fuzz.py"} <= set(model)
    assert {"tests/dags/test_dag_integrity.py", "tests/unit/test_testkinds.py"} <= set(rest)


@pytest.mark.parametrize(
    ("args", "cpus", "env", "expected"),
    [
        ([], 2, {}, 2),  # the full run: one process per core, two at most
        ([], 16, {}, 2),
        ([], 1, {}, 1),
        (["-m", "cluster"], 2, {}, 2),
        (["-q", "--durations=20"], 2, {}, 2),
        (["tests/unit/test_core.py"], 2, {}, 1),  # a targeted run keeps one process and one log
        (["tests/unit/test_core.py::test_x"], 2, {}, 1),
        (["-n", "4"], 2, {}, 1),  # the caller chose: xdist's own option stands
        (["-n4"], 2, {}, 1),
        ([], 2, {"CATSEARCH_TEST_WORKERS": "1"}, 1),
        ([], 2, {"CATSEARCH_TEST_WORKERS": "3"}, 3),
    ],
)
def test_the_full_run_uses_a_process_per_core_and_a_targeted_run_one(args, cpus, env, expected):
    assert testkinds.test_workers(args, cpus, env) == expected


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_a_worker_count_that_is_not_a_whole_number_is_refused(bad):
    with pytest.raises(SystemExit, match="CATSEARCH_TEST_WORKERS"):
        testkinds.test_workers([], 2, {"CATSEARCH_TEST_WORKERS": bad})


def test_the_full_run_hands_out_the_heaviest_kinds_first():
    """DAG runs first, then the secured stack, the cluster, the browser and the other stack tests, the slow
    unit tests, the other unit tests last: each test ranked by the markers `kind_markers` gives it."""
    cases = [
        ("unit/test_quality_metrics.py", set()),
        ("integration/test_duplicates.py", {"opensearch_url"}),
        ("integration/test_search_page_browser.py", set()),
        ("deploy/test_secured_opensearch.py", set()),
        ("e2e/test_catalogue_lifecycle.py", set()),
    ]
    ranks = [testkinds.run_rank(testkinds.kind_markers(Path(path), fixtures, set())) for path, fixtures in cases]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(cases)
    assert testkinds.run_rank({"unit", "slow"}) < testkinds.run_rank({"unit"}) == len(testkinds.RUN_ORDER)
    assert testkinds.run_rank({"stack"}) < testkinds.run_rank({"unit", "slow"})
