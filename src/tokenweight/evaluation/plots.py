"""PNG figures of an evaluation: probe accuracy heat maps and NLL against position.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, so the caller's
backend is left alone) and written atomically. Several models appear side by side
(one heat map panel each; one line each).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenweight.files import atomic_write_bytes

__all__ = ["HeatmapPanel", "plot_nll_by_position", "plot_probe_heatmap", "save_png"]


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


def plot_nll_by_position(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    native_context: Sequence[int | None] = (),
) -> Path:
    """Mean NLL (nats) against target position (tokens), one line per model.

    ``curves``: ``(label, positions, mean_nll)`` per model. ``native_context``: context
    lengths to mark with a dashed vertical line (e.g. the models' trained lengths).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    right = 0.0
    for label, xs, ys in curves:
        ax.plot(list(xs), list(ys), marker=".", linewidth=1.4, label=label)
        right = max([right, *xs])
    for n in sorted({n for n in native_context if n}):
        if n < right:
            ax.axvline(n, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                f"native {_tokens(n)}",
                (n, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
    ax.set_xlabel("target position (tokens)")
    ax.set_ylabel("mean NLL (nats)")
    ax.set_title("NLL by position")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)
