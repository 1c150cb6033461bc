"""Short-context scoring split over the processes of a launch, against one process.

Usage (what ``tests/distributed/test_score_split.py`` does)::

    torchrun --nproc_per_node 2 tests/helpers/dist_score_split.py OUT_DIR

Every process builds the same tiny model, a frozen scorer model and a right-padded batch
of rows of different lengths, then scores the batch with the self and the model scorer
twice: alone (every window in this process) and inside
``tokenweight.core.scoring.split_scoring`` over all processes. A forward pre-hook on each model
counts the windows every model call carried (rows of the call) and the calls themselves,
independently of the scoring code. Each process writes ``OUT_DIR/rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder: helpers.*

WINDOW, STRIDE, LENGTHS, WIDTH = 16, 8, (96, 71, 40), 96


class CallCounter:
    """Counts model calls and the windows (batch rows) they carried; calls on two tokens
    (the padding calls of sharded runs) are counted apart."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.windows = self.calls = self.padding_calls = 0
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids.shape[1] <= 2:
            self.padding_calls += 1
        else:
            self.calls += 1
            self.windows += int(ids.shape[0])

    def take(self) -> dict[str, int]:
        counts = {"windows": self.windows, "calls": self.calls, "padding": self.padding_calls}
        self.windows = self.calls = self.padding_calls = 0
        return counts


def main(out: Path) -> None:
    import torch.distributed as dist

    from helpers.fixtures import build_tiny_causal_lm
    from tokenweight.core.losses import model_token_nll
    from tokenweight.core.scoring import ModelScorer, SelfScorer, split_scoring

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build_tiny_causal_lm(seed=3, init_std=0.2)
    frozen = build_tiny_causal_lm(seed=4, init_std=0.2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 96, (len(LENGTHS), WIDTH), generator=g)
    mask = (torch.arange(WIDTH)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        long_nll = model_token_nll(model, ids, attention_mask=mask)
    counters = {"self": CallCounter(model), "model": CallCounter(frozen)}
    scorers = {
        "self": SelfScorer(WINDOW, STRIDE, windows_per_batch=2),
        "model": ModelScorer(frozen, WINDOW, STRIDE, windows_per_batch=2),
    }
    report: dict[str, object] = {"rank": rank}
    for name, scorer in scorers.items():
        alone = scorer(batch, long_nll, model=model)
        counted_alone = counters[name].take()
        with split_scoring(dist.group.WORLD):
            split = scorer(batch, long_nll, model=model)
        counted_split = counters[name].take()
        valid = mask[:, 1:].bool()
        report[name] = {
            "alone": counted_alone,
            "split": counted_split,
            "max_difference": float((split - alone)[valid].abs().max()),
            "finite": bool(torch.isfinite(split[valid]).all()),
        }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    os._exit(0)
