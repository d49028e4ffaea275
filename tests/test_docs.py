"""Every Python snippet of README.md and of the documentation's pages runs,
in order, one namespace per page (the snippets build on each other)."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest

import repred.testing

from .helpers import examples

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", re.M)
FENCE = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
# Pages whose Python snippets run; the explanation and reference show
# literal blocks (formulas, doctests run by test_docstrings) instead.
PAGES = ["README.md", "tutorial.rst", "howto.rst"]


def snippets(page: str) -> list[str]:
    if page.endswith(".md"):
        return FENCE.findall((ROOT / page).read_text())
    text = (DOCS / page).read_text()
    return [textwrap.dedent(block) for block in BLOCK.findall(text)]


def test_no_other_page_holds_a_python_snippet_left_unrun():
    for path in [ROOT / "README.md", *DOCS.glob("*.rst")]:
        page = path.name
        assert page in PAGES or not snippets(page), f"{page}'s snippets never run"


@pytest.mark.hypothesis  # the how-to guide's check_reducer
@pytest.mark.parametrize("page", PAGES)
def test_the_snippets_of_a_page_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # check_reducer tries as many cases as the test suite's other
    # properties: a few in the default run, the count written in the slow one.
    check_reducer = repred.testing.check_reducer
    written = inspect.signature(check_reducer).parameters["max_examples"].default

    def counted(*args, max_examples=written, **options):
        check_reducer(*args, max_examples=examples(max_examples), **options)

    monkeypatch.setattr(repred.testing, "check_reducer", counted)
    blocks = snippets(page)
    assert blocks, f"no Python snippets found in {page}"
    namespace: dict[str, object] = {"__name__": f"docs.{page}"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{page} snippet {number}", "exec")
        exec(code, namespace)
