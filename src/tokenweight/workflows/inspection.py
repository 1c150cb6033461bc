"""Look at one passage token by token: long NLL, short NLL, score and weight.

The idea of the paper's Table 1: tokens whose prediction improves most with long context
(a character's name introduced thousands of tokens earlier) are the ones token weighting
up-weights. :func:`inspect_passage` computes the numbers; :func:`write_inspection` writes
an HTML page (every token coloured, numbers on hover, token text HTML-escaped), a PNG
histogram of the weights, and JSON/markdown lists of the tokens that gain most.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenweight.core.weighting import Scheme, compute_weights
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.files import atomic_write_json, atomic_write_text, check_output_dir

__all__ = [
    "INSPECT_FILES",
    "Inspection",
    "check_inspect_out",
    "inspect_passage",
    "tokenize_passage",
    "write_inspection",
]

# what an inspection folder holds; inspect.json (first) marks an earlier inspection
INSPECT_FILES = ("inspect.json", "inspect.html", "weights.png", "top_tokens.md")


@dataclass
class Inspection:
    """Per-target numbers for one passage; index ``j`` is target token ``j + 1``.

    ``tokens`` holds the text of every token of the passage (``len = N``); the other
    lists have one entry per target (``N - 1``). NLL in nats; ``gain = short - long``
    (nats the long context saves); ``weight`` under ``scheme``.
    """

    tokens: list[str]
    token_ids: list[int]
    long_nll: list[float]
    short_nll: list[float]
    weight: list[float]
    scheme: str
    window: int
    stride: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gain(self) -> list[float]:
        return [s - ln for ln, s in zip(self.long_nll, self.short_nll)]

    def top_gains(self, k: int = 20, context: int = 8) -> list[dict[str, Any]]:
        """The ``k`` targets that gain most from long context, with a little text around."""
        gains = self.gain
        order = sorted(range(len(gains)), key=lambda j: -gains[j])[:k]
        rows = []
        for j in order:
            t = j + 1
            rows.append(
                {
                    "position": t,
                    "token": self.tokens[t],
                    "before": "".join(self.tokens[max(0, t - context) : t]),
                    "long_nll": self.long_nll[j],
                    "short_nll": self.short_nll[j],
                    "gain": gains[j],
                    "weight": self.weight[j],
                }
            )
        return rows

    def summary(self) -> dict[str, float]:
        n = len(self.long_nll)
        if n == 0:
            return {}
        gains = self.gain
        w = torch.tensor(self.weight)
        return {
            "targets": n,
            "mean_long_nll": sum(self.long_nll) / n,
            "mean_short_nll": sum(self.short_nll) / n,
            "share_gain_over_1_nat": sum(g > 1 for g in gains) / n,
            "share_gain_over_2_nats": sum(g > 2 for g in gains) / n,
            "weight_mean": float(w.mean()),
            "weight_std": float(w.std()) if n > 1 else 0.0,
            "weight_max": float(w.max()),
            "weight_nonzero": float((w > 0).float().mean()),
        }


def tokenize_passage(
    tokenizer: Any, text: str, max_tokens: int | None = None
) -> tuple[list[int], list[str]]:
    """Token ids (BOS first when the tokenizer has one) and each token's exact text."""
    if not text.strip():
        raise TokenWeightError("the passage is empty")
    bos = getattr(tokenizer, "bos_token_id", None)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        pieces = [text[a:b] for a, b in enc["offset_mapping"]]
        # byte-level tokens split inside a character share its span: show it once
        pieces = [
            p if i == 0 or enc["offset_mapping"][i] != enc["offset_mapping"][i - 1] else ""
            for i, p in enumerate(pieces)
        ]
    except (NotImplementedError, TypeError, KeyError):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        pieces = [tokenizer.decode([i]) for i in ids]
    if bos is not None:
        ids = [bos, *ids]
        pieces = [tokenizer.convert_ids_to_tokens(bos) or "", *pieces]
    if max_tokens is not None:
        ids, pieces = ids[:max_tokens], pieces[:max_tokens]
    if len(ids) < 2:
        raise TokenWeightError("the passage needs at least two tokens")
    return ids, pieces


def inspect_passage(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    window: int,
    scheme: Scheme | str = "dense:0.75",
    stride: int | None = None,
    max_tokens: int | None = None,
    short_model: Any = None,
) -> Inspection:
    """Long NLL (whole passage), short NLL (``window``-token windows of ``short_model``,
    default the same model) and weights under ``scheme`` for every token of ``text``."""
    from tokenweight.core.losses import model_token_nll
    from tokenweight.core.scoring import plan_stride, require_short_window, short_context_nll

    scheme = Scheme.coerce(scheme)
    ids, pieces = tokenize_passage(tokenizer, text, max_tokens)
    require_short_window(window, len(ids), "--window")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    stride = stride or plan_stride(len(ids), window)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            long = model_token_nll(model, input_ids).float()
    finally:
        model.train(was_training)
    scorer = short_model if short_model is not None else model
    short = short_context_nll(
        scorer,
        input_ids.to(next(scorer.parameters()).device),
        window=window,
        stride=stride,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
    ).to(long.device)
    weights = compute_weights(long, short, scheme)
    return Inspection(
        tokens=pieces,
        token_ids=ids,
        long_nll=long[0].tolist(),
        short_nll=short[0].tolist(),
        weight=weights[0].tolist(),
        scheme=str(scheme),
        window=window,
        stride=stride,
    )


# ------------------------------------------------------------------ output
@dataclass(frozen=True)
class ColourScale:
    """A fixed colour scale of one quantity, the same on every page and every view.

    ``low`` .. ``high`` (in ``unit``) map to colours: ``0`` is white, ``high`` is
    ``positive`` at full strength, ``low`` (when below 0) is ``negative`` at full
    strength; strength grows linearly in between, values outside are clipped.
    """

    label: str
    unit: str
    low: float
    high: float
    positive: tuple[int, int, int]
    negative: tuple[int, int, int]
    ticks: tuple[float, ...]

    def colour(self, value: float) -> str:
        """CSS colour of ``value`` (transparent for NaN)."""
        if not math.isfinite(value):
            return "rgba(0,0,0,0.000)"
        if value >= 0:
            strength, rgb = (min(value / self.high, 1.0) if self.high > 0 else 0.0), self.positive
        else:
            strength = min(value / self.low, 1.0) if self.low < 0 else 0.0
            rgb = self.negative
        return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{strength * 0.85:.3f})"


# The NLL views (long and short) share one scale, so one colour is one NLL in both.
_NLL_SCALE = ColourScale(
    "NLL", "nats", 0.0, 10.0, (230, 85, 13), (0, 0, 0), (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)
)
SCALES = {
    # gain = short - long NLL: symmetric, blue where the long context helps
    "gain": ColourScale(
        "gain", "nats", -4.0, 4.0, (33, 102, 172), (178, 24, 43), (-4.0, -2.0, 0.0, 2.0, 4.0)
    ),
    # weights average 1 over a sequence for every normalized scheme
    "weight": ColourScale(
        "weight", "", 0.0, 5.0, (27, 120, 55), (178, 24, 43), (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    ),
    "long": _NLL_SCALE,
    "short": _NLL_SCALE,
}

_VIEWS = {
    "gain": "gain from long context (short - long NLL)",
    "weight": "weight",
    "long": "long-context NLL",
    "short": "short-context NLL",
}


def _legend(scale: ColourScale) -> str:
    """A colour bar of ``scale`` with its ticks (values in the scale's unit)."""
    steps = 40
    span = scale.high - scale.low
    cells = "".join(
        f'<span style="background:{scale.colour(scale.low + span * (k + 0.5) / steps)}"></span>'
        for k in range(steps)
    )
    unit = f" {scale.unit}" if scale.unit else ""
    ticks = []
    for t in scale.ticks:
        text = f"{t:g}"
        if t == scale.high:
            text = "\u2265" + text  # clipped above
        elif t == scale.low and t < 0:
            text = "\u2264" + text  # clipped below
        left = 100.0 * (t - scale.low) / span
        ticks.append(
            f'<span class="tick" style="left:{left:.1f}%" data-value="{t:g}">'
            f"{html.escape(text)}</span>"
        )
    return (
        f'<div class="legend"><div class="legend-label">'
        f"{html.escape(scale.label + (' (' + scale.unit + ')' if scale.unit else ''))}"
        f'</div><div class="legend-bar">{cells}</div>'
        f'<div class="legend-ticks">{"".join(ticks)}</div>'
        f'<div class="legend-note">{html.escape(f"fixed scale: {scale.low:g} to {scale.high:g}{unit}; values beyond are clipped")}</div></div>'
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
.passage {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.7;
  border: 1px solid #ccc; padding: 1em; }}
.passage span {{ border-radius: 2px; }}
.view {{ display: none; }}
.view.shown {{ display: block; }}
.legend {{ margin: 0.5em 0 1em 0; width: 28em; font-size: 0.85em; }}
.legend-bar {{ display: flex; height: 1em; border: 1px solid #ccc; }}
.legend-bar span {{ flex: 1; }}
.legend-ticks {{ position: relative; height: 1.3em; }}
.legend-ticks .tick {{ position: absolute; transform: translateX(-50%); }}
.legend-note {{ color: #666; }}
label {{ margin-right: 1em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 8px; border-bottom: 1px solid #eee; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{subtitle}</p>
<p>Colour by:
{radios}
</p>
<p>Hover a token for its numbers. Gain view: blue, the long context makes the token more
likely; red, less likely. Targets in the first window have the same context in both
passes. Every view has a fixed colour scale (the same on every page): one colour is one
value, and the long and short NLL views share their scale.</p>
{views}
<h2>Tokens that gain most from long context</h2>
{table}
<script>
document.querySelectorAll('input[name=view]').forEach(function (r) {{
  r.addEventListener('change', function () {{
    document.querySelectorAll('.view').forEach(function (v) {{
      v.classList.toggle('shown', v.id === 'view-' + r.value); }});
  }});
}});
</script>
</body></html>
"""


def render_html(result: Inspection, title: str = "tokenweight inspect") -> str:
    """The token heat map page. Every piece of text is HTML-escaped.

    Each view colours tokens on its fixed :data:`SCALES` entry (NLL and gain in nats),
    shown as a legend bar with ticks; the colour of a value never depends on the passage.
    """
    values = {
        "gain": result.gain,
        "weight": result.weight,
        "long": result.long_nll,
        "short": result.short_nll,
    }
    views = []
    for name, label in _VIEWS.items():
        scale = SCALES[name]
        spans = [f'<span title="BOS / first token">{html.escape(result.tokens[0])}</span>']
        for j, v in enumerate(values[name]):
            t = j + 1
            tip = (
                f"token {t}: {result.tokens[t]!r}\nlong NLL {result.long_nll[j]:.3f}\n"
                f"short NLL {result.short_nll[j]:.3f}\ngain {result.gain[j]:+.3f}\n"
                f"weight {result.weight[j]:.3f}"
            )
            spans.append(
                f'<span style="background:{scale.colour(v)}" '
                f'title="{html.escape(tip, quote=True)}">{html.escape(result.tokens[t])}</span>'
            )
        shown = " shown" if name == "gain" else ""
        views.append(
            f'<div class="view{shown}" id="view-{name}"><h3>{html.escape(label)}</h3>'
            f'{_legend(scale)}<div class="passage">{"".join(spans)}</div></div>'
        )
    radios = "\n".join(
        f'<label><input type="radio" name="view" value="{name}"'
        f"{' checked' if name == 'gain' else ''}> {html.escape(label)}</label>"
        for name, label in _VIEWS.items()
    )
    rows = [
        "<table><tr><th>pos</th><th>before</th><th>token</th><th>long</th><th>short</th>"
        "<th>gain</th><th>weight</th></tr>"
    ]
    for r in result.top_gains(20):
        rows.append(
            f"<tr><td>{r['position']}</td><td>{html.escape(r['before'])}</td>"
            f"<td><b>{html.escape(r['token'])}</b></td><td>{r['long_nll']:.2f}</td>"
            f"<td>{r['short_nll']:.2f}</td><td>{r['gain']:+.2f}</td>"
            f"<td>{r['weight']:.2f}</td></tr>"
        )
    rows.append("</table>")
    subtitle = (
        f"{len(result.tokens)} tokens, window {result.window}, stride {result.stride}, "
        f"scheme {result.scheme}"
    )
    return _PAGE.format(
        title=html.escape(title),
        subtitle=html.escape(subtitle),
        radios=radios,
        views="\n".join(views),
        table="\n".join(rows),
    )


def top_gains_markdown(result: Inspection, k: int = 15) -> str:
    from tokenweight.infra.markdown import md_escape

    lines = [
        "| pos | before | token | long NLL | short NLL | gain | weight |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in result.top_gains(k):
        lines.append(
            f"| {r['position']} | {md_escape(r['before'])} | **{md_escape(r['token'])}** | "
            f"{r['long_nll']:.2f} | {r['short_nll']:.2f} | {r['gain']:+.2f} | "
            f"{r['weight']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot_weight_histogram(result: Inspection, path: Path) -> None:
    from matplotlib.figure import Figure

    from tokenweight.evaluation.plots import save_png

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    axes[0].hist(result.weight, bins=60, color="#1b7837")
    axes[0].set_xlabel(f"weight ({result.scheme})")
    axes[0].set_ylabel("targets")
    axes[0].set_yscale("log")
    axes[0].set_title("weights")
    axes[1].hist(result.gain, bins=60, color="#2166ac")
    axes[1].set_xlabel("short NLL - long NLL (nats)")
    axes[1].set_yscale("log")
    axes[1].set_title("gain from long context")
    fig.tight_layout()
    save_png(fig, path)


def check_inspect_out(out_dir: str | Path) -> None:
    """``out_dir`` must be new, empty or an earlier ``tokenweight inspect`` output."""
    check_output_dir(
        out_dir, "tokenweight inspect output", markers=INSPECT_FILES[:1], known=INSPECT_FILES
    )


def write_inspection(result: Inspection, out_dir: str | Path, title: str | None = None) -> dict:
    """Write ``inspect.html``, ``weights.png``, ``top_tokens.md`` and ``inspect.json``."""
    out = Path(out_dir)
    check_inspect_out(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "html": out / "inspect.html",
        "histogram": out / "weights.png",
        "top_tokens": out / "top_tokens.md",
        "json": out / "inspect.json",
    }
    data = {
        "scheme": result.scheme,
        "window": result.window,
        "stride": result.stride,
        "summary": result.summary(),
        "top_gains": result.top_gains(50),
        "tokens": result.tokens,
        "token_ids": result.token_ids,
        "long_nll": result.long_nll,
        "short_nll": result.short_nll,
        "weight": result.weight,
        **({"meta": result.meta} if result.meta else {}),
    }
    atomic_write_json(paths["json"], data)  # first: it marks the folder as an inspection
    atomic_write_text(paths["html"], render_html(result, title or "tokenweight inspect"))
    plot_weight_histogram(result, paths["histogram"])
    atomic_write_text(paths["top_tokens"], top_gains_markdown(result))
    return {k: str(v) for k, v in paths.items()}
