"""How a peer answers while 10,000 junk members sit in its membership map.

Starts ``python -m repred.peer``, injects N members that never answer
(closed ports on 127.0.0.1, so nothing leaves this machine) from a hostile
in-process peer, then times ``get`` commands typed into the victim: each
answer must come back within 100 ms.

    python benchmarks/junk_members.py [N]     (default: 10000)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from functools import partial

import trio

import repred
from repred.types import model

from _common import arg, report


async def read_event(process, buf: list[bytes], kind: str) -> dict:
    while True:
        while b"\n" not in buf[0]:
            data = await process.stdout.receive_some(65536)
            if not data:
                raise RuntimeError("the peer exited")
            buf[0] += data
        line, buf[0] = buf[0].split(b"\n", 1)
        event = json.loads(line)
        if event["event"] == kind:
            return event


async def main(n: int) -> None:
    async with trio.open_nursery() as nursery:
        victim = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-m", "repred.peer", "0", "--json"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        buf = [b""]
        listening = await read_event(victim, buf, "listening")
        hostile = model(id="hostile")
        async with repred.open_peer(
            replicas={"data": hostile}, seeds=[listening["address"]]
        ) as peer:
            now = time.time() * 1000
            peer.membership.apply(
                [
                    ([f"127.0.0.1:{20000 + i}", "alive", g], now + i * 0.001, g)
                    for i, g in enumerate(f"ghost{i}" for i in range(n))
                ]
            )
            hostile.set("injected", True)
            while True:
                await victim.stdin.send_all(b"get injected\n")
                if (await read_event(victim, buf, "value"))["value"]:
                    break
                await trio.sleep(0.2)
        times = []
        for _ in range(50):
            t = time.perf_counter()
            await victim.stdin.send_all(b"get injected\n")
            await read_event(victim, buf, "value")
            times.append((time.perf_counter() - t) * 1000)
            await trio.sleep(0.05)
        await victim.stdin.send_all(b"peers\n")
        peers = await read_event(victim, buf, "peers")
        await victim.stdin.aclose()
        await victim.wait()
    report(
        "junk_members",
        members=n,
        get_ms_median=statistics.median(times),
        get_ms_max=max(times),
        members_alive_after=len(peers["peers"]),
    )


if __name__ == "__main__":
    trio.run(main, arg(1, 10_000))
