"""Rounds of gossip until N peers converge, simulated in one process.

N peers on an in-memory network under a mock clock, each seeded with one
random earlier peer; a chunk takes LATENCY s to cross a link. Reported, in
gossip rounds (gossip_interval = 1 s): how long until every peer knows every
member, and how long a write at a random peer takes to reach all of them
once the cluster is formed; and that last time in link hops, which follows
the diameter of the random graph of live links (about log N).

    python benchmarks/gossip_rounds.py [N ...]    (default: 25 50 100 200 400)
"""

from __future__ import annotations

import math
import random
import sys
import time

import trio
import trio.testing

import repred
from repred.testing import MemoryNetwork
from repred.types import model

from _common import report

#: Seconds a chunk takes to cross a link: a hundredth of a gossip round.
LATENCY = 0.01


async def measure(n: int, seed: int) -> tuple[float, float]:
    net = MemoryNetwork(latency=LATENCY)
    rng = random.Random(seed)

    def wall() -> float:
        return trio.current_time() * 1000

    data = [model(id=f"n{i}", wall=wall) for i in range(n)]
    peers: list[repred.Peer] = []

    async def run(i: int, task_status: trio.TaskStatus[repred.Peer]) -> None:
        seeds = [peers[rng.randrange(i)].address] if i else []
        async with repred.open_peer(
            replicas={"data": data[i]},
            seeds=seeds,
            transport=net,
            wall=wall,
            rng=random.Random(seed * 100_000 + i),
            heartbeat_interval=1.0,
            down_after=60.0,
            gossip_interval=1.0,
            seed_interval=10.0,
        ) as peer:
            task_status.started(peer)
            await trio.sleep_forever()

    async def until(predicate) -> None:
        # Polling in virtual time, a tenth of a hop apart: it costs no real
        # time and no peer needs to know it is being watched.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(LATENCY / 10)

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for i in range(n):
            peers.append(await nursery.start(run, i))
        await until(lambda: all(len(p.members()) == n for p in peers))
        formed = trio.current_time() - start
        writer = rng.randrange(n)
        data[writer].set("x", 1)
        t = trio.current_time()
        await until(lambda: all(d.get("x") == 1 for d in data))
        spread = trio.current_time() - t
        nursery.cancel_scope.cancel()
    return formed, spread


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [25, 50, 100, 200, 400]
    for n in sizes:
        t = time.perf_counter()
        formed, spread = trio.run(
            measure, n, 1, clock=trio.testing.MockClock(autojump_threshold=0)
        )
        report(
            "gossip_rounds",
            peers=n,
            log2_n=round(math.log2(n), 2),
            rounds_to_full_membership=round(formed, 2),
            rounds_for_a_write_to_reach_all=round(spread, 3),
            hops_for_a_write_to_reach_all=round(spread / LATENCY, 1),
            real_seconds=round(time.perf_counter() - t, 2),
        )


if __name__ == "__main__":
    main()
