"""Rounds of gossip until N peers converge, and what a round costs a node.

N peers on an in-memory network under a mock clock, each seeded with one
random earlier peer; a chunk takes LATENCY s to cross a link. A round is a
heartbeat interval (1 s); an outgoing link lasts 3 s before the peer moves
on, and a node is down 5 s after it is last heard of (open_peer's
defaults). Reported:

* rounds_to_full_membership: from the first peer's start until every peer
  knows every member;
* rounds_for_a_newcomer_to_be_known: once the cluster is formed, one more
  peer starts: how long until every peer knows it;
* rounds_for_a_write_to_reach_all (and in link hops, which follow the
  diameter of the random graph of live links, about log N);
* bytes_per_node_per_round: everything the links carry (hellos, digests,
  entries, keep-alives) over ROUNDS rounds once the cluster has settled,
  over the peers, and that per member; the requirement is that the first
  stays flat as N grows;
* cpu_ms_per_node_per_round: the process's CPU time over those rounds, over
  the peers (the simulated network's share of it is small);
* seconds_until_a_stopped_node_is_down_everywhere: one peer stops (its
  links close, nothing answers at its address): how long until no peer
  counts it among its members.

Beside them, the anchors the rounds are read against: Serf's convergence
model reaches 99.99% of 1,000 nodes in about 11 gossip rounds; the
scuttlebutt paper's simulation reaches 10,000 nodes in 8. (Here a change
spreads over live links as it is applied, so it takes link hops, a
hundredth of a round each, not rounds.)

    python benchmarks/gossip_rounds.py [--old CHECKOUT] [N ...]

(default: 100 300 1000). With ``--old``, the same measures run again on the
library of another checkout (``git worktree add /tmp/old main``), in a
process of their own, and both are printed, each row saying which design
it measured.
"""

from __future__ import annotations

import gc
import math
import os
import random
import subprocess
import sys
import time

import trio
import trio.testing

import repred
from repred.testing import MemoryNetwork
from repred.types import model

from _common import report

#: Seconds a chunk takes to cross a link: a hundredth of a round.
LATENCY = 0.01
#: Rounds the formed cluster runs before its traffic is counted (the links
#: open while it formed have moved on), and the rounds counted.
SETTLE = 5
ROUNDS = 5
#: open_peer's defaults, so that a node opens as many links a round as a
#: real one and is seen down as late.
OPTIONS = {
    "heartbeat_interval": 1.0,
    "gossip_interval": 3.0,
    "seed_interval": 10.0,
    "down_after": 5.0,
}
ANCHORS = [
    {"anchor": "serf convergence model", "nodes": 1000, "rounds": 11},
    {"anchor": "scuttlebutt paper simulation", "nodes": 10_000, "rounds": 8},
]


def design() -> str:
    if hasattr(repred, "Membership"):
        return "entries on change, links as probes"
    return "heartbeats every round"


def wall() -> float:
    return trio.current_time() * 1000


async def until(predicate, every: float = LATENCY / 10) -> None:
    # Polling in virtual time, a tenth of a hop apart by default: it costs
    # no real time and no peer needs to know it is being watched.
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(every)


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


class Cluster:
    """Peers on one network, each stoppable, as simulate_peers starts them."""

    def __init__(self, seed: int) -> None:
        self.network = MemoryNetwork(latency=LATENCY)
        self.rng = random.Random(seed)
        self.seed = seed
        self.peers: list = []
        self.data: list = []
        self.scopes: list[trio.CancelScope] = []

    async def start(self, nursery: trio.Nursery, seeds: list[str]) -> None:
        i = len(self.peers)
        data = model(id=f"n{i}", wall=wall)
        scope = trio.CancelScope()

        async def run(task_status) -> None:
            with scope:
                async with repred.open_peer(
                    replicas={"data": data},
                    seeds=seeds,
                    transport=self.network,
                    wall=wall,
                    rng=random.Random(self.seed * 100_000 + i),
                    **OPTIONS,
                ) as peer:
                    task_status.started(peer)
                    await trio.sleep_forever()

        self.peers.append(await nursery.start(run))
        self.data.append(data)
        self.scopes.append(scope)

    def random_seed(self) -> list[str]:
        if not self.peers:
            return []
        return [self.peers[self.rng.randrange(len(self.peers))].address]


async def measure(n: int, seed: int) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(seed)
        start = trio.current_time()
        for _ in range(n):
            await cluster.start(nursery, cluster.random_seed())
        peers = cluster.peers
        await until(knows_all(peers, n))
        formed = trio.current_time() - start
        traffic = await count_traffic(cluster, n)

        t = trio.current_time()
        await cluster.start(nursery, cluster.random_seed())
        await until(knows_all(peers[:n], n + 1))
        newcomer = trio.current_time() - t

        cluster.data[cluster.rng.randrange(n)].set("x", 1)
        t = trio.current_time()
        await until(lambda: all(d.get("x") == 1 for d in cluster.data))
        spread = trio.current_time() - t

        down = await stop_one(cluster, cluster.rng.randrange(n))
        nursery.cancel_scope.cancel()
    return {
        "rounds_to_full_membership": round(formed, 2),
        "rounds_for_a_newcomer_to_be_known": round(newcomer, 3),
        "rounds_for_a_write_to_reach_all": round(spread, 3),
        "hops_for_a_write_to_reach_all": round(spread / LATENCY, 1),
        **traffic,
        "seconds_until_a_stopped_node_is_down_everywhere": round(down, 2),
    }


async def count_traffic(cluster: Cluster, n: int) -> dict[str, float]:
    """Bytes and CPU per node per round, over whole rounds once settled
    (every node's timers started together, at a round's boundary)."""
    now = trio.current_time()
    await trio.sleep(math.ceil(now) + SETTLE - now)
    bytes_sent = cluster.network.bytes_sent
    sent = sum(bytes_sent.values())
    cpu = time.process_time()
    await trio.sleep(ROUNDS)
    per_round = (sum(bytes_sent.values()) - sent) / n / ROUNDS
    cpu = (time.process_time() - cpu) / n / ROUNDS
    return {
        "bytes_per_node_per_round": round(per_round),
        "bytes_per_member_per_node_per_round": round(per_round / (n - 1), 1),
        "cpu_ms_per_node_per_round": round(cpu * 1000, 2),
    }


async def stop_one(cluster: Cluster, i: int) -> float:
    """Stop peer ``i``; seconds until no other peer counts it a member."""
    gone = cluster.peers[i].address
    others = [p for j, p in enumerate(cluster.peers) if j != i]
    t = trio.current_time()
    cluster.scopes[i].cancel()
    waiting = list(others)

    def down_everywhere() -> bool:
        waiting[:] = [p for p in waiting if gone in p.members()]
        return not waiting

    # A tenth of a round apart: each poll asks every peer for its members,
    # a thousand each at 1,000 peers, and down_after is 5 rounds.
    await until(down_everywhere, every=0.1)
    return trio.current_time() - t


def run_here(sizes: list[int]) -> None:
    # A cluster of N peers in one process holds N member maps of N entries,
    # a few containers each: millions of objects that live to the end. The
    # collector's full passes walk all of them again and again; young
    # passes still collect the garbage links leave. The rounds and bytes do
    # not depend on it; the times do.
    gc.set_threshold(700, 10, 100_000)
    for n in sizes:
        t = time.perf_counter()
        figures = trio.run(
            measure, n, 1, clock=trio.testing.MockClock(autojump_threshold=0)
        )
        report(
            "gossip_rounds",
            design=design(),
            peers=n,
            log2_n=round(math.log2(n), 2),
            **figures,
            real_seconds=round(time.perf_counter() - t, 2),
        )


def run_old(checkout: str, sizes: list[int]) -> None:
    """The same measures on another checkout's library, one process per N
    (its rows are printed as they come)."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
    for n in sizes:
        command = [sys.executable, __file__, "--rows", str(n)]
        subprocess.run(command, env=env, check=True)


def main() -> None:
    args = sys.argv[1:]
    old = None
    if args[:1] == ["--rows"]:  # (the measures alone: a run on --old)
        run_here([int(a) for a in args[1:]])
        return
    if args[:1] == ["--old"]:
        old, args = args[1], args[2:]
    sizes = [int(a) for a in args] or [100, 300, 1000]
    for anchor in ANCHORS:
        report("gossip_rounds", **anchor)
    run_here(sizes)
    if old is not None:
        run_old(old, sizes)


if __name__ == "__main__":
    main()
