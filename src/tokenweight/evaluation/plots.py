"""PNG figures of an evaluation: probe accuracy heat maps and NLL against position.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, so the caller's
backend is left alone) and written atomically. Several models appear side by side
(one heat map panel each; one line each, plus a panel of differences from the first
model).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenweight.infra.files import atomic_write_bytes

__all__ = [
    "HeatmapPanel",
    "nll_by_position_figure",
    "plot_nll_by_position",
    "plot_probe_heatmap",
    "save_png",
]


@dataclass(frozen=True)
class HeatmapPanel:
    """One model's probe results: ``correct[d][l]`` of ``total[d][l]`` trials at
    ``depths[d]`` (fractions) and ``lengths[l]`` (tokens)."""

    label: str
    lengths: Sequence[int]
    depths: Sequence[float]
    correct: Sequence[Sequence[int]]
    total: Sequence[Sequence[int]]


def save_png(fig, path: str | Path) -> Path:
    """Render a matplotlib ``Figure`` with the Agg canvas (no pyplot, no global backend
    change) and write it as PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def _tokens(n: float) -> str:
    return f"{n / 1024:g}K" if n >= 1024 and n % 256 == 0 else f"{n:g}"


def plot_probe_heatmap(task: str, panels: Sequence[HeatmapPanel], path: str | Path) -> Path:
    """Accuracy heat map (depth rows x length columns), one panel per model, to ``path``."""
    from matplotlib.figure import Figure

    n_len = max(len(p.lengths) for p in panels)
    n_dep = max(len(p.depths) for p in panels)
    width = max(3.2, 0.9 * n_len + 1.4)
    fig = Figure(figsize=(width * len(panels) + 0.8, 0.45 * n_dep + 1.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, panel in zip(axes, panels):
        acc = [
            [c / t if t else math.nan for c, t in zip(row_c, row_t)]
            for row_c, row_t in zip(panel.correct, panel.total)
        ]
        image = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        for d, (row_c, row_t) in enumerate(zip(panel.correct, panel.total)):
            for col, (c, t) in enumerate(zip(row_c, row_t)):
                if t:
                    dark = not 0.2 <= c / t <= 0.85  # the colour map's dark ends
                    color = "white" if dark else "black"
                    ax.text(col, d, f"{c}/{t}", ha="center", va="center", fontsize=8, color=color)
        ax.set_xticks(range(len(panel.lengths)), [_tokens(x) for x in panel.lengths])
        ax.set_yticks(range(len(panel.depths)), [f"{x:.0%}" for x in panel.depths])
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(panel.label)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="accuracy", shrink=0.9)
    fig.suptitle(f"{task}: exact-match accuracy")
    return save_png(fig, path)


def _finite(y: float | None) -> bool:
    return y is not None and math.isfinite(y)


def nll_by_position_figure(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    native_context: Sequence[int | None] = (),
):
    """The matplotlib ``Figure`` of :func:`plot_nll_by_position`.

    Top panel: mean NLL (nats) against target position (tokens), one line per model.
    With two models or more, a bottom panel shows each model's NLL minus the first
    model's at the same positions (nats; below zero: better than the first model), since
    similar models overlap in the top panel; positions where either NLL is missing
    (``None`` or NaN) are left out. Model ``i`` has colour ``C{i}`` in both panels.
    """
    from matplotlib.figure import Figure

    two = len(curves) > 1
    fig = Figure(figsize=(7.0, 6.4 if two else 4.0), layout="constrained")
    axes = fig.subplots(2 if two else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    right = 0.0
    for i, (label, xs, ys) in enumerate(curves):
        ax.plot(list(xs), list(ys), marker=".", linewidth=1.4, label=label, color=f"C{i}")
        right = max([right, *xs])
    if two:
        diff = axes[1]
        base_label, base_x, base_y = curves[0]
        base = {x: y for x, y in zip(base_x, base_y) if _finite(y)}
        diff.axhline(0.0, color="C0", linewidth=1.4, label=base_label)
        for i, (label, xs, ys) in enumerate(curves[1:], start=1):
            shared = [(x, y - base[x]) for x, y in zip(xs, ys) if x in base and _finite(y)]
            diff.plot(
                [x for x, _ in shared],
                [d for _, d in shared],
                marker=".",
                linewidth=1.4,
                label=label,
                color=f"C{i}",
            )
        diff.set_ylabel(f"NLL - NLL of {base_label} (nats)")
        diff.set_title(f"difference from {base_label} (below 0: lower NLL)")
    for a in axes:
        for n in sorted({n for n in native_context if n}):
            if n < right:
                a.axvline(n, color="grey", linestyle="--", linewidth=1)
                a.annotate(
                    f"native {_tokens(n)}",
                    (n, 1),
                    xycoords=("data", "axes fraction"),
                    xytext=(3, -12),
                    textcoords="offset points",
                    fontsize=8,
                    color="grey",
                )
        a.grid(alpha=0.3)
        a.legend()
    axes[-1].set_xlabel("target position (tokens)")
    ax.set_ylabel("mean NLL (nats)")
    ax.set_title("NLL by position")
    return fig


def plot_nll_by_position(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    native_context: Sequence[int | None] = (),
) -> Path:
    """Write :func:`nll_by_position_figure` of ``curves`` as PNG to ``path``.

    ``curves``: ``(label, positions, mean_nll)`` per model (tokens, nats).
    ``native_context``: context lengths to mark with a dashed vertical line (e.g. the
    models' trained lengths).
    """
    return save_png(nll_by_position_figure(curves, native_context=native_context), path)
