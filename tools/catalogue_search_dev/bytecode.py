"""Bytecode for a Python env's installed modules, written once.

Where PYTHONDONTWRITEBYTECODE is set (many CI images set it, the SageMaker
images do, and so do this project's containers), Python never writes `.pyc`
files and uv does not compile at install time: every process would compile its
imports from source again. For torch and the toolkits that is half of a
process's start-up CPU. The containers' env is compiled whole, as an image
build compiles what it installs; the project's venv is not (`./dev` lets
Python write what it imports instead).

    python catalogue_search_dev/bytecode.py <env prefix>
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MARKER = ".bytecode"


def compile_once(prefix: Path) -> None:
    """Compile every module under `prefix`/lib once (a marker file records it; files that do not compile,
    such as packages' own syntax-error fixtures, are skipped)."""
    marker = prefix / MARKER
    if marker.exists():
        return
    python = prefix / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "compileall", "-q", "-j0", str(prefix / "lib")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker.touch()


if __name__ == "__main__":
    compile_once(Path(sys.argv[1]))
