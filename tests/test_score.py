"""`tokenweight score`: stored scores equal short_context_nll, resume (also after SIGKILL),
distributed shards, verification of files and rows, and bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from helpers.corpus import CORPUS_DIR
from helpers.fixtures import save_tiny_model, save_tokenizer
from tokenweight.cli import main
from tokenweight.core.scoring import plan_stride, short_context_nll
from tokenweight.data import load_scored_dataset, prepare_dataset, score_dataset
from tokenweight.data.store import verify_row, verify_rows
from tokenweight.infra.errors import TokenWeightError

N, W = 32, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy machine they lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("score")
    tok = save_tokenizer(root / "tok")
    bpe = save_tokenizer(root / "bpe", kind="bpe")
    paths = {
        "root": root,
        "model": save_tiny_model(root / "model", tok, max_position_embeddings=256),
        "other": save_tiny_model(root / "other", bpe, max_position_embeddings=256),
        "prep": root / "prep",
        "tail": root / "tail",
        "many": root / "many",
    }
    prepare_dataset([str(CORPUS_DIR)], tokenizer=str(tok), seq_len=N, out=paths["prep"])
    prepare_dataset(
        [str(CORPUS_DIR)], tokenizer=str(tok), seq_len=N, out=paths["tail"], keep_tail=True
    )
    prepare_dataset([str(CORPUS_DIR)], tokenizer=str(tok), seq_len=N, out=paths["many"], stride=6)
    return paths


def _score(env, out: Path, prep: str = "prep", *extra: str) -> int:
    argv = ["score", str(env[prep]), "--scorer", str(env["model"]), "--window", str(W)]
    return main([*argv, "--shard-size", "7", "--batch-size", "3", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def reference(env) -> Path:
    """One uninterrupted single-process run over `prep` (7 shards of 7 rows)."""
    out = env["root"] / "reference"
    assert _score(env, out) == 0
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _prepared_ids(folder: Path) -> torch.Tensor:
    return torch.tensor(datasets.load_from_disk(str(folder))["input_ids"])


def _hash(ids) -> str:
    return hashlib.blake2b(np.asarray(ids, dtype="<i8").tobytes(), digest_size=16).hexdigest()


# ------------------------------------------------------------------ correctness


def test_stored_scores_equal_short_context_nll_on_the_same_rows(env, reference):
    ds = load_scored_dataset(reference)
    ids = _prepared_ids(env["prep"])
    assert ds["row"][:] == list(range(len(ids)))
    assert torch.equal(torch.tensor(ds["input_ids"][:]), ids)
    assert ds["input_hash"][:] == [_hash(r) for r in ids.tolist()]
    assert ds.features["short_nll"].feature.dtype == "float32"

    model = LlamaForCausalLM.from_pretrained(env["model"]).eval()
    expected = short_context_nll(model, ids, window=W, stride=plan_stride(N, W), bos_token_id=1)
    got = torch.tensor(ds["short_nll"][:])
    assert got.shape == (len(ids), N - 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    m = json.loads((reference / "manifest.json").read_text())
    prepared = json.loads((env["prep"] / "manifest.json").read_text())
    assert m["prepared"] == prepared and m["window"] == W and m["stride"] == plan_stride(N, W)
    assert len(m["shards"]) == -(-len(ids) // 7) and m["num_rows"] == len(ids)
    for entry in m["shards"]:
        data = (reference / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert m["scorer"]["tokenizer"]["vocab_sha256"] == prepared["tokenizer"]["vocab_sha256"]


def test_full_window_is_refused(env, tmp_path, capsys):
    """Window = N: the short context is the whole sequence, every score would equal the
    long-context NLL and every weight be uniform; refused before anything is written."""
    out = tmp_path / "full"
    argv = ["score", str(env["prep"]), "--scorer", str(env["model"]), "--window", str(N)]
    assert main([*argv, "--out", str(out)]) == 2
    assert "covers the whole 32-token sequence" in capsys.readouterr().err
    assert not out.exists()


def test_half_storage_and_padded_rows(env, tmp_path):
    assert _score(env, tmp_path / "f32", "tail") == 0
    assert _score(env, tmp_path / "f16", "tail", "--half") == 0
    full, half = load_scored_dataset(tmp_path / "f32"), load_scored_dataset(tmp_path / "f16")
    assert half.features["short_nll"].feature.dtype == "float16"
    a, b = np.array(full["short_nll"][:]), np.array(half["short_nll"][:])
    assert np.array_equal(b, a.astype(np.float16).astype(np.float64))
    prepared = datasets.load_from_disk(str(env["tail"]))
    mask = np.array(prepared["attention_mask"][:])
    assert np.array_equal(np.array(full["attention_mask"][:]), mask)
    assert (mask == 0).any() and (a[mask[:, 1:] == 0] == 0).all()
    assert (a[mask[:, 1:] == 1] > 0).all()


# ------------------------------------------------------------- tokenizer check


def test_scorer_with_another_tokenizer_is_refused_before_compute(
    env, tmp_path, capsys, monkeypatch
):
    import tokenweight.infra.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(tokenweight.infra.models, "load_model", no_load)
    argv = ["score", str(env["prep"]), "--scorer", str(env["other"]), "--window", str(W)]
    rc = main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: scorer ")
    assert "does not share the prepared data's tokenizer" in err
    assert "vocabulary size 520 vs 300" in err and "vocabulary hash" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------- resume, shards


def test_distributed_ranks_split_shards_and_the_last_writes_the_manifest(
    env, reference, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "dist"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _score(env, out) == 0
    assert "the last process to finish writes" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("shard-*.arrow")) == [
        f"shard-{i:05d}-of-00007.arrow" for i in (1, 3, 5)
    ]
    assert not (out / "manifest.json").exists()
    with pytest.raises(TokenWeightError, match=r"incomplete \(3 shards done"):
        load_scored_dataset(out)
    monkeypatch.setenv("RANK", "0")
    assert _score(env, out) == 0
    assert "all 7 shards done" in capsys.readouterr().out
    assert _files(out) == _files(reference)


def test_resume_skips_done_shards_and_redoes_partial_ones(env, reference, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(reference, out)
    (out / "manifest.json").unlink()
    names = sorted(p.name for p in out.glob("shard-*.arrow"))
    (out / (names[3] + ".done.json")).unlink()  # killed between the rename and the sidecar
    data = (out / names[5]).read_bytes()
    (out / names[5]).write_bytes(data[: len(data) // 2])  # a damaged file, sidecar intact
    (out / f".{names[2]}.tmp-99-deadbeef").write_bytes(b"partial")  # an interrupted write
    calls = []

    def counting(model, input_ids, **kw):
        calls.append(len(input_ids))
        return short_context_nll(model, input_ids, **kw)

    result = score_dataset(
        env["prep"], out, scorer=env["model"], window=W, shard_size=7, batch_size=3,
        nll_fn=counting, progress=False,
    )  # fmt: skip
    assert result.scored == [3, 5] and result.complete
    assert sum(calls) == 14 and result.skipped == [0, 1, 2, 4, 6]
    assert _files(out) == _files(reference)  # stale temporary file removed too


@pytest.mark.slow
def test_sigkill_midway_then_resume_is_byte_identical(env, tmp_path):
    kw = dict(scorer=env["model"], window=W, shard_size=4, batch_size=4, progress=False)
    clean = tmp_path / "clean"
    score_dataset(env["many"], clean, **kw)
    n_shards = len(list(clean.glob("shard-*.arrow")))
    assert n_shards >= 40

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tokenweight.cli", "score", str(env["many"])]
    cmd += ["--scorer", str(env["model"]), "--window", str(W), "--shard-size", "4"]
    cmd += ["--batch-size", "4", "--out", str(out)]
    child_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env)
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.done.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard finished within 120 s"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = len(list(out.glob("shard-*.done.json")))
    assert 0 < done < n_shards and not (out / "manifest.json").exists()

    result = score_dataset(env["many"], out, **kw)
    assert result.complete and len(result.skipped) >= done
    assert len(result.scored) + len(result.skipped) == n_shards
    assert _files(out) == _files(clean)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------- verification


def test_tampered_shard_and_mismatched_rows_are_detected(env, reference, tmp_path):
    out = tmp_path / "tampered"
    shutil.copytree(reference, out)
    victim = sorted(out.glob("shard-*.arrow"))[2]
    data = bytearray(victim.read_bytes())
    data[-200] ^= 0x01  # one bit of a stored score
    victim.write_bytes(bytes(data))
    with pytest.raises(TokenWeightError, match=rf"{victim.name} does not match its sha256"):
        load_scored_dataset(out)
    assert len(load_scored_dataset(out, verify=False)) == 45

    ds = load_scored_dataset(reference)
    row = ds[5]
    verify_row(row["input_ids"], row["input_hash"], row["row"])
    verify_row(torch.tensor(row["input_ids"]), row["input_hash"], row["row"])
    changed = list(row["input_ids"])
    changed[7] += 1
    with pytest.raises(TokenWeightError, match=r"^row 5: its input_ids do not match"):
        verify_row(changed, row["input_hash"], row["row"])
    batch = ds[3:6]
    verify_rows(np.array(batch["input_ids"]), batch["input_hash"], batch["row"])
    with pytest.raises(TokenWeightError, match=r"^row 4: "):
        swapped = [batch["input_ids"][0], batch["input_ids"][0], batch["input_ids"][2]]
        verify_rows(torch.tensor(swapped), batch["input_hash"], batch["row"])


def test_rerun_changed_settings_and_overwrite(env, reference, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    assert _score(env, out) == 0
    assert "all 7 shards done" in capsys.readouterr().out
    assert _files(out) == _files(reference)
    assert _score(env, out, "prep", "--stride", "5") == 2
    err = capsys.readouterr().err
    assert "holds a scoring run with other settings (stride differ)" in err and "--overwrite" in err
    assert _score(env, out, "prep", "--stride", "5", "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["stride"] == 5


# --------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "prepared dataset .*missing does not exist"),
        ("not_prepared", "is not a prepared dataset \\(no manifest.json\\)"),
        ("window", "window must be an integer >= 2"),
        ("stride", "stride must be an integer in \\[1, window - 1\\]"),
        ("foreign_out", "holds 1 entry \\(notes.txt\\), which is not a tokenweight score output"),
        ("batch", "--batch-size must be at least 1"),
    ],
)
def test_bad_inputs(env, tmp_path, capsys, case, message):
    import re

    prep, out, extra = str(env["prep"]), tmp_path / "out", []
    window = str(W)
    if case == "missing":
        prep = str(tmp_path / "missing")
    elif case == "not_prepared":
        prep = str(tmp_path)
    elif case == "window":
        window = "1"
    elif case == "stride":
        extra = ["--stride", str(W)]
    elif case == "foreign_out":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "batch":
        extra = ["--batch-size", "0"]
    argv = ["score", prep, "--scorer", str(env["model"]), "--window", window]
    rc = main([*argv, "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    if case == "foreign_out":
        assert (out / "notes.txt").read_text() == "mine"


def test_with_long_stores_plain_cross_entropy_beside_the_same_short_scores(
    env, reference, tmp_path
):
    """--with-long: long_nll equals plain cross-entropy on the full logits (independent of
    the scoring code), short_nll is unchanged, padded targets are 0, and a rerun without
    the flag is refused as other settings."""
    out = tmp_path / "long"
    assert _score(env, out, "prep", "--with-long") == 0
    ds = load_scored_dataset(out)
    ids = _prepared_ids(env["prep"])
    model = LlamaForCausalLM.from_pretrained(env["model"]).eval()
    with torch.no_grad():
        logits = model(ids).logits
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    torch.testing.assert_close(torch.tensor(ds["long_nll"][:]), expected, rtol=1e-5, atol=1e-5)
    ref = load_scored_dataset(reference)
    assert np.array_equal(np.array(ds["short_nll"][:]), np.array(ref["short_nll"][:]))
    assert "long_nll" in json.loads((out / "manifest.json").read_text())["columns"]
    assert _score(env, out, "prep") == 2  # other settings than the finished run

    padded = tmp_path / "tail"
    assert _score(env, padded, "tail", "--with-long") == 0
    tail = load_scored_dataset(padded)
    mask = np.array(tail["attention_mask"][:])
    long = np.array(tail["long_nll"][:], dtype=np.float32)
    assert (mask == 0).any() and (long[mask[:, 1:] == 0] == 0).all()
    rows = np.nonzero(mask.all(axis=1))[0]
    full_ids = torch.tensor(np.array(tail["input_ids"][:])[rows]).long()
    with torch.no_grad():
        logits = model(full_ids).logits
    exp = F.cross_entropy(logits[:, :-1].transpose(1, 2), full_ids[:, 1:], reduction="none")
    torch.testing.assert_close(torch.tensor(long[rows]), exp, rtol=1e-5, atol=1e-5)
