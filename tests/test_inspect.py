"""`inspect`: numbers equal an independent computation; hostile token text is escaped."""

from __future__ import annotations

import html
import json
import re

import torch
import torch.nn.functional as F

from helpers.fixtures import BOS_ID, build_tiny_causal_lm, make_tokenizer, save_tiny_model
from tokenweight.cli import main
from tokenweight.core.weighting import Scheme, compute_weights
from tokenweight.workflows.inspection import inspect_passage, render_html, write_inspection

HOSTILE = '<script>alert("x")</script>'


# the words of a "words" tokenizer (fixtures.make_tokenizer): hostile text among them
WORDS = (HOSTILE, "&amp;", "the", "king", "is", "dead", "long", "live", "queen", "'", '"', "a")


TEXT = " ".join(["the king is dead", HOSTILE, "long live the queen &amp; a king"] * 6)


def test_numbers_equal_independent_computation():
    tok = make_tokenizer(words=WORDS)
    model = build_tiny_causal_lm(tokenizer=tok)
    result = inspect_passage(model, tok, TEXT, window=8, stride=5, scheme="dense:0.5")
    ids = torch.tensor([[BOS_ID, *tok(TEXT, add_special_tokens=False)["input_ids"]]])
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
    tok = make_tokenizer(words=WORDS)
    model = build_tiny_causal_lm(tokenizer=tok)
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
    save_tiny_model(tmp_path / "model", make_tokenizer(words=WORDS))
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


def _view_colours(page: str) -> dict[str, tuple[str, list[str]]]:
    """Per view: (its legend HTML, the background colour of every target token)."""
    views = {}
    for chunk in page.split('id="view-')[1:]:
        name = chunk.split('"', 1)[0]
        body = chunk.split('<div class="passage">', 1)
        colours = re.findall(r'<span style="background:(rgba\([^)]*\))" title=', body[1])
        views[name] = (body[0][body[0].index('<div class="legend">') :], colours)
    return views


def test_heat_map_scale_is_fixed_and_shown_in_nats():
    from tokenweight.workflows.inspection import Inspection

    def page(tokens, long, short, weight):
        result = Inspection(tokens, list(range(len(tokens))), long, short, weight, "x", 4, 4)
        return _view_colours(render_html(result))

    # gains: a = [1.5, 0, -4], b = [1.5, -8.9, 5.8, 2.0]
    a = page(["<s>", "a", "b", "c"], [1.0, 2.5, 7.0], [2.5, 2.5, 3.0], [0.5, 1.0, 1.5])
    b = page(
        ["<s>", "x", "y", "z", "w"],
        [2.5, 9.0, 0.2, 0.5],
        [4.0, 0.1, 6.0, 2.5],
        [1.0, 4.0, 0.1, 2.0],
    )
    assert set(a) == set(b) == {"gain", "weight", "long", "short"}
    # an NLL of 2.5 nats has one colour on both pages and in the long and short views
    nll_25 = {
        a["long"][1][1],
        b["long"][1][0],
        a["short"][1][0],
        a["short"][1][1],
        b["short"][1][3],
    }
    assert len(nll_25) == 1
    assert a["long"][1][0] != a["long"][1][1]  # 1.0 and 2.5 nats differ
    assert a["gain"][1][0] == b["gain"][1][0]  # gain 1.5 on both pages
    assert a["gain"][1][2] == b["gain"][1][1]  # -4 and -8.9: clipped at the scale's end
    assert a["gain"][1][0] != b["gain"][1][3]  # 1.5 and 2.0 differ
    assert a["weight"][1][1] == b["weight"][1][0]  # weight 1.0 on both pages
    for name in ("gain", "long", "short"):
        for legend, _ in (a[name], b[name]):
            assert 'class="legend"' in legend and "(nats)" in legend
            ticks = [float(v) for v in re.findall(r'data-value="([^"]+)"', legend)]
            assert len(ticks) >= 3 and ticks == sorted(ticks)
    gain_ticks = [float(v) for v in re.findall(r'data-value="([^"]+)"', a["gain"][0])]
    assert -gain_ticks[0] == gain_ticks[-1] > 0  # symmetric around no gain
    assert a["long"][0] == b["short"][0]  # the NLL views share one legend
