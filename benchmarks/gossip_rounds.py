"""Rounds of gossip until N peers converge, and what a round costs a node.

N peers on an in-memory network under a mock clock, each seeded with one
random earlier peer; a chunk takes LATENCY s to cross a link. Heartbeats
every second (a round), and an outgoing link lasts 3 s before the peer
moves on (open_peer's defaults). Reported:

* rounds_to_full_membership: from the first peer's start until every peer
  knows every member;
* rounds_for_a_newcomer_to_be_known: once the cluster is formed, one more
  peer starts: how long until every peer knows it (the figure Serf's
  convergence model gives: about 11 rounds for 99.99% of 1,000 nodes);
* rounds_for_a_write_to_reach_all (and in link hops, which follow the
  diameter of the random graph of live links, about log N);
* bytes_per_node_per_round: everything the links carry (hellos, digests,
  heartbeats, keep-alives) in the second round after forming, over the
  peers; and that per member, which is what stays flat, so the total grows
  with N: every node beats once a round into a map replicated to every
  node, so each node takes in every member's heartbeat every round
  (several times over, once per live link that has it first), and each
  link opens with a digest naming every member;
* cpu_ms_per_node_per_round: the process's CPU time in that round, over
  the peers (the simulated network's share of it is small).

    python benchmarks/gossip_rounds.py [N ...]    (default: 100 300 1000)
"""

from __future__ import annotations

import gc
import math
import random
import sys
import time

import trio
import trio.testing

import repred
from repred.testing import simulate_peers

from _common import report

#: Seconds a chunk takes to cross a link: a hundredth of a round.
LATENCY = 0.01
#: Rounds of the formed cluster over which the bytes are counted.
ROUNDS = 1
#: How long an outgoing link lasts: open_peer's default (a simulation's is
#: shorter), so that a node opens as many links a round as a real one.
GOSSIP_INTERVAL = 3.0


async def until(predicate) -> None:
    # Polling in virtual time, a tenth of a hop apart: it costs no real
    # time and no peer needs to know it is being watched.
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(LATENCY / 10)


def knows_all(peers, n):
    """A predicate: every peer knows ``n`` members (each peer checked until
    it does, and the cheap count first: a poll costs little once most do)."""
    waiting = list(peers)

    def check() -> bool:
        waiting[:] = [
            p for p in waiting if len(p.membership.state) < n or len(p.members()) < n
        ]
        return not waiting

    return check


async def newcomer_peer(network, seed: str, task_status) -> None:
    async with repred.open_peer(
        seeds=[seed],
        transport=network,
        wall=lambda: trio.current_time() * 1000,
        rng=random.Random(-1),
        heartbeat_interval=1.0,
        gossip_interval=GOSSIP_INTERVAL,
        seed_interval=10.0,
        down_after=60.0,
    ):
        task_status.started()
        await trio.sleep_forever()


async def measure(n: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        sim = await simulate_peers(
            nursery,
            n,
            seed=seed,
            latency=LATENCY,
            down_after=60.0,
            gossip_interval=GOSSIP_INTERVAL,
        )
        peers, data, network = sim.peers, sim.data, sim.network
        await until(knows_all(peers, n))
        formed = trio.current_time() - start

        # Whole rounds from the second round boundary after forming (every
        # node beats once a round, all at the boundary: they started
        # together); the round before it still opens the first links.
        await trio.sleep(math.ceil(trio.current_time()) + 1 - trio.current_time())
        sent = sum(network.bytes_sent.values())
        cpu = time.process_time()
        await trio.sleep(ROUNDS)
        per_round = (sum(network.bytes_sent.values()) - sent) / n / ROUNDS
        cpu = (time.process_time() - cpu) / n / ROUNDS

        t = trio.current_time()
        await nursery.start(newcomer_peer, network, peers[rng.randrange(n)].address)
        await until(knows_all(peers, n + 1))
        newcomer = trio.current_time() - t

        data[rng.randrange(n)].set("x", 1)
        t = trio.current_time()
        await until(lambda: all(d.get("x") == 1 for d in data))
        spread = trio.current_time() - t
        nursery.cancel_scope.cancel()
    return {
        "rounds_to_full_membership": round(formed, 2),
        "rounds_for_a_newcomer_to_be_known": round(newcomer, 3),
        "rounds_for_a_write_to_reach_all": round(spread, 3),
        "hops_for_a_write_to_reach_all": round(spread / LATENCY, 1),
        "bytes_per_node_per_round": round(per_round),
        "bytes_per_member_per_node_per_round": round(per_round / (n - 1), 1),
        "cpu_ms_per_node_per_round": round(cpu * 1000, 2),
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [100, 300, 1000]
    # A cluster of N peers in one process holds N member maps of N entries,
    # a few containers each: millions of objects that live to the end. The
    # collector's full passes walk all of them again and again (a quarter of
    # the time at 300 peers); young passes still collect the garbage links
    # leave. The rounds and bytes do not depend on it; the times do.
    gc.set_threshold(700, 10, 100_000)
    for n in sizes:
        t = time.perf_counter()
        figures = trio.run(
            measure, n, 1, clock=trio.testing.MockClock(autojump_threshold=0)
        )
        report(
            "gossip_rounds",
            peers=n,
            log2_n=round(math.log2(n), 2),
            **figures,
            real_seconds=round(time.perf_counter() - t, 2),
        )


if __name__ == "__main__":
    main()
