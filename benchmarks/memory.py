"""Peak memory of a model after 1M sets over 100k keys.

python benchmarks/memory.py [SETS] [KEYS]
"""

from __future__ import annotations

import resource
import tracemalloc

from repred.types import model

from _common import arg, report


def main() -> None:
    sets, keys = arg(1, 1_000_000), arg(2, 100_000)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = model(id="mem")
    for i in range(sets):
        m.set(f"key{i % keys}", i)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    entries = len(list(m.history()))
    del m
    # A second run under tracemalloc counts Python allocations exactly.
    tracemalloc.start()
    m = model(id="mem")
    for i in range(sets):
        m.set(f"key{i % keys}", i)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    report(
        "memory",
        sets=sets,
        keys=keys,
        history_entries=entries,
        peak_rss_mb=rss / 1024,
        rss_growth_mb=(rss - base) / 1024,
        traced_peak_mb=peak / 2**20,
        traced_now_mb=current / 2**20,
    )


if __name__ == "__main__":
    main()
