"""Live streaming cost per update over TCP.

Two model replicas, connected over loopback TCP in one process (so one core
pays for both ends). The writer sets N keys in bursts, yielding between
bursts; the figure is wall time until the reader has all N, per update.

    python benchmarks/live_stream.py [N] [BURST] [--websocket]
"""

from __future__ import annotations

import sys
import time

import trio
import trio.lowlevel

import repred
from repred.types import model

from _common import arg, report


async def main() -> None:
    n, burst = arg(1, 200_000), arg(2, 100)
    writer, reader = model(id="writer"), model(id="reader")
    async with trio.open_nursery() as nursery:
        websocket = "--websocket" in sys.argv
        serving = repred.serve_websocket if websocket else repred.serve_tcp
        listeners = await nursery.start(serving, reader, 0)
        port = listeners[0].socket.getsockname()[1]
        if websocket:
            conn = await nursery.start(
                repred.connect_websocket, writer, f"ws://127.0.0.1:{port}/"
            )
        else:
            conn = await nursery.start(repred.connect_tcp, writer, "127.0.0.1", port)
        await conn.wait_synced()
        done = trio.Event()
        last_key = f"k{n - 1}"

        def seen(effect, ts, source, origin):
            if effect and effect[0] == last_key:
                done.set()

        reader.add_listener(seen)
        t = time.perf_counter()
        for i in range(n):
            writer.set(f"k{i}", i)
            if i % burst == burst - 1:
                await trio.lowlevel.checkpoint()
        await done.wait()
        dt = time.perf_counter() - t
        stats = conn.statistics()
        report(
            "live_stream",
            updates=n,
            burst=burst,
            transport="websocket" if websocket else "tcp",
            us_per_update=dt / n * 1e6,
            bytes_per_update=stats.bytes_out / n,
        )
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
