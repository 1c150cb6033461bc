"""Turn the ``results.json`` of ``gpu_checks.sh`` into the GPU tables of the docs.

    python benchmarks/gpu_tables.py OUT/results.json                 # print the tables
    python benchmarks/gpu_tables.py OUT/results.json --docs PAGE.md  # replace the block

``--docs`` replaces what lies between ``<!-- gpu-tables:begin -->`` and
``<!-- gpu-tables:end -->`` in PAGE.md, and only with results of the ``gpu`` setting (the
CPU rehearsal's figures are not GPU figures). Every part that did not run is named, with
its status, instead of a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- gpu-tables:begin -->", "<!-- gpu-tables:end -->"
NOT_MEASURED = (
    "No GPU figure of this package has been measured yet: `gpu_checks.sh` has run only as "
    "its CPU rehearsal."
)


LOSS_HEAD_LABELS = {
    "full": "full logits + `F.cross_entropy`",
    "ours": "`token_nll`",
    "sketch": "checkpointed 4096-token chunks",
    "cce": '`token_nll(backend="cce")`',
}
SCORING_LABELS = {
    "forward": "one full-sequence forward to per-token NLL",
    "short_context_nll": "`short_context_nll` (batched windows, no full logits)",
    "release emulation": "emulation of the authors' release (window loop, full logits, entropy)",
    "windows agree": "`short_context_nll` agrees with the window loop to",
}


MODEL_LABELS = {"gguf": "joined from its two halves"}


def _esc(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    if x is None or isinstance(x, str):
        return "-" if x is None else _esc(x)
    return fmt.format(x)


def _verdict(ok: Any) -> str:
    return "-" if ok is None else ("pass" if ok else "**FAIL**")


def _rows(results: dict[str, Any], part: str) -> dict[str, dict[str, Any]] | None:
    entry = results["parts"].get(part, {})
    if entry.get("status") != "done":
        return None
    return {r["name"]: r for r in entry["rows"]}


def _missing(results: dict[str, Any], part: str) -> str:
    entry = results["parts"].get(part, {})
    reason = entry.get("reason") or entry.get("status", "missing")
    return f"*{part}: not measured ({_esc(reason)}).*"


def header(results: dict[str, Any]) -> list[str]:
    env = _rows(results, "env")
    if env is None:
        return [_missing(results, "env")]
    v = env["versions"]
    card = f"{v['card']}" + (f", {v['card_memory_gib']} GiB" if v.get("card_memory_gib") else "")
    driver = f", driver {v['driver']}" if v.get("driver") else ""
    return [
        f"Measured {v['date']} on {_esc(card)}{_esc(driver)}, CUDA {v['cuda']}; Python "
        f"{v['python']}, torch {v['torch']}, transformers {v['transformers']}, accelerate "
        f"{v['accelerate']}, datasets {v['datasets']}, triton {v['triton']}, "
        f"cut-cross-entropy {v['cut-cross-entropy']}."
    ]


def correctness(results: dict[str, Any]) -> list[str]:
    lines = [
        "| check | value | d hidden | d weight | limit | result |",
        "|---|---:|---:|---:|---:|---|",
    ]
    notes = []
    for part in ("nll_fp32", "nll_bf16", "cce", "cce_bf16"):
        rows = _rows(results, part)
        if rows is None:
            notes.append(_missing(results, part))
            continue
        for r in rows.values():
            if "value_err" not in r:
                lines.append(f"| {_esc(r['name'])} | | | | | {_verdict(r.get('ok'))} |")
                continue
            lines.append(
                f"| {_esc(r['name'])} | {_num(r['value_err'], '{:.1e}')} | "
                f"{_num(r.get('dhidden_err'), '{:.1e}')} | {_num(r.get('dweight_err'), '{:.1e}')} | "
                f"{_num(r['tol'], '{:.0e}')} | {_verdict(r.get('ok'))} |"
            )
    lines += ["", *notes] if notes else []
    parity = _rows(results, "parity")
    lines += ["", "One training step per loss path, device against CPU (tiny Llama, fp32):", ""]
    if parity is None:
        return [*lines, _missing(results, "parity")]
    lines += [
        "| path | loss | loss on CPU | loss error | gradients | update | result |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in parity.values():
        lines.append(
            f"| {r['name']} | {r['loss']:.5f} | {r['loss_cpu']:.5f} | {r['loss_err']:.1e} | "
            f"{r['grad_err']:.1e} | {r['update_err']:.1e} | {_verdict(r['ok'])} |"
        )
    lines.append("")
    lines.append("Errors are relative: largest difference over largest reference value, or norms.")
    return lines


def performance(results: dict[str, Any]) -> list[str]:
    goals = results["goals"]
    perf = _rows(results, "perf_time")
    if perf is None:
        return [_missing(results, "perf_time")]
    info = results["parts"]["perf_time"]["info"]
    memory = _rows(results, "perf_memory") or {}
    lines = [
        f"{_esc(info['model'])}, one sequence of {info['tokens']} tokens, {info['dtype']}, "
        f"attention {info['attn']}, gradient checkpointing "
        f"{'on' if info['gradient_checkpointing'] else 'off'}, windows {info['window']} "
        f"(stride {info['stride']}); medians of {info['repeats']} steps after "
        f"{info['warmup']} warm-up, AdamW.",
        "",
        "| path | step | x uniform | peak memory | scoring | scoring x one forward |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("uniform", "dense-self", "dense-precomputed", "sparse-self"):
        r = perf[name]
        mem = memory.get(name)
        peak = f"{mem['peak_gib']:.1f} GiB" if mem else "-"
        scoring = f"{r['scoring_s']:.3f} s" if r["scoring_s"] > 1e-3 else "-"
        ratio = f"{r['scoring_x_forward']:.2f}" if r["scoring_s"] > 1e-3 else "-"
        lines.append(
            f"| {name} | {r['step_s']:.3f} s | {r['x_uniform']:.2f} | {peak} | {scoring} | {ratio} |"
        )
    if not memory:
        lines += ["", _missing(results, "perf_memory")]
    dense = perf["dense-self"]
    peak = max((m["peak_gib"] for m in memory.values()), default=None)
    lines += [
        "",
        "| goal | target | measured | met |",
        "|---|---:|---:|---|",
        f"| Dense self step x uniform | <= {goals['dense_self_x_uniform']} | "
        f"{dense['x_uniform']:.2f} | {_yes(dense['x_uniform'] <= goals['dense_self_x_uniform'])} |",
        f"| peak memory, any path | <= {goals['peak_gib']:g} GiB | "
        + (f"{peak:.1f} GiB | {_yes(peak <= goals['peak_gib'])} |" if peak else "- | - |"),
        f"| self-scoring x one forward | <= {goals['scoring_x_forward']} | "
        f"{dense['scoring_x_forward']:.2f} | "
        f"{_yes(dense['scoring_x_forward'] <= goals['scoring_x_forward'])} |",
        "",
        "Scoring the same sequence alone (`bench_scoring.py`'s paths):",
        "",
        "| path | time | x one forward |",
        "|---|---:|---:|",
    ]
    for name in ("forward", "short_context_nll", "release emulation"):
        r = perf[name]
        lines.append(f"| {SCORING_LABELS[name]} | {r['seconds']:.3f} s | {r['x_forward']:.2f} |")
    agree = perf["windows agree"]
    lines += [
        "",
        f"{SCORING_LABELS['windows agree']} {agree['max_abs_nats']:.1e} nats "
        f"({_verdict(agree['ok'])}).",
    ]
    return lines


def loss_head(results: dict[str, Any]) -> list[str]:
    rows = _rows(results, "loss_head")
    if rows is None:
        return [_missing(results, "loss_head")]
    info = results["parts"]["loss_head"]["info"]
    labels = LOSS_HEAD_LABELS
    lines = [
        f"Forward + backward at {info['shape']}, {info['dtype']}, each path in a fresh "
        f"process; peak memory above the inputs ({info['memory']}).",
        "",
        "| path | time | x full | peak extra memory | x full |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {labels.get(name, _esc(name))} | {r['time_s']:.3f} s | {r['x_full']:.2f} | "
            f"{r['peak_gib']:.2f} GiB | {r['peak_x_full']:.3f} |"
        )
    return lines


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def study(results: dict[str, Any]) -> list[str]:
    rows = _rows(results, "study")
    if rows is None:
        return [_missing(results, "study")]
    info = results["parts"]["study"]["info"]
    check = rows.pop("context check")
    model = _rows(results, "model")
    joined = []
    if model:
        m, minfo = model["gguf"], results["parts"]["model"]["info"]
        joined = [
            f"The model: {_esc(Path(minfo['gguf']).name)} ({m['bytes']:,} bytes, sha256 "
            f"{minfo['sha256'][:16]}...), {MODEL_LABELS['gguf']} in {m['join_s']:.1f} s, "
            f"converted to safetensors in {m['convert_s']:.0f} s.",
            "",
        ]
    lines = [
        *joined,
        f"SmolLM2-135M extended 4x to {info['tokens']} tokens (original context "
        f"{info['window']}), {info['steps']} steps per run on Gutenberg plays, one seed; "
        f"{info['held_out_sequences']} held-out sequences from {len(info['held_out_plays'])} "
        "held-out plays. Differences are run minus uniform (nats; accuracy for probes) with "
        "95% bootstrap intervals over the held-out sequences only (one seed: nothing about "
        "seed-to-seed variation). A pipeline and timing run: read no more into it.",
        "",
        f"Start model: mean NLL {check['start_nll_inside']:.3f} inside the original context, "
        + (
            f"{check['start_nll_beyond']:.3f} beyond it (gain from the long context "
            f"{check['start_gain_beyond']:+.3f}); "
            if check.get("start_nll_beyond") is not None
            else ""
        )
        + f"LongPPL key tokens: {check['key_share']:.2%} of targets.",
        "",
        "| run | metric | targets | uniform | run | difference [95%] | |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for name, r in rows.items():
        run, metric = name.split(" / ", 1)
        mark = "inside the noise" if r["inside_noise"] else "outside the noise"
        lines.append(
            f"| {_esc(run)} | {_esc(metric)} | {r['targets']:,} | {_num(r['baseline'], '{:.3f}')} | "
            f"{_num(r['run_value'], '{:.3f}')} | {_num(r['diff'], '{:+.3f}')} "
            f"[{_num(r['low'], '{:+.3f}')}, {_num(r['high'], '{:+.3f}')}] | {mark} |"
        )
    return lines


def render(results: dict[str, Any]) -> str:
    """The markdown of every GPU table, with what did not run named."""
    out = [*header(results), ""]
    if results.get("setting") != "gpu":
        out += [f"*CPU rehearsal ({_esc(results.get('setting'))} setting): not GPU figures.*", ""]
    out += ["#### CUDA correctness", "", *correctness(results), ""]
    out += ["#### Loss head", "", *loss_head(results), ""]
    out += ["#### Training step and scoring, reference setting", "", *performance(results), ""]
    out += ["#### Mini-study on SmolLM2-135M", "", *study(results)]
    return "\n".join(out).rstrip() + "\n"


def missing_rows(results: dict[str, Any]) -> list[str]:
    """Rows of finished parts that the rendered tables do not show (should be none)."""
    text = render(results)
    labels = {"loss_head": LOSS_HEAD_LABELS, "perf_time": SCORING_LABELS, "model": MODEL_LABELS}
    missing = []
    for part, entry in results["parts"].items():
        if entry.get("status") != "done" or part == "env":
            continue
        for row in entry["rows"]:
            name = row["name"]
            shown = labels.get(part, {}).get(name, name)
            if part == "study":
                shown = "Start model" if name == "context check" else name.split(" / ", 1)[1]
            if _esc(shown) not in text:
                missing.append(f"{part}: {name}")
    return missing


def replace_block(page: Path, body: str) -> None:
    """Write ``body`` between the markers of ``page`` (atomically)."""
    text = page.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{page} needs one {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{body}{END}{tail}", encoding="utf-8")
    os.replace(tmp, page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json of gpu_checks.sh")
    parser.add_argument("--docs", type=Path, default=None, help="page with a gpu-tables block")
    parser.add_argument("--out", type=Path, default=None, help="write the tables here too")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    if results.get("format") != "tokenweight.gpu_checks":
        print(f"error: {args.results} is not a results.json of gpu_checks.sh", file=sys.stderr)
        return 2
    body = render(results)
    if args.out:
        args.out.write_text(body, encoding="utf-8")
    if args.docs:
        if results.get("setting") != "gpu":
            print("error: --docs takes results of the gpu setting only", file=sys.stderr)
            return 2
        try:
            replace_block(args.docs, body)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not args.out and not args.docs:
        print(body, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
