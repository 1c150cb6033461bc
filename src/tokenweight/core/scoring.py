"""Short-context NLL: the first step of token weighting (``docs/method.md#short-context-nll``).

Every target of a long sequence is predicted again from at most ``window`` tokens.
Windows of length ``window`` start at ``0, stride, 2*stride, ...``; the last one ends at
the sequence end. Window 0 gives the NLL of targets ``1 .. window-1``; every later window
gives its last ``stride`` targets (the final one: whatever is left), so each target
``t >= window`` is predicted from between ``window - stride`` and ``window - 1`` tokens.
With ``bos_token_id``, a later window's first token is replaced by BOS.

Windows are planned for each row on its own length -- its real tokens by the attention
mask (:func:`plan_batch_windows`) -- so a document's short NLL is the same alone, padded
or packed with others. All windows of a batch go through the model together,
``windows_per_batch`` at a time, in eval mode and without gradient, and the NLL comes from
:func:`tokenweight.core.losses.model_token_nll` (no full-vocabulary logits). Inside
:func:`same_model_calls_across_processes` (the training loss enters it) the processes of
a run agree on the number of model calls and pad the work, not the plan, with calls
whose result is dropped, so sharded models gather their parameters in step. Inside
:func:`split_scoring` the processes of a group that all hold the same batch (a
sequence-parallel group) share its windows out and gather the result.

Scorers share one interface, ``scorer(batch, long_nll, model=None) -> short_nll``:
``self`` (the model being trained), ``model`` (a frozen or smaller model) and
``precomputed`` (stored with the data by ``tokenweight score``). A packed batch (several
documents per row, :mod:`tokenweight.core.packed_batches`) is scored one document at a time
(:func:`per_document`), so no window crosses a document start.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from tokenweight.core.packed_batches import find_documents, right_padded_lengths
from tokenweight.core.scorer_kinds import SCORER_KINDS, ScorerInputs, scorer_kind
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

logger = logging.getLogger(__name__)

__all__ = [
    "SCORER_KINDS",
    "BatchWindowPlan",
    "ModelScorer",
    "PrecomputedScorer",
    "Scorer",
    "ScoringWindow",
    "SelfScorer",
    "WindowPlan",
    "agreed_model_calls",
    "build_model_scorer",
    "build_precomputed_scorer",
    "build_scorer",
    "build_self_scorer",
    "per_document",
    "plan_batch_windows",
    "plan_stride",
    "plan_windows",
    "require_short_window",
    "same_model_calls_across_processes",
    "score_windows",
    "short_context_nll",
    "split_scoring",
    "window_share",
]


def plan_stride(seq_len: int, window: int) -> int:
    """The stride for scoring a ``seq_len``-token sequence with ``window``-token windows.

    The paper's choice is the smallest stride that costs ``seq_len / window`` windows
    after the first: ``window * (1 - window / seq_len)`` (6144 for 32768 / 8192). With
    ``m`` later windows that ideal stride needs, this returns the smallest integer stride
    that still covers the sequence with ``m`` windows, ``ceil((seq_len - window) / m)``:
    same cost, most context. It divides ``seq_len - window`` exactly whenever one of
    ``m`` or ``m + 1`` windows can do so (then the window-to-target assignment is exactly
    the paper's); otherwise the last window is aligned to the sequence end.
    Sequences no longer than the window need a single window (the stride is moot; the
    window length is returned).
    """
    _check_window(window)
    if seq_len <= window:
        return window
    span = seq_len - window
    ideal = max(1, math.floor(window * (1 - window / seq_len)))
    later = math.ceil(span / ideal)
    for m in (later, later + 1):
        if span % m == 0 and span // m <= window - 1:
            return span // m
    return min(window - 1, math.ceil(span / later))


def _check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise TokenWeightError(f"window must be an integer >= 2 (tokens), got {window!r}")


def require_short_window(window: int, seq_len: int, what: str) -> None:
    """Refuse a short-context ``window`` that covers the whole ``seq_len``-token sequence:
    short and long NLL would be equal, every score zero and every weight uniform."""
    if window >= seq_len:
        raise TokenWeightError(
            f"{what}: the short-context window ({window} tokens) covers the whole "
            f"{seq_len}-token sequence, so the short and long context are the same and every "
            "weight would be uniform; choose a window smaller than the sequence"
        )


@dataclass(frozen=True)
class WindowPlan:
    """Which window predicts which targets.

    ``starts[k]`` is the first token of window ``k`` (window 0 starts at 0), and window
    ``k > 0`` contributes its last ``counts[k]`` targets. Window 0 contributes targets
    ``1 .. min(window, seq_len) - 1``.
    """

    seq_len: int
    window: int
    stride: int
    starts: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def num_windows(self) -> int:
        return len(self.starts)


def plan_windows(seq_len: int, window: int, stride: int | None = None) -> WindowPlan:
    """The windows of one sequence length (see the module docstring)."""
    _check_window(window)
    if seq_len < 1:
        raise TokenWeightError(f"sequences must hold at least one token, got {seq_len}")
    if stride is None:
        stride = plan_stride(seq_len, window)
    bad_type = isinstance(stride, bool) or not isinstance(stride, int)
    if seq_len > window and (bad_type or not 1 <= stride <= window - 1):
        raise TokenWeightError(
            f"stride must be an integer in [1, window - 1] = [1, {window - 1}], got {stride!r}"
        )
    if seq_len <= window:
        return WindowPlan(seq_len, window, stride, (0,), (seq_len - 1,))
    starts, counts = [0], [window - 1]
    end = window  # targets < end are covered
    while end < seq_len:
        start = starts[-1] + stride
        if start + window > seq_len:
            start = seq_len - window
        starts.append(start)
        counts.append(start + window - end)
        end = start + window
    return WindowPlan(seq_len, window, stride, tuple(starts), tuple(counts))


@dataclass(frozen=True)
class ScoringWindow:
    """One model input of short-context scoring.

    Tokens ``start .. start + length - 1`` of batch row ``row`` go through the model; the
    window predicts the targets at window positions ``first .. length - 1`` (``first >= 1``),
    i.e. targets ``start + first .. start + length - 1`` of its row (target ``t`` is token
    ``t`` predicted from the tokens before it; output column ``t - 1``).
    """

    row: int
    start: int
    length: int
    first: int

    @property
    def targets(self) -> range:
        """The targets (token positions of the row) this window predicts."""
        return range(self.start + self.first, self.start + self.length)


@dataclass(frozen=True)
class BatchWindowPlan:
    """The windows a batch needs, planned for each row on its own valid length.

    ``lengths[r]`` is row ``r``'s number of real tokens (padding excluded) and
    ``rows[r]`` its :class:`WindowPlan` (``None`` for a row of fewer than 2 tokens: no
    targets). ``windows`` lists every window to run, row by row, window 0 of each row
    left out when ``first_window`` is ``False``. A row's windows -- and so its short NLL --
    depend on that row alone, never on the batch's width or on the other rows.
    """

    window: int
    lengths: tuple[int, ...]
    rows: tuple[WindowPlan | None, ...]
    first_window: bool
    windows: tuple[ScoringWindow, ...]

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    def row_windows(self, row: int) -> tuple[ScoringWindow, ...]:
        """The windows of batch row ``row``."""
        return tuple(w for w in self.windows if w.row == row)

    def model_calls(self, windows_per_batch: int) -> int:
        """Model calls that run every window, ``windows_per_batch`` at a time."""
        return math.ceil(self.num_windows / windows_per_batch)


def plan_batch_windows(
    lengths: Sequence[int], window: int, stride: int | None = None, *, first_window: bool = True
) -> BatchWindowPlan:
    """The windows of a batch whose row ``r`` holds ``lengths[r]`` real tokens.

    Each row is planned with :func:`plan_windows` on its own length (``stride=None``: each
    row's :func:`plan_stride`), so a document gets the same windows whatever it is
    batched or padded with. ``first_window=False`` leaves out every row's window 0 (the
    self scorer takes those targets from the long NLL).
    """
    _check_window(window)
    plans: list[WindowPlan | None] = []
    windows: list[ScoringWindow] = []
    for row, length in enumerate(int(n) for n in lengths):
        if length < 2:
            plans.append(None)
            continue
        plan = plan_windows(length, window, stride)
        plans.append(plan)
        for k, (start, count) in enumerate(zip(plan.starts, plan.counts)):
            if k == 0 and not first_window:
                continue
            size = min(window, length)
            windows.append(ScoringWindow(row, start, size, 1 if k == 0 else size - count))
    return BatchWindowPlan(
        window, tuple(int(n) for n in lengths), tuple(plans), first_window, tuple(windows)
    )


_AGREE_ON_CALLS: ContextVar[bool] = ContextVar("tokenweight_agree_on_calls", default=False)


@contextmanager
def same_model_calls_across_processes() -> Iterator[None]:
    """Inside this block, short-context scoring makes as many model calls on every process
    of the default process group as the process that needs the most (the others run
    padding calls), so a sharded model (DeepSpeed ZeRO-3, FSDP) gathers its parameters
    the same number of times everywhere. Each scoring call then takes one all-reduce, so
    every process must make the same scoring calls inside the block, as the steps of a
    training run do. Without a process group (or with one process) nothing changes.
    """
    token = _AGREE_ON_CALLS.set(True)
    try:
        yield
    finally:
        _AGREE_ON_CALLS.reset(token)


def agreed_model_calls(calls: int) -> int:
    """``calls``, or inside :func:`same_model_calls_across_processes` with several
    processes, the largest ``calls`` over the default process group (one all-reduce)."""
    import torch.distributed as dist

    if not _AGREE_ON_CALLS.get() or not dist.is_available() or not dist.is_initialized():
        return calls
    if dist.get_world_size() < 2:
        return calls
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if "nccl" in str(dist.get_backend())
        else torch.device("cpu")
    )
    agreed = torch.tensor([calls], dtype=torch.long, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return int(agreed.item())


_SPLIT_OVER: ContextVar[Any] = ContextVar("tokenweight_split_over", default=None)


@contextmanager
def split_scoring(group: Any) -> Iterator[None]:
    """Inside this block, :func:`short_context_nll` shares each batch's windows among the
    processes of ``group`` (a ``torch.distributed`` process group whose processes all
    score the same batch together, as a sequence-parallel group does): process ``r`` of
    ``D`` runs its :func:`window_share`, a process with one window fewer than the others
    adds a padding call (so every process makes the same model calls, as sharded models
    need), and one all-reduce over the group gives every process the whole result,
    exactly (each target belongs to one window). Scoring work per process falls to about
    ``1 / D``. Without a process group, or with a group of one, nothing changes.
    """
    token = _SPLIT_OVER.set(group)
    try:
        yield
    finally:
        _SPLIT_OVER.reset(token)


def window_share(
    windows: Sequence[ScoringWindow], rank: int, size: int
) -> tuple[ScoringWindow, ...]:
    """The windows process ``rank`` of ``size`` runs: every ``size``-th one, from
    ``rank`` (disjoint, together all of them, counts differing by at most one)."""
    return tuple(windows[rank::size])


def _split_group() -> tuple[Any, int, int] | None:
    """``(group, size, rank)`` inside :func:`split_scoring` with a group of several
    processes, else ``None``."""
    import torch.distributed as dist

    group = _SPLIT_OVER.get()
    if group is None or not dist.is_available() or not dist.is_initialized():
        return None
    size = dist.get_world_size(group)
    return (group, size, dist.get_rank(group)) if size > 1 else None


def short_context_nll(
    model: Any,
    input_ids: torch.Tensor,
    *,
    window: int,
    stride: int | None = None,
    bos_token_id: int | None = None,
    windows_per_batch: int | None = None,
    first_window: bool = True,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """NLL of every target under a short context of at most ``window`` tokens.

    Args:
        model: a Hugging Face causal LM (possibly wrapped); it is run in eval mode under
            ``torch.no_grad()`` and its training mode is restored afterwards.
        input_ids: ``(batch, N)`` token ids.
        window: tokens per window (the scorer's native context, e.g. 8192).
        stride: window step; ``None`` uses :func:`plan_stride` of each row's length.
        bos_token_id: when given, each later window's first token is replaced by it
            (for data whose sequences begin with BOS).
        windows_per_batch: windows per model call; ``None`` picks ``max(1, N // window)``
            (the token count of one long forward).
        first_window: ``False`` skips window 0; its targets (``t < window``) are then NaN
            for the caller to fill (the self scorer uses the long NLL there).
        attention_mask: ``(batch, N)``, 1 for real tokens; right padding only. Each row's
            windows are planned on its own real tokens (:func:`plan_batch_windows`), so
            a row's values are those of the row alone; targets at padding get NLL 0.
            Inside :func:`same_model_calls_across_processes` every process makes the
            same number of model calls; inside :func:`split_scoring` the processes of
            the group share the windows out.

    Returns:
        ``(batch, N - 1)`` float32 NLL in nats; column ``j`` is target ``t = j + 1``
        (token ``t`` predicted from the tokens before it), on ``input_ids``' device.
    """
    _check_input_ids(input_ids)
    _check_window(window)
    batch, seq_len = input_ids.shape
    out = torch.zeros(batch, max(seq_len - 1, 0), dtype=torch.float32, device=input_ids.device)
    if windows_per_batch is None:
        windows_per_batch = max(1, seq_len // window)
    if windows_per_batch < 1:
        raise TokenWeightError(f"windows_per_batch must be >= 1, got {windows_per_batch}")
    lengths = _valid_lengths(input_ids, attention_mask).tolist() if batch else []
    plan = plan_batch_windows(lengths, window, stride, first_window=first_window)
    if not first_window:  # window 0's targets are the caller's
        for row, length in enumerate(lengths):
            out[row, : min(window, length) - 1] = math.nan
    windows, calls = plan.windows, plan.model_calls(windows_per_batch)
    split = _split_group()
    if split is not None:
        _, size, rank = split
        windows = window_share(plan.windows, rank, size)
        # the largest share's calls, the same on every process of the group
        calls = math.ceil(math.ceil(plan.num_windows / size) / windows_per_batch)
    out = score_windows(
        model,
        input_ids,
        windows,
        bos_token_id=bos_token_id,
        windows_per_batch=windows_per_batch,
        model_calls=agreed_model_calls(calls),
        out=out,
    )
    if split is not None:
        import torch.distributed as dist

        # each target is another process's or 0 here: the sum over the group is exact
        # (NaN marks window 0's targets alike on every process)
        dist.all_reduce(out, group=split[0])
    return out


def score_windows(
    model: Any,
    input_ids: torch.Tensor,
    windows: Sequence[ScoringWindow],
    *,
    bos_token_id: int | None = None,
    windows_per_batch: int = 1,
    model_calls: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``windows`` (:class:`ScoringWindow`) of ``input_ids`` ``(batch, N)`` through
    ``model``, ``windows_per_batch`` per call (windows of equal length together), and write
    each window's NLL of its own targets into ``out`` ``(batch, N - 1)`` float32 (a new
    NaN-filled tensor when ``None``); other columns are left as they are.

    ``model_calls`` is the least number of model calls to make: when the windows need
    fewer, padding calls on two tokens follow, so that processes of a sharded run that
    agreed on a count (:func:`agreed_model_calls`) make the same calls. The model runs in
    eval mode without gradient; its training mode is restored afterwards.
    """
    if out is None:
        shape = (input_ids.shape[0], max(input_ids.shape[1] - 1, 0))
        out = torch.full(shape, math.nan, dtype=torch.float32, device=input_ids.device)
    ordered = sorted(windows, key=lambda w: -w.length)  # stable: equal lengths stay in order
    groups = [
        ordered[lo : lo + windows_per_batch] for lo in range(0, len(ordered), windows_per_batch)
    ]
    padding_calls = max(0, model_calls - len(groups))
    if not groups and not padding_calls:
        return out
    with _eval_mode(model), torch.no_grad():
        for group in groups:
            _score_group(model, input_ids, group, bos_token_id, out)
        for _ in range(padding_calls):
            _padding_call(model, input_ids)
    return out


def _check_input_ids(input_ids: Any) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise TokenWeightError(
            f"input_ids must be a (batch, tokens) tensor, got "
            f"{getattr(input_ids, 'shape', type(input_ids).__name__)}"
        )


def _valid_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Real tokens per sequence, ``(batch,)``: all of them, or the right-padded mask's count."""
    batch, seq_len = input_ids.shape
    if attention_mask is None:
        return torch.full((batch,), seq_len, device=input_ids.device)
    if attention_mask.shape != input_ids.shape:
        raise TokenWeightError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
            f"{tuple(input_ids.shape)}"
        )
    return right_padded_lengths(
        attention_mask,
        "short-context scoring needs right padding (valid tokens first, then padding); "
        "the attention_mask has gaps or left padding",
    )


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Run ``model`` in eval mode, restoring training mode afterwards."""
    was_training = bool(getattr(model, "training", False))
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _score_group(
    model: Any,
    input_ids: torch.Tensor,
    group: Sequence[ScoringWindow],
    bos_token_id: int | None,
    out: torch.Tensor,
) -> None:
    """One model call on ``group``; each window's own targets' NLL lands in ``out``."""
    from tokenweight.core.losses import model_token_nll

    device = input_ids.device
    width = max(w.length for w in group)
    rows = torch.tensor([w.row for w in group], device=device)
    starts = torch.tensor([w.start for w in group], device=device)
    sizes = torch.tensor([w.length for w in group], device=device)
    firsts = torch.tensor([w.first for w in group], device=device)
    offsets = torch.arange(width, device=device)
    inside = offsets[None, :] < sizes[:, None]
    positions = (starts[:, None] + offsets[None, :]).clamp(max=input_ids.shape[1] - 1)
    ids = input_ids[rows[:, None], positions]
    # a shorter window of the call is padded with its own first token, never a target;
    # causal attention keeps its real tokens from seeing that padding
    ids = torch.where(inside, ids, ids[:, :1])
    if bos_token_id is not None:
        ids[:, 0] = torch.where(starts > 0, torch.as_tensor(bos_token_id, device=device), ids[:, 0])
    own = inside & (offsets[None, :] >= firsts[:, None])
    labels = torch.where(own, ids, torch.full_like(ids, IGNORE_INDEX))
    nll = model_token_nll(model, ids, labels=labels)
    # nll[:, p - 1] is the target at window position p: target start + p, column start + p - 1
    own = own[:, 1:]
    cols = positions[:, 1:] - 1
    out[rows[:, None].expand_as(cols)[own], cols[own]] = nll[own].float().to(out.device)


def _padding_call(model: Any, input_ids: torch.Tensor) -> None:
    """A model call whose result is dropped: two tokens (id 0), one target."""
    from tokenweight.core.losses import model_token_nll

    ids = torch.zeros((1, 2), dtype=torch.long, device=input_ids.device)
    model_token_nll(model, ids, labels=ids)


# --------------------------------------------------------------------------- scorers
@runtime_checkable
class Scorer(Protocol):
    """``scorer(batch, long_nll, model=None) -> short_nll``, all ``(batch, N - 1)``.

    ``batch`` is a mapping with ``input_ids`` ``(batch, N)`` and optionally
    ``attention_mask`` ``(batch, N)``; ``long_nll`` is the long-context NLL of the same
    targets (``(batch, N - 1)`` float, nats). ``model`` is the model being trained. The
    result is the short-context NLL of the same targets, float32 nats, on ``long_nll``'s
    device. Any callable of this shape is a scorer; :class:`SelfScorer`,
    :class:`ModelScorer` and :class:`PrecomputedScorer` are the built-in ones.
    """

    def __call__(
        self, batch: Mapping[str, Any], long_nll: torch.Tensor, model: Any = None
    ) -> torch.Tensor: ...


def per_document(call: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Decorator for ``Scorer.__call__``: a packed batch (several documents per row, see
    :mod:`tokenweight.core.packed_batches`) is scored one document per row, so no window
    crosses a document start; the result is returned in the packed layout."""

    @functools.wraps(call)
    def score(
        self: Scorer, batch: Mapping[str, Any], long_nll: torch.Tensor, model: Any = None
    ) -> torch.Tensor:
        docs = find_documents(batch)
        if docs is None:
            return call(self, batch, long_nll, model)
        return docs.scatter_targets(call(self, docs.unpack(batch), docs.targets(long_nll), model))

    return score


def _ids_and_mask(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if "input_ids" not in batch:
        raise TokenWeightError("the batch has no 'input_ids'")
    return batch["input_ids"], batch.get("attention_mask")


@dataclass
class _WindowSettings:
    window: int
    stride: int | None = None
    bos_token_id: int | None = None
    windows_per_batch: int | None = None

    def __post_init__(self) -> None:
        _check_window(self.window)


class SelfScorer:
    """The model being trained scores its own targets ("unfrozen", weight-shared).

    Windows run without gradient in eval mode; targets inside window 0 have the same
    context in both passes, so they reuse the long NLL (score 0) and window 0 is not run.

    A row (or packed document) no longer than ``window`` has no shorter context: all its
    scores are 0 and its weights uniform. A window above the model's positions is refused
    (:meth:`check_model`, on the first call), as is one covering every training sequence
    (:meth:`check_sequence_length`, by ``TokenWeightTrainer``); rows
    shorter than the window are legitimate (SFT data) and reported once
    (:meth:`note_no_context`).
    """

    def __init__(
        self,
        window: int,
        stride: int | None = None,
        bos_token_id: int | None = None,
        windows_per_batch: int | None = None,
        model: Any = None,
    ) -> None:
        self.settings = _WindowSettings(window, stride, bos_token_id, windows_per_batch)
        self.model = model
        self._checked_model: int | None = None  # id() of the model check_model passed
        self._warned_no_context = False
        if model is not None:
            self.check_model(model)

    def check_model(self, model: Any) -> None:
        """Refuse a window above ``model``'s positions (``max_position_embeddings``): the
        short context would be longer than the context the model is made for, and on
        sequences within its positions every weight would be uniform. (A window equal to
        the positions is the method's own setting when training past them, e.g. a RoPE
        model extended by its theta alone.)"""
        from tokenweight.core.losses import unwrap_model
        from tokenweight.infra.models import max_positions

        positions = max_positions(unwrap_model(model))
        window = self.settings.window
        if positions is not None and window > positions:
            raise TokenWeightError(
                f"SelfScorer(window={window}): the model has {positions} positions "
                "(max_position_embeddings), fewer than the window: on sequences within them "
                "every target would be scored with its whole context and every weight "
                f"would be uniform. Choose a window of at most {positions} (the model's "
                "native context before any extension)"
            )
        self._checked_model = id(model)

    def check_sequence_length(self, longest: int, what: str) -> None:
        """Refuse a window that covers even the longest sequence (``longest`` tokens) the
        run will see; ``what`` names where that length comes from."""
        require_short_window(self.settings.window, longest, f"SelfScorer with {what}")

    def note_no_context(self, targets: int, total: int) -> None:
        """Warn, once per scorer, that ``targets`` of a batch's ``total`` targets lie in
        rows no longer than the window (they get uniform weights)."""
        if targets <= 0 or self._warned_no_context:
            return
        self._warned_no_context = True
        logger.warning(
            "SelfScorer(window=%d): %d of the %d targets (%.1f%%) of a batch lie in rows of "
            "at most %d tokens, which have no shorter context: their weights are uniform. "
            "Expected for rows shorter than the window (SFT data); training logs the share "
            "of such targets as no_context_share. (Shown once.)",
            self.settings.window,
            targets,
            total,
            100.0 * targets / max(total, 1),
            self.settings.window,
        )

    @per_document
    def __call__(
        self, batch: Mapping[str, Any], long_nll: torch.Tensor, model: Any = None
    ) -> torch.Tensor:
        model = model if model is not None else self.model
        if model is None:
            raise TokenWeightError("the self scorer needs the model being trained (model=...)")
        if self._checked_model != id(model):
            self.check_model(model)
        input_ids, attention_mask = _ids_and_mask(batch)
        s = self.settings
        short = short_context_nll(
            model,
            input_ids,
            window=s.window,
            stride=s.stride,
            bos_token_id=s.bos_token_id,
            windows_per_batch=s.windows_per_batch,
            first_window=False,
            attention_mask=attention_mask,
        )
        head = s.window - 1
        short[:, :head] = long_nll[:, :head].detach().float()
        return short


def _vocab_identity(obj: Any) -> tuple[str, dict[str, Any]]:
    """(kind, fields) describing the vocabulary of a tokenizer, model or config."""
    if hasattr(obj, "convert_tokens_to_ids") and hasattr(obj, "__len__"):
        return "tokenizer", {
            "vocabulary size": len(obj),
            "bos_token_id": getattr(obj, "bos_token_id", None),
            "eos_token_id": getattr(obj, "eos_token_id", None),
        }
    config = getattr(obj, "config", obj)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    eos = getattr(text, "eos_token_id", None)
    if isinstance(eos, list) and len(eos) == 1:
        eos = eos[0]
    return "config", {
        "vocabulary size": getattr(text, "vocab_size", None),
        "bos_token_id": getattr(text, "bos_token_id", None),
        "eos_token_id": eos,
    }


def vocabulary_differences(a: Any, b: Any) -> list[str]:
    """What differs between the vocabularies of ``a`` and ``b`` (tokenizers, models or
    configs). Sizes are compared like with like; a tokenizer against a model checks that
    the tokenizer fits the model's embedding (models often pad it)."""
    kind_a, ida = _vocab_identity(a)
    kind_b, idb = _vocab_identity(b)
    diffs = []
    for key in ("bos_token_id", "eos_token_id"):
        if ida[key] is not None and idb[key] is not None and ida[key] != idb[key]:
            diffs.append(f"{key} {ida[key]} vs {idb[key]}")
    size_a, size_b = ida["vocabulary size"], idb["vocabulary size"]
    if size_a is not None and size_b is not None:
        if kind_a == kind_b and size_a != size_b:
            diffs.append(f"vocabulary size {size_a} vs {size_b}")
        elif kind_a == "tokenizer" and kind_b == "config" and size_a > size_b:
            diffs.append(f"tokenizer size {size_a} exceeds the model's vocabulary {size_b}")
        elif kind_a == "config" and kind_b == "tokenizer" and size_b > size_a:
            diffs.append(f"model vocabulary {size_a} is smaller than the tokenizer's {size_b}")
    return diffs


class ModelScorer:
    """A frozen scorer model: the starting checkpoint at its original RoPE settings, or a
    smaller model sharing the tokenizer (``docs/method.md#scorers``).

    It runs on its own ``device`` and ``dtype`` (default: where its parameters are), and
    before any compute it checks that its vocabulary matches ``reference`` (the trained
    model, its config or tokenizer; with ``reference_tokenizer``, the trained model's
    tokenizer, also that tokenizer's full fingerprint) and, on the first call, the trained
    model passed in. :meth:`check_compatible` is the one place these checks live.
    """

    def __init__(
        self,
        model: Any,
        window: int,
        stride: int | None = None,
        bos_token_id: int | None = None,
        windows_per_batch: int | None = None,
        *,
        tokenizer: Any = None,
        reference: Any = None,
        reference_tokenizer: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.settings = _WindowSettings(window, stride, bos_token_id, windows_per_batch)
        if device is not None:
            model = model.to(device)
        if dtype is not None:
            model = model.to(dtype)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self._checked = False
        if reference is not None:
            self.check_compatible(reference, reference_tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_compatible(self, trained: Any, trained_tokenizer: Any = None) -> None:
        """Raise :class:`TokenWeightError` if ``trained`` (a tokenizer, model or config)
        does not share this scorer's vocabulary.

        Sizes and special-token ids are compared with :func:`vocabulary_differences`
        (scorer model and, when known, scorer tokenizer against ``trained``). When both
        this scorer's tokenizer and ``trained_tokenizer`` are known, their fingerprints
        (:func:`tokenweight.infra.models.tokenizer_identity`: size, vocabulary hash, special
        tokens) must also be equal.
        """
        diffs = vocabulary_differences(self.model, trained)
        if self.tokenizer is not None:
            diffs += vocabulary_differences(self.tokenizer, trained)
            if trained_tokenizer is not None:
                from tokenweight.infra.models import compare_tokenizer_identity, tokenizer_identity

                diffs += compare_tokenizer_identity(
                    tokenizer_identity(self.tokenizer), tokenizer_identity(trained_tokenizer)
                )
        if diffs:
            raise TokenWeightError(
                "the scorer model does not share the trained model's tokenizer: "
                + "; ".join(dict.fromkeys(diffs))
                + " (scorer vs trained). Use a scorer from the same model family."
            )
        self._checked = True

    @per_document
    def __call__(
        self, batch: Mapping[str, Any], long_nll: torch.Tensor, model: Any = None
    ) -> torch.Tensor:
        if model is not None and not self._checked:
            from tokenweight.core.losses import unwrap_model

            self.check_compatible(unwrap_model(model))
        input_ids, attention_mask = _ids_and_mask(batch)
        vocab = _vocab_identity(self.model)[1]["vocabulary size"]
        if vocab is not None and input_ids.numel() and int(input_ids.max()) >= vocab:
            raise TokenWeightError(
                f"token id {int(input_ids.max())} is outside the scorer's vocabulary ({vocab})"
            )
        s = self.settings
        device = self.device
        short = short_context_nll(
            self.model,
            input_ids.to(device),
            window=s.window,
            stride=s.stride,
            bos_token_id=s.bos_token_id,
            windows_per_batch=s.windows_per_batch,
            first_window=True,
            attention_mask=None if attention_mask is None else attention_mask.to(device),
        )
        return short.to(long_nll.device)


class PrecomputedScorer:
    """Short NLL stored with the data (``tokenweight score``), as ``batch["short_nll"]``."""

    @per_document
    def __call__(
        self, batch: Mapping[str, Any], long_nll: torch.Tensor, model: Any = None
    ) -> torch.Tensor:
        if "short_nll" not in batch:
            raise TokenWeightError(
                "the batch has no 'short_nll': the precomputed scorer needs data scored by "
                "`tokenweight score` (or choose scorer 'self' or 'model')"
            )
        short = batch["short_nll"]
        if not isinstance(short, torch.Tensor):
            short = torch.as_tensor(short)
        if short.shape != long_nll.shape:
            raise TokenWeightError(
                f"stored short_nll has shape {tuple(short.shape)} but the batch has "
                f"{tuple(long_nll.shape)} targets; were the scores made for another "
                "sequence length?"
            )
        return short.to(device=long_nll.device, dtype=torch.float32)


def build_self_scorer(inputs: ScorerInputs) -> SelfScorer:
    """The ``self`` kind (:data:`tokenweight.core.scorer_kinds.SCORERS`)."""
    if inputs.window is None:
        raise TokenWeightError("scorer 'self' needs a window (tokens)")
    return SelfScorer(inputs.window, inputs.stride, inputs.bos_token_id, inputs.windows_per_batch)


def build_model_scorer(inputs: ScorerInputs) -> ModelScorer:
    """The ``model`` kind (:data:`tokenweight.core.scorer_kinds.SCORERS`)."""
    if inputs.window is None:
        raise TokenWeightError("scorer 'model' needs a window (tokens)")
    if inputs.scorer_model is None:
        raise TokenWeightError("scorer 'model' needs scorer_model (a model or its source)")
    return ModelScorer(
        inputs.scorer_model,
        inputs.window,
        inputs.stride,
        inputs.bos_token_id,
        inputs.windows_per_batch,
        **inputs.model_kwargs,
    )


def build_precomputed_scorer(inputs: ScorerInputs) -> PrecomputedScorer:
    """The ``precomputed`` kind (:data:`tokenweight.core.scorer_kinds.SCORERS`)."""
    return PrecomputedScorer()


def build_scorer(
    kind: str,
    *,
    window: int | None = None,
    stride: int | None = None,
    bos_token_id: int | None = None,
    windows_per_batch: int | None = None,
    scorer_model: Any = None,
    **model_kwargs: Any,
) -> Scorer | None:
    """A scorer by kind name (:data:`tokenweight.core.scorer_kinds.SCORERS`: ``self``,
    ``model``, ``reference``, ``precomputed``, or ``none`` for uniform loss, which
    returns ``None``). ``model_kwargs`` go to :class:`ModelScorer`."""
    inputs = ScorerInputs(
        window, stride, bos_token_id, windows_per_batch, scorer_model, dict(model_kwargs)
    )
    scorer: Scorer | None = scorer_kind(kind, "scorer").build(inputs)
    return scorer
