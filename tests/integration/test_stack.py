"""`./dev stack`: the local SageMaker server is started, reused, shown and stopped by pid.

On a free port with a private CATSEARCH_HOME, so the shared stack is never touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import boto3

from catalogue_search_dev import containers, stack


def _free_port() -> int:
    return containers.free_ports(1)[0]  # below the ephemeral range: no client's connection takes it meanwhile


def test_stack_starts_reuses_shows_and_stops_the_local_sagemaker(tmp_path, monkeypatch, moto_url):
    monkeypatch.setenv("CATSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("CATSEARCH_SAGEMAKER_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    services = {service.name: service for service in stack.services()}
    sagemaker, moto = services["sagemaker"], services["moto"]
    assert not sagemaker.healthy()

    assert stack.start_sagemaker(sagemaker, moto) == "started"
    try:
        assert stack.start_sagemaker(sagemaker, moto) == "reused"
        shown = stack.status()["sagemaker"]
        assert shown.startswith(f"healthy at {sagemaker.url} (started by ./dev, pid ")
        # a SageMaker call through it reaches moto's control plane
        client = boto3.client("sagemaker", endpoint_url=sagemaker.url, region_name="us-east-1")
        assert "Models" in client.list_models(MaxResults=1)
        assert sagemaker.log_file.read_text().count("local SageMaker on") == 1
    finally:
        stopped = stack.stop(sagemaker)
    assert stopped.startswith("stopped pid ")
    assert not sagemaker.healthy()
    assert stack.stop(sagemaker) == "not running (nothing started by ./dev)"


def test_a_service_log_past_its_size_is_kept_once_and_started_afresh(tmp_path, monkeypatch, moto_url):
    """moto logs every request: a log past `LOG_KEEP_BYTES` at a start becomes <name>.log.1 (the one before
    goes), so the logs of a user's stack stay bounded."""
    monkeypatch.setenv("CATSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("CATSEARCH_SAGEMAKER_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    services = {service.name: service for service in stack.services()}
    sagemaker, moto = services["sagemaker"], services["moto"]
    sagemaker.log_file.parent.mkdir(parents=True, exist_ok=True)
    old = sagemaker.log_file.with_name(sagemaker.log_file.name + ".1")
    old.write_text("the log before the last\n")
    sagemaker.log_file.write_text("the last log\n" + "x" * 200)
    monkeypatch.setattr(stack, "LOG_KEEP_BYTES", 100)
    assert stack.start_sagemaker(sagemaker, moto) == "started"
    try:
        text = sagemaker.log_file.read_text()
        assert "the last log" not in text and text.count("local SageMaker on") == 1
        assert old.read_text().startswith("the last log\n")
        assert stack._log_tail(sagemaker.log_file, 100) == text[-100:]
    finally:
        stack.stop(sagemaker)


def test_when_the_stack_does_not_come_up_dev_test_stops_its_pytest_and_says_why(moto_url, unique):
    """`./dev test` starts pytest while the stack comes up (testenv.StackGate); a stack that fails ends both."""
    from catalogue_search_dev.localenv import repo_root

    env = {**os.environ, "CATSEARCH_OPENSEARCH_URL": "http://127.0.0.2:9"}  # loopback, but not where a node starts
    marker = f"no_test_named_{unique}"  # in the pytest processes' command lines
    result = subprocess.run(
        [sys.executable, "-m", "catalogue_search_dev.dev", "test", "tests/unit/test_testkinds.py", "-k", marker],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the stack did not come up, so no test ran: the local stack only starts services on loopback" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not re.search(r"\d+ (passed|failed|deselected)", result.stdout), result.stdout  # no test ran
    deadline = time.monotonic() + 30
    while _command_lines_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _command_lines_with(marker) == []


def _command_lines_with(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line)
    return found
