"""Batched greedy decoding with a KV cache (``model.generate``), for probe prompts.

Prompts of a batch are left-padded (so every row's last prompt token sits at the same
column and the first generated token follows it); ``generate`` derives position ids from
the attention mask, so padding changes no prediction. Prompts are sorted by length before
batching, so a batch mixes only prompts of (nearly) equal length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from tokenweight.infra.errors import TokenWeightError

__all__ = ["greedy_generate"]

_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _pad_id(tokenizer: Any, model: Any) -> int:
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(model.config, "pad_token_id", None),
        getattr(model.config, "eos_token_id", None),
    ):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def _generate_batch(
    model: Any, rows: list[Sequence[int]], max_new_tokens: int, pad_id: int, eos: Any
) -> list[list[int]]:
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=eos,
        use_cache=True,
    )
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
        )
    return [row[width:].tolist() for row in out.cpu()]


def _budgets(prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int]) -> list[int]:
    """The new-token budget of every prompt (checked: >= 1, prompts not empty)."""
    budgets = (
        [int(max_new_tokens)] * len(prompts)
        if isinstance(max_new_tokens, int)
        else [int(x) for x in max_new_tokens]
    )
    if len(budgets) != len(prompts):
        raise TokenWeightError(
            f"got {len(budgets)} max_new_tokens values for {len(prompts)} prompts"
        )
    if any(b < 1 for b in budgets) or any(len(p) == 0 for p in prompts):
        raise TokenWeightError("every prompt needs at least one token and max_new_tokens >= 1")
    return budgets


def _generate_or_split(
    model: Any,
    prompts: Sequence[Sequence[int]],
    budgets: list[int],
    batch: list[int],
    pending: list[list[int]],
    pad_id: int,
    eos: Any,
) -> list[list[int]] | None:
    """New tokens of the prompts ``batch`` (indices); on CUDA out-of-memory, ``None``
    after putting its two halves at the front of ``pending`` (a single prompt re-raises)."""
    try:
        return _generate_batch(
            model, [prompts[i] for i in batch], max(budgets[i] for i in batch), pad_id, eos
        )
    except _OOM:
        if len(batch) == 1:
            raise
        half = len(batch) // 2
        pending[:0] = [batch[:half], batch[half:]]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int],
    batch_size: int = 1,
    on_done: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy continuations of token-id prompts, decoded to text.

    Args:
        model: a causal LM (``generate`` with KV cache is used, sampling off).
        tokenizer: its tokenizer (padding id, EOS id and decoding).
        prompts: token ids per prompt (lists or tuples of ints), any lengths.
        max_new_tokens: new-token budget, one for all or one per prompt; a batch uses
            the largest budget of its prompts and each continuation is cut to its own.
        batch_size: prompts decoded together (rows left-padded). On a CUDA out-of-memory
            error the batch is split in half and retried.
        on_done: called with the number of prompts finished after each batch (progress).

    Returns:
        One decoded continuation per prompt, in input order, special tokens removed,
        stopping at EOS.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TokenWeightError(f"batch_size must be a positive integer, got {batch_size!r}")
    budgets = _budgets(prompts, max_new_tokens)
    pad_id = _pad_id(tokenizer, model)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.generation_config, "eos_token_id", None)
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos} - {None}
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    outputs: list[list[int]] = [[] for _ in prompts]
    pending = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    while pending:
        batch = pending.pop(0)
        new = _generate_or_split(model, prompts, budgets, batch, pending, pad_id, eos)
        if new is None:
            continue
        for i, tokens in zip(batch, new):
            tokens = tokens[: budgets[i]]
            stop = next((k for k, t in enumerate(tokens) if t in eos_ids), len(tokens))
            outputs[i] = tokens[:stop]
        if on_done is not None:
            on_done(len(batch))
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in outputs]
