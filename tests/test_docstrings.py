"""The examples in the library's docstrings run as written."""

import doctest
import importlib
import pkgutil

import pytest

import repred

MODULES = ["repred"] + [
    m.name for m in pkgutil.walk_packages(repred.__path__, "repred.")
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
