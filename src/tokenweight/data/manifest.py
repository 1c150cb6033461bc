"""The ``manifest.json`` of a prepared or scored dataset folder, and its one reader.

A folder written by ``tokenweight prepare`` or ``tokenweight score`` is complete when its
``manifest.json`` exists; the manifest's ``format`` says which kind of folder it is. A
scored folder being written also holds ``run.json`` (the run's settings) and one
``*.done.json`` record per finished shard.

Every manifest carries :data:`FINGERPRINT`, a content fingerprint of what the folder holds
(``"sha256:<64 hex digits>"``): two folders with the same fingerprint hold the same data,
wherever they lie and whatever their file names.

- prepared: the SHA-256 of every row's ``input_ids`` as int64 little-endian bytes, rows in
  the saved order, each followed by its ``attention_mask`` as int8 bytes when the folder
  keeps padded tails (:func:`tokenweight.data.store.rows_fingerprint`);
- scored: the SHA-256 of the shards' SHA-256 hex digests, one per line in shard order
  (:func:`tokenweight.data.store.shards_fingerprint`); the shards hold the tokens and
  their scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.files import read_json

__all__ = [
    "DONE_SUFFIX",
    "FINGERPRINT",
    "MANIFEST",
    "PREPARED_FORMAT",
    "RUN_FILE",
    "SCORED_FORMAT",
    "read_manifest",
]

MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint"  # manifest field: the folder's content fingerprint
PREPARED_FORMAT = "tokenweight.prepared"
SCORED_FORMAT = "tokenweight.scored"
RUN_FILE = "run.json"  # settings of a scoring run, written first
DONE_SUFFIX = ".done.json"  # completion record of one scored shard


@dataclass(frozen=True)
class _Kind:
    format: str
    what: str  # "prepared dataset"
    command: str  # the command that writes such a folder
    fix: str  # what to do about an unreadable manifest


_KINDS = {
    "prepared": _Kind(
        PREPARED_FORMAT,
        "prepared dataset",
        "tokenweight prepare",
        "prepare the dataset again with `tokenweight prepare --overwrite`",
    ),
    "scored": _Kind(
        SCORED_FORMAT,
        "scored dataset",
        "tokenweight score",
        "rerun `tokenweight score` with the same arguments: it verifies every shard and "
        "writes the manifest again",
    ),
}


def read_manifest(folder: str | Path, kind: str = "prepared") -> dict[str, Any]:
    """The manifest of a complete ``kind`` folder (``"prepared"`` or ``"scored"``).

    Raises :class:`TokenWeightError` saying what the folder is instead and how to make
    one: missing, without a manifest (for a scored folder whose scoring stopped early: how
    many shards are done and how to finish), unreadable, or another kind.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    spec = _KINDS[kind]
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise TokenWeightError(f"{spec.what} {folder} does not exist")
    if not path.is_file():
        if kind == "scored" and (folder / RUN_FILE).is_file():
            done = len(list(folder.glob("shard-*" + DONE_SUFFIX)))
            raise TokenWeightError(
                f"scoring in {folder} is incomplete ({done} shards done, no manifest); "
                "rerun `tokenweight score` with the same arguments to finish it"
            )
        raise TokenWeightError(
            f"{folder} is not a {spec.what} (no {MANIFEST}); create one with `{spec.command}`"
        )
    manifest = read_json(path, spec.fix)
    if not isinstance(manifest, dict) or manifest.get("format") != spec.format:
        raise TokenWeightError(f"{path} is not a {spec.command} manifest")
    return manifest
