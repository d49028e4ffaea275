"""The membership map: heartbeats per member address, bounded, reaped, and
on the wire exactly as every peer has always sent it."""

from __future__ import annotations

import functools

import pytest

import repred
from repred import LinkOptions, Replica
from repred._address import parse_member
from repred._members import MEMBERS, members_replica
from repred._mux import Mux
from repred.testing import MemoryNetwork
from repred.types import Heartbeats

from .helpers import FakeWall, SessionPair


def _old_members(wall, own: str) -> Replica:
    """A membership map as peers made it before it was built on
    heartbeats(): its own reducer and key, the same wire format."""

    def key(change):
        if not isinstance(change, list | tuple) or len(change) != 1:
            raise ValueError("a membership change is [address]")
        if type(change[0]) is not str:
            raise ValueError("a member is HOST:PORT")
        parse_member(change[0])
        return change[0]

    def heard(state, change, stamp, *, cap, own):
        address = change[0]
        if address not in state and len(state) >= cap and stamp[1] != own:
            raise ValueError("full")
        state[address] = stamp[0]
        return change

    return Replica(
        functools.partial(heard, cap=16_384, own=own),
        {},
        id=own,
        last_write_wins=key,
        stamped=True,
        type_name="members",
        wall=wall,
        checks_first=True,
    )


def test_an_old_peer_and_a_new_one_replicate_membership():
    wall = FakeWall()
    old = _old_members(wall, "old")
    new = members_replica(wall=wall, node_id="new")
    old.update(["127.0.0.1:7001"])
    wall.now += 5
    new.beat("127.0.0.1:7002")
    new.beat("127.0.0.1:7001")  # a newer heartbeat for what the old one said
    pair = SessionPair(old, new)
    pair.pump()
    assert old.state == new.state
    assert set(new.state) == {"127.0.0.1:7001", "127.0.0.1:7002"}
    assert new.newest("127.0.0.1:7001") == old.newest("127.0.0.1:7001")
    assert new.newest("127.0.0.1:7001")[1] == "new"
    # Live: what either writes next reaches the other, and junk from the
    # old side is refused by the new one's rules as by its own.
    wall.now += 5
    old.update(["127.0.0.1:7003"])
    new.beat("127.0.0.1:7004")
    pair.pump()
    assert old.state == new.state
    assert len(new.state) == 4
    with pytest.raises(ValueError):
        old.update(["0.0.0.0:80"])
    assert old.type_name == new.type_name == "members"


def test_a_peer_link_pairs_the_maps_by_their_type_name():
    """The hello names the map ``_members`` of type ``"members"``: what an
    old peer sent, and what a new one still sends and takes."""
    wall = FakeWall()
    mux = Mux({MEMBERS: members_replica(wall=wall)}, "127.0.0.1:1", LinkOptions())
    hello = mux.data_to_send().split(b"\n")[0]
    assert b'"replicas":{"_members":"members"}' in hello
    old_hello = (
        b'{"repred-peer":2,"node":"127.0.0.1:2","replicas":{"_members":"members"}}\n'
    )
    mux.feed(old_hello)
    assert len(mux.sessions) == 1


def test_the_map_is_a_heartbeats_type():
    members = members_replica(wall=FakeWall(), node_id="n")
    assert isinstance(members, Heartbeats)
    members.beat("127.0.0.1:9")
    assert members.alive(within=1) == ["127.0.0.1:9"]


def test_reaping_forgets_nodes_not_heard_from_in_seconds():
    wall = FakeWall()
    members = members_replica(wall=wall, node_id="n")
    members.beat("127.0.0.1:1")
    wall.now += 10_000
    members.beat("127.0.0.1:2")
    assert members.reap(older_than=5.0) == ["127.0.0.1:1"]
    assert list(members.state) == ["127.0.0.1:2"]
    assert [list(e.change) for e in members.history()] == [["127.0.0.1:2"]]


async def test_a_peer_exposes_its_map_as_heartbeats():
    network = MemoryNetwork()
    async with repred.open_peer(transport=network) as peer:
        assert isinstance(peer.membership, Heartbeats)
        assert peer.membership.alive(within=60) == [peer.address]
