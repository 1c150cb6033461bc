"""The test tiers, defined once, and the script that measures which tests are slow.

- ``slow``: a test measured over ``SLOW_THRESHOLD_S`` seconds (its setup, call and
  teardown together, as pytest times them) in the full run ``make test`` does, on a quiet
  2-core machine. The mark is set by hand from what this script reports.
- ``multiprocess``: every test under ``tests/distributed/`` (it launches several
  processes); ``tests/conftest.py`` adds the mark, no test sets it.
- the fast tier (``pytest --fast``, ``make test-fast``): every test with neither mark.
  ``tests/test_tiers.py`` checks that it keeps at least ``FAST_SHARE`` of the tests and at
  least one test of every test module outside ``tests/distributed/``.

Re-measure after adding tests (it runs the whole suite, about 3 minutes on 2 cores)::

    PYTHONPATH=src python tests/helpers/tiers.py            # like make test: -n 2 --dist loadfile
    PYTHONPATH=src python tests/helpers/tiers.py --by cpu   # on a busy machine
    PYTHONPATH=src python tests/helpers/tiers.py -- -n 0 tests/test_score.py   # other pytest arguments

It prints every test over the threshold, the ones to mark ``slow`` (over it, unmarked),
the marked ones now under half of it, and the size and summed time of the fast tier. Each
test is timed twice: wall seconds, and CPU seconds of its process and the children it
waited for. On a quiet machine the two agree for the one-thread tests; on a busy one the
wall seconds grow with the load and ``--by cpu`` judges by the CPU seconds instead (a
lower bound: time a test spends waiting on files or sleeping is not CPU time). A
fixture with module or session scope is timed with the first test that uses it, so after
marking, measure again: the next test of that module may take its place.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

SLOW_THRESHOLD_S = 3.0
FAST_SHARE = 0.9
TESTS_DIR = Path(__file__).resolve().parents[1]
MULTIPROCESS_DIR = TESTS_DIR / "distributed"
LEFT_OUT_OF_FAST = frozenset({"slow", "multiprocess"})


def in_fast_tier(marks: frozenset[str] | set[str]) -> bool:
    """Whether a test with these mark names runs in ``make test-fast``."""
    return not (LEFT_OUT_OF_FAST & set(marks))


@dataclasses.dataclass(frozen=True)
class Collected:
    """One collected test: its node id, its module (relative to ``tests/``) and its marks."""

    nodeid: str
    module: str
    marks: frozenset[str]

    @property
    def fast(self) -> bool:
        return in_fast_tier(self.marks)


# every test collected in this session, before ``--fast`` or ``-m`` leave any out
# (set by tests/conftest.py, read by tests/test_tiers.py)
ALL_TESTS = pytest.StashKey[list[Collected]]()


def collected(item: pytest.Item) -> Collected:
    return Collected(
        nodeid=item.nodeid,
        module=item.path.resolve().relative_to(TESTS_DIR).as_posix(),
        marks=frozenset(m.name for m in item.iter_markers()),
    )


# ------------------------------------------------------------------ the measuring script
def _cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for."""
    return sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
    )


# Plugin hooks, active when this module is loaded with ``-p helpers.tiers`` (the script does
# that, in every xdist worker too): each phase's CPU seconds go into the test's reports.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    start = _cpu_seconds()
    yield
    item.user_properties.append(("cpu_s", _cpu_seconds() - start))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    start = _cpu_seconds()
    yield
    item.user_properties.append(("cpu_s", _cpu_seconds() - start))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    start = _cpu_seconds()
    yield
    item.user_properties.append(("cpu_s", _cpu_seconds() - start))


class _Timer:
    """A pytest plugin that sums each test's setup, call and teardown seconds and keeps its
    marks (from the reports, so it also works with xdist workers)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = {}
        self.marks: dict[str, frozenset[str]] = {}
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] += report.duration
        if report.when == "teardown":  # its user properties hold all three phases
            self.cpu[report.nodeid] = sum(v for k, v in report.user_properties if k == "cpu_s")
        self.marks[report.nodeid] = frozenset(k for k in LEFT_OUT_OF_FAST if k in report.keywords)
        if report.failed:
            self.failed.append(report.nodeid)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=float, default=SLOW_THRESHOLD_S)
    parser.add_argument(
        "--by", choices=("wall", "cpu"), default="wall", help="judge by wall or CPU seconds"
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments")
    args = parser.parse_args(argv)
    pytest_args = args.pytest_args or ["-n", "2", "--dist", "loadfile"]
    # the xdist workers import this module as a plugin too: tests/ on their path
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    sys.path.insert(0, str(TESTS_DIR))
    timer = _Timer()
    start = time.perf_counter()
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", "-p", "helpers.tiers", *pytest_args], plugins=[timer]
    )
    wall = time.perf_counter() - start
    report(timer, args.threshold, wall, _cpu_seconds(), by=args.by)
    return int(code)


def report(timer: _Timer, threshold: float, wall: float, cpu: float, *, by: str = "wall") -> None:
    seconds = timer.cpu if by == "cpu" else timer.seconds
    rows = sorted(seconds.items(), key=lambda kv: -kv[1])
    marks = timer.marks
    over = [(n, s) for n, s in rows if s > threshold]
    to_mark = [(n, s) for n, s in over if in_fast_tier(marks.get(n, frozenset()))]
    loose = [(n, s) for n, s in rows if "slow" in marks.get(n, ()) and s < threshold / 2]
    fast = [(n, s) for n, s in rows if in_fast_tier(marks.get(n, frozenset()))]
    print(f"\n{len(rows)} tests, {sum(s for _, s in rows):.1f} {by} seconds of tests summed")
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s (this process and its children)")
    print(f"\nover {threshold:g} {by} seconds ({len(over)}; wall / CPU seconds):")
    for name, _ in over:
        times = f"{timer.seconds[name]:7.2f} / {timer.cpu.get(name, float('nan')):6.2f}"
        print(f"  {times}  {'/'.join(sorted(marks.get(name, ()))) or '-':>17}  {name}")
    print(f"\nto mark slow ({len(to_mark)}):")
    for name, s in to_mark:
        print(f"  {s:7.2f} s  {name}")
    print(f"\nmarked slow but under {threshold / 2:g} s ({len(loose)}):")
    for name, s in loose:
        print(f"  {s:7.2f} s  {name}")
    share = len(fast) / max(len(rows), 1)
    print(
        f"\nfast tier: {len(fast)} of {len(rows)} tests ({share:.1%}), "
        f"{sum(s for _, s in fast):.1f} {by} seconds summed"
    )
    if timer.failed:
        print(f"\n{len(timer.failed)} failed (their times are not representative)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
