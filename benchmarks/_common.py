"""Helpers shared by the benchmark scripts (each prints JSON lines)."""

from __future__ import annotations

import json
import sys
from typing import Any


def report(bench: str, **figures: Any) -> None:
    print(json.dumps({"bench": bench, **figures}), flush=True)


def arg(index: int, default: int) -> int:
    return int(sys.argv[index]) if len(sys.argv) > index else default
