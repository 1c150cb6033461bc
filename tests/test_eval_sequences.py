"""Evaluation data: prepared dataset folders (padded or not) and corpus packing; the
long / short NLL of padded sequences against full-logit references on real tokens only."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F

from helpers.eval_support import EVAL_BPE, EVAL_INIT_STD
from helpers.fixtures import build_tiny_causal_lm, make_tokenizer
from tokenweight import TokenWeightError
from tokenweight.evaluation.metrics import position_bucket_nll
from tokenweight.evaluation.perplexity import (
    default_short_window,
    long_context_nll,
    short_context_nll_of,
)
from tokenweight.evaluation.sequences import is_prepared_dataset, load_eval_sequences


def _padded_dataset(tmp_path, lengths, n=40, vocab=400):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (len(lengths), n), generator=g)
    ids[:, 0] = 1  # BOS
    mask = torch.zeros(len(lengths), n, dtype=torch.int8)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
        ids[i, length:] = 0
    folder = tmp_path / "prepared"
    datasets.Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": mask.tolist(),
            "doc_id": list(range(len(lengths))),
        }
    ).save_to_disk(str(folder))
    return folder, ids, mask


def test_prepared_dataset_is_read_as_is(tmp_path):
    folder, ids, mask = _padded_dataset(tmp_path, [40, 25, 33])
    assert is_prepared_dataset(folder)
    seqs = load_eval_sequences(
        str(folder), make_tokenizer("bpe", **EVAL_BPE, add_bos=True), seq_len=999, max_sequences=2
    )
    assert torch.equal(seqs.input_ids, ids[:2])
    assert torch.equal(seqs.attention_mask, mask[:2].long())
    assert seqs.bos_token_id == 1
    expected = mask[:2, 1:].bool()
    assert torch.equal(seqs.target_mask, expected)


def test_unpadded_dataset_has_no_mask_and_bos_is_detected(tmp_path):
    folder, ids, _ = _padded_dataset(tmp_path, [40, 40])
    seqs = load_eval_sequences(str(folder), make_tokenizer("bpe", **EVAL_BPE), seq_len=8)
    assert seqs.attention_mask is None
    assert torch.equal(seqs.input_ids, ids)
    assert seqs.target_mask.all() and seqs.target_mask.shape == (2, 39)
    assert seqs.bos_token_id == 1  # every row starts with the tokenizer's BOS id


def test_no_bos_when_a_row_does_not_start_with_it(tmp_path):
    folder = tmp_path / "nobos"
    datasets.Dataset.from_dict({"input_ids": [[1, 5, 6, 7], [5, 1, 6, 7]]}).save_to_disk(
        str(folder)
    )
    assert (
        load_eval_sequences(str(folder), make_tokenizer("bpe", **EVAL_BPE), seq_len=8).bos_token_id
        is None
    )


def test_dataset_without_input_ids(tmp_path):
    folder = tmp_path / "bad"
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(folder))
    with pytest.raises(TokenWeightError, match="no input_ids column"):
        load_eval_sequences(str(folder), make_tokenizer("bpe", **EVAL_BPE), seq_len=8)


def test_corpus_is_packed_per_document(tmp_path):
    tok = make_tokenizer("bpe", **EVAL_BPE, add_bos=True)
    (tmp_path / "a.txt").write_text("The grass is green. " * 30)
    (tmp_path / "b.txt").write_text("The sky is blue. " * 3)  # too short for one sequence
    (tmp_path / "c.txt").write_text("The sun is yellow. " * 30)
    seqs = load_eval_sequences([str(tmp_path)], tok, seq_len=32, max_sequences=None)
    docs = [
        tok(p.read_text(), add_special_tokens=False)["input_ids"]
        for p in sorted(tmp_path.glob("*.txt"))
    ]
    expected = [
        [tok.bos_token_id, *doc[s : s + 31]]
        for doc in docs
        for s in range(0, len(doc) - 31 + 1, 31)
    ]
    assert seqs.input_ids.tolist() == expected
    assert seqs.attention_mask is None and seqs.bos_token_id == tok.bos_token_id


def test_corpus_too_short(tmp_path):
    (tmp_path / "a.txt").write_text("The grass is green.")
    with pytest.raises(TokenWeightError, match="long enough"):
        load_eval_sequences(
            [str(tmp_path / "a.txt")], make_tokenizer("bpe", **EVAL_BPE), seq_len=64
        )


def test_padded_nll_equals_references_on_real_tokens(tmp_path):
    lengths = [40, 25, 33]
    folder, ids, _ = _padded_dataset(tmp_path, lengths)
    seqs = load_eval_sequences(
        str(folder), make_tokenizer("bpe", **EVAL_BPE, add_bos=True), seq_len=0
    )
    model = build_tiny_causal_lm(seed=4, vocab_size=400, init_std=EVAL_INIT_STD)
    long = long_context_nll(model, seqs, batch_size=2)
    window, stride = default_short_window(40, 16, 8)
    short = short_context_nll_of(model, seqs, long, window=window, stride=stride)
    with torch.no_grad():
        for row, n in enumerate(lengths):
            real = ids[row : row + 1, :n]
            ref = F.cross_entropy(model(real).logits[0, :-1], real[0, 1:], reduction="none")
            assert torch.allclose(long[row, : n - 1], ref, atol=1e-4)
            assert (long[row, n - 1 :] == 0).all() and (short[row, n - 1 :] == 0).all()
            # windows of 16 at 0, 8, 16, ... planned on the row's own n real tokens (the
            # last one ends at n): target t >= 16 is owned by the window starting at
            # min(8 * ((t - 16) // 8 + 1), n - 16), first token -> BOS
            for t in range(1, n):
                start = 0 if t < 16 else min(8 * ((t - 16) // 8 + 1), n - 16)
                ctx = real[0, start:t].clone()
                if start:
                    ctx[0] = 1
                logits = model(ctx[None]).logits[0, -1]
                ref_short = F.cross_entropy(logits[None], real[0, t : t + 1])
                assert short[row, t - 1] == pytest.approx(float(ref_short), abs=1e-4), t
    stats = position_bucket_nll(long, seqs.target_mask, bucket_size=10)
    assert sum(s.tokens for s in stats) == sum(n - 1 for n in lengths)


def test_default_short_window():
    assert default_short_window(32768) == (4096, 1024)
    assert default_short_window(2048) == (1024, 256)
    assert default_short_window(2048, 512) == (512, 128)
    assert default_short_window(2048, 512, 448) == (512, 448)
    with pytest.raises(TokenWeightError, match="stride"):
        default_short_window(2048, 512, 600)
    with pytest.raises(TokenWeightError, match="window"):
        default_short_window(2048, 1)


def _packed(tok, texts, seq_len):
    """BOS + ``seq_len - 1`` tokens per sequence, per document in order, tail dropped."""
    rows = []
    for text in texts:
        doc = tok(text, add_special_tokens=False)["input_ids"]
        n = seq_len - 1
        rows += [[tok.bos_token_id, *doc[s : s + n]] for s in range(0, len(doc) - n + 1, n)]
    return rows


def test_corpus_is_read_with_the_options_of_prepare(tmp_path):
    import json

    tok = make_tokenizer("bpe", **EVAL_BPE, add_bos=True)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("The grass is green. " * 30)
    (folder / "b.md").write_text("The sun is yellow. " * 30)
    # glob: which files a folder contributes
    seqs = load_eval_sequences([str(folder)], tok, seq_len=32, max_sequences=None, glob="*.md")
    assert seqs.input_ids.tolist() == _packed(tok, [(folder / "b.md").read_text()], 32)
    # encoding errors: strict names the option that substitutes the bytes
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"The grass \xff is green. " * 30)
    with pytest.raises(TokenWeightError, match="--encoding-errors replace"):
        load_eval_sequences([str(bad)], tok, seq_len=32)
    seqs = load_eval_sequences(
        [str(bad)], tok, seq_len=32, max_sequences=None, encoding_errors="replace"
    )
    text = bad.read_bytes().decode("utf-8", errors="replace")
    assert "\ufffd" in text and seqs.input_ids.tolist() == _packed(tok, [text], 32)
    # hf_split: Hugging Face datasets (here a local data folder, read offline)
    hub = tmp_path / "hub"
    hub.mkdir()
    texts = ["The sky is blue. " * 20, "The sun is yellow. " * 25]
    (hub / "train.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    seqs = load_eval_sequences(
        [str(hub)], tok, seq_len=32, max_sequences=None, text_field="body", hf_split="train"
    )
    assert seqs.input_ids.tolist() == _packed(tok, texts, 32)


def test_eval_suggests_only_options_it_has(tmp_path, capsys):
    import re

    from tokenweight.cli import main

    tok = make_tokenizer("bpe", **EVAL_BPE, add_bos=True)
    folder = tmp_path / "m"
    build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD).save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    eval_help = capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.log").write_text("The grass is green. " * 30)
    args = ["eval", str(folder), "--out", str(tmp_path / "o"), "--tasks", "ppl", "--seq-len", "32"]
    args += ["--device", "cpu", "--no-progress"]
    for data in (str(empty), str(tmp_path / "missing")):
        assert main([*args, "--data", data]) == 2
        err = capsys.readouterr().err.split("error: ", 1)[1]  # after any loading bars
        suggested = re.findall(r"--[a-z][a-z-]+", err)
        assert suggested  # the message says what to do ...
        for option in suggested:  # ... with options eval has
            assert re.search(rf"{option}\b", eval_help), option
    # the suggested --glob takes the .log file: the evaluation runs
    assert main([*args, "--data", str(empty), "--glob", "*.log"]) == 0


def test_eval_targets_are_the_training_targets_with_a_real_token_before_them():
    """One target mask: evaluation counts the targets training counts
    (``packed_batches.target_mask`` of the same tokens and attention mask), less those
    whose previous token is padding (only left padding has them)."""
    from tokenweight.core.packed_batches import target_mask
    from tokenweight.evaluation.sequences import EvalSequences

    ids = torch.arange(12).view(2, 6)
    right = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    seqs = EvalSequences(ids, right, None, "test")
    training = target_mask({"input_ids": ids, "attention_mask": right})
    assert torch.equal(seqs.target_mask, training)
    assert seqs.target_mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    seqs = EvalSequences(ids, left, None, "test")
    # target 2 (column 1) is a real token after padding: training counts it, eval does not
    assert target_mask({"input_ids": ids, "attention_mask": left})[0].tolist() == [
        False,
        True,
        True,
        True,
        True,
    ]
    assert seqs.target_mask.tolist() == [[False, False, True, True, True], [True] * 5]
    assert EvalSequences(ids, None, None, "test").target_mask.all()
