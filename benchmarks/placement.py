"""Placement: rendezvous hashing (repred.owners) beside two rings and the ideal.

NODES nodes, NAMES document names, COPIES copies of each. For every scheme,
on the same names and nodes in the same run:

* busiest_over_mean: the copies the busiest node holds over the mean;
* join_moved: the share of all copies that move when one node joins (the
  least possible is 1/(n+1): the newcomer's fair share);
* join_donors: how many nodes give up a copy to the newcomer;
* loss_moved: the share of all copies re-made when one node is lost (its
  own copies, 1/n, are the least);
* loss_spread: the share of the survivors that re-make some copy, and
  loss_largest_share: the share of the re-made copies the busiest of them
  re-makes (ideally 1/(n-1) each);
* seconds: the time the scheme took for its three placements.

The rings place a document on the first COPIES distinct nodes clockwise
from its hash, with one token per node or VNODES tokens per node (Dynamo's
and Cassandra's schemes). Then the speed of owners(): NAMES_FAST names over
MEMBERS_FAST members, prepared (a frozenset of members, or a Placement) and
from a list each call.

Then placed peers at work (``open_peer(documents=..., copies=3)``): PEERS
simulated nodes on the in-memory network under a mock clock (virtual
seconds: the figures do not depend on the machine), DOCUMENTS documents
written through their first owner and each confirmed by two owners
(``wait_replicated``). Each row is printed beside the ideal:

* placed_load: the documents the busiest node owns over the mean;
* placed_join and placed_loss: when one node joins, then one is lost, the
  copies made on a node that held none (hand-offs, and documents received
  from a live copy) against the least possible (the newcomer's fair share;
  the lost node's copies), the virtual seconds until every document is on
  exactly its owners again, and the bytes sent on document links against
  the moved documents' own size (their entries as JSON): all bytes sent on
  document links meanwhile, and those less what the same links send in as
  long while nothing moves (keep-alives, anti-entropy roots: measured over
  the IDLE virtual seconds before);
* placed_five_fail: five nodes fail at once: the virtual seconds until
  every document is back to three copies, the copies re-made, and the
  confirmed writes lost (every owner's copy is read).

    python benchmarks/placement.py [NAMES [NODES [DOCUMENTS [PEERS]]]]
    (default: 100000 50 10000 50; DOCUMENTS 0 leaves the peers out)
"""

from __future__ import annotations

import bisect
import hashlib
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
import trio
import trio.testing

from repred import open_peer, owners
from repred._placement import Placement
from repred.testing import MemoryNetwork
from repred.types import model

from _common import arg, report

if TYPE_CHECKING:
    from collections.abc import Callable

    from repred import Peer

COPIES = 3
VNODES = 256
NAMES_FAST = 10_000
MEMBERS_FAST = 1_000


def h64(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class Ring:
    """Consistent hashing on a ring: tokens per node, successors hold copies."""

    def __init__(self, nodes: list[str], tokens: int) -> None:
        points = sorted(
            (h64(f"{node}#{t}" if tokens > 1 else node), node)
            for node in nodes
            for t in range(tokens)
        )
        self.hashes = [h for h, _ in points]
        self.nodes = [n for _, n in points]
        self.distinct = len(set(nodes))

    def owners(self, name: str) -> list[str]:
        want = min(COPIES, self.distinct)
        i = bisect.bisect(self.hashes, h64(name))
        found: list[str] = []
        while len(found) < want:
            node = self.nodes[i % len(self.nodes)]
            if node not in found:
                found.append(node)
            i += 1
        return found


def rendezvous(nodes: list[str]) -> Callable[[str], list[str]]:
    placement = Placement(nodes)
    return lambda name: placement.owners(name, COPIES)


def ring(tokens: int) -> Callable[[list[str]], Callable[[str], list[str]]]:
    return lambda nodes: Ring(nodes, tokens).owners


def measure(scheme, names: list[str], nodes: list[str]) -> dict[str, float]:
    n = len(nodes)
    t = time.perf_counter()
    place = scheme(nodes)
    base = [place(name) for name in names]
    joiner = "10.9.9.9:7000"
    place = scheme([*nodes, joiner])
    joined = [place(name) for name in names]
    lost = nodes[n // 3]
    place = scheme([x for x in nodes if x != lost])
    left = [place(name) for name in names]
    seconds = time.perf_counter() - t

    held = Counter(x for o in base for x in o)
    total = len(names) * COPIES
    gained = [set(b) - set(a) for a, b in zip(base, joined, strict=True)]
    donors = Counter(
        x for a, b in zip(base, joined, strict=True) for x in set(a) - set(b)
    )
    remade = Counter(
        x for a, b in zip(base, left, strict=True) for x in set(b) - set(a)
    )
    return {
        "busiest_over_mean": round(max(held.values()) / (total / n), 3),
        "join_moved": round(sum(map(len, gained)) / total, 4),
        "join_donors": len(donors),
        "loss_moved": round(sum(remade.values()) / total, 4),
        "loss_spread": round(len(remade) / (n - 1), 3),
        "loss_largest_share": round(max(remade.values()) / sum(remade.values()), 3),
        "seconds": round(seconds, 2),
    }


def speed() -> None:
    members = [
        f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:7000" for i in range(MEMBERS_FAST)
    ]
    names = [f"doc-{i}" for i in range(NAMES_FAST)]
    prepared = frozenset(members)
    owners(names[0], prepared)  # prepared once, then remembered
    t = time.perf_counter()
    for name in names:
        owners(name, prepared)
    frozen = time.perf_counter() - t
    t = time.perf_counter()
    for name in names[:1000]:
        owners(name, members)
    listed = (time.perf_counter() - t) * len(names) / 1000
    report(
        "placement_speed",
        names=NAMES_FAST,
        members=MEMBERS_FAST,
        copies=COPIES,
        seconds_prepared=round(frozen, 3),
        us_per_name_prepared=round(frozen / NAMES_FAST * 1e6, 1),
        seconds_from_a_list_each_call=round(listed, 3),
    )


# -- placed peers at work --------------------------------------------------------

#: The pace of the simulated peers (virtual seconds).
PACE = {
    "heartbeat_interval": 1.0,
    "down_after": 5.0,
    "gossip_interval": 1.0,
    "seed_interval": 2.0,
    "connect_timeout": 2.0,
    "max_backoff": 8.0,
    "handoff_timeout": 10.0,
}
#: Documents written (and confirmed) at once.
WRITERS = 64


def wall() -> float:
    return 1_700_000_000_000 + trio.current_time() * 1000


class Cluster:
    """Placed peers on one memory network, each stoppable on its own."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.network = MemoryNetwork()
        self.peers: dict[str, Peer] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        #: What the stopped nodes had counted when they stopped.
        self.stopped: Counter[str] = Counter()

    async def start(self, i: int) -> Peer:
        seeds = [next(iter(self.peers))] if self.peers else []
        peer: Peer = await self.nursery.start(self._run, i, seeds)
        self.peers[peer.address] = peer
        return peer

    async def _run(self, i: int, seeds: list[str], task_status: Any) -> None:
        with trio.CancelScope() as scope:
            async with open_peer(
                documents=lambda name: model(wall=wall),
                copies=COPIES,
                transport=self.network,
                wall=wall,
                rng=random.Random(i),
                seeds=seeds,
                **PACE,
            ) as peer:
                self.scopes[peer.address] = scope
                task_status.started(peer)
                await trio.sleep_forever()

    def stop(self, address: str) -> None:
        self.stopped.update(self._counts(self.peers[address]))
        self.scopes.pop(address).cancel()
        del self.peers[address]

    def settled(self) -> bool:
        """Every node sees every other, and places the probes alike."""
        everyone = set(self.peers)
        views = set()
        for peer in self.peers.values():
            if set(peer.members()) != everyone:
                return False
            views.add(tuple(tuple(peer.owners(f"probe{i}")) for i in range(20)))
        return len(views) == 1

    def placed_exactly(self, names: list[str]) -> bool:
        """Each document owned by exactly its owners, nothing owed."""
        if not self.settled():
            return False
        stats = [p.statistics().documents for p in self.peers.values()]
        if any(s is None or s.leaving or s.pending for s in stats):
            return False
        holders: dict[str, set[str]] = {}
        for address, peer in self.peers.items():
            for name in peer.holding():
                holders.setdefault(name, set()).add(address)
        first = next(iter(self.peers.values()))
        return all(holders.get(n) == set(first.owners(n)) for n in names)

    def totals(self) -> Counter[str]:
        """Hand-offs made and bytes sent on document links, by every node
        so far (a stopped one's until it stopped)."""
        total = Counter(self.stopped)
        for peer in self.peers.values():
            total.update(self._counts(peer))
        return total

    @staticmethod
    def _counts(peer: Peer) -> Counter[str]:
        s = peer.statistics().documents
        assert s is not None
        return Counter(handoffs=s.handoffs, bytes=s.bytes_out)


#: Virtual seconds a phase may take before the run stops, saying so.
PHASE_LIMIT = 3600.0


async def until(predicate: Callable[[], bool], step: float = 1.0) -> float:
    """Virtual seconds until ``predicate()`` holds, looked at every ``step``."""
    start = trio.current_time()
    with trio.fail_after(PHASE_LIMIT):
        while not predicate():  # noqa: ASYNC110  (virtual time: it costs nothing)
            await trio.sleep(step)
    return trio.current_time() - start


async def write_all(cluster: Cluster, names: list[str]) -> int:
    """Write each document through its first owner and wait for two owners
    to hold it; the writes confirmed."""
    limit = trio.CapacityLimiter(WRITERS)
    confirmed = 0

    async def write(i: int, name: str) -> None:
        nonlocal confirmed
        async with limit:
            peer = cluster.peers[next(iter(cluster.peers.values())).owners(name)[0]]
            (await peer.document(name)).set("k", i)
            await peer.wait_replicated(name, copies=2)
            confirmed += 1

    async with trio.open_nursery() as nursery:
        for i, name in enumerate(names):
            nursery.start_soon(write, i, name)
    return confirmed


async def lost_writes(cluster: Cluster, names: list[str]) -> int:
    """Documents some owner of which does not hold the confirmed write."""
    lost = 0
    for name in names:
        i = int(name.rpartition("-")[2])
        for address in next(iter(cluster.peers.values())).owners(name):
            if (await cluster.peers[address].document(name)).get("k") != i:
                lost += 1
                break
    return lost


#: Virtual seconds of a settled cluster over which the document links'
#: background traffic (keep-alives, anti-entropy roots) is measured.
IDLE = 30.0


async def idle_rate(cluster: Cluster) -> float:
    """Bytes a second the document links send while nothing moves."""
    before = cluster.totals()["bytes"]
    await trio.sleep(IDLE)
    return (cluster.totals()["bytes"] - before) / IDLE


async def move(
    cluster: Cluster, names: list[str], change: Callable[[], Any], size: int
) -> dict[str, float]:
    """Apply ``change`` to the cluster and say what moved until every
    document is on exactly its owners again; the bytes sent meanwhile,
    and those less what the links send in as long when nothing moves."""
    idle = await idle_rate(cluster)
    before = cluster.totals()
    holders = {a: set(p.holding()) for a, p in cluster.peers.items()}
    await change()
    seconds = await until(lambda: cluster.placed_exactly(names))
    after = cluster.totals()
    made = sum(
        len(set(p.holding()) - holders.get(a, set())) for a, p in cluster.peers.items()
    )
    sent = after["bytes"] - before["bytes"]
    moving = max(0.0, sent - idle * seconds)
    return {
        "moved": made,
        "handoffs": after["handoffs"] - before["handoffs"],
        "virtual_seconds": round(seconds, 1),
        "bytes": sent,
        "idle_bytes_per_second": round(idle),
        "bytes_over_idle": round(moving),
        "ideal_bytes": made * size,
        "over_idle_over_ideal": round(moving / max(1, made * size), 2),
        # What a copy costs beyond its entries: a session's two hellos, a
        # probe, open, accept and close, an anti-entropy root, a clock line.
        "overhead_bytes_per_copy": round((moving - made * size) / max(1, made)),
    }


async def placed(documents: int, n: int) -> None:
    names = [f"doc-{i}" for i in range(documents)]
    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        for i in range(n):
            await cluster.start(i)
        await until(cluster.settled)
        confirmed = await write_all(cluster, names)
        await until(lambda: cluster.placed_exactly(names))
        loads = [len(p.holding()) for p in cluster.peers.values()]
        shape = {"documents": documents, "nodes": n, "copies": COPIES}
        report(
            "placed_load",
            **shape,
            busiest_over_mean=round(max(loads) / (sum(loads) / n), 3),
            ideal=1.0,
        )
        first = next(iter(cluster.peers.values()))
        owner = cluster.peers[first.owners(names[0])[0]]
        entries = (await owner.document(names[0])).history()
        size = len(orjson.dumps([list(e) for e in entries]))
        await join_and_loss(cluster, names, shape, size)
        failed = await five_fail(cluster, names, size)
        report(
            "placed_five_fail",
            **shape,
            **failed,
            confirmed_writes=confirmed,
            real_seconds=round(time.perf_counter() - t, 1),
        )
        nursery.cancel_scope.cancel()


async def join_and_loss(
    cluster: Cluster, names: list[str], shape: dict[str, int], size: int
) -> None:
    """One node joins, then one is lost: what moved each time."""
    n = len(cluster.peers)
    first = next(iter(cluster.peers.values()))
    joined = await move(cluster, names, lambda: cluster.start(n), size)
    ideal = round(len(names) * COPIES / (n + 1))
    report("placed_join", **shape, **joined, ideal_moved=ideal)
    victim = sorted(cluster.peers)[n // 3]
    ideal = sum(victim in first.owners(name) for name in names)

    async def lose() -> None:
        cluster.stop(victim)

    lost = await move(cluster, names, lose, size)
    report("placed_loss", **shape, **lost, ideal_moved=ideal)


async def five_fail(cluster: Cluster, names: list[str], size: int) -> dict[str, Any]:
    """Five nodes fail at once: what moved, and what was lost."""
    five = set(sorted(cluster.peers)[1:6])
    first = next(iter(cluster.peers.values()))
    # A document whose three owners all fail has no copy left: no placement
    # can keep it (three copies survive two failures at once).
    gone = {name for name in names if set(first.owners(name)) <= five}
    alive = [name for name in names if name not in gone]
    ideal = sum(len(five & set(first.owners(name))) for name in alive)

    async def fail() -> None:
        for address in five:
            cluster.stop(address)

    failed = await move(cluster, alive, fail, size)
    return {
        **failed,
        "ideal_moved": ideal,
        "documents_with_every_owner_failed": len(gone),
        "confirmed_writes_lost": await lost_writes(cluster, alive),
    }


def main() -> None:
    n_names, n_nodes = arg(1, 100_000), arg(2, 50)
    nodes = [f"10.0.{i // 256}.{i % 256}:7000" for i in range(n_nodes)]
    names = [f"doc-{i}" for i in range(n_names)]
    shape = {"names": n_names, "nodes": n_nodes, "copies": COPIES}
    report(
        "placement",
        scheme="ideal",
        **shape,
        busiest_over_mean=1.0,
        join_moved=round(1 / (n_nodes + 1), 4),
        join_donors=n_nodes,
        loss_moved=round(1 / n_nodes, 4),
        loss_spread=1.0,
        loss_largest_share=round(1 / (n_nodes - 1), 3),
    )
    schemes = [
        ("rendezvous (repred.owners)", rendezvous),
        ("ring, 1 token per node", ring(1)),
        (f"ring, {VNODES} tokens per node", ring(VNODES)),
    ]
    for label, scheme in schemes:
        report("placement", scheme=label, **shape, **measure(scheme, names, nodes))
    speed()
    documents, peers = arg(3, 10_000), arg(4, 50)
    if documents:
        clock = trio.testing.MockClock(autojump_threshold=0)
        trio.run(placed, documents, peers, clock=clock)


if __name__ == "__main__":
    main()
