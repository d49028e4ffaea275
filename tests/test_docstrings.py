"""The examples in the library's docstrings run as written.

One case per docstring that holds examples: a docstring without any is not
collected, so that no case passes having run nothing.
"""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import repred

MODULES = ["repred"] + [
    m.name for m in pkgutil.walk_packages(repred.__path__, "repred.")
]


def docstrings_with_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found = []
    for name in MODULES:
        found += finder.find(importlib.import_module(name))
    return sorted((t for t in found if t.examples), key=lambda t: t.name)


CASES = docstrings_with_examples()


@pytest.mark.parametrize("case", CASES, ids=[t.name for t in CASES])
def test_docstring_examples(case):
    runner = doctest.DocTestRunner()
    result = runner.run(case)
    assert result.attempted > 0, f"{case.name} ran no example"
    assert result.failed == 0


def test_every_module_that_shows_an_example_has_it_run():
    # A ">>>" the finder misses (say, in a docstring of something imported
    # from elsewhere) would otherwise go unchecked.
    shown = set()
    for name in MODULES:
        module = importlib.import_module(name)
        if ">>> " in Path(module.__file__ or "").read_text():
            shown.add(name)
    run = {
        name
        for name in MODULES
        for case in CASES
        if case.filename == importlib.import_module(name).__file__
    }
    assert shown
    assert shown <= run, shown - run
