"""Placed peers in one process: documents on exactly their owners, copies
made again after a loss and handed over on a join, confirmed writes that
survive, and what a hostile peer cannot make a node hold.

Every cluster runs on a :class:`repred.testing.MemoryNetwork` under the
autojump clock: waiting for a condition polls it in virtual time, which
costs no real time and depends on no real timing.
"""

import collections
import functools
import logging
import random

import pytest
import trio
import trio.testing

import repred
from repred._mux import PEER_PROTOCOL
from repred._placed import DOCS_PREFIX
from repred.testing import MemoryNetwork
from repred.types import model

from .helpers import wait_until

PACE = {
    "heartbeat_interval": 1.0,
    "down_after": 5.0,
    "gossip_interval": 1.0,
    "seed_interval": 2.0,
    "connect_timeout": 2.0,
    "max_backoff": 8.0,
    "handoff_timeout": 10.0,
}


def wall():
    # An epoch's milliseconds, moved by the mock clock.
    return 1_700_000_000_000 + trio.current_time() * 1000


async def until(predicate, *, step=0.5):
    """Until ``predicate()`` holds, looked at every ``step`` virtual s."""
    while not predicate():  # noqa: ASYNC110  (virtual time: see the top)
        await trio.sleep(step)


class Cluster:
    """Placed peers on one memory network, each stoppable on its own."""

    def __init__(self, nursery, *, transport=None, factory=None, **options):
        self.nursery = nursery
        self.network = MemoryNetwork()
        self.transport = transport or self.network
        self.factory = factory or (lambda name: model(wall=wall))
        self.options = {**PACE, **options}
        self.peers = {}
        self.scopes = {}
        self.events = collections.defaultdict(list)
        self.index = {}
        self.count = 0

    async def start(self, **extra):
        i = self.count
        self.count += 1
        seeds = [next(iter(self.peers.values())).address] if self.peers else []
        peer = await self.nursery.start(self._run, i, seeds, extra)
        self.peers[peer.address] = peer
        self.index[peer.address] = i
        return peer

    async def _run(self, i, seeds, extra, task_status):
        options = {
            "documents": lambda name: self.factory(name),
            "transport": self.transport,
            "wall": wall,
            "rng": random.Random(i),
            "seeds": seeds,
            "on_event": self.events[i].append,
            **self.options,
            **extra,
        }
        with trio.CancelScope() as scope:
            async with repred.open_peer(**options) as peer:
                self.scopes[peer.address] = scope
                task_status.started(peer)
                await trio.sleep_forever()

    def stop(self, address):
        self.scopes.pop(address).cancel()
        del self.peers[address]

    def settled(self, names=tuple(f"probe{i}" for i in range(40))):
        """Every peer sees every other, and places alike."""
        everyone = set(self.peers)
        for peer in self.peers.values():
            if set(peer.members()) != everyone:
                return False
            placed = {n: peer.owners(n) for n in names}
            if {o for owners in placed.values() for o in owners} != everyone:
                return False
        views = [tuple(tuple(p.owners(n)) for n in names) for p in self.peers.values()]
        return len(set(views)) == 1

    def holders(self, name):
        return {a for a, p in self.peers.items() if name in p.holding()}

    def placed_exactly(self, names):
        """Each document on exactly its owners, no copy left to drop, and
        nothing owed (every check done)."""
        peer = next(iter(self.peers.values()))
        if not all(self.holders(n) == set(peer.owners(n)) for n in names):
            return False
        stats = [p.statistics().documents for p in self.peers.values()]
        return all(s.leaving == 0 and s.pending == 0 for s in stats)

    def values(self, name, key="k"):
        """What each owner's copy holds under ``key``."""
        return {
            a: p._placed.replicas[name].get(key)
            for a, p in self.peers.items()
            if name in p.holding()
        }

    def copies(self, name):
        """The nodes holding ``name`` in any role (owned or a live copy)."""
        return {a for a, p in self.peers.items() if name in p._placed.replicas}

    def received(self, since):
        """ "received" events since the counts ``since``, each with the
        address of the node that said it."""
        found = []
        for address in self.peers:
            i = self.index[address]
            for e in self.events[i][since.get(i, 0) :]:
                if e["event"] == "received":
                    found.append({**e, "at": address})
        return found

    def all_events(self, kind):
        return [
            e for events in self.events.values() for e in events if e["event"] == kind
        ]


async def started(nursery, n, **options):
    cluster = Cluster(nursery, **options)
    for _ in range(n):
        await cluster.start()
    with trio.fail_after(120):
        await until(cluster.settled)
    return cluster


async def write(peer, name, value, copies=2):
    doc = await peer.document(name)
    doc.set("k", value)
    with trio.fail_after(60):
        await peer.wait_replicated(name, copies=copies)


# -- the cluster -------------------------------------------------------------------


async def test_documents_live_on_exactly_their_owners_and_come_back_after_a_loss(
    autojump_clock,
):
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 6)
        rng = random.Random(7)
        names = [f"doc{i}" for i in range(30)]
        for name in names:
            await write(rng.choice(list(cluster.peers.values())), name, name)
        with trio.fail_after(120):
            await until(lambda: cluster.placed_exactly(names))
        for name in names:
            assert set(cluster.values(name).values()) == {name}
        loads = [len(p.holding()) for p in cluster.peers.values()]
        assert sum(loads) == 3 * len(names)
        # One node stops: every document it held is copied to a new owner.
        lost = rng.choice(sorted(cluster.peers))
        had = [n for n in names if lost in cluster.holders(n)]
        copies_before = {n: cluster.copies(n) for n in names}
        seen = {i: len(events) for i, events in cluster.events.items()}
        cluster.stop(lost)
        with trio.fail_after(120):
            await until(lambda: cluster.settled() and cluster.placed_exactly(names))
        for name in names:
            assert set(cluster.values(name).values()) == {name}
            assert len(cluster.holders(name)) == 3
        # Each copy made on a node that held none shows: sent there by an
        # owner (handoff), or brought by a live copy that linked to its new
        # owner (received). A live copy that became an owned one moved
        # nothing.
        arrived = {(e["document"], e["to"]) for e in cluster.all_events("handoff")}
        arrived |= {(e["document"], e["at"]) for e in cluster.received(since=seen)}
        for name in had:
            for node in cluster.holders(name) - copies_before[name]:
                assert (name, node) in arrived
        stats = [p.statistics().documents for p in cluster.peers.values()]
        said = sum(
            e["event"] == "handoff"
            for a, p in cluster.peers.items()
            for e in cluster.events[cluster.index[a]]
        )
        assert sum(s.handoffs for s in stats) == said > 0
        assert sum(s.pending for s in stats) == 0
        nursery.cancel_scope.cancel()


async def test_a_join_takes_its_share_and_displaced_copies_are_dropped(autojump_clock):
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 5)
        names = [f"doc{i}" for i in range(30)]
        peers = list(cluster.peers.values())
        for i, name in enumerate(names):
            await write(peers[i % 5], name, i)
        with trio.fail_after(120):
            await until(lambda: cluster.placed_exactly(names))
        before = {name: peers[0].owners(name) for name in names}
        newcomer = await cluster.start()
        with trio.fail_after(120):
            await until(lambda: cluster.settled() and cluster.placed_exactly(names))
        owned = set(newcomer.holding()) & set(names)
        assert owned == {n for n in names if newcomer.address in newcomer.owners(n)}
        assert owned  # (six nodes, three copies: about half of them)
        for i, name in enumerate(names):
            assert set(cluster.values(name).values()) == {i}
        # Each displaced owner dropped its copy, but the writer: the program
        # asked for it there (document()), so it stays, as a live copy.
        dropped = {
            (e["document"], address)
            for address, i in cluster.index.items()
            for e in cluster.events[i]
            if e["event"] == "copy-dropped"
        }
        displaced = {
            (name, address)
            for name in names
            for address in set(before[name]) - set(newcomer.owners(name))
        }
        writers = {(name, peers[i % 5].address) for i, name in enumerate(names)}
        assert dropped == displaced - writers
        for _, address in displaced & writers:
            assert cluster.peers[address].statistics().documents.live_copies
        # Each copy it owns was sent by an owner, or brought by a live copy
        # that linked to it; either way it says it received it.
        sent = {e["document"] for e in cluster.all_events("handoff")}
        received = {
            e["document"]
            for e in cluster.events[cluster.index[newcomer.address]]
            if e["event"] == "received"
        }
        assert received == owned
        assert sent <= owned
        assert newcomer.statistics().documents.received == len(owned)
        nursery.cancel_scope.cancel()


async def test_a_confirmed_write_survives_the_loss_of_any_one_node(autojump_clock):
    # A write through a node that owns nothing of it, confirmed by two of
    # its owners; then the writer and either confirming owner stop at once.
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 6)
        peers = cluster.peers
        survivors_hold = []
        for attempt in range(2):
            name = f"confirmed{attempt}"
            owners = next(iter(peers.values())).owners(name)
            writer = next(p for a, p in peers.items() if a not in owners)
            await write(writer, name, "kept")
            confirmed = [
                a
                for a in owners
                if name in peers[a].holding()
                and peers[a]._placed.replicas[name].get("k") == "kept"
            ]
            assert len(confirmed) >= 2
            cluster.stop(confirmed[attempt])
            cluster.stop(writer.address)
            with trio.fail_after(120):
                await until(
                    lambda n=name: cluster.settled() and cluster.placed_exactly([n])
                )
            survivors_hold.append(set(cluster.values(name).values()))
        assert survivors_hold == [{"kept"}, {"kept"}]
        nursery.cancel_scope.cancel()


async def test_an_owner_back_empty_at_its_address_is_given_its_copies_again(
    autojump_clock,
):
    # It comes back within down_after (a replaced disk, a memory-only
    # factory), so it never left the members: the other owners took it to
    # hold what it acknowledged before, and never sent it again.
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, copies=2)
        for _ in range(4):
            await cluster.start()
        await until(cluster.settled)
        a = next(iter(cluster.peers.values()))
        name = next(f"d{i}" for i in range(500) if a.address in a.owners(f"d{i}"))
        other = next(o for o in a.owners(name) if o != a.address)
        doc = await a.document(name)
        doc.set("k", "confirmed")
        with trio.fail_after(60):
            await a.wait_replicated(name, copies=2)
        cluster.stop(other)
        await trio.sleep(2)  # down_after is longer
        back = await cluster.start(port=int(other.rsplit(":", 1)[1]))
        assert back.address == other
        copy = await back.document(name)
        with trio.fail_after(60):
            await until(lambda: copy.get("k") == "confirmed")
        nursery.cancel_scope.cancel()


async def test_a_live_copy_reads_and_writes_through_an_owner(autojump_clock):
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 5)
        peers = list(cluster.peers.values())
        name = "shared"
        owners = peers[0].owners(name)
        outsider = next(p for p in peers if p.address not in owners)
        owner = cluster.peers[owners[0]]
        held = await owner.document(name)
        held.set("from-owner", 1)
        copy = await outsider.document(name)
        assert copy.get("from-owner") == 1  # it synced before returning
        assert name not in outsider.holding()
        assert outsider.statistics().documents.live_copies == 1
        copy.set("from-copy", 2)
        with trio.fail_after(30):
            await until(lambda: held.get("from-copy") == 2)
            await outsider.wait_replicated(name, copies=3)
        held.set("later", 3)
        with trio.fail_after(30):
            await until(lambda: copy.get("later") == 3)
        nursery.cancel_scope.cancel()


async def test_a_write_reaches_every_owner_without_waiting(autojump_clock):
    # Written on an owner, or on a live copy elsewhere, with no one waiting
    # for acknowledgements: each owner gets it within a few link turns.
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 5)
        peers = list(cluster.peers.values())
        for name, on_owner in [("on-owner", True), ("on-copy", False)]:
            owners = peers[0].owners(name)
            writer = next(p for p in peers if (p.address in owners) == on_owner)
            doc = await writer.document(name)
            doc.set("k", name)
            with trio.fail_after(1):
                await until(
                    lambda n=name, o=owners: cluster.values(n) == dict.fromkeys(o, n),
                    step=0.01,
                )
        nursery.cancel_scope.cancel()


async def test_a_failed_handoff_is_retried_and_reported(autojump_clock):
    # The newcomer cannot make documents for a while (its disk is full,
    # say): each copy brought to it fails, is reported, and is retried.
    broken = [True]

    def factory(name):
        if broken[0]:
            raise OSError("no space left on device")
        return model(wall=wall)

    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 4)
        names = [f"doc{i}" for i in range(12)]
        peers = list(cluster.peers.values())
        for name in names:
            await write(peers[0], name, name)
        cluster.factory = factory
        newcomer = await cluster.start()
        with trio.fail_after(120):
            await until(
                lambda: any(
                    e["to"] == newcomer.address
                    for e in cluster.all_events("handoff-failed")
                )
            )
        failed = [
            e
            for e in cluster.all_events("handoff-failed")
            if e["to"] == newcomer.address
        ]
        assert {e["reason"] for e in failed} == {"failed"}
        assert all(e["retry_in"] > 0 for e in failed)
        stats = [p.statistics().documents for p in peers]
        assert sum(s.failures for s in stats) >= len(failed)
        assert sum(s.pending for s in stats) > 0  # owed, not forgotten
        assert not newcomer.holding()
        # No displaced copy goes while the node that now owns it lacks it.
        await trio.sleep(30)
        assert not cluster.all_events("copy-dropped")
        assert sum(p.statistics().documents.leaving for p in peers) > 0
        broken[0] = False
        with trio.fail_after(300):
            await until(lambda: cluster.settled() and cluster.placed_exactly(names))
        assert newcomer.holding()
        assert max(e["attempts"] for e in failed) >= 1
        nursery.cancel_scope.cancel()


# -- the API -------------------------------------------------------------------------


async def test_a_peer_without_documents_places_none(autojump_clock):
    async with repred.open_peer(transport=MemoryNetwork(), wall=wall) as peer:
        with pytest.raises(repred.RepredError, match="documents="):
            await peer.document("data")
        with pytest.raises(repred.RepredError):
            peer.owners("data")
        assert peer.statistics().documents is None


async def test_names_and_options_are_checked(autojump_clock):
    data = model()
    async with repred.open_peer(
        transport=MemoryNetwork(),
        wall=wall,
        replicas={"data": data},
        documents=lambda name: model(wall=wall),
        copies=2,
    ) as peer:
        for bad in ["", "../x", "a/b", "x" * 129, "_members"]:
            with pytest.raises(ValueError, match="bad document name"):
                await peer.document(bad)
            with pytest.raises(ValueError):
                peer.owners(bad)
        with pytest.raises(ValueError, match="replicas="):
            await peer.document("data")
        with pytest.raises(ValueError, match="document\\(\\) first"):
            await peer.wait_replicated("nothing-here")
        doc = await peer.document("mine")
        assert peer.owners("mine") == [peer.address]
        assert peer.holding() == ["mine"]
        for copies in [0, 3, "2"]:
            with pytest.raises(ValueError, match="copies"):
                await peer.wait_replicated("mine", copies=copies)
        doc.set("k", 1)
        await peer.wait_replicated("mine", copies=1)  # this node is its owner
        assert await peer.document("mine") is doc
    for options in [
        {"copies": 0},
        {"handoffs": 0},
        {"max_documents": 0},
        {"handoff_timeout": 0},
        {"read_only": True},  # it would confirm copies it never takes
    ]:
        with pytest.raises(ValueError):
            async with repred.open_peer(
                transport=MemoryNetwork(), documents=lambda name: model(), **options
            ):
                pass  # pragma: no cover
    with pytest.raises(ValueError, match="replicas="):
        async with repred.open_peer(
            transport=MemoryNetwork(),
            replicas={"data": model()},
            documents=lambda name: model(),
            held=["data"],
        ):
            pass  # pragma: no cover


async def test_at_most_max_documents_are_held(autojump_clock):
    async with repred.open_peer(
        transport=MemoryNetwork(),
        wall=wall,
        documents=lambda name: model(wall=wall),
        max_documents=2,
    ) as peer:
        await peer.document("a")
        await peer.document("b")
        with pytest.raises(repred.RepredError, match="max_documents"):
            await peer.document("c")
        assert peer.statistics().documents.held == 2


async def test_a_restarted_node_reopens_what_it_held_and_discards_what_it_dropped(
    autojump_clock, tmp_path
):
    def factory(address):
        folder = tmp_path / address.replace(":", "_")
        folder.mkdir(exist_ok=True)
        return lambda name: model(
            wall=wall, store=repred.SqliteStore(str(folder / f"{name}.db"))
        )

    def stored(address):
        folder = tmp_path / address.replace(":", "_")
        return sorted(p.stem for p in folder.glob("*.db"))

    def discard(address):
        folder = tmp_path / address.replace(":", "_")
        return lambda name: (folder / f"{name}.db").unlink()

    network = MemoryNetwork()

    async def run(port, seeds, held, task_status):
        address = f"127.0.0.1:{port}"
        with trio.CancelScope() as scope:
            async with repred.open_peer(
                port=port,
                transport=network,
                wall=wall,
                seeds=seeds,
                documents=factory(address),
                held=held,
                discard=discard(address),
                rng=random.Random(port),
                **PACE,
            ) as peer:
                task_status.started((peer, scope))
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        a, scope = await nursery.start(run, 101, [], [])
        doc = await a.document("notes")
        doc.set("k", "kept on disk")
        scope.cancel()
        await trio.sleep(1)  # (restarted a second later)
        assert stored(a.address) == ["notes"]
        a, _ = await nursery.start(run, 101, [], stored("127.0.0.1:101"))
        assert a.holding() == ["notes"]
        assert a._placed.replicas["notes"].get("k") == "kept on disk"
        # Two more: with three copies every node owns everything, and the
        # writer's documents reach the others' stores.
        peers = [a]
        for port in (102, 103):
            peers.append((await nursery.start(run, port, [a.address], []))[0])
        names = [f"n{i}" for i in range(8)]
        everything = [*names, "notes"]

        def placed():
            return all(
                {p.address for p in peers if n in p.holding()} == set(a.owners(n))
                for n in everything
            ) and all(p.statistics().documents.pending == 0 for p in peers)

        def settled():
            everyone = {p.address for p in peers}
            return all(
                {o for i in range(40) for o in p.owners(f"probe{i}")} == everyone
                for p in peers
            )

        with trio.fail_after(120):
            await until(settled)
        for name in names:
            await write(a, name, name)
        with trio.fail_after(120):
            await until(placed)
        assert stored("127.0.0.1:102") == sorted(everything)
        # A fourth joins: each document it now owns leaves one of the three;
        # a node that only held it as an owner drops it, and its store goes.
        peers.append((await nursery.start(run, 104, [a.address], []))[0])
        with trio.fail_after(120):
            await until(lambda: settled() and placed())
        for p in peers[1:]:
            owned = sorted(n for n in everything if p.address in p.owners(n))
            assert stored(p.address) == owned
        assert stored(a.address) == sorted(everything)  # it asked for them all
        assert sum(p.statistics().documents.dropped for p in peers) > 0
        nursery.cancel_scope.cancel()


# -- what a peer cannot do ------------------------------------------------------------


class Stub:
    """The side of a document link a test drives by hand."""

    def __init__(self):
        self.replicas = {}

    def accept(self, peer, name, type_name):
        return "not-owner"

    def released(self, name, replica):
        pass

    def clock(self, name):
        return None


async def hostile_link(network, address, lines, *, read=True):
    """Dial a placed peer's document port as ``127.0.0.1:666`` would, send
    ``lines`` after a hello; what came back, until it closed or went quiet."""
    stream = await network.connect(address, source="127.0.0.1:666")
    await stream.send_all(
        b'{"repred-docs":1,"node":"127.0.0.1:666","copies":3}\n' + lines
    )
    got = b""
    with trio.move_on_after(30):
        while read:
            data = await stream.receive_some(65536)
            if not data:
                break
            got += data
    await stream.aclose()
    return got


async def test_a_peer_naming_thousands_of_documents_makes_a_node_hold_few(
    autojump_clock,
):
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 3)  # every node owns every document
        target = next(iter(cluster.peers.values()))
        lines = b"".join(
            b'%d\t\t{"open":"spam%d","type":"model"}\n' % (i + 1, i)
            for i in range(5000)
        )
        stream = await cluster.network.connect(target.address, source="127.0.0.1:666")
        await stream.send_all(
            b'{"repred-docs":1,"node":"127.0.0.1:666","copies":3}\n' + lines
        )
        with trio.fail_after(60):
            await until(lambda: target.statistics().documents.refused == 5000 - 256)
        assert target.statistics().documents.held == 256
        await stream.aclose()
        # What it opened stayed empty: nothing of it is kept.
        with trio.fail_after(60):
            await until(lambda: target.statistics().documents.held == 0)
        assert target.statistics().documents.released == 256
        assert not cluster.all_events("received")
        # The node goes on: its documents still replicate.
        await write(target, "real", 1)
        nursery.cancel_scope.cancel()


async def test_a_node_takes_only_documents_it_owns_and_only_so_many(autojump_clock):
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, max_documents=3)
        for _ in range(5):
            await cluster.start()
        with trio.fail_after(120):
            await until(cluster.settled)
        target = next(iter(cluster.peers.values()))
        theirs = [
            f"d{i}" for i in range(200) if target.address not in target.owners(f"d{i}")
        ]
        mine = [f"d{i}" for i in range(200) if target.address in target.owners(f"d{i}")]
        lines = b"".join(
            b'%d\t\t{"open":"%s","type":"model"}\n' % (i + 1, name.encode())
            for i, name in enumerate([*theirs[:5], *mine[:10]])
        )
        got = await hostile_link(cluster.network, target.address, lines)
        assert got.count(b'"reason":"not-owner"') == 5
        assert got.count(b'{"accept":') == 3
        assert got.count(b'"reason":"full"') == 7
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "line",
    [
        b'1\t\t{"open":"../../etc/passwd","type":"model"}\n',
        b'1\t\t{"open":"","type":"model"}\n',
        b'1\t\t{"open":"%s","type":"model"}\n' % (b"x" * 200),
        b'1\tnot-open\t{"id":"x","clock":{}}\n',
    ],
)
async def test_bad_names_end_only_the_link_that_sent_them(autojump_clock, line, caplog):
    caplog.set_level(logging.WARNING, logger="repred.peer")
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 3)
        target = next(iter(cluster.peers.values()))
        got = await hostile_link(cluster.network, target.address, line)
        await trio.testing.wait_all_tasks_blocked()
        assert got.startswith(b'{"repred-docs":1')  # its hello, then it closed
        assert b"accept" not in got
        assert "refused what a peer sent" in caplog.text
        assert target.statistics().documents.held == 0
        await write(target, "still-fine", 1)
        nursery.cancel_scope.cancel()


class SilentOwner:
    """A member that takes every document opened at it and never says
    how far it holds any (no digest, no clock line): a peer that never
    acknowledges. It keeps its links alive with keep-alives."""

    def __init__(self, network):
        self.network = network
        self.opened = []

    async def listen(self, host, port, handler, nursery):
        async def serve(stream):
            head = await stream.receive_some(len(DOCS_PREFIX))
            if not head.startswith(DOCS_PREFIX):
                from repred._http import Replay

                return await handler(Replay(stream, head))
            await self._silent(stream)

        self.address = await self.network.listen(host, port, serve, nursery)
        return self.address

    async def connect(self, address, *, source):
        return await self.network.connect(address, source=source)

    async def _silent(self, stream):
        hello = b'{"repred-docs":1,"node":"%s","copies":3}\n' % self.address.encode()
        await stream.send_all(hello)
        seq = 0
        buffer = b""
        async with trio.open_nursery() as nursery:

            async def keepalives():
                nonlocal seq
                while True:
                    await trio.sleep(0.5)
                    seq += 1
                    await stream.send_all(b'%d\t\t{"keepalive":"KEEPALIVE"}\n' % seq)

            nursery.start_soon(keepalives)
            while data := await stream.receive_some(65536):
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if b'{"open":' in line:
                        name = line.split(b'"open":"')[1].split(b'"')[0]
                        self.opened.append(name.decode())
                        seq += 1
                        await stream.send_all(b'%d\t\t{"accept":"%s"}\n' % (seq, name))
            nursery.cancel_scope.cancel()


async def test_an_owner_that_never_acknowledges_is_not_counted_and_is_reported(
    autojump_clock,
):
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        for _ in range(3):
            await cluster.start()
        silent = SilentOwner(cluster.network)
        async with repred.open_peer(
            transport=silent,
            wall=wall,
            seeds=[next(iter(cluster.peers))],
            **{k: v for k, v in PACE.items() if k != "handoff_timeout"},
        ):
            everyone = {*cluster.peers, silent.address}
            with trio.fail_after(120):
                await until(
                    lambda: all(
                        {o for i in range(30) for o in p.owners(f"probe{i}")}
                        == everyone
                        for p in cluster.peers.values()
                    )
                )
            first = next(iter(cluster.peers.values()))
            name = next(
                f"doc{i}"
                for i in range(1000)
                if silent.address in first.owners(f"doc{i}")
                and first.address in first.owners(f"doc{i}")
            )
            doc = await first.document(name)
            doc.set("k", 1)
            with trio.fail_after(60):
                await first.wait_replicated(name, copies=2)  # the other one
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(60):
                    await first.wait_replicated(name, copies=3)
            assert name in silent.opened
            failed = [
                e
                for e in cluster.all_events("handoff-failed")
                if e["to"] == silent.address and e["document"] == name
            ]
            assert failed
            assert {e["reason"] for e in failed} <= {
                "no progress",
                "too slow",
            }
            assert first.statistics().documents.pending >= 1
        nursery.cancel_scope.cancel()


async def test_a_copy_taken_before_the_members_settled_is_not_left_behind(
    autojump_clock,
):
    # A node takes a copy it owns among the members it sees now, before it
    # settled on them (its view lags a heartbeat or two); if it turns out
    # not to own it after all, it checks with the owners and drops it.
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 4)
        target = next(iter(cluster.peers.values()))
        name = next(
            f"d{i}" for i in range(200) if target.address not in target.owners(f"d{i}")
        )
        owner = cluster.peers[target.owners(name)[0]]
        (await owner.document(name)).set("k", 1)
        # As if target saw itself an owner: a node opens the copy there.
        target._placed._may_own = lambda name: True
        channel = await owner._placed._link(target.address)
        channel.open(name, owner._placed.replicas[name])
        with trio.fail_after(30):
            await until(lambda: name in target._placed.replicas)
        channel.close(name)
        with trio.fail_after(60):
            await until(lambda: name not in target._placed.replicas)
        assert target.statistics().documents.dropped == 1
        nursery.cancel_scope.cancel()


async def test_members_that_never_settle_are_settled_on_anyway(autojump_clock):
    # A member that comes and goes on every heartbeat: the view is never the
    # same twice in a row, yet placement moves on within five heartbeats.
    from repred import LinkOptions, PeerOptions, PlacementOptions
    from repred._placed import Placed

    class Flapping:
        address = "127.0.0.1:1"
        seen = 0

        def members(self):
            self.seen += 1
            return ["127.0.0.1:1", "127.0.0.1:2"] + (
                ["127.0.0.1:3"] if self.seen % 2 else []
            )

        def node_id(self, address):
            return address

    async def nowhere(node):
        raise OSError("no network here")

    placed = Placed(
        factory=lambda name: model(wall=wall),
        options=PlacementOptions(),
        peer_options=PeerOptions(),
        link_options=LinkOptions(),
        connect=nowhere,
        emit=lambda event: None,
        rng=random.Random(0),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(placed.run, Flapping())
        assert placed.ledger.members == {"127.0.0.1:1"}
        await trio.sleep(5.5 * PeerOptions().heartbeat_interval)
        assert len(placed.ledger.members) > 1
        nursery.cancel_scope.cancel()


async def test_a_document_link_is_told_from_a_gossip_link(autojump_clock):
    # A placed peer reads the first bytes of every inbound link; a gossip
    # link that sends its hello in pieces still reaches the gossip side.
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 2)
        target = next(iter(cluster.peers.values()))
        stream = await cluster.network.connect(target.address, source="127.0.0.1:667")
        hello = b'{"repred-peer":%d,"node":"127.0.0.1:667","replicas":{}}\n' % (
            PEER_PROTOCOL
        )
        for byte in hello:
            await stream.send_all(bytes([byte]))
        got = await stream.receive_some(65536)
        assert got.startswith(b'{"repred-peer":%d' % PEER_PROTOCOL)
        await stream.aclose()
        nursery.cancel_scope.cancel()


# -- the web port --------------------------------------------------------------------

FAST = {
    "heartbeat_interval": 0.05,
    "down_after": 0.5,
    "gossip_interval": 0.2,
    "seed_interval": 0.2,
    "max_backoff": 0.5,
    "connect_timeout": 2.0,
}


async def test_the_web_port_serves_any_document_through_its_owner():
    # Over loopback TCP, one copy of each document: a page linked to the node
    # that does not own "page-notes" writes through its live copy to the
    # owner. A name no document can have is not found.
    def documents(name):
        return model()

    async with (
        repred.open_peer(documents=documents, copies=1, web_port=0, **FAST) as a,
        repred.open_peer(documents=documents, copies=1, seeds=[a.address], **FAST) as b,
    ):
        name = next(
            f"page-notes{i}"
            for i in range(100)
            if repred.owners(f"page-notes{i}", [a.address, b.address], 1) == [b.address]
        )
        # Owners follow the members a node settled on, which no replica
        # change announces: looked at every heartbeat.
        with trio.fail_after(20):
            await until(lambda: a.owners(name) == [b.address], step=0.05)
        page = model()
        page.set("k", "from the page")
        url = f"ws://{a.web_address}/replicas/{name}"
        with trio.fail_after(20):
            await repred.connect_websocket(page, url, live=False)
            owned = await b.document(name)
            await wait_until(owned, lambda: owned.get("k") == "from the page")
        assert name in b.holding()
        assert name not in a.holding()
        with pytest.raises(repred.PeerClosed, match="404"):
            await repred.connect_websocket(
                model(), f"ws://{a.web_address}/replicas/..%2Fx", live=False
            )


# -- peer processes ------------------------------------------------------------------

PROCESS_ARGS = [
    "--json",
    "--heartbeat",
    "0.1",
    "--down-after",
    "1.0",
    "--gossip",
    "0.4",
    "--seed-interval",
    "0.3",
    "--max-backoff",
    "1.0",
    "--copies",
    "3",
]


async def _process(nursery, port, data, *extra):
    import subprocess
    import sys

    from .helpers import PeerProcess

    cmd = [sys.executable, "-m", "repred.peer", str(port), *extra]
    cmd += [*PROCESS_ARGS, "--data", str(data)]
    process = await nursery.start(
        functools.partial(
            trio.run_process,
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
        )
    )
    node = PeerProcess(process)
    listening = await node.until(lambda e: e["event"] == "listening")
    node.address = listening["address"]
    node.port = int(node.address.rsplit(":", 1)[1])
    return node


def _value_of(name, value):
    """An event saying the document ``name`` holds ``value`` under "k"."""
    return lambda e: (
        e.get("document") == name
        and e["event"] in ("update", "value")
        and e.get("key") == "k"
        and e.get("value") == value
    )


async def _read(node, name):
    """Read "k" of ``name`` through ``node``: what it holds once ``use``
    returned, or the update that brings it if that was before the sync."""
    node.events.clear()
    await node.send(f"use {name}")
    await node.send("get k")
    await node.until(_value_of(name, f"{name}-value"))


@pytest.mark.slow
async def test_five_processes_lose_no_confirmed_write_to_a_kill(tmp_path):
    # Five peer commands, each with its own --data. Writes through random
    # nodes, each confirmed by two owners; then one node is killed (SIGKILL:
    # no clean close). Every write is read back through the survivors, and
    # the killed node, restarted from its directory, reads them too.
    rng = random.Random(5)
    names = [f"doc{i}" for i in range(12)]
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            nodes = [await _process(nursery, 0, tmp_path / "n0")]
            for i in range(1, 5):
                seed = str(nodes[0].port)
                nodes.append(await _process(nursery, 0, tmp_path / f"n{i}", seed))
            everyone = {node.address for node in nodes}
            for node in nodes:
                for other in everyone - {node.address}:
                    await node.until(
                        lambda e, o=other: e["event"] == "up" and e["peer"] == o
                    )
            for name in names:
                writer = rng.choice(nodes)
                await writer.send(f"use {name}")
                await writer.send(f"set k {name}-value")
                await writer.send("confirm 2")
                await writer.until(
                    lambda e, n=name: e["event"] == "confirmed" and e["document"] == n
                )
            victim = nodes[2]
            victim.process.kill()  # SIGKILL
            assert await victim.process.wait() == -9
            survivors = [n for n in nodes if n is not victim]
            for i, name in enumerate(names):
                await _read(survivors[i % 4], name)
            # Restarted from its stores, on its port: it reads every write too.
            again = await _process(
                nursery, victim.port, tmp_path / "n2", str(nodes[0].port)
            )
            for name in names:
                await _read(again, name)
            for node in [*survivors, again]:
                await node.process.stdin.aclose()
            for node in [*survivors, again]:
                assert await node.process.wait() == 0


async def test_a_partition_that_splits_owners_heals_and_drops_the_extra_copies(
    autojump_clock,
):
    # Four nodes, two copies, split two and two with one owner of each
    # document on each side: each side makes a second copy on its own side
    # and confirms writes there; once healed, every owner holds both sides'
    # writes and the copies made meanwhile are dropped.
    async with trio.open_nursery() as nursery:
        cluster = await started(nursery, 4, copies=2)
        everyone = sorted(cluster.peers)
        left, right = everyone[:2], everyone[2:]
        first = cluster.peers[everyone[0]]
        names = [
            n
            for n in (f"doc{i}" for i in range(200))
            if len(set(first.owners(n)) & set(left)) == 1
        ][:6]
        owners = {name: first.owners(name) for name in names}
        for name in names:
            await write(cluster.peers[owners[name][0]], name, "base")
        cluster.network.partition(left, right)
        with trio.fail_after(120):
            await until(
                lambda: all(
                    set(p.members()) == set(left if a in left else right)
                    for a, p in cluster.peers.items()
                )
            )
        for name in names:
            for side, key in [(left, "left"), (right, "right")]:
                owner = next(a for a in owners[name] if a in side)
                doc = await cluster.peers[owner].document(name)
                doc.set(key, 1)
                with trio.fail_after(60):
                    await cluster.peers[owner].wait_replicated(name, copies=2)
        cluster.network.heal()
        with trio.fail_after(300):
            await until(lambda: cluster.settled() and cluster.placed_exactly(names))
        for name in names:
            assert first.owners(name) == owners[name]
            for address in owners[name]:
                replica = cluster.peers[address]._placed.replicas[name]
                assert (replica.get("left"), replica.get("right")) == (1, 1)
        nursery.cancel_scope.cancel()
