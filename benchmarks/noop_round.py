"""A sync round with nothing to send, against a 1M-entry history.

Two replicas already hold the same 1M entries; one more round of digest,
"SYNC" and "SYNC" must not scan the history.

    python benchmarks/noop_round.py [N]
"""

from __future__ import annotations

import time

import repred
from repred.protocol import Session

from _common import arg, report


def union(state, update):
    change = [x for x in update if x not in state]
    state.update(change)
    return change


def round_trip(a: repred.Replica, b: repred.Replica) -> int:
    sa, sb = Session(a), Session(b)
    moved = 0
    while True:
        x, y = sa.data_to_send(), sb.data_to_send()
        if not x and not y:
            break
        moved += len(x) + len(y)
        if x:
            sb.receive_data(x)
        if y:
            sa.receive_data(y)
    sa.close()
    sb.close()
    return moved


def main() -> None:
    n = arg(1, 1_000_000)
    sources = 10
    a = repred.repred(union, set(), id="a")
    b = repred.repred(union, set(), id="b")
    for i in range(n):
        src = f"s{i % sources}"
        a.apply([([i], i // sources + 1, src)])
        b.apply([([i], i // sources + 1, src)])
    rounds = 1000
    t = time.perf_counter()
    for _ in range(rounds):
        moved = round_trip(a, b)
    dt = time.perf_counter() - t
    report(
        "noop_round",
        history_entries=n,
        sources=sources,
        ms_per_round=dt / rounds * 1e3,
        bytes_per_round=moved,
    )


if __name__ == "__main__":
    main()
