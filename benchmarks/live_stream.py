"""Live streaming cost per update over TCP.

Two model replicas connected over loopback TCP. The writer sets N keys in
bursts, yielding between bursts; the figure is wall time until the reader
has all N, per update. By default both ends run in one process (so one core
pays for both); with ``--processes 2`` the reader runs in a second process,
as two peers would, and tells the writer it has everything by writing a key
back (one round trip, included in the figure). With ``--split`` (one
process) it also says where the time went, per update: the producer's own
writes (``set``, with the replica's stamping, history and size check), the
links' sending tasks, their receiving tasks (decoding and applying on the
reader), and the rest (trio's scheduler, waiting on the sockets). Timing
each task step costs about a microsecond a step: the split run's total is a
little higher. The variants (bursts, transports, process counts) differ
only in what their options name: the same keys, values and replicas.

    python benchmarks/live_stream.py [N] [BURST] [--websocket] [--processes 2]
    python benchmarks/live_stream.py [N] [BURST] --split
"""

from __future__ import annotations

import sys
import time

import trio
import trio.lowlevel

import repred
from repred.types import model

from _common import arg, report


class _TaskTimes(trio.abc.Instrument):
    """CPU-side time per task name: where one process's time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        # Added during a step of the task that adds it: that step counts
        # from here.
        self._started = time.perf_counter()

    def before_task_step(self, task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task) -> None:
        took = time.perf_counter() - self._started
        self.seconds[task.name] = self.seconds.get(task.name, 0.0) + took

    def split(self, n: int, total: float) -> dict[str, float]:
        def us(*suffixes: str) -> float:
            seconds = sum(v for k, v in self.seconds.items() if k.endswith(suffixes))
            return round(seconds / n * 1e6, 2)

        parts = {
            "producer_us": us(".main"),
            "sending_us": us("Connection._writer"),
            "receiving_us": us("Connection._reader"),
        }
        parts["rest_us"] = round(total / n * 1e6 - sum(parts.values()), 2)
        return parts


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
            times = _TaskTimes() if "--split" in sys.argv else None
            if times is not None:
                trio.lowlevel.add_instrument(times)
            t, cpu = time.perf_counter(), time.process_time()
            await produce(writer, n, burst)
            await done.wait()
            dt = time.perf_counter() - t
            produced = time.process_time() - cpu
            if times is not None:
                trio.lowlevel.remove_instrument(times)
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
                else {
                    "cpu_us_per_update": produced / n * 1e6,
                    **({} if times is None else times.split(n, dt)),
                }
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
