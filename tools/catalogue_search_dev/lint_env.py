"""checkov in a virtualenv of its own, built once per lock (requirements-checkov.lock) with uv.

checkov pins `packaging<24`, which pytest 9 cannot take, and the older checkov
that would fit the project's lock downgrades networkx under torch: so it gets
its own environment in the cache, beside the project's.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from catalogue_search_dev import bytecode
from catalogue_search_dev.localenv import cache_home, exclusive, repo_root

LOCK = "requirements-checkov.lock"


def checkov() -> Path:
    """The checkov executable (installing it first if this lock has no environment yet)."""
    lock = repo_root() / LOCK
    venv = cache_home() / f"checkov-{hashlib.sha256(lock.read_bytes()).hexdigest()[:12]}"
    exe = venv / "bin" / "checkov"
    done = venv / ".installed"
    if done.exists() and (venv / bytecode.MARKER).exists():
        return exe
    with exclusive(cache_home() / ".checkov-install.lock"):  # two test sessions: one installs, the other waits
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
            uv = Path(sys.executable).with_name("uv")
            installer = [str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
            subprocess.run([*installer, "-r", str(lock)], check=True)
            done.touch()
    bytecode.compile_once(venv)
    return exe
