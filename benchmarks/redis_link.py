"""Replicas through Redis against direct TCP links, side by side in one run.

Starts a redis-server of its own (``redis-server`` on the PATH or in
/usr/bin; a free port, persistence off, a temporary directory) and reports:

* ``catch_up``: a new, empty replica in a child process catching up on N
  keys (default 100000) through Redis (the image, then the stream's tail)
  and, alternately, over a full sync by direct TCP from the replica that
  holds them; three of each, every figure and the medians.
* ``live_latency``: a write on one replica until another holds it (a
  watcher sees it), one write at a time, through Redis and over a direct
  TCP link, both ends in this process, alternately in blocks of 100
  writes; median and 99th percentile.
* ``redis_memory``: what Redis's ``used_memory`` (INFO memory) grew by
  to hold the N keys, per key: once the image is written and the stream
  trimmed behind it (``tail_seconds=0``), and with the image and the whole
  stream.

    python benchmarks/redis_link.py [N] [WRITES]   (default: 100000 1000)

Each comparison runs both sides in the same shape: the same keys and
values, the same process count (a child process catching up, timed from
connect to synced, as benchmarks/full_sync.py times a sync; both ends of a
live link in this process), the only difference being whether the bytes
go through Redis or straight over TCP.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import coredis
import trio

import repred
from repred.types import model

from _common import arg, report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [
            *(server, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", directory),
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(1000):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}"


async def used_memory(url: str) -> int:
    async with coredis.Redis.from_url(url) as client:
        info = await client.info("memory")
    return int(info["used_memory"])


def filled(n: int):
    m = model(id="writer")
    for i in range(n):
        m.set(f"key{i}", i)
    return m


async def child(how: str, where: str, n: int) -> None:
    """In a child process: catch up from Redis (``where`` its URL) or over
    TCP (``where`` the port), and report."""
    m = model()
    t = time.perf_counter()
    if how == "redis":
        async with trio.open_nursery() as nursery:
            link = await nursery.start(
                functools.partial(repred.connect_redis, m, where, name="bench")
            )
            await link.wait_synced()
            stats = link.statistics()
            nursery.cancel_scope.cancel()
        moved = stats.bytes_in
    else:
        stats = await repred.connect_tcp(
            m, "127.0.0.1", int(where), live=False, close_timeout=0
        )
        moved = stats.bytes_in + stats.bytes_out
    dt = time.perf_counter() - t
    assert len(m.to_dict()) == n, len(m.to_dict())
    report("catch_up", via=how, keys=n, seconds=round(dt, 4), bytes=moved)


async def run_child(how: str, where: str, n: int) -> float:
    done = await trio.run_process(
        [sys.executable, __file__, "--child", how, where, str(n)],
        capture_stdout=True,
    )
    sys.stdout.write(done.stdout.decode())
    seconds: float = json.loads(done.stdout)["seconds"]
    return seconds


async def catch_up(url: str, n: int) -> None:
    """The writer links to Redis (its image written and the stream trimmed
    behind it) and serves TCP; children catch up each way in turn."""
    base = await used_memory(url)
    writer = filled(n)
    # compact_bytes=1: the image is written once the fill is in, however
    # small N is (by default not before the tail holds 1 MiB).
    start = functools.partial(
        repred.connect_redis, writer, url, name="bench", tail_seconds=0
    )
    async with trio.open_nursery() as nursery:
        link = await nursery.start(functools.partial(start, compact_bytes=1))
        await link.wait_synced()
        await link.wait_statistics(lambda s: s.images_written >= 1)
        held = await used_memory(url) - base
        report(
            "redis_memory",
            keys=n,
            held="image, stream trimmed",
            bytes=held,
            bytes_per_key=round(held / n, 1),
        )
        listeners = await nursery.start(repred.serve_tcp, writer, 0)
        port = str(listeners[0].socket.getsockname()[1])
        times: dict[str, list[float]] = {"redis": [], "tcp": []}
        for _ in range(3):
            for how, where in (("redis", url), ("tcp", port)):
                times[how].append(await run_child(how, where, n))
        medians = {how: statistics.median(ts) for how, ts in times.items()}
        report(
            "catch_up",
            keys=n,
            median_seconds={k: round(v, 4) for k, v in medians.items()},
            redis_over_tcp=round(medians["redis"] / medians["tcp"], 2),
        )
        nursery.cancel_scope.cancel()


async def memory_untrimmed(url: str, n: int) -> None:
    async with coredis.Redis.from_url(url) as client:
        await client.flushall()
    base = await used_memory(url)
    writer = filled(n)
    async with trio.open_nursery() as nursery:
        link = await nursery.start(
            functools.partial(
                repred.connect_redis, writer, url, name="bench", compact_bytes=1
            )
        )
        await link.wait_synced()
        await link.wait_statistics(lambda s: s.images_written >= 1)
        held = await used_memory(url) - base
        report(
            "redis_memory",
            keys=n,
            held="image and whole stream",
            bytes=held,
            bytes_per_key=round(held / n, 1),
        )
        nursery.cancel_scope.cancel()


async def latencies(a, b, writes: range) -> list[float]:
    seen = trio.Event()
    unwatch = b.watch(lambda source, ts, origin: seen.set())
    out = []
    for i in writes:
        seen = trio.Event()
        t = time.perf_counter()
        a.set("latency", i)
        await seen.wait()
        out.append(time.perf_counter() - t)
    unwatch()
    return out


def summary(via: str, seconds: list[float]) -> None:
    ordered = sorted(seconds)
    report(
        "live_latency",
        via=via,
        writes=len(seconds),
        median_us=round(statistics.median(ordered) * 1e6, 1),
        p99_us=round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 1),
    )


async def live(url: str, writes: int) -> None:
    async with trio.open_nursery() as nursery:
        a, b = model(), model()
        for replica in (a, b):
            link = await nursery.start(
                functools.partial(repred.connect_redis, replica, url, name="live")
            )
            await link.wait_synced()
        c, d = model(), model()
        listeners = await nursery.start(repred.serve_tcp, c, 0)
        port = listeners[0].socket.getsockname()[1]
        conn = await nursery.start(repred.connect_tcp, d, "127.0.0.1", port)
        await conn.wait_synced()
        seconds: dict[str, list[float]] = {"redis": [], "tcp": []}
        for start in range(0, writes, 100):
            block = range(start, min(start + 100, writes))
            seconds["redis"] += await latencies(a, b, block)
            seconds["tcp"] += await latencies(c, d, block)
        for via, taken in seconds.items():
            summary(via, taken)
        nursery.cancel_scope.cancel()


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        trio.run(child, sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    n, writes = arg(1, 100_000), arg(2, 1000)
    with tempfile.TemporaryDirectory() as directory:
        proc, url = start_redis(directory)
        try:
            trio.run(catch_up, url, n)
            trio.run(live, url, writes)
            trio.run(memory_untrimmed, url, n)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
