"""Named, cached, resumable steps: the bookkeeping shared by ``demo`` and ``study``.

Each step keeps its output in one folder with a ``step.json`` fingerprint of its settings.
:meth:`Steps.run` reuses a finished folder whose settings are unchanged (and says so),
redoes one whose settings changed, and lets a resumable step continue an interrupted run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenweight.infra.files import (
    atomic_write_json,
    check_output_dir,
    json_text,
    remove_path,
    sha256_bytes,
)

__all__ = ["STEP_FILE", "StepRecord", "Steps", "fingerprint", "folder_fingerprint", "run_dir_name"]

STEP_FILE = "step.json"


def fingerprint(settings: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the settings' canonical JSON."""
    return sha256_bytes(json_text(settings).encode("utf-8"))[:16]


def _saved_record(folder: Path) -> dict[str, Any]:
    """The ``step.json`` of a finished step folder, ``{}`` when there is none."""
    stamp = folder / STEP_FILE
    return json.loads(stamp.read_text(encoding="utf-8")) if stamp.is_file() else {}


def folder_fingerprint(folder: Path) -> str:
    """The fingerprint of a step folder's saved record (changes whenever the step is
    redone with other settings), so later steps that read it redo too."""
    return fingerprint(_saved_record(folder))


def run_dir_name(label: str) -> str:
    """A folder name for a scheme or run label (``dense:0.75`` -> ``dense-0.75``)."""
    return label.replace(":", "-").replace(",", "_").replace("=", "").replace(" ", "_")


@dataclass
class StepRecord:
    name: str
    seconds: float
    cached: bool
    detail: str = ""


class Steps:
    """Runs named steps once per settings fingerprint, printing ``[k/total]`` progress and
    timings; ``records`` lists every step run or reused, in order."""

    def __init__(self, total: int, log: Callable[[str], None], owner: str = "tokenweight") -> None:
        self.total = total
        self.index = 0
        self.log = log
        self.owner = owner  # names the command in errors about a step's folder
        self.records: list[StepRecord] = []

    def announce(self, text: str) -> str:
        """Count a step that :meth:`run` does not manage and log ``[k/total] text``;
        returns the ``[k/total]`` prefix for its later lines."""
        self.index += 1
        head = f"[{self.index}/{self.total}]"
        self.log(f"{head} {text}")
        return head

    def run(
        self,
        name: str,
        folder: Path,
        settings: dict[str, Any],
        fn: Callable[[], str],
        *,
        resumable: bool = False,
        markers: Sequence[str] = (),
    ) -> None:
        """``fn`` builds ``folder`` and returns a one-line detail. A finished folder with the
        same fingerprint is reused; one with other settings is removed first; an unfinished
        one is kept when the step can resume (``resumable``), else removed. Only a folder
        this command made (its ``step.json``, or the record the step's command writes,
        ``markers``) is ever removed; anything else there is an error."""
        self.index += 1
        head = f"[{self.index}/{self.total}] {name}"
        stamp = folder / STEP_FILE
        fp = fingerprint(settings)
        check_output_dir(
            folder, f"folder of the {self.owner} step {name!r}", markers=(STEP_FILE, *markers)
        )
        if stamp.is_file():
            saved = _saved_record(folder)
            if saved.get("fingerprint") == fp:
                self.log(f"{head}: cached in {folder} (settings unchanged), reusing it")
                self.records.append(
                    StepRecord(name, saved.get("seconds", 0.0), True, saved.get("detail", ""))
                )
                return
            self.log(f"{head}: settings changed since the cached run, redoing it")
            remove_path(folder)
        elif folder.exists() and not resumable:
            remove_path(folder)  # an interrupted step that cannot resume
        elif folder.exists():
            self.log(f"{head}: continuing the interrupted run in {folder}")
        self.log(f"{head} ...")
        t0 = time.perf_counter()
        detail = fn()
        seconds = time.perf_counter() - t0
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            stamp,
            {"fingerprint": fp, "settings": settings, "seconds": seconds, "detail": detail},
        )
        self.log(f"{head}: done in {seconds:.0f} s{': ' + detail if detail else ''}")
        self.records.append(StepRecord(name, seconds, False, detail))
