"""Durable stores: the cost of an update, and of reopening a large store.

python benchmarks/durable.py [UPDATES] [REOPEN_ENTRIES]

Each pair runs in the same shape: one process, a fresh store in the same
temporary directory, the same keys and values; full durability against
batch mode, and a reducer replayed against a type resumed from its saved
state (the same entries, each store reopened three times).
"""

from __future__ import annotations

import os
import tempfile
import time

import repred
from repred.types import gset, model

from _common import arg, report


def union(state, update):
    change = [x for x in update if x not in state]
    state.update(change)
    return change


def main() -> None:
    n, big = arg(1, 2000), arg(2, 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        for durability, count in (("full", n), ("batch", n * 50)):
            m = model(
                store=repred.SqliteStore(
                    os.path.join(tmp, f"{durability}.db"), durability=durability
                )
            )
            t = time.perf_counter()
            for i in range(count):
                m.set(f"key{i % 1000}", i)
            dt = time.perf_counter() - t
            m.close()
            report(
                "durable_update",
                durability=durability,
                updates=count,
                us_per_update=dt / count * 1e6,
            )

        # A plain reducer replays its history; a type with a snapshot
        # function (gset) resumes from the state saved at close.
        for kind, make in (
            ("replay", lambda store: repred.repred(union, set(), store=store)),
            ("checkpoint", lambda store: gset(store=store)),
        ):
            path = os.path.join(tmp, f"{kind}.db")
            g = make(repred.SqliteStore(path, durability="batch"))
            t = time.perf_counter()
            for i in range(big):
                g.update([i])
            build = time.perf_counter() - t
            t = time.perf_counter()
            g.close()
            close = time.perf_counter() - t
            for _ in range(3):
                t = time.perf_counter()
                reopened = make(repred.SqliteStore(path))
                dt = time.perf_counter() - t
                assert len(reopened.state) == big
                reopened.store.close()  # (as it was: no new checkpoint)
                report(
                    "durable_reopen",
                    kind=kind,
                    entries=big,
                    seconds=dt,
                    build_seconds=build,
                    close_seconds=close,
                    file_mb=os.path.getsize(path) / 2**20,
                )


if __name__ == "__main__":
    main()
