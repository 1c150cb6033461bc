"""Probe prompts: token length, needle depth, answer recoverable from the text; scoring."""

from __future__ import annotations

import re

import pytest

from helpers.eval_support import EVAL_BPE, smollm2_tokenizer
from helpers.fixtures import make_tokenizer
from tokenweight import TokenWeightError
from tokenweight.evaluation.probes import (
    FILLER,
    PROBE_TASKS,
    make_probe,
    make_probes,
    match_all,
    match_first,
)

_NEEDLE_RE = re.compile(r"One of the special magic \w+ for (\S+) is: (\S+)\.")
_VAR_VALUE_RE = re.compile(r"VAR ([A-Z]{5}) = (\d+)\.")
_VAR_LINK_RE = re.compile(r"VAR ([A-Z]{5}) = VAR ([A-Z]{5})\.")


def _count(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _answer_from_text(probe):
    """Read the expected answer from the prompt text alone (independent of the generator)."""
    _instruction, haystack, question = probe.prompt.split("\n")
    if probe.task == "passkey":
        found = re.findall(
            r"The pass key is (\d+)\. Remember it\. (\d+) is the pass key\.", haystack
        )
        assert len(found) == 1 and found[0][0] == found[0][1]
        assert question == "What is the pass key? The pass key is"
        return (found[0][0],)
    if probe.task == "vartrack":
        value = re.search(r"assigned the value (\d+) in the text", question).group(1)
        bound = {name for name, v in _VAR_VALUE_RE.findall(haystack) if v == value}
        for name, source in _VAR_LINK_RE.findall(haystack):  # in text order
            if source in bound:
                bound.add(name)
        return tuple(sorted(bound))
    key = re.search(r"special magic \w+ for (\S+) mentioned", question).group(1)
    values = [v for k, v in _NEEDLE_RE.findall(haystack) if k == key]
    assert len(values) == 1, values
    return (values[0],)


def _depth_from_text(probe, tok):
    """Fraction of filler tokens before the target needle, measured on the prompt text."""
    haystack = probe.prompt.split("\n")[1]
    before, after = haystack.split(probe.needle)
    strip = re.compile(r" ?(One of the special magic \w+ for \S+ is: \S+\.|VAR [A-Z]{5} = [^.]+\.)")
    before, after = strip.sub("", before), strip.sub("", after)
    n_before, n_after = _count(tok, before), _count(tok, after)
    return n_before / (n_before + n_after)


TOKENIZERS = {
    "tiny": lambda: make_tokenizer("bpe", **EVAL_BPE),
    "tiny+bos": lambda: make_tokenizer("bpe", **EVAL_BPE, add_bos=True),
    "smollm2": smollm2_tokenizer,
}


@pytest.mark.parametrize(
    "which",
    # the real SmolLM2 tokenizer takes about 6 s to load, once per process: slow
    [pytest.param(w, marks=pytest.mark.slow) if w == "smollm2" else w for w in TOKENIZERS],
)
@pytest.mark.parametrize("task", PROBE_TASKS)
def test_length_depth_and_answer(which, task):
    tok = TOKENIZERS[which]()
    lengths = (512, 1000, 3000) if which.startswith("tiny") else (1024, 4096, 8192)
    for length in lengths:
        for depth in (0.0, 0.1, 0.5, 0.77, 1.0):
            probe = make_probe(tok, task, length, depth, trial=3, seed=11)
            ids = tok(probe.prompt)["input_ids"]
            assert list(probe.input_ids) == ids
            assert abs(len(ids) - length) <= 0.02 * length, (length, len(ids))
            if which.endswith("bos"):
                assert ids[0] == tok.bos_token_id
            assert abs(_depth_from_text(probe, tok) - depth) <= 0.02, (length, depth)
            assert abs(probe.actual_depth - depth) <= 0.02
            answers = _answer_from_text(probe)
            assert sorted(answers) == sorted(probe.answers)
            assert probe.score(" " + ", ".join(probe.answers) + ".")
            if task == "multikey":
                assert len(_NEEDLE_RE.findall(probe.prompt)) == 4  # target + 3 distractors


@pytest.mark.slow  # the real SmolLM2 tokenizer: about 6 s to load, once per process
def test_lengths_are_mostly_exact_with_real_tokenizer():
    tok = smollm2_tokenizer()
    probes = make_probes(tok, PROBE_TASKS, [1024, 2048], [0.1, 0.5, 0.9], trials=2, seed=5)
    exact = sum(len(p.input_ids) == p.length for p in probes)
    assert exact >= 0.9 * len(probes)


def test_filler_is_the_spec_passkey_filler():
    probe = make_probe(make_tokenizer("bpe", **EVAL_BPE), "passkey", 512, 0.5)
    assert FILLER in probe.prompt
    assert "The pass key is " + probe.answers[0] + ". Remember it." in probe.prompt


def test_same_seed_same_prompts_and_other_seeds_differ():
    tok = make_tokenizer("bpe", **EVAL_BPE)
    a = make_probes(
        tok, ["passkey", "needle_uuid", "vartrack"], [512], [0.2, 0.8], trials=2, seed=3
    )
    b = make_probes(
        tok, ["passkey", "needle_uuid", "vartrack"], [512], [0.2, 0.8], trials=2, seed=3
    )
    c = make_probes(
        tok, ["passkey", "needle_uuid", "vartrack"], [512], [0.2, 0.8], trials=2, seed=4
    )
    assert [p.prompt for p in a] == [p.prompt for p in b]
    assert [p.answers for p in a] != [p.answers for p in c]
    # trials differ from each other
    assert len({p.answers for p in a}) == len(a)


def test_probe_does_not_depend_on_the_other_requested_probes():
    tok = make_tokenizer("bpe", **EVAL_BPE)
    alone = make_probe(tok, "needle", 700, 0.3, trial=1, seed=9)
    many = make_probes(tok, ["passkey", "needle"], [512, 700], [0.3, 0.6], trials=2, seed=9)
    same = [p for p in many if (p.task, p.length, p.depth, p.trial) == ("needle", 700, 0.3, 1)]
    assert len(same) == 1 and same[0] == alone


def test_vartrack_chain_is_in_order():
    probe = make_probe(make_tokenizer("bpe", **EVAL_BPE), "vartrack", 800, 0.4, hops=6)
    assert len(probe.answers) == 7
    names = [probe.answers[0]]
    positions = [probe.prompt.index(f"VAR {probe.answers[0]} = ")]
    for name, source in _VAR_LINK_RE.findall(probe.prompt):
        assert source == names[-1]
        names.append(name)
        positions.append(probe.prompt.index(f"VAR {name} = VAR {source}."))
    assert names == list(probe.answers)
    assert positions == sorted(positions)


def test_too_short_length_is_an_error():
    with pytest.raises(TokenWeightError, match="too short"):
        make_probe(make_tokenizer("bpe", **EVAL_BPE), "needle", 60, 0.5)


@pytest.mark.parametrize(
    ("task", "depth", "message"),
    [("nope", 0.5, "unknown probe task"), ("passkey", 1.5, "depth"), ("passkey", -0.1, "depth")],
)
def test_bad_arguments(task, depth, message):
    with pytest.raises(TokenWeightError, match=message):
        make_probe(make_tokenizer("bpe", **EVAL_BPE), task, 512, depth)


# ------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        (" 12345", True),
        (" 12345.", True),
        ("12345. Remember it.", True),
        ("\n12345,", True),
        (' "12345"', True),
        (": 12345.", True),  # echoing the needle's "is: VALUE"
        (" :12345", True),
        (" is: 12345", False),
        (" 1234", False),  # truncated
        (" 123456", False),  # longer
        (" 12346.", False),  # wrong
        (" is 12345", False),  # not at the start
        ("", False),
        ("  ", False),
        (" 12345abc", False),
    ],
)
def test_match_first(continuation, expected):
    assert match_first(continuation, "12345") is expected


def test_match_first_words_and_uuids_exactly():
    uid = "62f14f3c-8455-4d16-9b34-a0f870867d2f"
    assert match_first(f" {uid}.", uid)
    assert not match_first(f" {uid[:-3]}", uid)
    assert match_first(" sonnet.", "sonnet")
    assert not match_first(" Sonnet.", "sonnet")
    assert not match_first(" sonnets", "sonnet")


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        (" AAAAA, BBBBB, CCCCC", True),
        (" CCCCC, AAAAA, BBBBB.", True),
        (" AAAAA BBBBB and CCCCC.", True),
        (" AAAAA, BBBBB", False),  # missing one
        (" AAAAA, BBBBB, CCCC", False),  # truncated
        (" AAAAA, AAAAA, BBBBB", False),  # repeated
        (" AAAAA, DDDDD, BBBBB, CCCCC", False),  # wrong one among the first three
        (" AAAAA, BBBBB, CCCCC, DDDDD", True),  # extra items after the answer are ignored
    ],
)
def test_match_all(continuation, expected):
    assert match_all(continuation, ("AAAAA", "BBBBB", "CCCCC")) is expected


@pytest.mark.slow  # the real SmolLM2 tokenizer: about 6 s to load, once per process
@pytest.mark.parametrize("task", ["passkey", "needle", "needle_uuid", "vartrack"])
def test_probe_score_on_token_level_truncation(task):
    tok = smollm2_tokenizer()
    probe = make_probe(tok, task, 1024, 0.5)
    answer_ids = tok(" " + ", ".join(probe.answers) + ".", add_special_tokens=False)["input_ids"]
    # the budget holds the whole answer and its closing period, with room to spare
    assert probe.max_new_tokens >= len(answer_ids) + 2
    assert probe.score(tok.decode(answer_ids))
    assert not probe.score(tok.decode(answer_ids[:-2]))  # cut inside the value
    wrong = probe.answers[0][:-1] + ("1" if probe.answers[0][-1] != "1" else "2")
    assert not probe.score(" " + ", ".join((wrong, *probe.answers[1:])))
