"""Every example of ``examples/`` runs and does what it says, and every code block of the
README and ``docs/`` is one of them.

The examples run in this process (``runpy``, as ``__main__``, from a temporary working
directory so their ``runs/examples/`` outputs land there) on the tiny model of
``examples/tiny.py``; each test asserts on what the example prints and on the objects it
leaves, against figures computed here independently (token counts from the tokenizer,
NLL from the model's full logits, the bounds a scheme puts on its weights). One example
also runs as a script in a child process, as a user runs it.

The documentation's Python and YAML blocks are tied to the examples: each must follow a
line ``<!-- example: examples/NAME -->`` and equal that file's ``example`` section (the
lines between ``# --8<-- [start:example]`` and ``# --8<-- [end:example]``), or the whole
file when it has no such section. So a block in the docs is text of a file that runs here.
"""

from __future__ import annotations

import json
import math
import re
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers.distributed import subprocess_env
from tokenweight.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- example: (\S+) -->\n)?```(python|yaml)\n(.*?)```", re.S)
SECTION = re.compile(r"# --8<-- \[start:example\]\n(.*?)# --8<-- \[end:example\]\n", re.S)
MARKER = "<!-- example: "
# the examples run below (in-process), besides study_tiny.yaml; tiny.py is their helper
RUN = (
    "tensor_functions.py",
    "training_loop.py",
    "trainer_compute_loss_func.py",
    "token_weight_trainer.py",
    "trl_sft.py",
    "precomputed_scores.py",
    "extending.py",
    "eval_task.py",
)


def example_text(name: str) -> str:
    """The part of ``examples/NAME`` that the docs show."""
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    match = SECTION.search(text)
    return match.group(1) if match else text


def doc_blocks() -> list[tuple[str, str | None, str]]:
    """``(where, example name or None, block text)`` for every Python/YAML block."""
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text[: m.start()].count("\n") + 1 + (m.group(1) is not None)
            found.append((f"{path.relative_to(ROOT)}:{line}", m.group(1), m.group(3)))
    return found


def test_every_python_and_yaml_block_of_the_docs_is_an_example():
    blocks = doc_blocks()
    assert len(blocks) >= 6
    unmarked = [where for where, name, _ in blocks if name is None]
    assert not unmarked, f"blocks without '{MARKER}examples/NAME -->' before them: {unmarked}"
    for where, name, block in blocks:
        assert name is not None and name.startswith("examples/"), where
        assert block == example_text(name.removeprefix("examples/")), (
            f"{where}: the block differs from {name}; copy the example's section into the docs"
        )


def test_every_example_is_shown_or_run_here():
    shown = {name for _, name, _ in doc_blocks()}
    tested = {f"examples/{name}" for name in RUN} | {"examples/study_tiny.yaml"}
    files = {f"examples/{p.name}" for p in EXAMPLES.iterdir() if p.suffix in (".py", ".yaml")}
    assert files - {"examples/tiny.py"} <= tested, files - tested
    assert shown <= files


@pytest.fixture
def run_example(tmp_path, monkeypatch, capsys):
    """Run ``examples/NAME`` as ``__main__`` in ``tmp_path``; return (stdout, globals)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def run(name: str, allow: tuple[str, ...] = ()) -> tuple[str, dict]:
        with warnings.catch_warnings():
            # a deprecated argument in an example is an error (the docs would teach it)
            warnings.simplefilter("error", FutureWarning)
            for message in allow:
                warnings.filterwarnings("ignore", message=message, category=FutureWarning)
            result = runpy.run_path(str(EXAMPLES / name), run_name="__main__")
        return capsys.readouterr().out, result

    return run


def last_line(out: str) -> str:
    """The line an example prints last (the Trainer prints its log lines before it)."""
    return out.rstrip("\n").splitlines()[-1]


def tokens_per_text(texts: list[str]) -> int:
    """Words per text plus BOS: the tiny tokenizer gives one token per word."""
    (length,) = {len(t.split()) + 1 for t in texts}
    return length


def test_tensor_functions(run_example):
    out, g = run_example("tensor_functions.py")
    model, input_ids, long_nll, weights = g["model"], g["input_ids"], g["long_nll"], g["weights"]
    with torch.no_grad():
        logits = model(input_ids).logits.float()
    plain = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    ).view(long_nll.shape)
    torch.testing.assert_close(long_nll.detach(), plain, rtol=1e-5, atol=1e-5)
    assert not weights.requires_grad and bool((weights >= 0.75 - 1e-6).all())  # dense:0.75
    torch.testing.assert_close(weights.mean(dim=1), torch.ones(len(weights)))
    expected = (weights * plain).mean()
    assert out == f"loss {expected.item():.4f}, mean weight 1.0000\n"


def test_training_loop(run_example):
    out, g = run_example("training_loop.py")
    targets = 8 * (tokens_per_text(g["tiny_texts"](16)) - 1)  # 2 micro-batches of 4 rows
    lines = out.splitlines()
    assert len(lines) == 2
    for step, line in enumerate(lines, start=1):
        m = re.fullmatch(rf"step {step}: {targets} targets, weights (\S+)-(\S+)", line)
        assert m, line
        assert 0.75 <= float(m[1]) < 1.0 < float(m[2])  # dense:0.75: floor 0.75, mean 1
    fresh = g["tiny_model"](g["tokenizer"])
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), g["model"].parameters()))


def test_extending(run_example):
    from tokenweight.core import scorer_kinds, weighting

    try:
        out, _ = run_example("extending.py")
        # independent: s = l / 2, d = min(|l - s|, 2), L1: n * d / sum(d)
        long = [0.5, 3.0, 1.2, 6.0]
        d = [min(abs(x - x / 2), 2.0) for x in long]
        want = [round(len(d) * x / sum(d), 4) for x in d]
        assert out == f"capped:2 half {want}\n"
    finally:  # the tables are global: leave them as they were
        weighting.PRESETS.pop("capped", None)
        scorer_kinds.SCORERS.pop("half", None)


def test_eval_task(run_example):
    from tiny import tiny_model  # the example's model: seeded, so the same weights
    from tokenweight.evaluation.sequences import load_eval_sequences
    from tokenweight.evaluation.tasks import EVAL_TASKS

    try:
        out, g = run_example("eval_task.py")
        # independent: the model's own NLL of the same sequences, last 8 valid targets
        seqs = load_eval_sequences(["runs/examples/texts.txt"], g["tokenizer"], seq_len=64)
        ids = seqs.input_ids
        with torch.no_grad():
            logits = tiny_model(g["tokenizer"])(ids).logits[:, :-1].float()
        long = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        picked = long[:, -8:][seqs.target_mask[:, -8:]]
        want = math.exp(picked.mean().item())
        (entry,) = g["results"]["models"]
        assert entry["tail"]["targets"] == picked.numel() == 4 * 8
        assert entry["tail"]["perplexity"] == pytest.approx(want, rel=1e-4)
        assert out == f"tail perplexity {want:.2f} over 32 targets\n"
        md = Path("runs/examples/eval/results.md").read_text()
        assert "## tail perplexity" in md and f"| tiny | {want:.2f} | 32 |" in md
        assert g["results"]["settings"]["tail_tokens"] == 8
    finally:  # the table is global: leave it as it was
        EVAL_TASKS.pop("tail", None)


@pytest.mark.slow
def test_trainer_compute_loss_func(run_example):
    out, g = run_example("trainer_compute_loss_func.py")
    m = re.fullmatch(r"trained 4 steps, mean weighted loss (\S+)", last_line(out))
    assert m, out
    # a random model over V tokens starts near ln V; 4 steps move it a little
    assert abs(float(m[1]) - math.log(len(g["tokenizer"]))) < 0.5
    assert type(g["trainer"].compute_loss_func).__name__ == "TokenWeightLossFunc"


@pytest.mark.slow
def test_token_weight_trainer(run_example):
    out, g = run_example("token_weight_trainer.py")
    logged = [e for e in g["trainer"].state.log_history if "weighted_loss" in e]
    assert len(logged) == 2  # logging_steps=2 of 4 steps
    assert last_line(out) == (
        f"trained 4 steps; last log: weighted loss {logged[-1]['weighted_loss']:.4f}, "
        f"weights up to {logged[-1]['weight_max']:.2f}"
    )
    assert all(e["weight_max"] > 1 and e["weight_mean"] == pytest.approx(1) for e in logged)
    assert g["trainer"].args.activation_checkpointing


def test_trl_sft(run_example):
    # SFTConfig's own default sets the deprecated gradient_checkpointing=True; the example
    # does not pass it (checked on its text)
    assert "gradient_checkpointing" not in example_text("trl_sft.py")
    out, g = run_example("trl_sft.py", allow=("`gradient_checkpointing` is deprecated",))
    assert re.fullmatch(r"trained 2 steps, mean weighted loss \S+", last_line(out)), out
    logged = [e for e in g["trainer"].state.log_history if "weighted_loss" in e]
    assert len(logged) == 2 and all(e["weight_max"] > 1 for e in logged)


def test_precomputed_scores(run_example):
    out, g = run_example("precomputed_scores.py")
    # 8 documents of BOS + 256 tokens cut into 64-token sequences, tails dropped
    rows = 8 * (tokens_per_text(g["tiny_texts"](8, words=256)) // 64)
    assert re.fullmatch(
        rf"{rows} scored rows; trained 2 steps, mean weighted loss \S+", last_line(out)
    ), out
    logged = [e for e in g["trainer"].state.log_history if "weight_nonzero" in e]
    # sparse:0.25 keeps floor(0.25 * 63) = 15 of each row's 63 targets
    assert len(logged) == 2 and all(e["weight_nonzero"] == pytest.approx(15 / 63) for e in logged)


@pytest.mark.slow
def test_study_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", str(EXAMPLES / "study_tiny.yaml")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[(\d+)/\1\] report: runs/examples/study/study.md", out), out[-400:]
    results = json.loads((tmp_path / "runs/examples/study/study.json").read_text())
    assert results["baseline"] == "uniform" and len(results["runs"]) == 2
    assert {d["run"] for d in results["differences"]} == {"dense:0.75 (self)"}
    assert {"copied at distance 8", "copied at distance 100"} <= set(results["metrics"])


@pytest.mark.slow
def test_an_example_runs_as_a_script(tmp_path):
    """As a user runs it: ``python examples/training_loop.py``, its folder on the path."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "training_loop.py")],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"step 1: \d+ targets, .*\nstep 2: \d+ targets, .*\n", done.stdout)
