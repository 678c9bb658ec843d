"""docs/aws.md names only what exists: settings, stack outputs and parameters, files, DAGs, CLI options."""

from __future__ import annotations

import re
import subprocess
import sys

import aws_template as t

from catalogue_search.settings import Settings

DOC = t.REPO / "docs" / "aws.md"
# Variables the guide names that are not settings, and why.
NOT_SETTINGS = {
    "CATSEARCH_SYSTEM_TEST": "the system test's opt-in (tests/system/test_catalogue_search_aws.py)",
    "CATSEARCH_SYSTEM_TEST_ROLE_ARN": "the role the system test runs the pipeline as (example_catalogue_search_aws.py)",
}


def _doc() -> str:
    return DOC.read_text()


def test_every_catsearch_variable_in_the_guide_is_a_setting():
    named = set(re.findall(r"\bCATSEARCH_[A-Z0-9_]*[A-Z0-9]\b", _doc()))
    assert named, "the guide names no setting"
    unknown = named - Settings.env_names() - set(NOT_SETTINGS)
    assert not unknown, f"docs/aws.md names variables that settings.py does not read: {sorted(unknown)}"
    for name in NOT_SETTINGS:
        assert (
            name
            in (t.REPO / "tests" / "system" / "test_catalogue_search_aws.py").read_text()
            + (t.REPO / "tests" / "system" / "example_catalogue_search_aws.py").read_text()
        )
    assert "README" not in named


def test_the_outputs_table_names_real_outputs_and_their_settings():
    template = t.load()
    rows = [line for line in _doc().splitlines() if line.startswith("| `") and "CATSEARCH_" in line]
    assert len(rows) >= 6
    for row in rows:
        first, second = row.split("|")[1:3]
        outputs = re.findall(r"`([A-Za-z]+)`", first)
        assert outputs and all(o in template["Outputs"] for o in outputs), row
        for output, env in zip(outputs, re.findall(r"`(CATSEARCH_[A-Z_]+)", second)):
            assert (
                str(template["Outputs"][output]["Description"]).startswith(env + ":")
                or str(template["Outputs"][output]["Description"]) == env
            ), row


def test_parameters_and_files_the_guide_names_exist():
    doc = _doc()
    template = t.load()
    for name in re.findall(r"`([A-Z][A-Za-z]+)(?:=[^`]*)?`", doc):
        if name in {"ALL_DONE", "Resource", "DeletionPolicy", "Retain", "StartupScriptS3Path", "TEXT", "IMAGE"}:
            continue
        assert name in template["Parameters"] or name in template["Outputs"], (
            f"`{name}` is neither a parameter nor an output"
        )
    for path in re.findall(r"`((?:deploy|tests|include|dags|plugins|docs)/[^`\s]*)`", doc):
        if path.startswith("dags/catalogue_search") or path.startswith("dags/.airflowignore"):
            continue  # where the guide says to upload things on MWAA
        assert (t.REPO / path.replace("*.py", "")).exists(), path
    for dag_id in re.findall(r"`((?:catalogue_ingest|query_endpoints_\w+))`", doc):
        assert re.search(rf'dag_id="{dag_id}"', "".join(p.read_text() for p in (t.REPO / "dags").glob("*.py"))), dag_id


def test_the_guides_commands_take_the_options_it_gives():
    doc = _doc()
    commands = {
        "python deploy/aws/stack_env.py": [str(t.REPO / "deploy" / "aws" / "stack_env.py")],
        "python deploy/aws/opensearch_roles.py": [str(t.REPO / "deploy" / "aws" / "opensearch_roles.py")],
        "python -m catalogue_search_dev.model_build build": ["-m", "catalogue_search_dev.model_build", "build"],
        "python -m catalogue_search.cli search": ["-m", "catalogue_search.cli", "search"],
    }
    for command, argv in commands.items():
        lines = re.findall(rf"{re.escape(command)}([^\n]*)", doc)
        assert lines, f"the guide no longer runs {command}"
        help_text = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, check=True).stdout
        for line in lines:
            for option in re.findall(r"\s(--?[a-z][a-z-]*)", line.split("#")[0]):
                assert option in help_text, f"{command} has no {option}"
