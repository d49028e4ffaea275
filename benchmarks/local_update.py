"""Cost of a local update: model().set on fresh and existing keys, gset add.

python benchmarks/local_update.py [N]
"""

from __future__ import annotations

import time

import repred
from repred.types import model

from _common import arg, report


def union(state, update):
    change = [x for x in update if x not in state]
    state.update(change)
    return change


def main() -> None:
    n = arg(1, 1_000_000)
    m = model(id="bench")
    keys = [f"key{i % 100_000}" for i in range(n)]
    t = time.perf_counter()
    for i, k in enumerate(keys):
        m.set(k, i)
    dt = time.perf_counter() - t
    report(
        "local_update",
        type="model",
        updates=n,
        keys=100_000,
        us_per_update=dt / n * 1e6,
    )

    g = repred.repred(union, set(), id="bench")
    items = [[i] for i in range(n)]
    t = time.perf_counter()
    for item in items:
        g.update(item)
    dt = time.perf_counter() - t
    report("local_update", type="gset", updates=n, us_per_update=dt / n * 1e6)


if __name__ == "__main__":
    main()
