"""Memory of idle links that each hold a partial line, in the server.

A child process serves a replica of 1,000 keys; this process opens LINKS
plain sockets to it, each sending an opening (a digest, a gossip hello, or
a WebSocket upgrade) and then PARTIAL bytes of a line it never finishes,
and reads nothing. The figures are the server process's resident memory
(RSS) before, while the links are held, and after they are cut; the client
side is plain sockets, which hold only kernel buffers (not counted).

    python benchmarks/idle_links.py [LINKS] [PARTIAL] [--kind tcp|peer|web]
        [--against DIR]
        (default: 500 links, 100000 bytes, tcp; with --against, the server
        runs the repred of the checkout DIR first, then this one's: the same
        script, links, openings and lines, only the package differs)

``held_per_link_kb`` is what each link costs while open; ``partial_kb`` is
what it holds of a line; ``kept_after_mb`` is what the server did not give
back once the links were cut.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio
import trio.testing

import repred
from repred.types import model

from _common import report


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def serve(kind: str) -> None:
    """The server: print the port, then answer each line on stdin with the
    RSS once every task is blocked (everything sent has been read)."""
    data = model(id="server")
    for i in range(1000):
        data.set(f"k{i}", i)
    async with trio.open_nursery() as nursery:
        if kind == "tcp":
            listeners = await nursery.start(repred.serve_tcp, data, 0)
            port = listeners[0].socket.getsockname()[1]
        else:
            port = await nursery.start(_peer, data, kind)
        print(port, flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some(1):
            await trio.testing.wait_all_tasks_blocked(0.05)
            print(f"{rss_mb():.2f}", flush=True)
        nursery.cancel_scope.cancel()


async def _peer(data, kind, task_status):
    # Heartbeats 10 s apart: a link halfway through a line must make
    # progress within three, and opening 500 takes more than the default 3 s.
    async with repred.open_peer(
        replicas={"data": data},
        web_port=0 if kind == "web" else None,
        heartbeat_interval=10.0,
    ) as peer:
        port = peer.port if kind == "peer" else int(peer.web_address.split(":")[1])
        task_status.started(port)
        await trio.sleep_forever()


def opening(kind: str, i: int) -> bytes:
    """What a link sends first, and the start of the line it never ends."""
    line = b'[["k","'
    if kind == "tcp":
        return b'{"id":"idle","clock":{}}\n' + line
    if kind == "peer":
        hello = {"repred-peer": 2, "node": f"127.0.0.1:{20000 + i}"}
        hello["replicas"] = {"data": "model"}
        digest = b'1\tdata\t{"id":"idle","clock":{}}\n'
        return json.dumps(hello).encode() + b"\n" + digest + b"2\tdata\t" + line
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /replicas/data HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def _frame(payload: bytes) -> bytes:
    """A client's binary WebSocket message (masked with zeros)."""
    n = len(payload)
    head = b"\x82"
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Server:
    """The serving child process, with the repred of ``checkout``."""

    def __init__(self, kind: str, checkout: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.port = int(self._line())

    def _line(self) -> bytes:
        assert self.child.stdout is not None
        return self.child.stdout.readline()

    def rss(self) -> float:
        """Its RSS in MB, once it stops moving (everything sent was read,
        every end noticed)."""
        assert self.child.stdin is not None
        last = math.inf
        for _ in range(100):
            self.child.stdin.write(b"\n")
            self.child.stdin.flush()
            now = float(self._line())
            if abs(now - last) < 0.2:
                return now
            last = now
            time.sleep(0.1)
        return last

    def stop(self) -> None:
        assert self.child.stdin is not None
        self.child.stdin.close()
        self.child.wait()


def attack(kind: str, links: int, partial: int, checkout: Path) -> None:
    server = Server(kind, checkout)
    base = server.rss()
    socks = []
    for i in range(links):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(opening(kind, i))
        socks.append(s)
    for s in socks:
        if kind == "web":
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 101"), reply
            s.sendall(_frame(b'{"id":"idle","clock":{}}\n[["k","'))
            s.sendall(_frame(b"x" * partial))
        else:
            s.sendall(b"x" * partial)
    held = server.rss()
    for s in socks:
        s.close()
    after = server.rss()
    server.stop()
    report(
        "idle_links",
        code=str(checkout),
        kind=kind,
        links=links,
        partial_kb=round(partial / 1024, 1),
        base_mb=round(base, 1),
        held_mb=round(held, 1),
        held_per_link_kb=round((held - base) * 1024 / links, 1),
        after_mb=round(after, 1),
        kept_after_mb=round(after - base, 1),
    )


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--serve"]:
        trio.run(serve, args[1])
        return
    kind = args[args.index("--kind") + 1] if "--kind" in args else "tcp"
    this = Path(__file__).resolve().parents[1]
    checkouts = [this]
    if "--against" in args:
        checkouts.insert(0, Path(args[args.index("--against") + 1]).resolve())
    numbers = [int(a) for a in args if a.isdigit()]
    links, partial = (numbers + [500, 100_000][len(numbers) :])[:2]
    for checkout in checkouts:
        attack(kind, links, partial, checkout)


if __name__ == "__main__":
    main()
