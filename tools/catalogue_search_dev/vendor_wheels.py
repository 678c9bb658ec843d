"""The handler's packages as wheels, vendored into `model.tar.gz` so the model starts with no network.

The SageMaker PyTorch inference container runs `pip install -r
code/requirements.txt` before it loads the handler. It ships torch,
torchvision, numpy, pillow and boto3 but not open_clip and its pure-Python
dependencies, and a job or endpoint with network isolation (or in a VPC with
no internet) cannot reach a package index. So `inference_code/requirements.txt`
starts with `--no-index` and `--find-links wheels`, pins every package the
handler needs beyond the image, and the build puts those wheels under
`code/wheels/`: one set for the container's Python (`Settings.py_version`, the
one place that names the target image) and, where a wheel is version-specific,
one for the Python the local toolkit runs on.

Wheels are downloaded once per pin set and Python into a cache
(`$CATSEARCH_HOME/wheels/`) with `pip download`, the one step that needs a
package index; building again, and starting the model, need none.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from catalogue_search.errors import PermanentError
from catalogue_search.settings import Settings

logger = logging.getLogger(__name__)

WHEELS_DIR = "wheels"  # under code/, as named by requirements.txt's --find-links
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")  # the images are x86_64
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


class VendorError(PermanentError):
    """The handler's wheels cannot be vendored; the message says which and why."""


def pins(requirements: Path) -> list[str]:
    """The `name==version` lines of a requirements file; every package line must be pinned."""
    found: list[str] = []
    for number, raw in enumerate(requirements.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if not _PIN.match(line):
            raise VendorError(f"{requirements}:{number}: {line!r} is not pinned as name==version (wheels are vendored)")
        found.append(line)
    return found


def container_python(settings: Settings) -> str:
    """The target image's Python as pip's `--python-version` wants it: py312 -> 3.12."""
    match = re.fullmatch(r"py(\d)(\d+)", settings.py_version.strip())
    if not match:
        raise VendorError(f"CATSEARCH_PY_VERSION={settings.py_version!r} is not like py312")
    return f"{match.group(1)}.{match.group(2)}"


def target_pythons(settings: Settings) -> list[str]:
    """The container's Python, and this machine's (the local toolkit runs the same archive on it)."""
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    return sorted({container_python(settings), local})


def wheel_cache() -> Path:
    from catalogue_search_dev.localenv import cache_home

    return cache_home() / "wheels"


def _download(requirements: Path, python: str, target: Path) -> None:
    abi = "cp" + python.replace(".", "")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    command += ["--abi", abi, "--abi", "abi3", "--abi", "none"]
    for platform in (*PLATFORMS, "any"):
        command += ["--platform", platform]
    command += ["-d", str(target), *pins(requirements)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise VendorError(
            f"cannot download the handler's wheels for Python {python} ({requirements}): {' | '.join(tail)}. "
            "The first build needs a package index; later builds use the cache in " + str(target.parent)
        )


def ensure_wheels(requirements: Path, pythons: list[str], cache: Path | None = None) -> list[Path]:
    """The wheels that satisfy `requirements` on each of `pythons`, downloaded once into the cache."""
    cache = cache or wheel_cache()
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    wheels: dict[str, Path] = {}
    for python in pythons:
        target = cache / digest / f"py{python}"
        done = target / ".complete"
        if not done.exists():
            staging = target.with_name(target.name + f".partial-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            logger.info("downloading the handler's wheels for Python %s into %s", python, target)
            _download(requirements, python, staging)
            (staging / ".complete").write_text("\n".join(sorted(p.name for p in staging.glob("*.whl"))) + "\n")
            if target.exists() and not done.exists():
                shutil.rmtree(target)  # an interrupted earlier download
            try:
                staging.rename(target)
            except OSError:  # another build finished first: theirs is as good as ours
                shutil.rmtree(staging, ignore_errors=True)
                if not done.exists():
                    raise
        for name in done.read_text().split():
            wheels.setdefault(name, target / name)
    return [wheels[name] for name in sorted(wheels)]


def vendor(code_dir: Path, settings: Settings) -> list[str]:
    """Put the wheels `code_dir/requirements.txt` names into `code_dir/wheels/`; return their names."""
    wheels = ensure_wheels(code_dir / "requirements.txt", target_pythons(settings))
    out = code_dir / WHEELS_DIR
    out.mkdir(exist_ok=True)
    for wheel in wheels:
        try:
            os.link(wheel, out / wheel.name)
        except OSError:
            shutil.copyfile(wheel, out / wheel.name)
    return [wheel.name for wheel in wheels]
