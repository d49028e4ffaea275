"""What anti-entropy costs, next to the protocol without it.

    python benchmarks/antientropy.py [--baseline DIR]

Prints JSON lines:

* ``agreeing``: a sync of two replicas that already agree (100k keys), in
  bytes, with anti-entropy and without it, and as a share of a full sync.
* ``differing``: two replicas whose clocks agree but that differ in d of n
  entries (n = 100k; d = 1, 10, 100, 1000): bytes and anti-entropy lines
  exchanged, against a full sync's bytes.
* ``repair_1m``: one entry omitted among 1M: the CPU seconds of the round
  that repairs it (both sides, in one process), with the trees already
  computed (as after an earlier round) and from cold.
* ``full_sync``: a full sync of 100k keys in one process, with and without
  anti-entropy, alternated five times (the median of each).
* ``tree_upkeep``: the cost per write of keeping a computed tree true: a
  round after k writes to 1M entries, against the same writes without one.
* ``full_sync_tcp`` (with ``--baseline DIR``, a checkout of the code before
  anti-entropy): benchmarks/full_sync.py's two-process TCP sync of 100k
  keys, run from this checkout and from DIR alternately, three times each.

Every comparison runs both sides in the same shape: the same process count,
the same replicas, the same transport, in one run.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from repred._antientropy import AntiEntropy
from repred.protocol import Session
from repred.types import model

from _common import report


def _pump(a, b, antientropy=True):
    """Sync two replicas in one process; return (bytes a->b, bytes b->a, ae lines)."""
    sa, sb = Session(a, antientropy=antientropy), Session(b, antientropy=antientropy)
    ab = ba = lines = 0
    while True:
        x, y = sa.data_to_send(), sb.data_to_send()
        if not x and not y:
            break
        for data in (x, y):
            lines += sum(1 for line in data.split(b"\n") if line.startswith(b'{"ae"'))
        if x:
            ab += len(x)
            sb.receive_data(x)
        if y:
            ba += len(y)
            sa.receive_data(y)
    sa.close()
    sb.close()
    return ab, ba, lines


def _filled(n, id="server"):
    m = model(id=id)
    for i in range(n):
        m.set(f"key{i}", i)
    return m


def _omitting(source, skip, id="client"):
    m = model(id=id)
    m.apply([e for i, e in enumerate(source.history()) if i not in skip])
    return m


def agreeing(n=100_000):
    a = _filled(n)
    b = model(id="client")
    full = sum(_pump(a, b)[:2])
    with_ae = sum(_pump(a, b)[:2])
    without = sum(_pump(a, b, antientropy=False)[:2])
    report(
        "agreeing",
        keys=n,
        full_sync_bytes=full,
        bytes_with_antientropy=with_ae,
        bytes_without=without,
        share_of_full_sync=round(with_ae / full, 5),
    )


def differing(n=100_000):
    a = _filled(n)
    full = sum(_pump(a, model(id="fresh"))[:2])
    rng = random.Random(1)
    for d in (1, 10, 100, 1000):
        b = _omitting(a, set(rng.sample(range(n), d)))
        ab, ba, lines = _pump(a, b)
        assert len(b.to_dict()) == n
        report(
            "differing",
            entries=n,
            differ=d,
            bytes=ab + ba,
            antientropy_lines=lines,
            bytes_per_difference=round((ab + ba) / d),
            share_of_full_sync=round((ab + ba) / full, 5),
        )


def _warm(replica):
    """Compute and cache a replica's tree, as an earlier round leaves it."""
    AntiEntropy(replica, None, 1 << 20).start()


def repair_1m(n=1_000_000):
    a = _filled(n)
    omitted = {n // 2}
    warm = []
    for cold in (True, False):
        b = _omitting(a, omitted)
        if not cold:
            _warm(a)
            _warm(b)
        t = time.process_time()
        _pump(a, b)
        warm.append(time.process_time() - t)
        assert b.get(f"key{n // 2}") == n // 2
    report(
        "repair_1m",
        entries=n,
        cpu_seconds_cold=round(warm[0], 4),
        cpu_seconds_warm=round(warm[1], 4),
    )


def full_sync(n=100_000, runs=5):
    a = _filled(n)
    times = {True: [], False: []}
    for _ in range(runs):
        for ae in (False, True):
            b = model(id="client")
            t = time.perf_counter()
            _pump(a, b, antientropy=ae)
            times[ae].append(time.perf_counter() - t)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    report(
        "full_sync",
        keys=n,
        processes=1,
        seconds_with_antientropy=round(on, 4),
        seconds_without=round(off, 4),
        ratio=round(on / off, 3),
    )


def tree_upkeep(n=1_000_000, writes=10_000):
    figures = {}
    for computed in (False, True):
        a = _filled(n)
        if computed:
            _warm(a)
        t = time.perf_counter()
        for i in range(writes):
            a.set(f"key{i * 7}", -i)  # overwrites: drops an old entry each
        figures[computed] = (time.perf_counter() - t) / writes
        t = time.process_time()
        if computed:
            _warm(a)  # the root after the writes
        round_seconds = time.process_time() - t
    report(
        "tree_upkeep",
        entries=n,
        writes=writes,
        us_per_write_with_tree=round(figures[True] * 1e6, 3),
        us_per_write_without=round(figures[False] * 1e6, 3),
        root_after_writes_seconds=round(round_seconds, 4),
    )


def full_sync_tcp(baseline: str, n=100_000, runs=3):
    script = Path(__file__).with_name("full_sync.py")
    here = str(Path(__file__).resolve().parent.parent)
    times = {"antientropy": [], "baseline": []}
    for _ in range(runs):
        for name, tree in (("baseline", baseline), ("antientropy", here)):
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run(
                [sys.executable, str(Path(tree) / "benchmarks" / script.name), str(n)],
                capture_output=True,
                check=True,
                text=True,
                env=env,
            ).stdout
            times[name].append(json.loads(out.splitlines()[-1])["seconds"])
    on, off = (statistics.median(times[k]) for k in ("antientropy", "baseline"))
    report(
        "full_sync_tcp",
        keys=n,
        processes=2,
        seconds=times,
        median_with_antientropy=round(on, 4),
        median_baseline=round(off, 4),
        ratio=round(on / off, 3),
    )


def main() -> None:
    args = sys.argv[1:]
    agreeing()
    differing()
    full_sync()
    repair_1m()
    tree_upkeep()
    if args[:1] == ["--baseline"]:
        full_sync_tcp(args[1])


if __name__ == "__main__":
    main()
