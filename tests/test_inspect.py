"""`inspect`: numbers equal an independent computation; hostile token text is escaped."""

from __future__ import annotations

import html
import json
import re

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import build_tiny_causal_lm
from tokenweight.cli import main
from tokenweight.inspection import inspect_passage, render_html, write_inspection
from tokenweight.weighting import Scheme, compute_weights

HOSTILE = '<script>alert("x")</script>'


def hostile_tokenizer(folder=None) -> PreTrainedTokenizerFast:
    words = [
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
        HOSTILE,
        "&amp;",
        "the",
        "king",
        "is",
        "dead",
        "long",
        "live",
        "queen",
        "'",
        '"',
        "a",
    ]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


TEXT = " ".join(["the king is dead", HOSTILE, "long live the queen &amp; a king"] * 6)


def test_numbers_equal_independent_computation():
    tok = hostile_tokenizer()
    model = build_tiny_causal_lm(
        vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=3
    )
    result = inspect_passage(model, tok, TEXT, window=8, stride=5, scheme="dense:0.5")
    ids = torch.tensor([[1, *tok(TEXT, add_special_tokens=False)["input_ids"]]])
    assert result.token_ids == ids[0].tolist()
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    long = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
    torch.testing.assert_close(torch.tensor(result.long_nll), long, atol=1e-4, rtol=1e-4)
    # window 0 (first 8 tokens) has the same context in both passes
    torch.testing.assert_close(torch.tensor(result.short_nll[:7]), long[:7], atol=1e-4, rtol=1e-4)
    expected_w = compute_weights(
        torch.tensor([result.long_nll]), torch.tensor([result.short_nll]), Scheme.dense(0.5)
    )[0]
    torch.testing.assert_close(torch.tensor(result.weight), expected_w)
    assert HOSTILE in "".join(result.tokens)


def test_html_escapes_hostile_tokens(tmp_path):
    tok = hostile_tokenizer()
    model = build_tiny_causal_lm(vocab_size=len(tok))
    result = inspect_passage(model, tok, TEXT, window=8, scheme="sparse:0.2")
    page = render_html(result, title="<b>title</b>")
    assert "<script>" not in page.split("<script>\ndocument")[0]  # only our own script tag
    assert page.count("<script>") == 1
    assert html.escape(HOSTILE) in page
    assert "&lt;b&gt;title&lt;/b&gt;" in page
    # no raw quote can break out of a title attribute
    for attr in re.findall(r'title="([^"]*)"', page):
        assert "<" not in attr and ">" not in attr
    paths = write_inspection(result, tmp_path)
    data = json.loads((tmp_path / "inspect.json").read_text())
    assert data["weight"] == result.weight
    assert (tmp_path / "weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(paths) == {"html", "histogram", "top_tokens", "json"}


def test_cli_inspect(tmp_path, capsys):
    tok = hostile_tokenizer(tmp_path / "model")
    model = build_tiny_causal_lm(vocab_size=len(tok))
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "passage.txt").write_text(TEXT)
    code = main(
        [
            "inspect",
            str(tmp_path / "model"),
            str(tmp_path / "passage.txt"),
            "--window",
            "8",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    assert (tmp_path / "out" / "inspect.html").exists()
    assert "gain" in capsys.readouterr().out
    assert (
        main(["inspect", str(tmp_path / "model"), str(tmp_path / "nope.txt"), "--window", "8"]) == 2
    )
    assert "no such text file" in capsys.readouterr().err
