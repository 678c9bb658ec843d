"""What a test needs, and where its by-products go: the two lanes of `./dev test`.

- `kind_markers`: the pytest markers of a test from its directory, its file
  name and its fixtures (tests/conftest.py applies them to every test;
  pyproject.toml registers them). `./dev test --quick` runs `unit and not slow`.
- `screenshot_path`: build/screenshots/, or docs/ when asked to update them.
"""

from __future__ import annotations

import os
from pathlib import Path

# `./dev test --quick`: these markers, in these folders unless paths are given, fewer fuzz examples (150 in full).
QUICK_MARKS = "unit and not slow"
QUICK_PATHS = ["tests/unit", "tests/dags", "tests/deploy"]
QUICK_FUZZ_EXAMPLES = "30"
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


def screenshot_path(name: str) -> Path:
    """Where a test saves a screenshot: build/screenshots/ (ignored by git), or docs/ when asked to update them."""
    from catalogue_search_dev.localenv import repo_root

    folder = repo_root() / ("docs" if os.environ.get(UPDATE_DOCS_ENV) == "1" else "build/screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
