"""What running repred from asyncio (repred.aio) costs, against plain trio.

Three figures, each next to the same work under ``trio.run``:

- ``call``: one ``await portal.run(trio.lowlevel.checkpoint)`` from
  asyncio (a trio task, a future, the crossing both ways), against the
  checkpoint awaited in trio;
- ``subscription``: a change read from ``portal.subscribe`` in asyncio
  (one crossing per change), against ``repred.subscribe`` read in trio;
- ``live_stream``: two replicas linked over loopback TCP, the writer's
  ``set`` called in bursts of BURST (from asyncio in the portal, from trio
  otherwise), until the reader holds all N, per update: the links in
  trio's guest mode against the same links under ``trio.run``.

Each pair is run ROUNDS times, alternated; the best of each is reported.

    python benchmarks/aio.py [N] [BURST] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import time

import trio
import trio.lowlevel

import repred
import repred.aio
from repred.types import model

from _common import arg, report

# -- call -------------------------------------------------------------------


async def _trio_calls(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        await trio.lowlevel.checkpoint()
    return time.perf_counter() - t


async def _portal_calls(n: int) -> float:
    async with repred.aio.open_portal() as portal:
        t = time.perf_counter()
        for _ in range(n):
            await portal.run(trio.lowlevel.checkpoint)
        return time.perf_counter() - t


# -- subscription ---------------------------------------------------------------


async def _trio_subscription(n: int) -> float:
    m = model(id="w")
    with repred.subscribe(m) as changes:
        t = time.perf_counter()
        for i in range(n):
            m.set(f"k{i}", i)
        for _ in range(n):
            await changes.receive()
        return time.perf_counter() - t


async def _portal_subscription(n: int) -> float:
    m = model(id="w")
    async with repred.aio.open_portal() as portal:
        with portal.subscribe(m) as changes:
            t = time.perf_counter()
            for i in range(n):
                m.set(f"k{i}", i)
            for _ in range(n):
                await changes.receive()
            return time.perf_counter() - t


# -- live stream --------------------------------------------------------------


async def _has_all(reader: repred.Replica, key: str) -> None:
    with repred.subscribe(reader, key=key) as changes:
        while key not in reader.state:
            await changes.receive()


async def _trio_stream(n: int, burst: int) -> float:
    writer, reader = model(id="w"), model(id="r")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, reader, 0)
        port = listeners[0].socket.getsockname()[1]
        link = await nursery.start(repred.connect_tcp, writer, "127.0.0.1", port)
        await link.wait_synced()
        last = f"k{n - 1}"
        t = time.perf_counter()
        for i in range(n):
            writer.set(f"k{i}", i)
            if i % burst == burst - 1:
                await trio.lowlevel.checkpoint()
        await _has_all(reader, last)
        took = time.perf_counter() - t
        nursery.cancel_scope.cancel()
    return took


async def _portal_stream(n: int, burst: int) -> float:
    writer, reader = model(id="w"), model(id="r")
    async with repred.aio.open_portal() as portal:
        listeners = await portal.start(repred.serve_tcp, reader, 0)
        port = listeners[0].socket.getsockname()[1]
        link = await portal.start(repred.connect_tcp, writer, "127.0.0.1", port)
        await portal.run(link.wait_synced)
        last = f"k{n - 1}"
        t = time.perf_counter()
        for i in range(n):
            writer.set(f"k{i}", i)  # straight from asyncio
            if i % burst == burst - 1:
                await asyncio.sleep(0)  # asyncio's yield: trio's ticks run
        await portal.run(_has_all, reader, last)
        return time.perf_counter() - t


def _best(rounds: int, in_trio, in_asyncio, *args: int) -> tuple[float, float]:
    trio_best = asyncio_best = float("inf")
    for _ in range(rounds):
        trio_best = min(trio_best, trio.run(in_trio, *args))
        asyncio_best = min(asyncio_best, asyncio.run(in_asyncio(*args)))
    return trio_best, asyncio_best


def main() -> None:
    n, burst, rounds = arg(1, 100_000), arg(2, 100), arg(3, 3)
    for bench, in_trio, in_asyncio, args in [
        ("call", _trio_calls, _portal_calls, (n,)),
        ("subscription", _trio_subscription, _portal_subscription, (n,)),
        ("live_stream", _trio_stream, _portal_stream, (n, burst)),
    ]:
        trio_s, asyncio_s = _best(rounds, in_trio, in_asyncio, *args)
        report(
            f"aio_{bench}",
            n=n,
            **({"burst": burst} if bench == "live_stream" else {}),
            trio_us=round(trio_s / n * 1e6, 2),
            portal_us=round(asyncio_s / n * 1e6, 2),
            ratio=round(asyncio_s / trio_s, 2),
        )


if __name__ == "__main__":
    main()
