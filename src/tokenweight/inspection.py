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

from tokenweight.errors import TokenWeightError
from tokenweight.files import atomic_write_json, atomic_write_text
from tokenweight.weighting import Scheme, compute_weights

__all__ = ["Inspection", "inspect_passage", "tokenize_passage", "write_inspection"]


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
    from tokenweight.losses import model_token_nll
    from tokenweight.scoring import plan_stride, short_context_nll

    scheme = Scheme.coerce(scheme)
    ids, pieces = tokenize_passage(tokenizer, text, max_tokens)
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
def _rgba(value: float, top: float, rgb: tuple[int, int, int]) -> str:
    alpha = 0.0 if top <= 0 or not math.isfinite(value) else min(max(value / top, 0.0), 1.0)
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha * 0.85:.3f})"


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


_VIEWS = {
    # name: (label, colour for positive values, colour for negative values)
    "gain": ("gain from long context (short - long NLL)", (33, 102, 172), (178, 24, 43)),
    "weight": ("weight", (27, 120, 55), (178, 24, 43)),
    "long": ("long-context NLL", (230, 85, 13), (0, 0, 0)),
    "short": ("short-context NLL", (117, 107, 177), (0, 0, 0)),
}

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
label {{ margin-right: 1em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 8px; border-bottom: 1px solid #eee; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{subtitle}</p>
<p>Colour by:
{radios}
</p>
<p>Hover a token for its numbers. Blue: the long context makes the token more likely;
red: less likely. Targets in the first window have the same context in both passes.</p>
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
    """The token heat map page. Every piece of text is HTML-escaped."""
    values = {
        "gain": result.gain,
        "weight": result.weight,
        "long": result.long_nll,
        "short": result.short_nll,
    }
    views = []
    for name, (label, pos, neg) in _VIEWS.items():
        vals = values[name]
        top = _quantile([abs(v) for v in vals], 0.98) or 1.0
        spans = [f'<span title="BOS / first token">{html.escape(result.tokens[0])}</span>']
        for j, v in enumerate(vals):
            t = j + 1
            colour = _rgba(v, top, pos) if v >= 0 else _rgba(-v, top, neg)
            tip = (
                f"token {t}: {result.tokens[t]!r}\nlong NLL {result.long_nll[j]:.3f}\n"
                f"short NLL {result.short_nll[j]:.3f}\ngain {result.gain[j]:+.3f}\n"
                f"weight {result.weight[j]:.3f}"
            )
            spans.append(
                f'<span style="background:{colour}" title="{html.escape(tip, quote=True)}">'
                f"{html.escape(result.tokens[t])}</span>"
            )
        shown = " shown" if name == "gain" else ""
        views.append(
            f'<div class="view{shown}" id="view-{name}"><h3>{html.escape(label)}</h3>'
            f'<div class="passage">{"".join(spans)}</div></div>'
        )
    radios = "\n".join(
        f'<label><input type="radio" name="view" value="{name}"'
        f"{' checked' if name == 'gain' else ''}> {html.escape(label)}</label>"
        for name, (label, _, _) in _VIEWS.items()
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


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "⏎").replace("`", "'")


def top_gains_markdown(result: Inspection, k: int = 15) -> str:
    lines = [
        "| pos | before | token | long NLL | short NLL | gain | weight |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in result.top_gains(k):
        lines.append(
            f"| {r['position']} | {_md_cell(r['before'])} | **{_md_cell(r['token'])}** | "
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


def write_inspection(result: Inspection, out_dir: str | Path, title: str | None = None) -> dict:
    """Write ``inspect.html``, ``weights.png``, ``top_tokens.md`` and ``inspect.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "html": out / "inspect.html",
        "histogram": out / "weights.png",
        "top_tokens": out / "top_tokens.md",
        "json": out / "inspect.json",
    }
    atomic_write_text(paths["html"], render_html(result, title or "tokenweight inspect"))
    plot_weight_histogram(result, paths["histogram"])
    atomic_write_text(paths["top_tokens"], top_gains_markdown(result))
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
    atomic_write_json(paths["json"], data)
    return {k: str(v) for k, v in paths.items()}
