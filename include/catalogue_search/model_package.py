"""model.tar.gz from a model directory: its artifact version and a deterministic tar.

Shared by the build (`catalogue_search_dev.model_build`) and the fine-tune's
packaging step (`finetune.package`), so a fine-tuned artifact is versioned and
archived exactly as a built one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path

from catalogue_search.handler import sha256_file

CODE_FILES = ("inference.py", "requirements.txt")


def artifact_version(model_dir: str | Path) -> str:
    """The version of what a model directory computes: weights + model config + handler code.

    The handler code (`code/inference.py`) holds the image decoding and
    preprocessing and `code/requirements.txt` pins open_clip (the tokenizer), so
    a change there gives new vectors as surely as new weights. 16 hex digits of
    a sha256 (64 bits: no collisions among the artifacts one project will ever build).
    """
    model_dir = Path(model_dir)
    digest = hashlib.sha256(b"catalogue-search artifact version 2\n")
    digest.update(sha256_file(model_dir / "model.pt").encode())
    config = json.loads((model_dir / "clip_config.json").read_text())
    digest.update(json.dumps(config, sort_keys=True).encode())
    for name in CODE_FILES:
        digest.update((model_dir / "code" / name).read_bytes())
    return digest.hexdigest()[:16]


def write_deterministic_tar(out_path: Path, root: Path) -> None:
    """Tar + gzip `root` with fixed metadata and member order, so equal inputs give equal bytes."""
    paths = sorted(p for p in root.rglob("*"))
    partial = out_path.with_name(out_path.name + ".partial")
    with partial.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for path in paths:
                    info = tarfile.TarInfo(path.relative_to(root).as_posix())
                    info.mtime = 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if path.is_dir():
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                        tar.addfile(info)
                    else:
                        info.mode = 0o644
                        info.size = path.stat().st_size
                        with path.open("rb") as handle:
                            tar.addfile(info, handle)
    partial.replace(out_path)
