"""Full sync of N distinct keys over TCP between two processes.

The parent fills a model with N keys and serves it; a child process with an
empty model connects, syncs (``live=False``) and reports how long it took
and how many bytes crossed.

    python benchmarks/full_sync.py [N ...]     (default: 100000 1000000)
"""

from __future__ import annotations

import sys
import time

import trio

import repred
from repred.types import model

from _common import report


async def serve(n: int) -> None:
    m = model(id="server")
    for i in range(n):
        m.set(f"key{i}", i)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, m, 0)
        port = listeners[0].socket.getsockname()[1]
        child = await trio.run_process(
            [sys.executable, __file__, "--client", str(port), str(n)],
            capture_stdout=True,
        )
        sys.stdout.write(child.stdout.decode())
        nursery.cancel_scope.cancel()


async def client(port: int, n: int) -> None:
    m = model(id="client")
    t = time.perf_counter()
    stats = await repred.connect_tcp(m, "127.0.0.1", port, live=False, close_timeout=0)
    dt = time.perf_counter() - t
    assert len(m.to_dict()) == n, len(m.to_dict())
    report(
        "full_sync",
        keys=n,
        seconds=dt,
        bytes=stats.bytes_in + stats.bytes_out,
        updates_per_second=n / dt,
    )


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        trio.run(client, int(sys.argv[2]), int(sys.argv[3]))
        return
    for n in [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]:
        trio.run(serve, n)


if __name__ == "__main__":
    main()
