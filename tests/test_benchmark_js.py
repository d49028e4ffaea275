"""The comparison with JS scuttlebutt, in miniature (1,000 keys).

``benchmarks/full_sync.py --compare-js`` times repred's full sync against
JS scuttlebutt's (``benchmarks/js_full_sync.js``); the figure means
something only if both sides did the same thing: two processes over TCP,
and every key received. No figure is checked here (speed is measured by the
scripts, not by tests). Skipped where node or the npm package is missing
(``npm ci`` in ``tests/js``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE = shutil.which("node")
SCUTTLEBUTT = ROOT / "tests" / "js" / "node_modules" / "scuttlebutt"

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not SCUTTLEBUTT.is_dir(),
        reason="JS scuttlebutt is not installed (npm ci in tests/js)",
    ),
    pytest.mark.slow,
]

KEYS = 1000


def _run(*args: str) -> list[dict]:
    out = subprocess.run(
        args, capture_output=True, check=True, text=True, timeout=120, cwd=ROOT
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_both_sides_of_the_js_comparison_sync_every_key_in_the_same_shape():
    lines = _run(
        sys.executable, "benchmarks/full_sync.py", "--compare-js", str(KEYS), "1"
    )
    sides = {line["bench"]: line for line in lines}
    ours, theirs = sides["full_sync"], sides["full_sync_js"]
    for side in (ours, theirs):
        assert side["keys"] == KEYS
        assert side["received"] == KEYS
        assert side["transport"] == "tcp"
        assert side["processes"] == 2
    assert sides["compare_js"]["median_ratio"] > 0


def test_the_js_side_alone_reports_the_keys_its_client_received():
    (line,) = _run(NODE or "node", "benchmarks/js_full_sync.js", str(KEYS))
    assert line["received"] == KEYS
    assert line["bytes"] > KEYS * 40  # every entry crossed the socket
