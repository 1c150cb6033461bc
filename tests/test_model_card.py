"""The model card `tokenweight train` writes (README.md in the output folder): the Hub's
metadata read back by huggingface_hub's own parser, the facts checked against the run's
own log and summary, a user's README.md never replaced, and push_to_hub passed through to
the Trainer up to the Hub call (a fake Hub client records what would be uploaded)."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

from helpers.train_config import tiny_train_config
from helpers.train_support import model_and_data
from tokenweight import TokenWeightError
from tokenweight.training.card import (
    CARD_FALLBACK,
    CardFacts,
    card_is_ours,
    model_card_text,
    model_origin,
    write_model_card,
)
from tokenweight.training.config import load_config
from tokenweight.training.run import train

SEQ, WINDOW, STRIDE = 32, 16, 8


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return model_and_data(tmp_path_factory.mktemp("card"), SEQ, docs=4, words=80)


def make_config(assets, out: Path, *overrides: str):
    base = tiny_train_config(assets["model"], assets["prepared"], out, window=WINDOW, stride=STRIDE)
    return load_config(base=base, overrides=list(overrides))


@pytest.mark.slow
def test_train_writes_a_hub_model_card_with_the_runs_facts(assets, tmp_path):
    out = tmp_path / "run"
    result = train(make_config(assets, out))
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")  # the Hub's own parser
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert {"tokenweight", "scheme-dense"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local start model has no Hub id
    assert card_is_ours(text)
    # the facts, from the files the run wrote
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    last_loss = [x["loss"] for x in log if "loss" in x][-1]
    summary = json.loads((out / "train_summary.json").read_text())
    assert f"| final training loss | {last_loss:.4f} (last logged step); mean " in text
    assert f"mean {summary['train_loss']:.4f}" in text and result.global_step == 2
    assert "| optimizer steps | 2 |" in text
    assert "| weighting scheme | dense:0.75 |" in text
    assert f"self: the model being trained, window {WINDOW}, stride {STRIDE}" in text
    assert f"tokenweight train {out}/tokenweight_train.yaml train.output_dir=NEW_FOLDER" in text
    assert "| tokens per sequence | 32 |" in text
    manifest = json.loads((assets["prepared"] / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_sha256"][:16] in text
    assert "@inproceedings{helm2025tokenweighting" in text and "arXiv" not in text.split("---")[1]


@pytest.mark.slow
def test_a_users_readme_is_never_replaced(assets, tmp_path):
    out = tmp_path / "run"
    train(make_config(assets, out))
    mine = "# my notes about this model\n"
    (out / "README.md").write_text(mine)
    train(make_config(assets, out, "train.max_steps=3"), resume=True)
    assert (out / "README.md").read_text() == mine
    fallback = (out / CARD_FALLBACK).read_text()
    assert card_is_ours(fallback) and "| optimizer steps | 3 |" in fallback


def _facts(**kw):
    base = {
        "name": "run",
        "source": "/models/start",
        "scheme": "uniform",
        "scorer": "none",
        "steps": 5,
        "final_loss": 2.5,
        "mean_loss": 3.0,
        "loss_steps": (1, 5),
        "command": "tokenweight train x.yaml",
        "tokenweight_version": "0",
    }
    return CardFacts(**{**base, **kw})


def test_write_model_card_replaces_only_its_own_unchanged_card(tmp_path):
    first = model_card_text(_facts())
    second = model_card_text(_facts(steps=6))
    assert write_model_card(tmp_path, first) == tmp_path / "README.md"
    assert write_model_card(tmp_path, second) == tmp_path / "README.md"  # ours: replaced
    assert (tmp_path / "README.md").read_text() == second
    edited = second.replace("| optimizer steps | 6 |", "| optimizer steps | six |")
    (tmp_path / "README.md").write_text(edited)
    assert not card_is_ours(edited)
    assert write_model_card(tmp_path, first) == tmp_path / CARD_FALLBACK  # edited: kept
    assert (tmp_path / "README.md").read_text() == edited
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_card_metadata_and_user_text_are_escaped(tmp_path):
    text = model_card_text(
        _facts(
            name="a <b>|c",
            base_model="org/model",
            license="apache-2.0",
            datasets=["org/data"],
            data={"path": "d|<x>"},
        )
    )
    write_model_card(tmp_path, text)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "org/model" and card.data.license == "apache-2.0"
    assert card.data.datasets == ["org/data"]
    assert "# a &lt;b&gt;\\|c" in text and "d\\|&lt;x&gt;" in text and "<b>" not in text


def test_model_origin(tmp_path):
    assert model_origin("smollm2") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert model_origin("org/some-model") == ("org/some-model", None)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert model_origin(str(folder)) == (None, None)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# a model\n")
    assert model_origin(str(folder)) == (None, "mit")


class FakeHub:
    """Stands in for transformers' Hub client: records the calls, uploads nothing."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.repos: list[str] = []
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        if self.fail is not None:
            raise self.fail
        self.repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, **kwargs):
        folder = Path(folder_path)
        card = folder / "README.md"
        self.uploads.append(
            {
                "repo_id": repo_id,
                "folder": folder,
                "path_in_repo": path_in_repo,
                "card": card.read_text() if card.is_file() else None,
                "files": sorted(p.name for p in folder.iterdir()),
                "message": kwargs.get("commit_message"),
            }
        )
        if kwargs.get("run_as_future"):  # checkpoint pushes: the Trainer waits on futures
            done: Future = Future()
            done.set_result(None)
            return done
        return SimpleNamespace(commit_url="fake")


@pytest.mark.slow
def test_push_to_hub_reaches_the_upload_with_the_card(assets, tmp_path, monkeypatch):
    import transformers.trainer

    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    out = tmp_path / "run"
    train(make_config(assets, out, "train.push_to_hub=true", "train.hub_model_id=me/tw-run"))
    assert hub.repos == ["me/tw-run"]
    # the Trainer pushes each saved checkpoint (hub_strategy every_save), then the end
    upload = hub.uploads[-1]
    assert upload["message"] == "Model save" and upload["path_in_repo"] is None
    assert upload["repo_id"] == "me/tw-run" and upload["folder"] == out
    assert card_is_ours(upload["card"]) and upload["card"].startswith("---\n")
    assert "# me/tw-run" in upload["card"]
    assert "model.safetensors" in upload["files"]


@pytest.mark.slow
def test_push_to_hub_failures_are_named_before_training(assets, tmp_path, monkeypatch):
    import transformers.trainer
    from huggingface_hub.errors import LocalTokenNotFoundError

    hub = FakeHub(fail=LocalTokenNotFoundError("no token"))
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    out = tmp_path / "run"
    with pytest.raises(TokenWeightError, match=r"train\.push_to_hub: could not create"):
        train(make_config(assets, out, "train.push_to_hub=true"))
    assert not (out / "model.safetensors").exists()
    with pytest.raises(TokenWeightError, match=r"train\.hub_model_id: only used with"):
        make_config(assets, out, "train.hub_model_id=me/x")


def test_card_facts_from_a_config_and_manifest(tmp_path):
    """The data rows come from the manifest as written; Hub datasets become metadata."""
    from tokenweight.training.card import card_facts

    config = make_config(
        {"model": tmp_path / "no-model", "prepared": tmp_path / "no-data"},
        tmp_path / "run",
        "scheme=uniform",
        "train.gradient_accumulation_steps=4",
        "model.rope_theta=40000",
        "model.max_position_embeddings=128",
    )
    manifest = {
        "seq_len": 32,
        "fingerprint": "sha256:" + "ab" * 32,
        "counts": {"sequences": 1234},
        "tokenizer": {"name_or_path": "tok", "vocab_sha256": "cd" * 32},
        "inputs": [{"hf_dataset": "org/books", "split": "train", "documents": 9}],
    }
    facts = card_facts(
        config, manifest, steps=7, final_loss=1.5, mean_loss=2.0, loss_steps=(1, 7), world_size=2
    )
    assert facts.datasets == ["org/books"] and facts.scorer.startswith("none")
    text = model_card_text(facts)
    assert f"| fingerprint | sha256:{'ab' * 32} |" in text
    assert "| sequences | 1,234 |" in text and "| inputs | org/books (train) |" in text
    assert "(the same fingerprint), from the folder it was run in" in text
    assert "2 x 4 accumulation x 2 process(es) = 16 sequences of 32 tokens" in text
    assert "max_position_embeddings 128, RoPE theta 40000" in text
    assert "torchrun --nproc_per_node 2 -m tokenweight.cli train" in text
    assert ModelCard(text).data.datasets == ["org/books"]
