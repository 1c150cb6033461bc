"""The train entry point end to end on a tiny model and corpus: resume, learning per
scheme and scorer, NaN stop, context extension, output-folder rules, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from helpers.train_config import tiny_train_config
from helpers.train_support import CrashAtStep, SimulatedCrash, full_logits_nll, model_and_data
from tokenweight import TokenWeightError
from tokenweight.cli import main as cli_main
from tokenweight.training.config import load_config
from tokenweight.training.run import _build_frozen_scorer_model, train

SEQ, WINDOW, STRIDE = 48, 16, 8


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-run")
    score = {"window": WINDOW, "stride": STRIDE}
    return model_and_data(root, SEQ, keep_tail=True, score=score, docs=6, words=150)


def make_config(assets, out: Path, *overrides: str):
    base = tiny_train_config(
        assets["model"],
        assets["prepared"],
        out,
        window=WINDOW,
        stride=STRIDE,
        data_options={"seq_len": SEQ},
        learning_rate=5e-3,
        warmup_steps=1,
        max_steps=4,
        gradient_accumulation_steps=2,
    )
    return load_config(base=base, overrides=list(overrides))


class PoisonAtStep(TrainerCallback):
    """Turns the output layer into NaN at the start of optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                model.lm_head.weight.fill_(float("nan"))


class PoisonGradientAtStep(TrainerCallback):
    """Makes the output layer's gradient NaN during optimizer step ``step`` (loss finite)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            model.lm_head.weight.register_hook(lambda g: g * float("nan"))


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


@pytest.mark.slow
def test_resume_after_a_crash_reaches_the_uninterrupted_parameters(assets, tmp_path):
    # random data order, sparse tie-breaking and warm-up all depend on restored state
    common = ("scheme=sparse:0.25", "train.save_steps=1", "train.shuffle=true")
    straight = make_config(assets, tmp_path / "a", *common)
    train(straight)
    broken = make_config(assets, tmp_path / "b", *common)
    with pytest.raises(SimulatedCrash):
        train(broken, callbacks=[CrashAtStep(3)])
    assert (tmp_path / "b" / "checkpoint-2").is_dir()
    assert not (tmp_path / "b" / "checkpoint-3").exists()
    with pytest.raises(TokenWeightError, match="holds checkpoint-2; pass --resume"):
        train(broken)  # refuses to start over an existing run
    result = train(broken, resume=True)
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-2")
    assert result.global_step == 4
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    start = load_file(str(assets["model"] / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(a[k], start[k]) for k in a)  # training did move them
    with pytest.raises(TokenWeightError, match="already holds checkpoint-4"):
        train(make_config(assets, tmp_path / "a", *common))
    log = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if "loss" in x] == [1, 2, 3, 4]


def _mean_nll(model_dir: Path, prepared: Path) -> float:
    import datasets

    rows = datasets.load_from_disk(str(prepared)).select(range(8))
    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    ids = torch.tensor(rows["input_ids"], dtype=torch.long)
    mask = torch.tensor(rows["attention_mask"], dtype=torch.long)
    with torch.no_grad():
        nll = full_logits_nll(model, ids, mask)
    return float(nll.sum() / mask[:, 1:].sum())


@pytest.mark.parametrize(
    ("scheme", "kind"),
    [
        ("uniform", "none"),
        ("dense:0.75", "self"),
        ("sparse:0.25", "self"),
        ("longce:5", "precomputed"),
        ("ppmi:c=1.5,kappa=0.5", "model"),
        ("npmi:c=1.5,kappa=0.5", "self"),
    ],
)
def test_a_short_run_lowers_the_loss(assets, tmp_path, scheme, kind):
    data = assets["scored"] if kind == "precomputed" else assets["prepared"]
    config = make_config(
        assets,
        tmp_path / "out",
        f"scheme={scheme}",
        f"scorer.kind={kind}",
        f"data.path={data}",
        "train.max_steps=10",
        "train.gradient_accumulation_steps=1",
        "train.micro_batch_size=4",
    )
    before = _mean_nll(assets["model"], assets["prepared"])
    result = train(config)
    after = _mean_nll(tmp_path / "out", assets["prepared"])
    assert after < before - 0.1, (before, after)
    assert result.train_loss is not None and result.train_loss == result.train_loss


def test_a_nan_stops_the_run_and_keeps_the_last_checkpoint(assets, tmp_path):
    out = tmp_path / "out"
    config = make_config(assets, out, "train.save_steps=1")
    with pytest.raises(TokenWeightError) as info:
        train(config, callbacks=[PoisonAtStep(3)])
    message = str(info.value)
    assert "non-finite loss at step 3" in message
    assert "micro-batch 1 of 2 (dataset rows [" in message
    assert "checkpoint-2 is intact" in message
    assert not (out / "checkpoint-3").exists()
    assert not (out / "model.safetensors").exists()  # the broken model was never saved
    saved = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


def test_a_nan_gradient_stops_before_the_optimizer_step(assets, tmp_path):
    out = tmp_path / "out"
    config = make_config(assets, out, "train.save_steps=1")
    with pytest.raises(TokenWeightError, match=r"non-finite gradient at step 3, all 2 micro"):
        train(config, callbacks=[PoisonGradientAtStep(3)])
    assert not (out / "checkpoint-3").exists()
    saved = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_context_extension_changes_the_trained_model_but_not_the_frozen_scorer(assets, tmp_path):
    out = tmp_path / "out"
    config = make_config(
        assets,
        out,
        "model.rope_theta=40000",
        "model.max_position_embeddings=512",
        "scorer.kind=model",
        "train.max_steps=1",
    )
    scorer_model, _ = _build_frozen_scorer_model(config)
    assert scorer_model.config.rope_parameters["rope_theta"] == 10000.0
    assert scorer_model.config.max_position_embeddings == 256
    train(config)
    saved = json.loads((out / "config.json").read_text())
    assert saved["rope_parameters"]["rope_theta"] == 40000.0
    assert saved["max_position_embeddings"] == 512
    assert (out / "tokenizer.json").is_file()
    with pytest.raises(TokenWeightError, match="already holds checkpoint-1; pass --resume"):
        train(config)


def test_data_mismatches_are_named(assets, tmp_path):
    with pytest.raises(TokenWeightError, match=r"data.seq_len: the config says 64 but .* 48"):
        train(make_config(assets, tmp_path / "a", "data.seq_len=64"))
    with pytest.raises(TokenWeightError, match=r"holds no scores.*precomputed"):
        train(make_config(assets, tmp_path / "b", "scorer.kind=precomputed"))


def test_lora_without_peft_says_how_to_install(assets, tmp_path, monkeypatch):
    import tokenweight.training.trainer  # noqa: F401  (transformers' Trainer loads peft itself)

    monkeypatch.setitem(sys.modules, "peft", None)  # now `import peft` raises ImportError
    config = make_config(assets, tmp_path / "out", "model.lora={r: 4}", "train.max_steps=1")
    with pytest.raises(TokenWeightError, match=r"pip install 'tokenweight\[peft\]'"):
        train(config)


def test_lora_run_trains_merges_saves_and_reloads(assets, tmp_path):
    """`tokenweight train` with model.lora: the adapter is saved, the merged model folder
    reloads as a plain model whose weights moved from the start and whose outputs equal
    the base model with the saved adapter applied (peft's own loading path)."""
    from peft import PeftModel

    out = tmp_path / "out"
    path = tmp_path / "lora.yaml"
    config = make_config(
        assets, out, "model.lora={r: 4, alpha: 8}", "train.max_steps=2", "scheme=uniform"
    )
    path.write_text(config.to_yaml())
    assert cli_main(["train", str(path)]) == 0
    assert (out / "adapter_config.json").is_file()

    start = AutoModelForCausalLM.from_pretrained(str(assets["model"])).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    assert not any("lora" in name for name in merged.state_dict())
    before, after = start.state_dict(), merged.state_dict()
    assert before.keys() == after.keys()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(
        n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"))
        for n in changed
    )

    base = AutoModelForCausalLM.from_pretrained(str(assets["model"]))
    adapted = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.randint(4, 60, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = adapted(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        plain = start(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got - plain).abs().max() > 1e-4  # the adapter changed what the model predicts


def test_cli_prints_config_and_reports_bad_keys(assets, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(make_config(assets, tmp_path / "out").to_yaml())
    assert cli_main(["train", str(path), "train.max_steps=7", "--print-config"]) == 0
    assert "max_steps: 7" in capsys.readouterr().out
    assert cli_main(["train", str(path), "train.max_step=7"]) == 2
    assert "train.max_step: unknown key" in capsys.readouterr().err
