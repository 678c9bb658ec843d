"""The SageMaker containers' software on this machine: AWS's toolkits in a Python env of their own.

The target images are SageMaker's PyTorch DLCs named by `Settings.framework_version`
and `Settings.py_version` (2.6, py312): the inference image runs
`sagemaker-pytorch-inference` 2.0.25 on TorchServe 0.12.0, the training image
`sagemaker-training`. `requirements-containers.lock` installs those toolkits,
at those versions, with what the images ship that the handler relies on (torch,
torchvision, numpy, pillow, boto3) and without what they lack (open_clip and
its dependencies: the artifact must carry them). This machine has no Python
3.12 and no torch 2.6, so the env uses the project's Python and torch.

A container is a directory of its own standing for /opt/ml
(`SAGEMAKER_BASE_DIR`) and a fresh Python env layered on the shared one (its
`site-packages` sees the toolkits; whatever the container pip-installs at
start-up stays in it), so each container starts from the image as it ships.

    python -m catalogue_search_dev.containers ensure   # create the env (the first model server does it too)
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from catalogue_search_dev import bytecode
from catalogue_search_dev.localenv import cache_home, exclusive, repo_root

ENTRY = Path(__file__).with_name("container_entry.py")
UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"  # nothing listens on port 9: pip fails at once if it tries an index


def lock_file() -> Path:
    return repo_root() / "requirements-containers.lock"


def environment() -> Path:
    """The shared env with the toolkits (created once per lock file, with uv from its cache)."""
    lock = lock_file()
    env = cache_home() / f"sagemaker-containers-{hashlib.sha256(lock.read_bytes()).hexdigest()[:12]}"
    if (env / ".installed").exists() and (env / bytecode.MARKER).exists():
        return env
    with exclusive(env.parent / f".{env.name}.lock"):
        if not (env / ".installed").exists():
            shutil.rmtree(env, ignore_errors=True)
            uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv") or "uv"
            base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
            subprocess.run([uv, "venv", "--quiet", "--python", str(base), str(env)], check=True)
            subprocess.run(
                [uv, "pip", "install", "--quiet", "--python", str(env / "bin" / "python"), "-r", str(lock)], check=True
            )
            (env / ".installed").write_text(str(lock) + "\n")
        bytecode.compile_once(env)
    return env


def _site_packages(prefix: Path) -> Path:
    relative = Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    return prefix / relative


def new_container(root: Path) -> Path:
    """A fresh container in `root`: its Python env layered on the toolkits' env; returns its `bin/`."""
    env = environment()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "tmp").mkdir()
    venv = root / "env"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    (_site_packages(venv) / "sagemaker-containers.pth").write_text(str(_site_packages(env)) + "\n")
    # TorchServe starts its workers with the Python that ran `torchserve`: the container's own.
    for script in ("torchserve", "torch-model-archiver"):
        source = (env / "bin" / script).read_text().split("\n", 1)[1]
        target = venv / "bin" / script
        target.write_text(f"#!{venv / 'bin' / 'python'}\n{source}")
        target.chmod(0o755)
    return venv / "bin"


# Ports for servers to listen on are picked below the kernel's ephemeral range (ip_local_port_range, usually
# 32768-60999), where every outgoing connection takes its local port. A port picked here is free again until
# its server binds it, and a client's connection cannot take it meanwhile. That happened once in a suite, to
# a TorchServe container's gRPC port. Another program that picks ports by trying them still can take one,
# and model_server then starts the container again.
LISTEN_PORTS_FROM = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """`count` loopback ports nothing listens on now, below the ephemeral range where it leaves room (else
    the kernel's choice)."""
    below = _ephemeral_start()
    room = below - LISTEN_PORTS_FROM >= 1000
    rng = random.SystemRandom()
    sockets: list[socket.socket] = []
    tries = 0
    try:
        while len(sockets) < count:
            tries += 1  # up to 199 tries in the room below the range, then port 0: the kernel's choice
            port = rng.randrange(LISTEN_PORTS_FROM, below) if room and tries < 200 else 0
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def base_environment(root: Path, bin_dir: Path, aws: Mapping[str, str]) -> dict[str, str]:
    """What every container sees: its /opt/ml, its tmp, its Python first, AWS as configured, no package index."""
    env_bin = environment() / "bin"
    path = os.pathsep.join([str(bin_dir), str(env_bin), "/usr/local/bin", "/usr/bin", "/bin"])
    env = {
        "PATH": path,
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "SAGEMAKER_BASE_DIR": str(root),
        "TEMP": str(root / "tmp"),
        "TMPDIR": str(root / "tmp"),
        # The network isolation SageMaker may impose: pip finds no index and no user configuration.
        "PIP_INDEX_URL": UNREACHABLE_INDEX,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
        "PIP_NO_CACHE_DIR": "1",
    }
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    # TorchServe's front end only routes requests here: its JVM compiles with C1 alone, which starts with
    # about a third less CPU (measured: 1.5 to 1.0 CPU s per container) and does not change what it answers.
    env["JAVA_TOOL_OPTIONS"] = "-XX:TieredStopAtLevel=1"
    env.update(aws)
    return env


def command(bin_dir: Path, what: str) -> list[str]:
    """The command line of a container's toolkit: `serve` or `train` (see `container_entry`)."""
    return [str(bin_dir / "python"), str(ENTRY), what]


def start(root: Path, bin_dir: Path, what: str, env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """Run the toolkit (`serve` or `train`) in `root`; its process group is the container's."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command(bin_dir, what),
            cwd=root,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["ensure"]:
        print("usage: python -m catalogue_search_dev.containers ensure", file=sys.stderr)
        return 2
    print(environment())
    return 0


if __name__ == "__main__":
    sys.exit(main())
