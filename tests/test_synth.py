"""`tokenweight synth`: the side record points at exactly the copied tokens at the stated
distance, the filler follows its grammar, and the output is a usable prepared dataset."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from helpers.fixtures import save_tokenizer
from tokenweight.cli import main
from tokenweight.data import read_manifest
from tokenweight.infra.errors import TokenWeightError
from tokenweight.workflows.synth import SynthConfig, dependency_map, generate, nll_by_distance


def test_side_record_points_at_the_copies_and_nothing_else_breaks_the_grammar():
    cfg = SynthConfig(
        seq_len=200,
        sequences=6,
        distances=[10, 40, 90],
        span=5,
        copies=3,
        words=30,
        branching=3,
        seed=7,
    )
    words = np.arange(100, 130)
    ids, succ, copies = generate(cfg, words, bos_token_id=1)
    assert ids.shape == (6, 200) and (ids[:, 0] == 1).all()
    assert len(copies) == 6 * 3 * 3
    copied = np.zeros(ids.shape, dtype=bool)
    sources = np.zeros(ids.shape, dtype=bool)
    per_row = {}
    for row, start, length, d in copies:
        assert length == 5 and d in (10, 40, 90) and start - d >= 1 and start + length <= 200
        # the copied tokens equal the tokens exactly d earlier
        assert (
            ids[row, start : start + length].tolist()
            == ids[row, start - d : start - d + length].tolist()
        )
        assert not copied[row, start : start + length].any()
        copied[row, start : start + length] = True
        sources[row, start - d : start - d + length] = True
        per_row[(row, d)] = per_row.get((row, d), 0) + 1
    assert set(per_row.values()) == {3}
    assert not (copied & sources).any()  # a source is never itself a copy
    # every other token (after the first word) is a grammar successor of the one before
    allowed = {int(w): set(s.tolist()) for w, s in zip(words, succ)}
    for r in range(ids.shape[0]):
        for t in range(2, ids.shape[1]):
            if not copied[r, t]:
                assert int(ids[r, t]) in allowed[int(ids[r, t - 1])]

    dep = dependency_map(copies, 6, 200)
    assert dep.shape == (6, 199)
    for row, start, length, d in copies:
        # targets start+1 .. start+length-1 live in columns start .. start+length-2
        assert dep[row, start : start + length - 1].tolist() == [d] * (length - 1)
        assert dep[row, start - 1] == 0  # the copy's first token is not predictable
    assert (dep > 0).sum() == len(copies) * 4

    nll = np.where(dep == 40, 1.0, np.where(dep > 0, 3.0, 5.0))
    by = nll_by_distance(nll, dep)
    assert by["d=40"] == {"targets": 6 * 3 * 4, "mean_nll": 1.0}
    assert by["d=10"]["mean_nll"] == 3.0 and by["other"]["mean_nll"] == 5.0


def test_same_seed_same_data_and_bad_settings():
    cfg = SynthConfig(seq_len=64, sequences=2, distances=[8, 16], span=4, copies=2, words=20)
    a, _, ca = generate(cfg, np.arange(20), None)
    b, _, cb = generate(cfg, np.arange(20), None)
    assert np.array_equal(a, b) and ca == cb
    for bad in (
        {"distances": [2]},
        {"distances": [70]},
        {"copies": 50},
        {"span": 1},
        {"branching": 30},
    ):
        with pytest.raises(TokenWeightError):
            SynthConfig(**{**vars(cfg), **bad}).validate()


def test_distance_ranges_draw_each_copy_its_own_distance():
    cfg = SynthConfig(
        seq_len=256, sequences=20, distances=[[10, 100], 150], span=4, copies=3, words=30, seed=3
    )
    ids, _, copies = generate(cfg, np.arange(100, 130), bos_token_id=1)
    ranged = [d for _, _, _, d in copies if d != 150]
    assert len(ranged) == 20 * 3 and len([d for *_, d in copies if d == 150]) == 20 * 3
    assert min(ranged) >= 10 and max(ranged) <= 100
    assert len(set(ranged)) > 20  # not a handful of fixed look-backs
    for row, start, length, d in copies:
        assert (ids[row, start : start + length] == ids[row, start - d : start - d + length]).all()
    dep = dependency_map(copies, 20, 256)
    nll = np.where((dep >= 10) & (dep <= 100), 2.0, np.where(dep == 150, 4.0, 6.0))
    by = nll_by_distance(nll, dep, cfg.distance_classes())
    assert list(by) == ["d=10-100", "d=150", "other"]
    assert by["d=10-100"] == {"targets": 60 * 3, "mean_nll": 2.0}
    assert by["d=150"]["mean_nll"] == 4.0 and by["other"]["mean_nll"] == 6.0
    for bad in ([[50, 10]], [[2, 10]], [[10, 300]], [[1, 2, 3]], ["x"]):
        with pytest.raises(TokenWeightError, match="distances"):
            SynthConfig(**{**vars(cfg), "distances": bad}).validate()


def test_facts_recur_with_their_row_value_over_a_document_vocabulary():
    cfg = SynthConfig(
        seq_len=300,
        sequences=8,
        distances=[[20, 60], 150],
        span=2,
        copies=3,
        words=120,
        content="facts",
        keys=10,
        values=4,
        filler="document",
        doc_words=12,
        seed=5,
    )
    words = np.arange(1000, 1120)
    ids, _, copies = generate(cfg, words, bos_token_id=1)
    keys, values = set(words[:10].tolist()), words[10:50]
    filler = set(words[50:].tolist())
    fact_pos = np.zeros(ids.shape, dtype=bool)
    for row in range(8):
        mine = [c for c in copies if c[0] == row]
        assert len(mine) == 6
        seen = []
        for _, start, length, d in mine:
            assert length == 2 and (d == 150 or 20 <= d <= 60)
            key, value = ids[row, start], ids[row, start + 1]
            assert [key, value] == ids[row, start - d : start - d + 2].tolist()
            k = int(key) - 1000
            assert int(key) in keys and int(value) in values[k * 4 : k * 4 + 4].tolist()
            seen.append(int(key))
            fact_pos[row, [start - d, start - d + 1, start, start + 1]] = True
        assert len(set(seen)) == 6  # every fact of a row has its own key
        rest = set(ids[row, 1:][~fact_pos[row, 1:]].tolist())
        assert rest <= filler and len(rest) <= 12  # the row's own vocabulary
    assert len({frozenset(ids[r, 1:][~fact_pos[r, 1:]].tolist()) for r in range(8)}) > 1
    dep = dependency_map(copies, 8, 300)
    assert (dep > 0).sum() == len(copies)  # only the value of each recurring fact depends
    for row, start, _, d in copies:
        assert dep[row, start] == d and dep[row, start - 1] == 0
    base = {**vars(cfg)}
    for bad, match in (
        ({"span": 3}, "span: 2"),
        ({"keys": 5}, "own key"),
        ({"words": 60}, "doc_words"),
        ({"content": "x"}, "content"),
        ({"filler": "x"}, "filler"),
    ):
        with pytest.raises(TokenWeightError, match=match):
            SynthConfig(**{**base, **bad}).validate()


def test_cli_writes_a_prepared_dataset_with_its_side_record(tmp_path, capsys):
    tok = save_tokenizer(tmp_path / "tok")
    out = tmp_path / "synth"
    argv = [
        "synth",
        "--tokenizer",
        str(tok),
        "--out",
        str(out),
        "--seq-len",
        "128",
        "--sequences",
        "3",
        "--distances",
        "16,30-60",
        "--span",
        "4",
        "--copies",
        "2",
        "--words",
        "40",
    ]
    assert main(argv) == 0
    assert "dependencies.json" in capsys.readouterr().out
    manifest = read_manifest(out)
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 3 and manifest["seq_len"] == 128 and manifest["counts"]["sequences"] == 3
    record = json.loads((out / "dependencies.json").read_text())
    ids = np.array(ds["input_ids"])
    assert record["config"]["distances"] == [16, [30, 60]]
    for row, start, length, d in record["copies"]:
        assert d == 16 or 30 <= d <= 60
        assert (ids[row, start : start + length] == ids[row, start - d : start - d + length]).all()
    assert main(argv) == 2  # exists
    assert main([*argv, "--overwrite"]) == 0
    # a folder synth did not write is never replaced
    other = tmp_path / "other"
    other.mkdir()
    assert main([*argv[:4], str(other), *argv[5:], "--overwrite"]) == 2


def test_cli_facts_take_span_two_by_default(tmp_path, capsys):
    tok = save_tokenizer(tmp_path / "tok")
    out = tmp_path / "facts"
    argv = ["synth", "--tokenizer", str(tok), "--out", str(out), "--seq-len", "96"]
    argv += ["--sequences", "2", "--distances", "4-40", "--copies", "3", "--words", "40"]
    argv += ["--content", "facts", "--keys", "4", "--values", "2", "--filler", "document"]
    assert main([*argv, "--doc-words", "8"]) == 0
    assert "3 facts of 2 tokens per row" in capsys.readouterr().out
    record = json.loads((out / "dependencies.json").read_text())
    assert record["config"]["span"] == 2 and record["config"]["content"] == "facts"
    assert all(length == 2 and 4 <= d <= 40 for _, _, length, d in record["copies"])
    assert main([*argv, "--span", "3", "--out", str(tmp_path / "x")]) == 2
    assert "span: facts are [key, value] pairs" in capsys.readouterr().err
