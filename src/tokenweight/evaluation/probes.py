"""Offline retrieval probes (passkey, RULER-style needles, variable tracking) and scoring.

Every prompt is built with the evaluated model's own tokenizer to an exact token length:
``len(tokenizer(prompt).input_ids)`` (special tokens included, as the model sees it) is the
requested length, or off by a token or two where the tokenizer merges across pieces. The
prompt is base-model style (no chat template)::

    <instruction>\\n<filler ... needle ... filler>\\n<question>

and the model is expected to continue the question with the answer.

*Depth* is the fraction of filler tokens that come before the (target) needle; needles
sit at sentence boundaries of the filler, so the realized depth is the nearest boundary
(:attr:`Probe.actual_depth`). Values, keys and distractor positions are drawn from a
``random.Random`` seeded by ``(seed, task, length, depth, trial)``: the same seed gives
the same prompts, whichever other probes are requested.

Scoring is exact match on the greedy continuation (:func:`match_first`, :func:`match_all`).

The probes are the entries of kind ``probe`` of the task table
(:data:`tokenweight.evaluation.tasks.EVAL_TASKS`); this module holds their prompt builders
(the ``*_spec`` functions) and the shared code that places the needles in the filler.
``PROBES`` (name -> task), ``PROBE_TASKS`` and ``DEFAULT_PROBE_TASKS`` are read from the
table when asked.
"""

from __future__ import annotations

import random
import re
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenweight.evaluation.tasks import (
    DISTRACTORS,
    EVAL_TASKS,
    HOPS,
    PROBE,
    EvalTask,
    TasksOfKind,
    default_task_names,
    load,
    task_names,
    task_settings,
)
from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "DEFAULT_PROBE_TASKS",  # noqa: F822 (module __getattr__: read from the task table)
    "DISTRACTORS",
    "FILLER",
    "HOPS",
    "PROBES",  # noqa: F822 (module __getattr__: read from the task table)
    "PROBE_TASKS",  # noqa: F822 (module __getattr__: read from the task table)
    "TASKS",  # noqa: F822 (module __getattr__: read from the task table)
    "Probe",
    "ProbeSpec",
    "ProbeTask",
    "make_probe",
    "make_probes",
    "match_all",
    "match_first",
]

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_PASSKEY_PREFIX = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there."
)
_PASSKEY_NEEDLE = "The pass key is {value}. Remember it. {value} is the pass key."
_PASSKEY_QUESTION = "What is the pass key? The pass key is"

_NEEDLE_PREFIX = (
    "Some special magic {kinds} are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the {kinds} afterwards."
)
_NEEDLE = "One of the special magic {kinds} for {key} is: {value}."
_NEEDLE_QUESTION = (
    "What is the special magic {kind} for {key} mentioned in the provided text? "
    "The special magic {kind} for {key} mentioned in the provided text is"
)

_VT_PREFIX = "Memorize and track the chain(s) of variable assignment hidden in the following text."
_VT_FIRST = "VAR {name} = {value}."
_VT_HOP = "VAR {name} = VAR {previous}."
_VT_QUESTION = (
    "Question: Find all variables that are assigned the value {value} in the text above. "
    "Answer: According to the chain(s) of variables assignment in the text above, "
    "{count} variables are assigned the value {value}, they are:"
)


def _wordlist(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Needle keys are "adjective-noun" (as in RULER); word values come from a separate list.
# None of these words occur in FILLER, so a value is never ambiguous.
_ADJECTIVES = _wordlist(
    "adorable agreeable ancient bitter brave breezy bright calm clever crooked curious "
    "damp eager elegant faded fancy fierce fluffy fragile gentle gigantic glossy grumpy "
    "hollow humble icy jolly lazy lively loud lucky misty narrow nervous noisy odd "
    "patient polite proud quiet rapid rough rusty shiny silent sleepy smooth steady "
    "sticky swift tame tiny tender vivid wild witty wooden"
)
_NOUNS = _wordlist(
    "anchor apple badge basket bath bottle bucket candle carpet castle cellar chimney "
    "clock cloud coffee compass cookie cottage crayon desk donkey drawer engine feather "
    "fence fiddle garden glove hammer harbor helmet island jacket kettle ladder lantern "
    "lemon meadow mirror monkey needle orchard oven panda pencil pepper piano pillow "
    "pocket rabbit ribbon saddle scarf shovel spoon statue teapot tunnel violin wagon "
    "whistle window"
)
_VALUE_WORDS = _wordlist(
    "acorn almond amber anthem arrow aurora avocado ballad bamboo banjo beacon biscuit "
    "blossom bonfire bramble brook cabin cactus canyon caramel cedar cherry cinnamon "
    "comet coral cricket crystal dolphin ember falcon fjord galaxy ginger glacier granite "
    "harvest hazel honey iris ivory jasmine juniper kayak lagoon lilac lobster magnet "
    "mango maple marble meteor mosaic nectar nutmeg oasis olive opal orbit otter parsley "
    "pebble penguin pine plum quartz quill raven reef saffron salmon sapphire "
    "sonnet spruce squirrel thistle thunder tulip velvet walnut willow zephyr"
)

_LEADING = "\"'([{"
_TRAILING = ".,;:!?\"')]}"


def _clean_word(word: str) -> str:
    return word.lstrip(_LEADING).rstrip(_TRAILING)


def match_first(continuation: str, value: str) -> bool:
    """Exact match: the continuation's first whitespace-delimited word equals ``value``.

    Leading whitespace, colons, quotes and brackets are skipped first (a model echoing the
    needle's "is: VALUE" wording answers ``": VALUE"``), and trailing punctuation
    (``.,;:!?``, quotes, brackets) is stripped from the word, so ``" 12345."`` and
    ``": 12345"`` match ``12345``; ``" 1234"`` (truncated), ``" 123456"`` and
    ``" is 12345"`` do not. Case-sensitive.
    """
    words = continuation.lstrip().lstrip(_LEADING + ":").split()
    return bool(words) and _clean_word(words[0]) == value


def match_all(continuation: str, values: Sequence[str]) -> bool:
    """Exact match of a set: the first ``len(values)`` items are exactly ``values``.

    Items are separated by whitespace and commas; the word ``and`` is skipped, so
    ``" A, B, C and D."`` lists four items. Order does not matter; a missing, extra-early,
    repeated or truncated item fails.
    """
    items = [_clean_word(x) for x in re.split(r"[\s,]+", continuation)]
    items = [x for x in items if x and x.lower() != "and"][: len(values)]
    return len(items) == len(values) and len(set(items)) == len(items) and set(items) == set(values)


@dataclass(frozen=True)
class Probe:
    """One prompt and its expected answer.

    ``input_ids`` is ``tokenizer(prompt).input_ids`` (length ``len(input_ids)`` tokens,
    the requested ``length`` give or take tokenizer merges). ``answers`` holds one value, or
    every variable name for ``vartrack`` (``match == "all"``). ``needle`` is the sentence
    holding the asked-for value (the first assignment for ``vartrack``).
    """

    task: str
    length: int
    depth: float
    trial: int
    prompt: str
    input_ids: tuple[int, ...]
    answers: tuple[str, ...]
    needle: str
    actual_depth: float
    match: str
    max_new_tokens: int

    def score(self, continuation: str) -> bool:
        """True when the greedy continuation holds the answer (see ``match_*``)."""
        if self.match == "all":
            return match_all(continuation, self.answers)
        return match_first(continuation, self.answers[0])

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description without the (long) prompt."""
        return {
            "task": self.task,
            "length": self.length,
            "prompt_tokens": len(self.input_ids),
            "depth": self.depth,
            "actual_depth": round(self.actual_depth, 4),
            "trial": self.trial,
            "answer": ", ".join(self.answers),
        }


@dataclass
class ProbeSpec:
    """One prompt's parts, drawn by a :class:`ProbeTask`'s ``spec``: the instruction
    (``prefix``), the sentences placed in the filler, the question and the answers
    (``match``: ``first`` or ``all`` of them must appear in the output)."""

    prefix: str
    target: list[str]  # sentences at the requested depth, in order
    extra: list[tuple[float, str]]  # (fraction of the remaining filler, sentence)
    after_target: bool  # extra sentences go after the target (chains) or anywhere
    question: str
    answers: tuple[str, ...]
    match: str


def _key(rng: random.Random, taken: set[str]) -> str:
    while True:
        key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        if key not in taken:
            taken.add(key)
            return key


def _value(rng: random.Random, kind: str) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "word":
        return rng.choice(_VALUE_WORDS)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def passkey_spec(rng: random.Random) -> ProbeSpec:
    """A 5-digit pass key in the filler (the pass-key retrieval task)."""
    value = str(rng.randint(10_000, 99_999))
    return ProbeSpec(
        prefix=_PASSKEY_PREFIX,
        target=[_PASSKEY_NEEDLE.format(value=value)],
        extra=[],
        after_target=False,
        question=_PASSKEY_QUESTION,
        answers=(value,),
        match="first",
    )


def _needle_spec(kind: str, rng: random.Random, distractors: int = 0) -> ProbeSpec:
    """A needle whose value is a ``kind`` (number, word, uuid), among ``distractors``
    needles with other keys."""
    kinds = kind + "s"
    taken: set[str] = set()
    key = _key(rng, taken)
    value = _value(rng, kind)
    extra = []
    for _ in range(distractors):
        sentence = _NEEDLE.format(kinds=kinds, key=_key(rng, taken), value=_value(rng, kind))
        extra.append((rng.random(), sentence))
    return ProbeSpec(
        prefix=_NEEDLE_PREFIX.format(kinds=kinds),
        target=[_NEEDLE.format(kinds=kinds, key=key, value=value)],
        extra=extra,
        after_target=False,
        question=_NEEDLE_QUESTION.format(kind=kind, key=key),
        answers=(value,),
        match="first",
    )


def number_needle_spec(rng: random.Random) -> ProbeSpec:
    """A 7-digit number needle."""
    return _needle_spec("number", rng)


def word_needle_spec(rng: random.Random) -> ProbeSpec:
    """A word needle."""
    return _needle_spec("word", rng)


def uuid_needle_spec(rng: random.Random) -> ProbeSpec:
    """A UUID needle."""
    return _needle_spec("uuid", rng)


def multikey_spec(rng: random.Random, distractors: int = DISTRACTORS) -> ProbeSpec:
    """A number needle among ``distractors`` needles with other keys."""
    return _needle_spec("number", rng, distractors)


def vartrack_spec(rng: random.Random, hops: int = HOPS) -> ProbeSpec:
    """Variable tracking: a first assignment, then ``hops`` ``VAR X = VAR Y`` links."""
    value = str(rng.randint(10_000, 99_999))
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in names and name != "VAR":
            names.append(name)
    hop_sentences = [_VT_HOP.format(name=names[i + 1], previous=names[i]) for i in range(hops)]
    fractions = sorted(rng.random() for _ in range(hops))
    return ProbeSpec(
        prefix=_VT_PREFIX,
        target=[_VT_FIRST.format(name=names[0], value=value)],
        extra=list(zip(fractions, hop_sentences)),
        after_target=True,
        question=_VT_QUESTION.format(value=value, count=len(names)),
        answers=tuple(names),
        match="all",
    )


def ProbeTask(  # the old class name, kept as a constructor
    name: str,
    summary: str,
    spec: Callable[..., ProbeSpec],
    default: bool = False,
) -> EvalTask:
    """A probe entry of :data:`~tokenweight.evaluation.tasks.EVAL_TASKS` in the old form,
    whose ``spec(rng, distractors, hops)`` (called by keyword) draws one prompt's parts.
    New probes are :class:`~tokenweight.evaluation.tasks.EvalTask` entries of kind
    ``probe`` that declare the settings they use."""
    shared = {s.name: s for s in task_settings(PROBE)}
    settings = tuple(shared[n] for n in ("distractors", "hops"))
    return EvalTask(name, PROBE, summary, spec, default=default, settings=settings)


def _probe_task(task: str) -> EvalTask:
    probe = EVAL_TASKS.get(task)
    if probe is None or probe.kind != PROBE:
        names = ", ".join(task_names(PROBE))
        raise TokenWeightError(f"unknown probe task {task!r}; choose from {names}")
    return probe


def _spec(task: str, rng: random.Random, settings: Mapping[str, Any]) -> ProbeSpec:
    """One prompt's parts of ``task``, drawn with the task's own settings (from
    ``settings``, the default for one not there)."""
    probe = _probe_task(task)
    own = {s.name: settings.get(s.name, s.default) for s in probe.settings}
    return load(probe.run)(rng, **own)


def __getattr__(name: str) -> Any:
    """The probe names of the task table, read when asked (so they include probes
    registered later): ``PROBES`` (name -> task), ``PROBE_TASKS``, ``DEFAULT_PROBE_TASKS``
    and ``TASKS``, the old name of ``PROBE_TASKS``."""
    if name == "TASKS":
        warnings.warn(
            "tokenweight.evaluation.TASKS is now called PROBE_TASKS (the probe names; "
            "EVAL_TASKS in tokenweight.evaluation.tasks holds every task); the old name "
            "will be removed",
            FutureWarning,
            stacklevel=2,
        )
        return task_names(PROBE)
    if name == "PROBE_TASKS":
        return task_names(PROBE)
    if name == "DEFAULT_PROBE_TASKS":
        return default_task_names(PROBE)
    if name == "PROBES":
        return _PROBES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_PROBES = TasksOfKind(PROBE)


class _Counter:
    """Token counts with one tokenizer, cached per filler unit."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._units: dict[str, int] = {}

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])

    def bare(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def unit(self, unit: str) -> int:
        if unit not in self._units:
            self._units[unit] = self.bare(unit)
        return self._units[unit]


def _filler_units(n: int) -> list[str]:
    """The first ``n`` units of the repeated filler: words with their leading space, and
    each sentence's final period as a unit of its own (one-token steps in length)."""
    cycle: list[str] = []
    for word in FILLER.split():
        if word.endswith("."):
            cycle += [" " + word[:-1], "."]
        else:
            cycle.append(" " + word)
    return [cycle[i % len(cycle)] for i in range(n)]


def _assemble(spec: ProbeSpec, units: list[str], counter: _Counter, depth: float):
    """Place the needles between filler ``units``; return (text, actual depth)."""
    n = len(units)
    before = [0]
    for unit in units:
        before.append(before[-1] + counter.unit(unit))
    total = max(before[-1], 1)
    boundaries = [b for b in range(n + 1) if b in (0, n) or units[b - 1] == "."]

    def nearest(fraction: float, candidates: list[int]) -> int:
        return min(candidates, key=lambda b: (abs(before[b] / total - fraction), b))

    target_at = nearest(depth, boundaries)
    inserts: dict[int, list[str]] = {target_at: list(spec.target)}
    if spec.after_target:
        later = [b for b in boundaries if b >= target_at]
        lo = before[target_at] / total
        for fraction, sentence in spec.extra:
            at = nearest(lo + fraction * (1 - lo), later)
            inserts.setdefault(at, []).append(sentence)
    else:
        others = [b for b in boundaries if b != target_at] or boundaries
        for fraction, sentence in spec.extra:
            inserts.setdefault(nearest(fraction, others), []).append(sentence)
    pieces: list[str] = []
    for b in range(n + 1):
        pieces.extend(" " + sentence for sentence in inserts.get(b, ()))
        if b < n:
            pieces.append(units[b])
    text = f"{spec.prefix}\n{''.join(pieces).lstrip()}\n{spec.question}"
    return text, before[target_at] / total


def _check_probe_args(task: str, length: int, depth: float, settings: Mapping[str, Any]) -> None:
    _probe_task(task)
    if not (isinstance(depth, (int, float)) and 0.0 <= float(depth) <= 1.0):
        raise TokenWeightError(f"probe depth must be a fraction in [0, 1], got {depth!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise TokenWeightError(f"probe length must be a positive integer, got {length!r}")
    _check_probe_settings(settings)


def _check_probe_settings(settings: Mapping[str, Any]) -> None:
    """Every value in ``settings`` is a probe setting of the task table and passes its
    check (whichever task it belongs to)."""
    known = {s.name: s for s in task_settings(PROBE)}
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise TokenWeightError(
            f"unknown probe setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    for name, value in settings.items():
        check = known[name].check
        if check is not None:
            check(value, name)


# a filler fit: (tokens over the requested length, filler units, text, actual depth, ids)
_Fit = tuple[int, int, str, float, list[int]]


def _filler_estimate(
    spec: ProbeSpec, counter: _Counter, task: str, length: int
) -> tuple[int, float]:
    """First guess of the filler units that make ``length`` tokens, and tokens per unit;
    refuses a length too short for the instruction, needles, question and some filler."""
    fixed, _ = _assemble(spec, [], counter, 0.0)
    fixed_tokens = len(counter.ids(fixed))
    cycle = _filler_units(len(FILLER.split()) + FILLER.count("."))
    per_unit = sum(counter.unit(u) for u in cycle) / len(cycle)
    min_filler = 2 * sum(counter.unit(u) for u in cycle)  # two rounds of the filler
    if length < fixed_tokens + min_filler:
        need = fixed_tokens + min_filler
        raise TokenWeightError(
            f"probe length {length} is too short for {task!r}: instruction, needles and "
            f"question alone take {fixed_tokens} tokens; use a length of at least {need}"
        )
    return max(1, round((length - fixed_tokens) / per_unit)), per_unit


def _fit_filler(spec: ProbeSpec, counter: _Counter, task: str, length: int, depth: float) -> _Fit:
    """The prompt whose token count is nearest ``length`` (exact when reachable)."""
    n, per_unit = _filler_estimate(spec, counter, task, length)
    best: _Fit | None = None
    seen: set[int] = set()
    for _ in range(24):
        if n in seen or n < 1:
            break
        seen.add(n)
        text, actual = _assemble(spec, _filler_units(n), counter, depth)
        ids = counter.ids(text)
        miss = len(ids) - length
        if best is None or abs(miss) < abs(best[0]):
            best = (miss, n, text, actual, ids)
        if miss == 0:
            break
        step = round(miss / per_unit) or (1 if miss > 0 else -1)
        n -= step
    assert best is not None
    # Tokenizers can merge across units, so the steps above may circle around the
    # target; a few neighbours usually hit it exactly.
    for delta in (1, -1, 2, -2, 3, -3):
        if best[0] == 0:
            break
        m = best[1] + delta
        if m < 1 or m in seen:
            continue
        seen.add(m)
        text, actual = _assemble(spec, _filler_units(m), counter, depth)
        ids = counter.ids(text)
        if abs(len(ids) - length) < abs(best[0]):
            best = (len(ids) - length, m, text, actual, ids)
    return best


def make_probe(
    tokenizer: Any,
    task: str,
    length: int,
    depth: float,
    *,
    trial: int = 0,
    seed: int = 0,
    distractors: int = DISTRACTORS,
    hops: int = HOPS,
    **settings: Any,
) -> Probe:
    """Build one probe prompt of ``length`` tokens with the needle at ``depth``.

    Args:
        tokenizer: the evaluated model's Hugging Face tokenizer.
        task: one of :data:`PROBE_TASKS`.
        length: requested prompt length in tokens (special tokens included).
        depth: fraction in [0, 1] of filler tokens placed before the needle.
        trial: index that, with ``seed``, selects the random values.
        distractors: extra needles with other keys (``multikey`` only).
        hops: ``VAR X = VAR Y`` links after the first assignment (``vartrack``).
        settings: values of other probe settings of the task table (each task reads its
            own settings; the others are checked and unused).

    Raises:
        TokenWeightError: unknown task or setting, a bad setting, depth outside [0, 1], or
            a length too short to hold the instruction, needles and question with some
            filler.
    """
    values = {"distractors": distractors, "hops": hops, **settings}
    _check_probe_args(task, length, depth, values)
    rng = random.Random(f"tokenweight-probe:{seed}:{task}:{length}:{float(depth)!r}:{trial}")
    spec = _spec(task, rng, values)
    counter = _Counter(tokenizer)
    _, _, text, actual, ids = _fit_filler(spec, counter, task, length, float(depth))
    answer_tokens = counter.bare(" " + ", ".join(spec.answers))
    return Probe(
        task=task,
        length=length,
        depth=float(depth),
        trial=trial,
        prompt=text,
        input_ids=tuple(ids),
        answers=spec.answers,
        needle=spec.target[0],
        actual_depth=actual,
        match=spec.match,
        max_new_tokens=answer_tokens + 4,
    )


def make_probes(
    tokenizer: Any,
    tasks: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    trials: int = 1,
    seed: int = 0,
    distractors: int = DISTRACTORS,
    hops: int = HOPS,
    **settings: Any,
) -> list[Probe]:
    """Every probe of ``tasks x lengths x depths x range(trials)``, in that order."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise TokenWeightError(f"trials must be a positive integer, got {trials!r}")
    return [
        make_probe(
            tokenizer,
            task,
            int(length),
            float(depth),
            trial=trial,
            seed=seed,
            distractors=distractors,
            hops=hops,
            **settings,
        )
        for task in tasks
        for length in lengths
        for depth in depths
        for trial in range(trials)
    ]
