"""benchmarks/table.py writes the performance table into the documentation
page that shows it, between its markers, and nowhere else. No figure is
measured here (speed is measured by the scripts, not by tests)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def table():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("table")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


ROWS = [("full sync, ``x``", "0.1 s (0.1-0.2)", ""), ("memory", "76 MB", "")]


def test_the_page_holds_one_table_between_the_markers(table):
    text = table.PAGE.read_text()
    assert text.count(table.START) == text.count(table.END) == 1
    assert text.index(table.START) < text.index(table.END)
    between = text.split(table.START)[1].split(table.END)[0]
    assert ".. list-table::" in between


def test_written_rows_replace_only_what_is_between_the_markers(table, tmp_path):
    page = tmp_path / "benchmarks.rst"
    page.write_text(f"before\n\n{table.START}\n\nold\n\n{table.END}\n\nafter\n")
    table.write_rows(page, ROWS, "5 runs each")
    text = page.read_text()
    assert "old" not in text
    assert text.startswith("before\n\n")
    assert text.endswith("\n\nafter\n")
    assert "   * - full sync, ``x``\n     - 0.1 s (0.1-0.2)\n     - \n" in text
    assert "5 runs each" in text
    table.write_rows(page, ROWS[1:], "3 runs each")  # the markers stay
    assert "full sync" not in page.read_text()
    assert "   * - memory\n" in page.read_text()


def test_a_page_without_its_markers_is_left_alone(table, tmp_path):
    page = tmp_path / "benchmarks.rst"
    page.write_text("no table here\n")
    with pytest.raises(ValueError, match="marker"):
        table.write_rows(page, ROWS, "5 runs each")
    assert page.read_text() == "no table here\n"
