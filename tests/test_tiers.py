"""The shape of the test suite: the fast tier (``make test-fast``) keeps most tests and a
test of every module, helpers live in ``tests/helpers/`` and no test module imports
another one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers.tiers import ALL_TESTS, FAST_SHARE, MULTIPROCESS_DIR, TESTS_DIR, Collected


def fast_tier_problems(tests: list[Collected], *, whole_suite: bool = True) -> list[str]:
    """What breaks the rules of the fast tier among ``tests``: a test module outside
    ``tests/distributed/`` without a fast test, or (for the whole suite; a few chosen
    files may hold mostly slow tests) under ``FAST_SHARE`` of the tests fast."""
    problems = []
    fast = [t for t in tests if t.fast]
    if whole_suite and len(fast) < FAST_SHARE * len(tests):
        problems.append(f"the fast tier keeps {len(fast)} of {len(tests)} tests")
    multiprocess = MULTIPROCESS_DIR.relative_to(TESTS_DIR).as_posix() + "/"
    modules = {t.module for t in tests if not t.module.startswith(multiprocess)}
    for module in sorted(modules - {t.module for t in fast}):
        problems.append(f"{module} has no test in the fast tier")
    return problems


def test_the_fast_tier_keeps_most_tests_and_a_test_of_every_module(request):
    tests = request.config.stash[ALL_TESTS]  # everything collected, before --fast or -m
    on_disk = {p.relative_to(TESTS_DIR).as_posix() for p in TESTS_DIR.rglob("test_*.py")}
    whole_suite = on_disk <= {t.module for t in tests}
    assert tests and fast_tier_problems(tests, whole_suite=whole_suite) == []
    # every test under tests/distributed/ is left out, whatever its own marks
    for test in tests:
        if test.module.startswith("distributed/"):
            assert "multiprocess" in test.marks and not test.fast, test.nodeid


def test_the_rule_catches_a_tier_that_leaves_too_much_out():
    def make(module: str, *marks: str) -> Collected:
        return Collected(f"{module}::t", module, frozenset(marks))

    ok = [make("test_a.py")] * 9 + [make("test_a.py", "slow")]
    assert fast_tier_problems(ok) == []
    assert fast_tier_problems([*ok, make("test_a.py", "slow")]) == [
        "the fast tier keeps 9 of 11 tests"
    ]
    assert fast_tier_problems([*ok, make("test_a.py", "slow")], whole_suite=False) == []
    many = [make("test_a.py")] * 20
    lost = [*many, make("test_b.py", "slow")]
    assert fast_tier_problems(lost) == ["test_b.py has no test in the fast tier"]
    # a multi-process module may lie wholly outside the fast tier
    assert fast_tier_problems([*many, make("distributed/test_c.py", "multiprocess")]) == []


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_test_module_imports_another_and_helpers_hold_no_tests():
    files = sorted(TESTS_DIR.rglob("*.py"))
    test_modules = {p.stem for p in files if p.name.startswith("test_")}
    for path in files:
        imported = {name.split(".")[-1] for name in _imported_modules(path)}
        assert not imported & test_modules, f"{path} imports a test module"
    helpers = TESTS_DIR / "helpers"
    assert not [p.name for p in helpers.glob("test_*.py")], "helpers are not test modules"
    # two test modules with one name in different folders would shadow each other
    names = [p.name for p in files if p.name.startswith("test_")]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "marks, fast", [((), True), (("slow",), False), (("multiprocess",), False)]
)
def test_marks_decide_the_tier(marks, fast):
    assert Collected("t", "test_a.py", frozenset(marks)).fast is fast
