"""Full sync of N distinct keys over TCP between two processes.

The parent fills a model with N keys (``key{i}`` -> i) and serves it; a
child process with an empty model connects, syncs (``live=False``) and
reports how long it took, the keys it received and how many bytes crossed
(and the bytes per entry).

Every comparison here runs both sides in that same shape: two processes, TCP
on 127.0.0.1, the same keys and values, timed in the child from connect to
the end of the sync. JS scuttlebutt's side (``benchmarks/js_full_sync.js``)
is a node process serving N keys and a node child that connects, syncs and
reports the keys it received, as scuttlebutt's README pipes two peers.

    python benchmarks/full_sync.py [N ...]     (default: 100000 1000000)
    python benchmarks/full_sync.py --per-line [N ...]
        one entry per line (as with JS peers) instead of batches
    python benchmarks/full_sync.py --websocket [N ...]
        over a WebSocket instead of plain TCP
    python benchmarks/full_sync.py --compare-js [N] [ROUNDS]
        (default: 100000 keys, 3 rounds) JS scuttlebutt
        (benchmarks/js_full_sync.js, needs tests/js's node_modules) and
        repred alternately; prints every figure and the median ratio
        repred / JS
    python benchmarks/full_sync.py --scaling [SMALL LARGE]
        (default: 100000 1000000) both sizes alternately, three times
        each; prints every figure and the median ratio of their times
        (one run of the small size is too short to compare on its own)
    python benchmarks/full_sync.py --against DIR [N] [ROUNDS]
        (default: 100000 keys, 7 rounds) the repred of another checkout
        (DIR holds its ``repred`` package, e.g. ``git worktree add DIR
        main``) and this one alternately, a fresh pair of processes each
        time; prints every figure and the median ratio this / other
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

import repred
from repred.types import model

from _common import report


async def serve(n: int, batches: bool = True, websocket: bool = False) -> float:
    m = model(id="server")
    for i in range(n):
        m.set(f"key{i}", i)
    async with trio.open_nursery() as nursery:
        serving = repred.serve_websocket if websocket else repred.serve_tcp
        listeners = await nursery.start(serving, m, 0)
        port = listeners[0].socket.getsockname()[1]
        child = await trio.run_process(
            [
                sys.executable,
                __file__,
                "--client",
                str(port),
                str(n),
                str(batches),
                str(websocket),
            ],
            capture_stdout=True,
        )
        sys.stdout.write(child.stdout.decode())
        nursery.cancel_scope.cancel()
    seconds: float = json.loads(child.stdout)["seconds"]
    return seconds


async def client(port: int, n: int, batches: bool, websocket: bool) -> None:
    m = model(id="client")
    t = time.perf_counter()
    if websocket:
        stats = await repred.connect_websocket(
            m, f"ws://127.0.0.1:{port}/", live=False, close_timeout=0, batches=batches
        )
    else:
        stats = await repred.connect_tcp(
            m, "127.0.0.1", port, live=False, close_timeout=0, batches=batches
        )
    dt = time.perf_counter() - t
    assert len(m.to_dict()) == n, len(m.to_dict())
    report(
        "full_sync",
        keys=n,
        framing="batches" if batches else "per-line",
        transport="websocket" if websocket else "tcp",
        processes=2,
        received=len(m.to_dict()),
        seconds=dt,
        bytes=stats.bytes_in + stats.bytes_out,
        bytes_per_entry=round(stats.bytes_in / n, 2),
        updates_per_second=n / dt,
    )


def js(n: int) -> float:
    script = Path(__file__).with_name("js_full_sync.js")
    out = subprocess.run(
        ["node", str(script), str(n)], capture_output=True, check=True, text=True
    ).stdout
    sys.stdout.write(out)
    seconds: float = json.loads(out)["seconds"]
    return seconds


def run_with(checkout: Path, n: int) -> float:
    """A full sync of ``n`` keys in fresh processes, with the repred of
    ``checkout``; its seconds."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, __file__, str(n)],
        capture_output=True,
        check=True,
        text=True,
        env=env,
    ).stdout
    seconds: float = json.loads(out.splitlines()[-1])["seconds"]
    return seconds


def against(other: Path, n: int, rounds: int) -> None:
    this = Path(__file__).resolve().parents[1]
    times: dict[str, list[float]] = {"this": [], "other": []}
    for _ in range(rounds):
        times["other"].append(run_with(other, n))
        times["this"].append(run_with(this, n))
        report("against", keys=n, **{k: round(v[-1], 4) for k, v in times.items()})
    ratios = [a / b for a, b in zip(times["this"], times["other"], strict=True)]
    report(
        "against",
        keys=n,
        other=str(other),
        median_this=round(statistics.median(times["this"]), 4),
        median_other=round(statistics.median(times["other"]), 4),
        median_ratio=round(statistics.median(ratios), 3),
    )


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--against"]:
        n = int(args[2]) if len(args) > 2 else 100_000
        against(Path(args[1]).resolve(), n, int(args[3]) if len(args) > 3 else 7)
        return
    if args[:1] == ["--client"]:
        trio.run(
            client, int(args[1]), int(args[2]), args[3] == "True", args[4] == "True"
        )
        return
    if args[:1] == ["--compare-js"]:
        n = int(args[1]) if len(args) > 1 else 100_000
        ratios = []
        for _ in range(int(args[2]) if len(args) > 2 else 3):
            ours = trio.run(serve, n)
            theirs = js(n)
            ratios.append(ours / theirs)
            report("ratio", keys=n, repred_over_js=round(ratios[-1], 3))
        report("compare_js", keys=n, median_ratio=round(statistics.median(ratios), 3))
        return
    if args[:1] == ["--scaling"]:
        small, large = map(int, args[1:3]) if len(args) > 2 else (100_000, 1_000_000)
        ratios = []
        for _ in range(3):
            ratios.append(trio.run(serve, large) / trio.run(serve, small))
            report("scaling", keys=[small, large], ratio=round(ratios[-1], 2))
        report(
            "scaling",
            keys=[small, large],
            median_ratio=round(statistics.median(ratios), 2),
        )
        return
    batches = "--per-line" not in args
    websocket = "--websocket" in args
    sizes = [int(a) for a in args if not a.startswith("--")]
    for n in sizes or [100_000, 1_000_000]:
        trio.run(serve, n, batches, websocket)


if __name__ == "__main__":
    main()
