"""What a test needs, and where its by-products go: the two lanes of `./dev test`.

- `kind_markers`: the pytest markers of a test from its directory, its file
  name and its fixtures (tests/conftest.py applies them to every test;
  pyproject.toml registers them). `./dev test --quick` runs `unit and not slow`.
- `quick_shards`: the quick lane's files in two groups of about equal cost,
  which `./dev test --quick` runs side by side (one per core).
- `test_workers`: how many pytest processes the full run uses side by side;
  `run_rank`: the order they are handed the test files, heaviest kinds first.
- `screenshot_path`: build/screenshots/, or docs/ when asked to update them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# `./dev test --quick`: these markers, in these folders unless paths are given, fewer fuzz examples (150 in full).
QUICK_MARKS = "unit and not slow"
QUICK_PATHS = ["tests/unit", "tests/dags", "tests/deploy"]
QUICK_FUZZ_EXAMPLES = "30"
# A test file that loads the model (torch and open_clip, the lane's largest import, and the handler's tests).
LOADS_THE_MODEL = re.compile(
    r"tiny_model_dir|tiny_artifact|build_model_artifact|write_model_dir|^import torch|^from catalogue_search\.handler ",
    re.MULTILINE,
)
# Set to 1 (`./dev test --update-docs`) to write the tests' screenshots over the docs' tracked ones.
UPDATE_DOCS_ENV = "CATSEARCH_UPDATE_DOCS"


DIRECTORY_MARKERS = {
    "unit": {"unit"},
    "dags": {"unit"},
    "deploy": {"unit"},
    "integration": {"stack"},
    "e2e": {"e2e", "stack"},
    "system": {"aws"},
    "cluster": {"cluster", "stack"},
}
FILE_NAME_MARKERS = {"browser": {"browser", "stack"}, "cluster": {"cluster", "stack"}, "secure": {"secure", "stack"}}
STACK_FIXTURES = {"moto_url", "opensearch_url", "sagemaker_url"}  # every fixture that needs a server asks one of these
NOT_UNIT = {"stack", "e2e", "browser", "cluster", "secure", "aws"}


def kind_markers(relative: Path, fixtures: set[str], explicit: set[str]) -> set[str]:
    """The markers of a test at `relative` (to tests/) that uses `fixtures` and carries `explicit` markers.

    A test in tests/unit that needs a server (by its fixtures, or by a marker it
    carries) is a `stack` test, not a `unit` one, so the quick lane never needs one.
    """
    marks = set(DIRECTORY_MARKERS.get(relative.parts[0] if len(relative.parts) > 1 else "", set()))
    for word, extra in FILE_NAME_MARKERS.items():
        if word in relative.name:
            marks |= extra
    if fixtures & STACK_FIXTURES:
        marks.add("stack")
    marks |= explicit & NOT_UNIT
    if marks & NOT_UNIT:
        marks.discard("unit")
    return marks


# The order the full run hands test files to its processes, longest kinds first: a DAG run costs about a
# minute, a stack test seconds, a unit test milliseconds. With the heaviest files started first the last
# ones to end are short, and the processes end together (pytest-xdist would otherwise order files by their
# number of tests, which puts the e2e files, with few tests each, last). A unit test file with a `slow` test
# (checkov's scan, with its env built on a fresh machine; the full-size model) comes before the other unit files.
RUN_ORDER = ("e2e", "secure", "cluster", "browser", "stack", "slow")


def run_rank(markers: set[str]) -> int:
    """Where a test with `markers` comes in the full run (`RUN_ORDER`; the unit tests after all of them)."""
    return next((rank for rank, kind in enumerate(RUN_ORDER) if kind in markers), len(RUN_ORDER))


# `./dev test` without test paths: this many pytest processes (pytest-xdist, a test file each at a time), at
# most one per core. Most of a stack test's time is spent waiting on its servers (Airflow runs, model servers,
# moto), so two processes on two cores keep both busy. CATSEARCH_TEST_WORKERS overrides it (1: one process).
WORKERS_ENV = "CATSEARCH_TEST_WORKERS"
DEFAULT_WORKERS = 2


def names_tests(args: list[str]) -> bool:
    """Whether pytest `args` name test files or tests (paths relative to the repository root)."""
    from catalogue_search_dev.localenv import repo_root

    return any(not a.startswith("-") and (repo_root() / a.split("::")[0]).exists() for a in args)


def test_workers(args: list[str], cpus: int, env: dict[str, str] | os._Environ) -> int:
    """The number of pytest processes for `./dev test args`: 1 when the args name tests or choose `-n`
    themselves (a targeted run keeps one readable log), else the setting, or 2 (at most one per core)."""
    if any(a == "-n" or a.startswith("--numprocesses") or a.startswith("-n") and a[2:].isdigit() for a in args):
        return 1
    if names_tests(args):
        return 1
    from catalogue_search_dev.localenv import count_setting

    try:
        return count_setting(env, WORKERS_ENV, max(1, min(DEFAULT_WORKERS, cpus)), "processes")
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def screenshot_path(name: str) -> Path:
    """Where a test saves a screenshot: build/screenshots/ (ignored by git), or docs/ when asked to update them."""
    from catalogue_search_dev.localenv import repo_root

    folder = repo_root() / ("docs" if os.environ.get(UPDATE_DOCS_ENV) == "1" else "build/screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def quick_shards(repo: Path) -> list[list[str]]:
    """The quick lane's test files in two groups, run side by side: those that load the model, and the rest
    (Airflow's DAG checks, the catalogue, the templates). Each pays only its own imports; the costs are about
    even (measured: about 28 CPU seconds each on a 2-core machine). A file in the wrong group only costs time."""
    files = sorted(path for folder in QUICK_PATHS for path in (repo / folder).rglob("test_*.py"))
    model = [path for path in files if LOADS_THE_MODEL.search(path.read_text(errors="replace"))]
    rest = [path for path in files if path not in model]
    return [[str(path.relative_to(repo)) for path in group] for group in (model, rest) if group]
