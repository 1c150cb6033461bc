"""`tokenweight select`: statistics against hand computations, the choice of units, and
round trips (selected rows are verbatim input rows; hashes verified)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest

from helpers.corpus import CORPUS_DIR
from helpers.fixtures import save_tiny_model, save_tokenizer
from tokenweight.cli import main
from tokenweight.data import load_scored_dataset, prepare_dataset
from tokenweight.infra.errors import TokenWeightError
from tokenweight.workflows.selection import aggregate, choose, target_stats

N, W = 32, 8


def test_target_stats_and_aggregate_by_hand():
    short = np.array([[3, 5, 1, 4], [2, 2, 2, 2]], dtype=np.float32)
    long = np.array([[1, 1, 1, 3], [2, 3, 0.5, 1]], dtype=np.float32)
    # gains: row 0 [2, 4, 0, 1] (only target 2 is key: g 4 > 2, l 1 < 2; g = 2 is not > 2)
    #        row 1 [0, -1, 1.5, 1]; targets t = 1..4, bucket 2 -> buckets 0, 1, 1, 2
    st = target_stats(short, long, bucket=2)
    assert st.targets.tolist() == [4, 4] and st.key.tolist() == [1, 0]
    assert st.positive_gain.tolist() == [7.0, 2.5]
    assert st.bucket_targets.tolist() == [[1, 2, 1], [1, 2, 1]]
    assert st.bucket_gain.tolist() == [[2, 4, 1], [0, 0.5, 1]]
    rows = aggregate(st)
    assert rows["key_share"].tolist() == [0.25, 0.0]
    assert rows["mean_gain"].tolist() == [7 / 4, 2.5 / 4]
    doc = aggregate(st, np.array([7, 7]))
    assert doc["unit"].tolist() == [7] and doc["rows"].tolist() == [2]
    assert doc["key_share"].tolist() == [1 / 8] and doc["mean_gain"].tolist() == [9.5 / 8]
    assert doc["bucket_gain"].tolist() == [[1.0, 4.5 / 4, 1.0]]

    # padding: row 1's last token is padding, so its last target does not count
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    st = target_stats(short, long, mask, bucket=2)
    assert st.targets.tolist() == [4, 3] and st.positive_gain.tolist() == [7.0, 1.5]
    b = aggregate(st)["bucket_gain"]
    assert b[1, :2].tolist() == [0.0, 0.25] and math.isnan(b[1, 2])


def test_choose_top_threshold_and_short_share():
    v = np.array([0.1, 0.5, 0.5, 0.2, 0.0])
    sel, extra = choose(v, top=0.4)
    assert sel.tolist() == [False, True, True, False, False] and not extra.any()
    sel, _ = choose(v, top=0.5)  # ceil(2.5) = 3
    assert np.nonzero(sel)[0].tolist() == [1, 2, 3]
    sel, _ = choose(v, threshold=0.2)
    assert np.nonzero(sel)[0].tolist() == [1, 2, 3]
    sel, extra = choose(v, top=0.4, keep_short=2 / 3, seed=3)
    assert extra.sum() == 2 and not (extra & sel).any()
    assert np.array_equal(extra, choose(v, top=0.4, keep_short=2 / 3, seed=3)[1])
    for kwargs in ({}, {"top": 0.5, "threshold": 1.0}, {"top": 0.0}, {"top": 0.5, "keep_short": 2}):
        with pytest.raises(TokenWeightError):
            choose(v, **kwargs)


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("select")
    tok = save_tokenizer(root / "tok")
    model = save_tiny_model(root / "model", tok, max_position_embeddings=256)
    prep = root / "prep"
    prepare_dataset([str(CORPUS_DIR)], tokenizer=str(tok), seq_len=N, out=prep)
    argv = ["score", str(prep), "--scorer", str(model), "--window", str(W), "--batch-size", "8"]
    assert main([*argv, "--out", str(root / "long"), "--with-long"]) == 0
    assert main([*argv, "--out", str(root / "short")]) == 0
    return {"root": root, "prep": prep, "long": root / "long", "short": root / "short"}


def _expected_mean_gain(folder: Path) -> np.ndarray:
    ds = load_scored_dataset(folder)
    s = np.array(ds["short_nll"][:], dtype=np.float64)
    lo = np.array(ds["long_nll"][:], dtype=np.float64)
    return np.maximum(s - lo, 0).mean(axis=1)


def test_sequence_selection_round_trip(scored, tmp_path, capsys):
    out = tmp_path / "sel"
    argv = ["select", str(scored["long"]), "--prepared", str(scored["prep"]), "--out", str(out)]
    assert main([*argv, "--top", "0.5", "--by", "mean_gain", "--level", "sequence"]) == 0
    assert "rows verified" in capsys.readouterr().out
    gain = _expected_mean_gain(scored["long"])
    want = sorted(np.argsort(-gain, kind="stable")[: math.ceil(len(gain) / 2)].tolist())
    report = json.loads((out / "selection.json").read_text())
    assert report["rows"] == want and report["hashes_verified"] == len(want)
    np.testing.assert_allclose(report["units_table"]["mean_gain"], gain, rtol=1e-5)

    src = datasets.load_from_disk(str(scored["prep"]))
    got = datasets.load_from_disk(str(out))
    assert got.column_names == src.column_names and len(got) == len(want)
    for k, r in enumerate(want):
        assert got[k] == src[r]  # verbatim, every column
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "tokenweight.prepared" and manifest["counts"]["sequences"] == len(
        want
    )
    assert manifest["selection"]["by"] == "mean_gain"
    for name in ("selection.md", "selection.png"):
        assert (out / name).stat().st_size > 0

    # the selected folder is a prepared dataset: it scores again, row for row
    again = tmp_path / "again"
    assert (
        main(
            [
                "score",
                str(out),
                "--scorer",
                str(scored["root"] / "model"),
                "--window",
                str(W),
                "--out",
                str(again),
            ]
        )
        == 0
    )
    assert load_scored_dataset(again)["input_ids"][:] == got["input_ids"][:]

    # overwrite replaces only a select output
    assert main([*argv, "--top", "0.25"]) == 2
    assert main([*argv, "--top", "0.25", "--overwrite"]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    argv[-1] = str(foreign)
    assert main([*argv, "--top", "0.25", "--overwrite"]) == 2
    assert (foreign / "keep.txt").read_text() == "mine"


def test_document_selection_keeps_whole_documents(scored, tmp_path):
    out = tmp_path / "docs"
    argv = ["select", str(scored["long"]), "--prepared", str(scored["prep"]), "--out", str(out)]
    assert main([*argv, "--top", "0.5", "--by", "mean_gain", "--keep-short", "0.5"]) == 0
    src = datasets.load_from_disk(str(scored["prep"]))
    docs = np.array(src["doc_id"])
    ds = load_scored_dataset(scored["long"])
    s, lo = np.array(ds["short_nll"][:]), np.array(ds["long_nll"][:])
    pos = np.maximum(s.astype(np.float64) - lo, 0).sum(axis=1)
    units = np.unique(docs)
    per_doc = np.array([pos[docs == d].sum() / ((docs == d).sum() * (N - 1)) for d in units])
    top = set(units[np.argsort(-per_doc, kind="stable")[: math.ceil(len(units) / 2)]].tolist())
    report = json.loads((out / "selection.json").read_text())
    kept_docs = set(docs[report["rows"]].tolist())
    assert top <= kept_docs
    n_rest = len(units) - len(top)
    assert len(kept_docs - top) == math.floor(n_rest * 0.5 + 0.5) == report["units_kept_short"]
    assert report["rows"] == np.nonzero(np.isin(docs, sorted(kept_docs)))[0].tolist()
    assert "## Top documents" in (out / "selection.md").read_text()


def test_select_refuses_data_without_long_scores_or_another_prepared(scored, tmp_path, capsys):
    base = ["select", "--out", str(tmp_path / "x"), "--top", "0.5"]
    assert main([*base, str(scored["short"]), "--prepared", str(scored["prep"])]) == 2
    assert "--with-long" in capsys.readouterr().err
    other = tmp_path / "other"
    prepare_dataset(
        [str(CORPUS_DIR)], tokenizer=str(scored["root"] / "tok"), seq_len=N, out=other, seed=1
    )
    assert main([*base, str(scored["long"]), "--prepared", str(other)]) == 2
    assert "not scored from" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_select_warns_when_every_unit_scores_zero(scored, tmp_path, capsys, caplog, monkeypatch):
    """Scores whose long and short NLL are equal give every unit 0: the choice among them
    is arbitrary, and select says so (and still writes the selection)."""
    import dataclasses
    import logging

    from tokenweight.workflows import selection

    real = selection._read_scores

    def no_gain(*args):
        scores = real(*args)
        return dataclasses.replace(scores, long=scores.short.copy())

    monkeypatch.setattr(selection, "_read_scores", no_gain)
    out = tmp_path / "sel"
    argv = ["select", scored["long"], "--prepared", scored["prep"], "--top", 0.5]
    argv += ["--by", "mean_gain"]  # (the tiny model has no key tokens at all: key_share 0)
    with caplog.at_level(logging.WARNING, logger="tokenweight.workflows.selection"):
        assert main([*map(str, argv), "--out", str(out)]) == 0
    assert "has mean_gain 0" in caplog.text and "arbitrary" in caplog.text
    assert (out / "manifest.json").is_file()
    caplog.clear()
    monkeypatch.setattr(selection, "_read_scores", real)  # real gains: no warning
    assert main([*map(str, argv), "--out", str(tmp_path / "sel2")]) == 0
    assert "arbitrary" not in caplog.text
