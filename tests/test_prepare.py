"""`tokenweight prepare`: round trip on the test corpus, options, manifest and bad inputs.

Expected sequences are computed here independently: each test-corpus file tokenized
directly with the tokenizer, then cut with plain slicing.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import datasets
import pytest

from helpers.corpus import CORPUS_DIR, JSONL_FILE, corpus_files
from helpers.fixtures import PAD_ID, save_tokenizer
from tokenweight.cli import main
from tokenweight.data.prepare import prepare_dataset
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.models import load_tokenizer, tokenizer_identity

N = 32


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tok")
    return {
        "bos": save_tokenizer(root / "bos"),
        "nobos": save_tokenizer(root / "nobos", bos=False),
    }


@pytest.fixture(scope="module")
def doc_tokens(toks) -> list[list[int]]:
    """The test corpus files, in sorted path order, tokenized without special tokens."""
    tok = load_tokenizer(toks["bos"])
    return [
        tok(p.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        for p in corpus_files()
    ]


def _rows(out: Path) -> list[dict]:
    return datasets.load_from_disk(str(out)).to_list()


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _by_doc(rows: list[dict], key: str = "input_ids") -> dict[int, Counter]:
    out: dict[int, Counter] = {}
    for r in rows:
        out.setdefault(r["doc_id"], Counter())[tuple(r[key])] += 1
    return out


# ------------------------------------------------------------------- round trip


def test_round_trip_sequences_bos_coverage_and_manifest(tmp_path, toks, doc_tokens):
    out = tmp_path / "prep"
    result = prepare_dataset([str(CORPUS_DIR)], tokenizer=str(toks["bos"]), seq_len=N, out=out)
    rows = _rows(out)
    L = N - 1
    expected = {
        d: Counter(tuple([1, *ids[k * L : (k + 1) * L]]) for k in range(len(ids) // L))
        for d, ids in enumerate(doc_tokens)
        if len(ids) >= L
    }
    # every sequence is BOS + 31 consecutive tokens of its own document, and all are there
    assert _by_doc(rows) == expected
    assert all(len(r["input_ids"]) == N and r["input_ids"][0] == 1 for r in rows)
    assert all(1 not in r["input_ids"][1:] for r in rows)
    assert "attention_mask" not in rows[0]
    assert [r["row"] for r in rows] == list(range(len(rows)))
    assert [r["doc_id"] for r in rows] != sorted(r["doc_id"] for r in rows)  # shuffled

    m = _manifest(out)
    lengths = [len(ids) for ids in doc_tokens]
    assert m["counts"]["documents"] == len(doc_tokens) == 5
    assert m["counts"]["sequences"] == len(rows) == sum(n // L for n in lengths)
    assert m["counts"]["document_tokens"] == sum(lengths)
    assert m["counts"]["dropped_tokens"] == sum(n % L for n in lengths)
    assert m["counts"]["sequence_tokens"] == N * len(rows)
    assert m["counts"]["short_documents"] == sum(n < L for n in lengths) == 1
    assert m["counts"]["longest_document"] == max(lengths)
    assert m["seq_len"] == N and m["bos_token_id"] == 1 and m["seed"] == 42 and m["stride"] == L
    ident = tokenizer_identity(load_tokenizer(toks["bos"]))
    assert all(m["tokenizer"][k] == v for k, v in ident.items())
    import hashlib

    files = corpus_files()
    assert [Path(i["path"]).resolve() for i in m["inputs"]] == [p.resolve() for p in files]
    assert [i["sha256"] for i in m["inputs"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    ]
    from tokenweight import __version__

    assert m["tokenweight_version"] == __version__
    assert result.manifest == m
    assert not list(tmp_path.glob(".*"))  # scratch and temporary folders are gone


def test_seed_controls_the_order_and_num_proc_does_not(tmp_path, toks):
    def run(name, **kw):
        prepare_dataset(
            [str(CORPUS_DIR)], tokenizer=str(toks["bos"]), seq_len=N, out=tmp_path / name, **kw
        )
        return _rows(tmp_path / name)

    a, b = run("a"), run("b", num_proc=2)
    c = run("c", seed=7)
    assert a == b
    assert _manifest(tmp_path / "a") == _manifest(tmp_path / "b")
    assert [r["input_ids"] for r in a] != [r["input_ids"] for r in c]
    assert sorted(map(tuple, (r["input_ids"] for r in a))) == sorted(
        map(tuple, (r["input_ids"] for r in c))
    )


def test_max_sequences_keeps_the_first_rows_of_the_shuffle(tmp_path, toks):
    full = prepare_dataset(
        [str(CORPUS_DIR)], tokenizer=str(toks["bos"]), seq_len=N, out=tmp_path / "all"
    )
    limited = prepare_dataset(
        [str(CORPUS_DIR)],
        tokenizer=str(toks["bos"]),
        seq_len=N,
        out=tmp_path / "few",
        max_sequences=3,
    )
    all_rows, few_rows = _rows(tmp_path / "all"), _rows(tmp_path / "few")
    assert len(few_rows) == 3 and few_rows == all_rows[:3]
    assert limited.manifest["counts"]["sequences"] == 3
    assert (
        limited.manifest["counts"]["sequences_before_limit"] == full.manifest["counts"]["sequences"]
    )
    assert limited.manifest["counts"]["sequence_tokens"] == sum(
        len(r["input_ids"]) for r in few_rows
    )


def test_keep_tail_pads_with_a_mask_and_covers_every_token(tmp_path, toks, doc_tokens):
    out = tmp_path / "tail"
    prepare_dataset(
        [str(CORPUS_DIR)], tokenizer=str(toks["bos"]), seq_len=N, out=out, keep_tail=True
    )
    rows, m, L = _rows(out), _manifest(tmp_path / "tail"), N - 1
    pad = m["pad_token_id"]
    assert pad == PAD_ID
    got: dict[int, Counter] = {}
    for r in rows:
        n = sum(r["attention_mask"])
        assert r["attention_mask"] == [1] * n + [0] * (N - n)
        assert r["input_ids"][n:] == [pad] * (N - n)
        got.setdefault(r["doc_id"], Counter())[tuple(r["input_ids"][:n])] += 1
    expected = {
        d: Counter(tuple([1, *ids[k : k + L]]) for k in range(0, len(ids), L))
        for d, ids in enumerate(doc_tokens)
    }
    assert got == expected
    assert m["counts"]["dropped_tokens"] == 0
    real = sum(sum(r["attention_mask"]) for r in rows)
    assert m["counts"]["padding_tokens"] == N * len(rows) - real


def test_stride_makes_overlapping_windows(tmp_path, toks, doc_tokens):
    out, L, S = tmp_path / "stride", N - 1, 10
    prepare_dataset([str(CORPUS_DIR)], tokenizer=str(toks["bos"]), seq_len=N, out=out, stride=S)
    expected = {
        d: Counter(tuple([1, *ids[s : s + L]]) for s in range(0, len(ids) - L + 1, S))
        for d, ids in enumerate(doc_tokens)
        if len(ids) >= L
    }
    assert _by_doc(_rows(out)) == expected
    m = _manifest(out)
    assert m["stride"] == S
    ends = [((n - L) // S) * S + L for n in map(len, doc_tokens) if n >= L]
    assert m["counts"]["dropped_tokens"] == sum(map(len, doc_tokens)) - sum(ends)


def test_tokenizer_without_bos_fills_all_n_tokens(tmp_path, toks, doc_tokens):
    out = tmp_path / "nobos"
    prepare_dataset([str(CORPUS_DIR)], tokenizer=str(toks["nobos"]), seq_len=N, out=out)
    expected = {
        d: Counter(tuple(ids[k * N : (k + 1) * N]) for k in range(len(ids) // N))
        for d, ids in enumerate(doc_tokens)
        if len(ids) >= N
    }
    assert _by_doc(_rows(out)) == expected
    assert _manifest(out)["bos_token_id"] is None


def test_jsonl_parquet_and_local_hf_dataset_inputs(tmp_path, toks):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = load_tokenizer(toks["bos"])
    records = [json.loads(line) for line in JSONL_FILE.read_text().splitlines()]
    lengths = [len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in records]
    seq_len = 9  # BOS + 8: every letter yields sequences

    prepare_dataset(
        [str(JSONL_FILE)], tokenizer=str(toks["bos"]), seq_len=seq_len, out=tmp_path / "j"
    )
    m = _manifest(tmp_path / "j")
    assert m["counts"]["documents"] == 3 and m["inputs"][0]["kind"] == "jsonl"
    assert m["counts"]["sequences"] == sum(n // 8 for n in lengths)

    folder = tmp_path / "pq"
    folder.mkdir()
    table = pa.table({"body": [r["text"] for r in records], "title": [r["title"] for r in records]})
    pq.write_table(table, folder / "train.parquet")
    prepare_dataset(
        [str(folder / "train.parquet")],
        tokenizer=str(toks["bos"]),
        seq_len=seq_len,
        out=tmp_path / "p",
        text_field="body",
    )
    assert _rows(tmp_path / "p") == _rows(tmp_path / "j")

    # --hf-split reads through datasets.load_dataset (here a local data folder, offline)
    prepare_dataset(
        [str(folder)],
        tokenizer=str(toks["bos"]),
        seq_len=seq_len,
        out=tmp_path / "h",
        text_field="body",
        hf_split="train",
    )
    assert _rows(tmp_path / "h") == _rows(tmp_path / "j")
    assert _manifest(tmp_path / "h")["inputs"][0]["hf_dataset"] == str(folder)


def test_cli_prints_a_summary(tmp_path, toks, capsys):
    rc = main(
        ["prepare", str(CORPUS_DIR), "--tokenizer", str(toks["bos"]), "--seq-len", "32",
         "--out", str(tmp_path / "o"), "--num-proc", "2"]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    m = _manifest(tmp_path / "o")
    assert f"prepared 5 documents -> {m['counts']['sequences']} sequences of 32 tokens" in text
    assert "tokens/s with 2 processes" in text
    assert len(text.splitlines()) <= 24


# ------------------------------------------------------------------- bad inputs


def _fail(capsys, inputs, tok: Path, seq_len: int, out: Path, *extra: str) -> str:
    """Run `tokenweight prepare` in-process; expect exit 2 and one `error:` line, no traceback."""
    argv = ["prepare", *map(str, inputs), "--tokenizer", str(tok), "--seq-len", str(seq_len)]
    rc = main([*argv, "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "\nerror: " in "\n" + err and "Traceback" not in err
    return err[err.index("error: ") :]


def test_missing_path(tmp_path, toks, capsys):
    err = _fail(capsys, [tmp_path / "nope.txt"], toks["bos"], 8, tmp_path / "o")
    assert "nope.txt' does not exist" in err and "--hf-split" in err
    assert not (tmp_path / "o").exists()


def test_empty_corpus(tmp_path, toks, capsys):
    (tmp_path / "empty").mkdir()
    err = _fail(capsys, [tmp_path / "empty"], toks["bos"], 8, tmp_path / "o")
    assert "empty corpus: no input files found" in err
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    (tmp_path / "blank" / "b.txt").write_text("   \n")
    err = _fail(capsys, [tmp_path / "blank"], toks["bos"], 8, tmp_path / "o")
    assert "empty corpus: 2 documents" in err and "no text" in err
    (tmp_path / "e.jsonl").write_text("\n")
    err = _fail(capsys, [tmp_path / "e.jsonl"], toks["bos"], 8, tmp_path / "o")
    assert "empty corpus: no documents" in err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_undecodable_bytes_name_file_and_offset(tmp_path, toks, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"The lamp burns.\n\xff\xfe and the sea rolls on the rock, the lamp, the sea.")
    err = _fail(capsys, [bad], toks["bos"], 4, tmp_path / "o")
    assert str(bad) in err and "byte offset 16" in err and "--encoding-errors replace" in err
    argv = [
        str(bad),
        "--tokenizer",
        str(toks["bos"]),
        "--seq-len",
        "4",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(["prepare", *argv, "--encoding-errors", "replace"]) == 0
    # JSONL: the offset counts from the start of the file, across lines
    jl = tmp_path / "bad.jsonl"
    first = b'{"text": "the lamp"}\n'
    jl.write_bytes(first + b'{"text": "the \xc3 sea"}\n')
    err = _fail(capsys, [jl], toks["bos"], 2, tmp_path / "o2")
    assert "bad.jsonl line 2" in err and f"byte offset {len(first) + 14}" in err


def test_missing_text_field(tmp_path, toks, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    err = _fail(capsys, [JSONL_FILE], toks["bos"], 8, tmp_path / "o", "--text-field", "body")
    assert "line 1: no field 'body' (fields: text, title)" in err and "--text-field" in err
    pq.write_table(pa.table({"content": ["a b c"]}), tmp_path / "x.parquet")
    err = _fail(capsys, [tmp_path / "x.parquet"], toks["bos"], 8, tmp_path / "o")
    assert "no column 'text' (columns: content)" in err


def test_seq_len_below_two(tmp_path, toks, capsys):
    err = _fail(capsys, [CORPUS_DIR], toks["bos"], 1, tmp_path / "o")
    assert "--seq-len must be an integer of at least 2" in err and "got 1" in err


def test_every_document_shorter_than_n(tmp_path, toks, doc_tokens, capsys):
    err = _fail(capsys, [CORPUS_DIR], toks["bos"], 5000, tmp_path / "o")
    longest = max(map(len, doc_tokens))
    assert "all 5 documents have fewer than 4999 tokens" in err
    assert f"the longest has {longest}" in err and "--keep-tail" in err
    assert not (tmp_path / "o").exists()


def test_output_exists_needs_overwrite(tmp_path, toks, capsys):
    out = tmp_path / "o"
    argv = [str(CORPUS_DIR), "--tokenizer", str(toks["bos"]), "--seq-len", "32", "--out", str(out)]
    assert main(["prepare", *argv]) == 0
    first = (out / "manifest.json").read_bytes()
    err = _fail(capsys, [CORPUS_DIR], toks["bos"], 32, out)
    assert re.search(r"output folder .*o exists; pass --overwrite", err)
    assert (out / "manifest.json").read_bytes() == first
    assert main(["prepare", *argv, "--seed", "7", "--overwrite"]) == 0
    assert (out / "manifest.json").read_bytes() != first  # replaced: another seed
    assert not list(tmp_path.glob(".o.*"))
    # a folder holding anything else is never replaced, --overwrite or not
    (out / "old.txt").write_text("old")
    capsys.readouterr()
    assert main(["prepare", *argv, "--overwrite"]) == 2
    assert "also holds 1 entry (old.txt)" in capsys.readouterr().err
    assert (out / "old.txt").read_text() == "old"


def test_bad_stride_is_refused(tmp_path, toks, capsys):
    err = _fail(capsys, [CORPUS_DIR], toks["bos"], N, tmp_path / "o", "--stride", "40")
    assert "--stride must be between 1 and 31" in err
    with pytest.raises(TokenWeightError, match="--stride must be between 1 and 31"):
        prepare_dataset(
            [str(CORPUS_DIR)], tokenizer=str(toks["bos"]), seq_len=N, out=tmp_path / "o", stride=0
        )


def test_one_manifest_reader_tells_prepared_and_scored_folders_apart(tmp_path, toks):
    from tokenweight.data import read_manifest

    out = tmp_path / "prepared"
    prepare_dataset([str(CORPUS_DIR)], tokenizer=str(toks["bos"]), seq_len=N, out=out)
    assert read_manifest(out) == _manifest(out)
    assert read_manifest(out, "prepared") == _manifest(out)
    with pytest.raises(TokenWeightError, match="is not a tokenweight score manifest"):
        read_manifest(out, "scored")
    with pytest.raises(TokenWeightError, match=r"scored dataset .* does not exist"):
        read_manifest(tmp_path / "nowhere", "scored")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenWeightError, match=r"not a prepared dataset .*`tokenweight prepare`"):
        read_manifest(tmp_path / "empty")
    with pytest.raises(ValueError, match="kind must be one of"):
        read_manifest(out, "trained")


def test_column_features_spell_arrow_types():
    """The compact column spelling gives the Arrow types a reader of the table sees."""
    import pyarrow as pa

    from tokenweight.data.prepare import column_features

    features = column_features({"input_ids": "[int32]", "doc_id": "int64", "row": "int64"})
    assert list(features) == ["input_ids", "doc_id", "row"]
    ds = datasets.Dataset.from_dict(
        {"input_ids": [[1, 2, 3], [4]], "doc_id": [0, 0], "row": [0, 1]}, features=features
    )
    schema = ds.data.schema
    assert pa.types.is_list(schema.field("input_ids").type) or pa.types.is_large_list(
        schema.field("input_ids").type
    )
    assert schema.field("input_ids").type.value_type == pa.int32()
    assert schema.field("doc_id").type == pa.int64()
    assert schema.field("row").type == pa.int64()
    assert ds["input_ids"] == [[1, 2, 3], [4]]
