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

from repred.testing import simulate_peers

from _common import report

#: Seconds a chunk takes to cross a link: a hundredth of a gossip round.
LATENCY = 0.01


async def measure(n: int, seed: int) -> tuple[float, float]:
    rng = random.Random(seed)

    async def until(predicate) -> None:
        # Polling in virtual time, a tenth of a hop apart: it costs no real
        # time and no peer needs to know it is being watched.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(LATENCY / 10)

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        sim = await simulate_peers(
            nursery, n, seed=seed, latency=LATENCY, down_after=60.0
        )
        peers, data = sim.peers, sim.data
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
