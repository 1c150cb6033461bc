"""Single-process checks of the distributed set-up: what is refused before any process
starts (who shards FSDP on CPU processes, a distributed eval, sequence parallelism without
DeepSpeed or with packed batches).
The multi-process runs themselves are in ``tests/distributed/``."""

from __future__ import annotations

import pytest
import torch

from tokenweight.training.collator import TokenWeightCollator
from tokenweight.training.config import load_config


def test_fsdp_on_cpu_processes_is_sharded_by_tokenweight(monkeypatch):
    from types import SimpleNamespace

    from tokenweight.training import distributed
    from tokenweight.training.distributed import fsdp_on_cpu

    monkeypatch.setattr(distributed, "_accelerator_present", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert fsdp_on_cpu(SimpleNamespace(fsdp=True))
    assert not fsdp_on_cpu(SimpleNamespace(fsdp=""))  # DDP
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not fsdp_on_cpu(SimpleNamespace(fsdp=True))  # one process: nothing to shard
    monkeypatch.setattr(distributed, "_accelerator_present", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not fsdp_on_cpu(SimpleNamespace(fsdp=True))  # GPUs: accelerate's FSDP plugin


def test_eval_refuses_a_distributed_launch(monkeypatch, tmp_path, capsys):
    from tokenweight.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", "x", "--out", str(tmp_path / "eval"), "--tasks", "ppl"]) == 2
    assert "runs in one process" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_sequence_parallel_needs_deepspeed_and_a_positive_degree(tmp_path):
    from tokenweight.infra.errors import TokenWeightError

    base = {"model": {"source": "m"}, "data": {"path": "d"}, "scheme": "uniform"}
    with pytest.raises(TokenWeightError, match=r"train\.sequence_parallel: needs DeepSpeed"):
        load_config(base={**base, "train": {"sequence_parallel": 2}})
    with pytest.raises(TokenWeightError, match=r"train\.sequence_parallel: must be > 0"):
        load_config(base={**base, "train": {"sequence_parallel": 0}})


def test_a_slice_counts_its_shift_labels_and_the_old_name_warns():
    """Two counts with two meanings, two names: a sequence-parallel slice counts the valid
    entries of its ``shift_labels``; ``tokenweight.training.count_valid_targets`` counts
    the targets of a whole collated batch."""
    import torch

    from tokenweight.training import count_valid_targets
    from tokenweight.training import sequence_parallel as sp

    slice_batch = {"shift_labels": torch.tensor([[5, -100, 7, 8], [-100, -100, 9, 1]])}
    assert int(sp.count_slice_targets(slice_batch)) == 5
    with pytest.warns(DeprecationWarning, match="count_slice_targets"):
        assert int(sp.count_valid_targets(slice_batch)) == 5
    assert "count_valid_targets" not in sp.__all__
    whole = {"input_ids": torch.ones(2, 4, dtype=torch.long), "labels": slice_batch["shift_labels"]}
    assert int(count_valid_targets(whole)) == 4  # targets 1..3 of each row; -100 left out


class _PackingCollator(TokenWeightCollator):
    """Two documents per row: positions restart in the middle."""

    def __call__(self, examples):
        batch = super().__call__(examples)
        width = batch["input_ids"].shape[1]
        half = torch.arange(width // 2)
        batch["position_ids"] = torch.cat([half, half]).expand_as(batch["input_ids"])
        return batch


def test_packed_batches_are_refused_under_sequence_parallelism():
    from tokenweight.infra.errors import TokenWeightError
    from tokenweight.training.sequence_parallel import SequenceParallelCollator, refuse_packed

    rows = [{"input_ids": list(range(4, 12))}, {"input_ids": list(range(4, 10))}]
    with pytest.raises(TokenWeightError, match=r"packed batches .* not supported"):
        SequenceParallelCollator(_PackingCollator(), 2)(rows)
    batch = SequenceParallelCollator(TokenWeightCollator(), 2)(rows)  # one document per row
    assert batch["position_ids"].tolist() == [list(range(8))] * 2
    refuse_packed(batch["position_ids"][:, 4:], 4)  # rank 1's slice of an unpacked row
    with pytest.raises(TokenWeightError, match="pad instead of pack"):
        refuse_packed(torch.tensor([[4, 5, 0, 1]]), 4)  # a document starts inside the slice
