"""Full sync of N entries from N writers against N entries from one writer.

Work per link must be linear in the sources it touches: a sync of 100,000
entries from 100,000 writers should cost within 3x of the same number of
entries from one writer. Both syncs run in the same shape: in process, over
a pair of sessions, the same keys and values, a fresh empty replica each
time; they alternate three times and each keeps its best.

    python benchmarks/many_sources.py [N]     (default: 100000)
"""

from __future__ import annotations

import sys
import time

from repred.protocol import Session
from repred.testing import pump
from repred.types import model

from _common import report

EPOCH = 1_700_000_000_000
BIG = 64 << 20  # a digest of 100,000 sources is about 4 MB


def filled(n: int, writers: int) -> object:
    m = model(id="hub", max_sources=n + 10, max_entry_bytes=BIG, wall=lambda: EPOCH + n)
    m.apply([([f"k{i}", i], EPOCH + i, f"w{i % writers}") for i in range(n)])
    return m


def sync_seconds(source: object, n: int) -> float:
    fresh = model(
        id="fresh", max_sources=n + 10, max_entry_bytes=BIG, wall=lambda: EPOCH + n
    )
    a = Session(source, max_line_bytes=BIG)  # type: ignore[arg-type]
    b = Session(fresh, max_line_bytes=BIG)
    t = time.perf_counter()
    pump(a, b)
    dt = time.perf_counter() - t
    assert len(fresh.to_dict()) == n
    return dt


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    sources = {1: filled(n, 1), n: filled(n, n)}
    times: dict[int, list[float]] = {1: [], n: []}
    for _ in range(3):
        for writers, source in sources.items():
            times[writers].append(sync_seconds(source, n))
    one, many = min(times[1]), min(times[n])
    report(
        "many_sources",
        entries=n,
        one_writer_seconds=one,
        writer_per_entry_seconds=many,
        ratio=many / one,
    )


if __name__ == "__main__":
    main()
