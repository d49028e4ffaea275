"""The membership map: entries that converge in any order, what a node makes
of them (up, suspected, down, refuted), links that open with a fingerprint
when two maps agree, and peers of another version refused by name."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repred
from repred import IncompatiblePeerError, LinkOptions, RemoteProtocolError
from repred._members import ALIVE, MEMBERS, SUSPECT, View, members_replica
from repred._mux import PEER_PROTOCOL, Mux
from repred.protocol import Session
from repred.testing import MemoryNetwork

from .helpers import FakeWall, SessionPair

ADDRESSES = [f"10.0.0.{i}:7000" for i in range(1, 5)]
WRITERS = ["w1", "w2", "w3"]


def _replica(wall, node_id="me", **options):
    return members_replica(wall=wall, node_id=node_id, **options)


# -- the map: what it takes, and that it converges ----------------------------


@pytest.mark.parametrize(
    "change",
    [
        ["not an address", ALIVE, "w1"],
        ["host:0", ALIVE, "w1"],
        ["0.0.0.0:80", ALIVE, "w1"],
        ["10.0.0.1:7000", "dead", "w1"],
        ["10.0.0.1:7000", ALIVE, ""],
        ["10.0.0.1:7000", ALIVE],
        ["10.0.0.1:7000"],
        "10.0.0.1:7000",
    ],
)
def test_a_change_of_the_wrong_shape_is_refused_before_anything_changes(change):
    members = _replica(FakeWall())
    with pytest.raises(ValueError):
        members.apply([(change, FakeWall().now, "w1")])
    assert members.state == {}
    assert members.clock == {}


def test_only_a_node_itself_says_it_is_alive():
    wall = FakeWall()
    members = _replica(wall)
    with pytest.raises(ValueError, match="not by its node"):
        members.apply([(["10.0.0.1:7000", ALIVE, "w2"], wall.now, "w1")])
    # Anyone may suspect it, naming the id it knew it by.
    members.apply([(["10.0.0.1:7000", SUSPECT, "w2"], wall.now, "w1")])
    assert members.entry("10.0.0.1:7000") == (SUSPECT, wall.now, "w2", "w1")


def test_a_forged_alive_is_refused_on_the_link_and_the_link_alone():
    wall = FakeWall()
    members = _replica(wall)
    s = Session(members)
    s.data_to_send()
    digest = orjson.dumps({"id": "evil", "clock": {}}) + b"\n"
    entry = orjson.dumps([["10.0.0.1:7000", ALIVE, "w1"], wall.now, "evil"]) + b"\n"
    with pytest.raises(RemoteProtocolError):
        s.receive_data(digest + entry)
    assert members.state == {}


@st.composite
def _histories(draw):
    """Per writer, entries in stamp order (as links deliver them), each
    valid: a writer says "alive" of itself only."""
    out = []
    for writer in WRITERS:
        stamps = draw(st.lists(st.integers(0, 40), unique=True, max_size=6))
        for ts in sorted(stamps):
            address = draw(st.sampled_from(ADDRESSES))
            if draw(st.booleans()):
                change = [address, ALIVE, writer]
            else:
                change = [address, SUSPECT, draw(st.sampled_from(WRITERS))]
            out.append((writer, change, 1_700_000_000_000 + ts))
    return out


def _interleaved(entries, rnd, duplicates):
    """The entries in a random order that keeps each writer's own order,
    some of them twice (a relay that sends what another already did)."""
    queues = {w: [e for e in entries if e[0] == w] for w in WRITERS}
    out = []
    while any(queues.values()):
        writer = rnd.choice([w for w, q in queues.items() if q])
        entry = queues[writer].pop(0)
        out.append(entry)
        if duplicates and rnd.random() < 0.3:
            out.append(entry)
    return out


@settings(max_examples=200, deadline=None)
@given(_histories(), st.randoms(use_true_random=False))
def test_the_map_converges_in_any_order_with_duplicates(entries, rnd):
    wall = FakeWall(1_700_000_000_100)
    states, roots = [], []
    for duplicates in (False, True, True):
        members = _replica(wall, node_id="reader")
        for writer, change, ts in _interleaved(entries, rnd, duplicates):
            members.apply([(change, ts, writer)])
        states.append(members.state)
        roots.append(members.fingerprint()[0])
    assert states[0] == states[1] == states[2]
    assert roots[0] == roots[1] == roots[2]
    # The newest entry per address, whoever wrote it.
    newest = {}
    for writer, change, ts in entries:
        if change[0] not in newest or (ts, writer) > newest[change[0]][:2]:
            newest[change[0]] = (ts, writer, change)
    assert {a: (c[1], ts, c[2], w) for a, (ts, w, c) in newest.items()} == states[0]


@settings(max_examples=100, deadline=None)
@given(_histories(), st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2))))
def test_maps_synced_in_random_pairs_end_alike(entries, syncs):
    """Each writer's entries land on one of three maps; maps synced in any
    pairs, then all of them, hold one state and one fingerprint."""
    wall = FakeWall(1_700_000_000_100)
    maps = [_replica(wall, node_id=f"m{i}") for i in range(3)]
    for writer, change, ts in entries:
        maps[WRITERS.index(writer)].apply([(change, ts, writer)])
    for a, b in [*syncs, (0, 1), (1, 2), (0, 1)]:
        if a != b:
            pair = SessionPair(maps[a], maps[b])
            pair.pump()
            pair.close()
    assert maps[0].state == maps[1].state == maps[2].state
    assert len({m.fingerprint()[0] for m in maps}) == 1


def test_the_map_is_bounded_but_takes_its_own_entries():
    wall = FakeWall()
    members = _replica(wall, max_members=100)
    entries = [
        ([f"10.0.{i // 250}.{i % 250}:1", ALIVE, f"s{i}"], wall.now - 1000 + i, f"s{i}")
        for i in range(150)
    ]
    # A full map passes over new addresses instead of refusing the link
    # that brings them: refusing cut honest nodes apart when a flood of
    # junk filled each map with different addresses.
    members.apply(entries)
    assert len(members.state) == 100
    members.trim()  # what was passed over is kept nowhere
    assert len(list(members.history())) == 100
    members.note("127.0.0.1:5", ALIVE)
    assert len(members.state) == 101


def test_the_fingerprint_is_cached_and_follows_every_change():
    wall = FakeWall()
    members = _replica(wall)
    members.note(ADDRESSES[0], ALIVE)
    root, clock = members.fingerprint()
    assert members.fingerprint()[1] is clock  # a lookup while nothing changes
    assert clock == {"me": wall.now}
    members.note(ADDRESSES[0], SUSPECT, "me")
    assert members.fingerprint()[0] != root


# -- what a node makes of the map ---------------------------------------------


def _view(wall, address=ADDRESSES[0]):
    view = View(_replica(wall))
    view.join(address)
    return view


def test_a_suspected_member_is_down_after_down_after_unless_it_refutes():
    wall = FakeWall()
    view = _view(wall)
    other = ADDRESSES[1]
    view.members.apply([([other, ALIVE, "w1"], wall.now, "w1")])
    assert view.up(5.0) == [ADDRESSES[0], other]
    assert view.suspect(other)
    assert not view.suspect(other)  # a suspicion stands: no second entry
    wall.now += 4_999
    assert other in view.up(5.0)  # nothing changed, yet time moved on
    wall.now += 1
    assert other not in view.up(5.0)
    assert view.suspected() == [other]
    # It refutes: up again, and a new suspicion counts from its arrival.
    wall.now += 1_000
    view.members.apply([([other, ALIVE, "w1"], wall.now, "w1")])
    assert other in view.up(5.0)
    assert view.suspected() == []


def test_a_suspicion_counts_from_its_arrival_and_once():
    """A suspicion stamped long ago (by a slow or hostile clock) does not
    take a node down at once; a second one does not restart the first."""
    wall = FakeWall()
    view = _view(wall)
    other = ADDRESSES[1]
    view.members.apply([([other, ALIVE, "w1"], wall.now - 60_000, "w1")])
    view.members.apply([([other, SUSPECT, "w1"], wall.now - 30_000, "w2")])
    assert other in view.up(5.0)
    wall.now += 3_000
    view.members.apply([([other, SUSPECT, "w1"], wall.now, "w3")])
    wall.now += 2_000
    assert other not in view.up(5.0)


def test_a_node_refutes_what_is_said_of_it_with_a_newer_entry():
    wall = FakeWall()
    view = _view(wall)
    heard = []
    view.on_refute = lambda: heard.append(True)
    own = ADDRESSES[0]
    # A suspicion stamped ahead of this node's clock: the refutation is
    # newer still, so it wins on every node.
    view.members.apply([([own, SUSPECT, "me"], wall.now + 2_000, "w1")])
    assert heard == [True]
    assert view.refute_due
    assert view.refute()
    status, ts, node_id, source = view.members.entry(own)
    assert (status, node_id, source) == (ALIVE, "me", "me")
    assert ts > wall.now + 2_000
    assert not view.refute()  # once is enough
    # Another node claiming this address is answered the same way.
    view.members.apply([([own, ALIVE, "w1"], ts + 1, "w1")])
    assert view.refute()
    assert view.members.entry(own)[2] == "me"


def test_this_node_is_up_and_kept_whatever_is_said_of_it():
    wall = FakeWall()
    view = _view(wall)
    view.members.apply([([ADDRESSES[0], SUSPECT, "me"], wall.now, "w1")])
    wall.now += 3_600_000  # (not refuted: say its writes failed)
    assert view.up(5.0) == [ADDRESSES[0]]
    assert view.reap(5.0) == []


def test_suspicions_are_forgotten_by_their_stamp_and_alive_members_never():
    wall = FakeWall()
    view = _view(wall)
    view.members.apply([([ADDRESSES[1], ALIVE, "w1"], wall.now, "w1")])
    view.members.apply([([ADDRESSES[2], SUSPECT, "w2"], wall.now - 10_000, "w4")])
    view.members.apply([([ADDRESSES[3], SUSPECT, "w3"], wall.now, "w4")])
    assert view.reap(5.0) == [ADDRESSES[2]]
    assert set(view.members.state) == {ADDRESSES[0], ADDRESSES[1], ADDRESSES[3]}
    assert [e.change[0] for e in view.members.history()].count(ADDRESSES[2]) == 0
    wall.now += 3_600_000
    assert view.reap(5.0) == [ADDRESSES[3]]
    assert view.up(5.0) == ADDRESSES[:2]


# -- links: a fingerprint when the maps agree ---------------------------------


def _pump(a: Mux, b: Mux) -> int:
    """Move bytes between two muxes until both are quiet; the bytes moved."""
    moved = 0
    for _ in range(1000):
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return moved
        moved += len(x) + len(y)
        if x:
            b.feed(x)
        if y:
            a.feed(y)
    raise AssertionError("never quiet")


def _maps_of(n, wall, *ids):
    """Maps that each hold the same ``n`` members."""
    entries = [
        ([f"10.1.{i // 250}.{i % 250}:7000", ALIVE, f"n{i}"], wall.now + i, f"n{i}")
        for i in range(n)
    ]
    maps = []
    for node_id in ids:
        m = _replica(wall, node_id=node_id)
        m.apply(entries)
        maps.append(m)
    return maps


def _mux(members, node, **kw):
    return Mux({MEMBERS: members}, node, LinkOptions(), **kw)


@pytest.mark.parametrize("n", [10, 1000])
def test_a_link_between_agreeing_maps_opens_with_a_fingerprint(n):
    wall = FakeWall()
    a, b = _maps_of(n, wall, "a", "b")
    ma, mb = _mux(a, "127.0.0.1:1"), _mux(b, "127.0.0.1:2")
    assert _pump(ma, mb) < 1500  # whatever n is
    assert ma.agreed
    assert mb.agreed
    assert all(s.synced for s in ma.sessions + mb.sessions)
    # Live: what either side writes reaches the other.
    a.note("10.9.9.9:1", ALIVE)
    b.note("10.1.0.3:7000", SUSPECT, "n3")
    _pump(ma, mb)
    assert a.state == b.state
    # Maps that differ open with the whole digest, and then agree.
    c = _replica(wall, node_id="c")
    mc, md = _mux(c, "127.0.0.1:3"), _mux(a, "127.0.0.1:1")
    assert _pump(mc, md) > 30 * n
    assert not mc.agreed
    assert c.state == a.state


def test_what_moved_between_the_fingerprint_and_the_digest_goes_too():
    """A map that changes after its hello and before its digest says so in
    its digest; the other side reads the rest from its own clock, and
    nothing either holds is sent to it again."""
    wall = FakeWall()
    a, b = _maps_of(50, wall, "a", "b")
    ma, mb = _mux(a, "127.0.0.1:1"), _mux(b, "127.0.0.1:2")
    hello_a, hello_b = ma.data_to_send(), mb.data_to_send()
    wall.now += 10
    a.note("10.9.9.9:1", ALIVE)  # after its fingerprint went out
    news = (["10.1.0.7:7000", SUSPECT, "n7"], wall.now, "n3")  # known source
    a.apply([news])
    b.apply([news])
    mb.feed(hello_a)
    ma.feed(hello_b)
    _pump(ma, mb)
    assert b.entry("10.9.9.9:1") == a.entry("10.9.9.9:1")
    assert a.state == b.state
    assert sum(s.statistics().updates_out for s in ma.sessions + mb.sessions) == 1


@pytest.mark.parametrize(
    "digest",
    [b'{"id":"x"}', b'{"id":"x","clock":[]}', b'{"id":"x","clock":{"a":1,"a":2}}'],
)
def test_a_shrunk_digest_without_a_clock_is_refused(digest):
    wall = FakeWall()
    a, b = _maps_of(3, wall, "a", "b")
    ma = _mux(a, "127.0.0.1:1")
    mb = _mux(b, "127.0.0.1:2")
    ma.feed(mb.data_to_send().split(b"\n")[0] + b"\n")
    assert ma.agreed
    with pytest.raises(RemoteProtocolError) as caught:
        ma.feed(b"1\t" + MEMBERS.encode() + b"\t" + digest + b"\n")
    assert caught.value.reason in ("bad-digest", "duplicate-key")


@pytest.mark.parametrize(
    ("field", "value"),
    [("stay", -1), ("stay", 10**9), ("stay", "3"), ("stay", True), ("members", 5)],
)
def test_a_hello_with_a_bad_stay_or_root_is_refused(field, value):
    mux = _mux(_replica(FakeWall()), "127.0.0.1:1")
    hello = {"repred-peer": PEER_PROTOCOL, "node": "127.0.0.1:2", "replicas": {}}
    hello[field] = value
    with pytest.raises(RemoteProtocolError, match="bad node, replicas"):
        mux.feed(orjson.dumps(hello) + b"\n")


def test_the_hello_says_the_version_the_root_and_the_stay():
    members = _replica(FakeWall())
    members.note(ADDRESSES[0], ALIVE)
    hello = orjson.loads(_mux(members, "127.0.0.1:1", stay=2.5).data_to_send())
    assert hello["repred-peer"] == PEER_PROTOCOL == 3
    assert hello["replicas"] == {MEMBERS: "membership"}
    assert hello["members"] == members.fingerprint()[0].hex()
    assert hello["stay"] == 2.5
    assert "stay" not in orjson.loads(_mux(members, "127.0.0.1:1").data_to_send())


# -- peers of another version --------------------------------------------------

#: What a peer of the heartbeat design (repred-peer 2) says first.
OLD_HELLO = (
    b'{"repred-peer":2,"node":"127.0.0.1:9","replicas":'
    b'{"_members":"members","data":"model"}}\n'
)


def test_a_peer_of_the_heartbeat_design_is_refused_by_name():
    mux = _mux(_replica(FakeWall()), "127.0.0.1:1")
    with pytest.raises(IncompatiblePeerError, match="repred-peer 2") as caught:
        mux.feed(OLD_HELLO)
    assert caught.value.reason == "incompatible-peer"
    assert not mux.handshake_done


def test_the_heartbeat_design_refuses_this_hello():
    """The rule a repred-peer 2 node applies to a hello (its _mux, verbatim
    in effect): anything but version 2 is "not a repred peer"."""
    hello = orjson.loads(_mux(_replica(FakeWall()), "127.0.0.1:1").data_to_send())
    assert hello.get("repred-peer") != 2


async def _old_peer(network, nursery, seen):
    """A listener that answers as a repred-peer 2 node would, and records
    what it was sent."""

    async def handler(stream):
        await stream.send_all(OLD_HELLO)
        data = await stream.receive_some(65536)
        seen.append(data)
        await stream.aclose()

    return await network.listen("127.0.0.1", 0, handler, nursery)


async def test_old_and_new_peers_refuse_each_other_and_go_on(autojump_clock, caplog):
    import trio

    network = MemoryNetwork()
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        old = await _old_peer(network, nursery, seen)
        async with repred.open_peer(
            transport=network, seeds=[old], heartbeat_interval=0.5, seed_interval=1.0
        ) as peer:
            await trio.sleep(3)
            stats = peer.statistics()
            assert stats.dials > 0
            assert stats.dial_failures == stats.dials  # each dial refused
            assert old not in peer.members()
            assert old not in peer.membership.state
            # An old node dialling in is refused too, with the same error.
            stream = await network.connect(peer.address, source="127.0.0.1:9")
            await stream.send_all(OLD_HELLO)
            hello = await stream.receive_some(65536)
            assert orjson.loads(hello.split(b"\n")[0])["repred-peer"] == 3
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert seen
    assert all(b'"repred-peer":3' in s for s in seen)
    assert "incompatible-peer" in caplog.text
