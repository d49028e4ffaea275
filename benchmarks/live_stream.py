"""Live streaming cost per update over TCP.

Two model replicas connected over loopback TCP. The writer sets N keys in
bursts, yielding between bursts; the figure is wall time until the reader
has all N, per update. By default both ends run in one process (so one core
pays for both); with ``--processes 2`` the reader runs in a second process,
as two peers would, and tells the writer it has everything by writing a key
back (one round trip, included in the figure).

    python benchmarks/live_stream.py [N] [BURST] [--websocket] [--processes 2]
"""

from __future__ import annotations

import sys
import time

import trio
import trio.lowlevel

import repred
from repred.types import model

from _common import arg, report


async def produce(writer, n: int, burst: int) -> None:
    for i in range(n):
        writer.set(f"k{i}", i)
        if i % burst == burst - 1:
            await trio.lowlevel.checkpoint()


def _when_held(replica, key: str, done: trio.Event):
    """Set ``done`` once ``replica`` holds ``key``: a watcher, called once per
    run of entries (a listener would be called, and cost, per entry)."""

    def watcher(source, ts, origin):
        if replica.get(key) is not None:
            done.set()

    return replica.watch(watcher)


async def main() -> None:
    n, burst = arg(1, 200_000), arg(2, 100)
    websocket = "--websocket" in sys.argv
    two = (
        "--processes" in sys.argv and sys.argv[sys.argv.index("--processes") + 1] == "2"
    )
    writer = model(id="writer")
    produced = 0.0
    async with trio.open_nursery() as nursery:
        serving = repred.serve_websocket if websocket else repred.serve_tcp
        if two:
            listeners = await nursery.start(serving, writer, 0)
            port = listeners[0].socket.getsockname()[1]
            transport = "websocket" if websocket else "tcp"
            ready = trio.Event()
            unsubscribe = _when_held(writer, "ready", ready)
            await nursery.start(
                trio.run_process,
                [sys.executable, __file__, "--reader", transport, str(port), str(n)],
            )
            await ready.wait()
            unsubscribe()
            t = time.perf_counter()
            await produce(writer, n, burst)
            produced = time.perf_counter() - t
            done = trio.Event()
            _when_held(writer, "done", done)
            if writer.get("done") is None:
                await done.wait()
            dt = time.perf_counter() - t
        else:
            reader = model(id="reader")
            listeners = await nursery.start(serving, reader, 0)
            port = listeners[0].socket.getsockname()[1]
            if websocket:
                conn = await nursery.start(
                    repred.connect_websocket, writer, f"ws://127.0.0.1:{port}/"
                )
            else:
                conn = await nursery.start(
                    repred.connect_tcp, writer, "127.0.0.1", port
                )
            await conn.wait_synced()
            done = trio.Event()
            _when_held(reader, f"k{n - 1}", done)
            t, cpu = time.perf_counter(), time.process_time()
            await produce(writer, n, burst)
            await done.wait()
            dt = time.perf_counter() - t
            produced = time.process_time() - cpu
        report(
            "live_stream",
            updates=n,
            burst=burst,
            transport="websocket" if websocket else "tcp",
            processes=2 if two else 1,
            us_per_update=dt / n * 1e6,
            **(
                {"writer_us_per_update": produced / n * 1e6}
                if two
                else {"cpu_us_per_update": produced / n * 1e6}
            ),
        )
        nursery.cancel_scope.cancel()


async def read(transport: str, port: int, n: int) -> None:
    """The reader of ``--processes 2``: say ready, then done at the last key."""
    reader = model(id="reader")
    done = trio.Event()
    _when_held(reader, f"k{n - 1}", done)
    async with trio.open_nursery() as nursery:
        if transport == "websocket":
            conn = await nursery.start(
                repred.connect_websocket, reader, f"ws://127.0.0.1:{port}/"
            )
        else:
            conn = await nursery.start(repred.connect_tcp, reader, "127.0.0.1", port)
        await conn.wait_synced()
        reader.set("ready", True)
        await done.wait()
        reader.set("done", True)
        await conn.wait_closed()  # the writer hangs up once it has "done"


if __name__ == "__main__":
    if "--reader" in sys.argv:
        i = sys.argv.index("--reader")
        trio.run(read, sys.argv[i + 1], int(sys.argv[i + 2]), int(sys.argv[i + 3]))
    else:
        trio.run(main)
