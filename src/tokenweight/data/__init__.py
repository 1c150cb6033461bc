"""Data: corpus reading, sequence packing, prepared datasets and stored scores.

- :mod:`~tokenweight.data.corpus`: input files and the documents in them
- :mod:`~tokenweight.data.packing`: documents -> fixed-length sequences
- :mod:`~tokenweight.data.manifest`: a dataset folder's ``manifest.json`` (:func:`read_manifest`)
- :mod:`~tokenweight.data.prepare`: ``tokenweight prepare`` (:func:`prepare_dataset`)
- :mod:`~tokenweight.data.store`: scored shards, manifest, row and file verification
- :mod:`~tokenweight.data.score`: ``tokenweight score`` (:func:`score_dataset`)
"""

from __future__ import annotations

from tokenweight.data.manifest import read_manifest
from tokenweight.data.packing import Packing
from tokenweight.data.prepare import PrepareResult, prepare_dataset
from tokenweight.data.score import ScoreResult, score_dataset
from tokenweight.data.store import (
    input_ids_hash,
    load_scored_dataset,
    verify_row,
    verify_rows,
)

__all__ = [
    "Packing",
    "PrepareResult",
    "ScoreResult",
    "input_ids_hash",
    "load_scored_dataset",
    "prepare_dataset",
    "read_manifest",
    "score_dataset",
    "verify_row",
    "verify_rows",
]
