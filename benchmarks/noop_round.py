"""A sync round with nothing to send, against a 1M-entry history.

Two replicas already hold the same 1M entries; one more round of digest,
"SYNC" and "SYNC" must not scan the history. A round on a link with
anti-entropy (the default) also compares the two hash trees' roots; the
same round without it is timed alongside, in the same process on the same
replicas, alternately in blocks of 100 rounds.

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


def round_trip(a: repred.Replica, b: repred.Replica, antientropy: bool = True) -> int:
    sa, sb = Session(a, antientropy=antientropy), Session(b, antientropy=antientropy)
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
    seconds = {True: 0.0, False: 0.0}
    moved = {True: 0, False: 0}
    for _ in range(rounds // 100):
        for antientropy in (True, False):
            t = time.perf_counter()
            for _ in range(100):
                moved[antientropy] = round_trip(a, b, antientropy)
            seconds[antientropy] += time.perf_counter() - t
    report(
        "noop_round",
        history_entries=n,
        sources=sources,
        ms_per_round=seconds[True] / rounds * 1e3,
        bytes_per_round=moved[True],
        ms_per_round_without_antientropy=seconds[False] / rounds * 1e3,
        bytes_per_round_without_antientropy=moved[False],
    )


if __name__ == "__main__":
    main()
