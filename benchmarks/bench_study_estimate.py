"""How close `tokenweight study --dry-run`'s calibrated estimate comes to the study's time.

Runs the estimate of a study, then the study itself (in a fresh temporary work folder),
and prints estimate and actual seconds per part side by side, with their ratio. The
default is a small study of the tiny start model on synthetic data (a few minutes on 2
CPU cores); pass a config and overrides to measure another:

    python benchmarks/bench_study_estimate.py
    python benchmarks/bench_study_estimate.py configs/study/cpu.yaml max_steps=8 seeds=[0]

Both the estimate and the study run in this process, one after the other, so they see the
same machine and load; a busier machine during one of them shows up as a ratio away from 1.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

SMALL = [
    "tiny={layers: 2, hidden: 64, heads: 2, words: 64}",
    "pretrain={steps: 100, batch: 8, distances: [[4, 56]], copies: 4, learning_rate: 0.003}",
    "synth={seq_len: 256, sequences: 32, distances: [24, 100, 200], span: 2, copies: 2,"
    " words: 64, content: facts, keys: 8, values: 4, filler: document, doc_words: 16, seed: 0}",
    "window=64",
    "rope_theta=40000",
    "max_position_embeddings=256",
    "runs=[{scheme: uniform}, {scheme: 'dense:0.75', scorer: self},"
    " {scheme: 'dense:0.75', scorer: precomputed}, {scheme: uniform, data: selected}]",
    "seeds=[0, 1]",
    "max_steps=12",
    "micro_batch_size=4",
    "eval_sequences=8",
    "device=cpu",
]

# study step name (its start) -> the estimate's part
PARTS = {
    "build and pretrain": "pretraining the start model",
    "synthetic data": "synthetic data",
    "score the training data": "scoring the training data",
    "train ": "training",
    "evaluate every model": "evaluation",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=None)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--keep", help="copy the study's report files here afterwards")
    args = parser.parse_args()

    from tokenweight.workflows.study import load_study_config, run_study
    from tokenweight.workflows.study.cost import dry_run

    overrides = list(args.overrides) if args.config else SMALL + list(args.overrides)
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        config = load_study_config(args.config, [*overrides, f"work_dir={Path(tmp) / 'study'}"])
        lines: list[str] = []
        t0 = time.perf_counter()
        dry_run(config, log=lines.append)
        dry = time.perf_counter() - t0
        estimate = {}
        for line in lines:
            for text in line.splitlines():
                m = re.match(r"^    (.+?)\s{2,}([0-9.]+) (s|min|h)\s", text + " ")
                if m:
                    scale = {"s": 1, "min": 60, "h": 3600}[m.group(3)]
                    estimate[m.group(1).strip()] = float(m.group(2)) * scale
        t0 = time.perf_counter()
        run_study(config, log=lambda _: None)
        wall = time.perf_counter() - t0
        import json

        results = json.loads((Path(tmp) / "study" / "study.json").read_text())
        if args.keep:
            import shutil

            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for name in ("study.md", "study.json", "study.png"):
                shutil.copy(Path(tmp) / "study" / name, Path(args.keep) / name)
    actual: dict[str, float] = {}
    for step in results["steps"]:
        part = next((p for k, p in PARTS.items() if step["name"].startswith(k)), "other steps")
        actual[part] = actual.get(part, 0.0) + step["seconds"]
    actual["report"] = wall - sum(step["seconds"] for step in results["steps"])  # and set-up
    actual["total"] = wall
    print(f"dry run (plan + calibration): {dry:.0f} s")
    print(f"{'part':<30} {'estimate s':>11} {'actual s':>10} {'estimate/actual':>16}")
    for part in [*[p for p in estimate if p != "total"], "other steps", "total"]:
        e, a = estimate.get(part), actual.get(part)
        if e is None and a is None:
            continue
        ratio = f"{e / a:.2f}" if e is not None and a else "-"
        e_text = f"{e:.1f}" if e is not None else "-"
        a_text = f"{a:.1f}" if a is not None else "-"
        print(f"{part:<30} {e_text:>11} {a_text:>10} {ratio:>16}")


if __name__ == "__main__":
    main()
