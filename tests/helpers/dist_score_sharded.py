"""Driver for ``tests/distributed/test_scoring_sharded.py``, run by ``torchrun --nproc_per_node 2``.

Every process holds a tiny Llama sharded with FSDP2 (``fully_shard`` on each decoder
layer and the root, gloo on the CPU) and a batch of its own: process 0 long rows that
need several short-context windows, process 1 short padded rows that need none. Each
computes the token-weighted loss with the self scorer and steps backward. A process that
made fewer model calls than the other would leave the other waiting in a parameter
gather (the process group times out after 60 s). Checked on every process: the loss
equals the unsharded model's on the same batch, every rank made the same number of
model calls, and the gradients equal the mean of the unsharded gradients of both
batches (what FSDP's reduce-scatter averages).
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers.*

from helpers.fixtures import build_tiny_causal_lm
from tokenweight.core.scoring import SelfScorer
from tokenweight.training.loss import token_weighted_loss

VOCAB, WINDOW = 61, 8
SCHEMES = ("dense:0.75", "sparse:0.25")


def batch_of(rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    width, lengths = (40, [40, 33]) if rank == 0 else (12, [7, 12, 5])
    ids = torch.randint(3, VOCAB, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {
        "input_ids": ids * mask,
        "attention_mask": mask,
        "labels": torch.where(mask.bool(), ids, -100),
    }


def model() -> torch.nn.Module:
    return build_tiny_causal_lm(seed=7, vocab_size=VOCAB, max_position_embeddings=64).train()


def main() -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    scorer = SelfScorer(window=WINDOW)
    for scheme in SCHEMES:
        sharded = model()
        for layer in sharded.model.layers:
            fully_shard(layer)
        fully_shard(sharded)
        calls: list[int] = []
        sharded.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        parts = token_weighted_loss(sharded, batch_of(rank), scheme, scorer)
        assert parts.loss is not None
        parts.loss.backward()

        counts = [None, None]
        dist.all_gather_object(counts, len(calls))
        assert counts[0] == counts[1], f"model calls per process differ: {counts}"

        plain, expected_grads = model(), None
        for r in range(world):
            ref = token_weighted_loss(plain, batch_of(r), scheme, scorer)
            assert ref.loss is not None
            if r == rank:
                torch.testing.assert_close(parts.loss.detach(), ref.loss.detach())
            (ref.loss / world).backward()
        expected_grads = {n: p.grad for n, p in plain.named_parameters()}
        for name, p in sharded.named_parameters():
            torch.testing.assert_close(
                p.grad.full_tensor(), expected_grads[name], rtol=1e-4, atol=1e-6, msg=name
            )
    dist.barrier()
    if rank == 0:
        print("sharded scoring ok")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # leave without interpreter teardown, where a gloo helper thread can abort a rank
    # ("terminate called without an active exception") after the work is done
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
