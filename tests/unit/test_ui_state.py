"""`./dev stack status` on Airflow: the record of `./dev ui`, checked against /proc (processes, listeners)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from catalogue_search_dev import procs, ui_state


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CATSEARCH_HOME", str(tmp_path))
    return tmp_path


def _listening(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family)
    sock.bind((host, 0))
    sock.listen()
    return sock


def test_listeners_and_their_owner_are_read_from_proc():
    with _listening() as v4:
        port = v4.getsockname()[1]
        assert procs.port_holders(port) == [("127.0.0.1", os.getpid())]
        assert ("127.0.0.1", port, os.getpid()) in procs.listening([os.getpid()])
    assert procs.listeners(port) == []
    if socket.has_ipv6:
        try:
            v6 = _listening(socket.AF_INET6, "::1")
        except OSError:
            return  # no IPv6 loopback here
        with v6:
            assert procs.port_holders(v6.getsockname()[1]) == [("::1", os.getpid())]


def test_no_record_and_a_free_port_is_not_running(home, monkeypatch):
    with _listening() as sock:
        port = sock.getsockname()[1]
    monkeypatch.setenv("AIRFLOW__API__PORT", str(port))
    assert ui_state.status() == f"not running (no Airflow started by ./dev ui; port {port} is free)"


def test_a_port_held_by_another_program_is_named(home, monkeypatch):
    with _listening() as sock:
        port = sock.getsockname()[1]
        monkeypatch.setenv("AIRFLOW__API__PORT", str(port))
        shown = ui_state.status()
    assert shown.startswith(f"not started by ./dev ui, but port {port} is held (127.0.0.1) by pid {os.getpid()} (")


def test_a_stale_record_with_nothing_left_is_not_running(home, monkeypatch):
    with _listening() as sock:
        port = sock.getsockname()[1]
    gone = 2**22 + 12345  # above the default pid_max: no such process
    record = {"supervisor": gone, "airflow": gone, "port": port, "url": f"http://127.0.0.1:{port}"}
    ui_state.record_file().write_text(json.dumps(record))
    assert ui_state.status() == f"not running (./dev ui, pid {gone}, has exited; port {port} is free)"
    assert ui_state.stop_recorded() == f"not running (./dev ui, pid {gone}, had exited and left nothing)"
    assert ui_state.read() is None
