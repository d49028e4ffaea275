"""The trio edge over in-memory streams, with a mock clock."""

from functools import partial

import pytest
import trio
import trio.testing

import repred
from repred import PeerClosed, RemoteProtocolError, SyncTimeout
from repred.types import model

from .helpers import FakeWall, gset


async def test_live_replication_over_memory_streams():
    a, b = model(id="A"), model(id="B")
    a.set("x", 1)
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        ca = await nursery.start(repred.replicate, a, left)
        cb = await nursery.start(repred.replicate, b, right)
        await ca.wait_synced()
        await cb.wait_synced()
        assert b.to_dict() == {"x": 1}
        with repred.subscribe(a) as changes:
            b.set("y", 2)
            change = await changes.receive()
        assert change == repred.Change(["y", 2], b.clock["B"], "B")
        assert a.to_dict() == {"x": 1, "y": 2}
        stats = cb.statistics()
        assert stats.peer_id == "A"
        assert stats.synced
        assert stats.updates_in == 1
        assert stats.updates_out == 1
        assert stats.bytes_in > 0
        assert stats.bytes_out > 0
        nursery.cancel_scope.cancel()


async def test_a_link_cancelled_from_outside_is_closed(autojump_clock):
    # Cancelled by an enclosing scope (not by Connection.close): the link
    # still says it ended, and anyone waiting for that wakes.
    a, b = model(id="A"), model(id="B")
    left, right = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                ca = await nursery.start(repred.replicate, a, left)
                cb = await nursery.start(repred.replicate, b, right)
                await ca.wait_synced()
                await cb.wait_synced()
                outer.start_soon(ca.wait_closed)
                nursery.cancel_scope.cancel()
    assert ca.closed
    assert cb.closed


async def test_live_false_returns_when_both_sides_have_everything():
    a, b = gset("A"), gset("B")
    a.update(["a"])
    b.update(["b"])
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(repred.replicate, a, left, live=False))
        stats = await repred.replicate(b, right, live=False)
    assert a.state == b.state == {"a", "b"}
    assert stats.synced


async def test_one_side_live_other_not(autojump_clock):
    a, b = gset("A"), gset("B")
    a.update(["a"])
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(repred.replicate, a, left)  # live
        await repred.replicate(b, right, live=False)
    assert b.state == {"a"}


async def test_lockstep_streams_expose_no_buffering_assumption():
    a, b = gset("A"), gset("B")
    for i in range(2000):
        a.update([i])
    left, right = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(repred.replicate, a, left, live=False))
        await repred.replicate(b, right, live=False)
    assert b.state == set(range(2000))


async def test_one_replica_many_connections_relays_between_them():
    hub, x, y = gset("H"), gset("X"), gset("Y")
    async with trio.open_nursery() as nursery:
        conns = []
        for leaf in (x, y):
            left, right = trio.testing.memory_stream_pair()
            conns.append(await nursery.start(repred.replicate, hub, left))
            conns.append(await nursery.start(repred.replicate, leaf, right))
        for c in conns:
            await c.wait_synced()
        x.update(["from-x"])
        await trio.testing.wait_all_tasks_blocked()
        assert "from-x" in y.state
        nursery.cancel_scope.cancel()


async def test_a_peer_that_stops_reading_is_timed_out(autojump_clock):
    a = gset("A")
    for i in range(5000):
        a.update([i])
    left, right = trio.testing.lockstep_stream_pair()

    async def stuck_peer():
        # Sends its digest, then never reads again.
        await right.send_all(b'{"id":"B","clock":{}}\n')
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck_peer)
        with pytest.raises(SyncTimeout):
            await repred.replicate(a, left, send_timeout=10)
        nursery.cancel_scope.cancel()
    assert a.statistics().watchers == 0


async def test_a_silent_peer_is_timed_out(autojump_clock):
    left, _right = trio.testing.memory_stream_pair()
    with pytest.raises(SyncTimeout):
        await repred.replicate(gset("A"), left, handshake_timeout=5)


async def test_peer_closing_before_sync_is_peer_closed():
    left, right = trio.testing.memory_stream_pair()
    await right.send_all(b'{"id":"B","clock":{}}\n')
    await right.aclose()
    with pytest.raises(PeerClosed):
        await repred.replicate(gset("A"), left)


async def test_hostile_peer_gets_a_single_typed_error():
    a = gset("A")
    a.update(["mine"])
    left, right = trio.testing.memory_stream_pair()
    await right.send_all(b'{"id":"B","clock":{}}\n[["x"],1,"B"]\n[1,"2",3]\n')
    with pytest.raises(RemoteProtocolError) as info:
        await repred.replicate(a, left)
    assert info.value.reason == "bad-stamp"
    assert a.state == {"mine", "x"}


async def test_closing_a_connection_returns_its_stats():
    a, b = gset("A"), gset("B")
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        conn = await nursery.start(repred.replicate, a, left)
        nursery.start_soon(repred.replicate, b, right)
        await conn.wait_synced()
        conn.close()
    assert a.statistics().watchers == 0
    assert b.statistics().watchers == 0


async def test_subscription_sees_local_and_remote_changes_and_overflows():
    a = gset("A")
    with repred.subscribe(a, max_buffer=2) as changes:
        a.update(["x"])
        a.apply([(["y"], 5, "B")])
        a.apply([(["y"], 6, "C")])  # no effect: not delivered
        assert (await changes.receive()).change == ["x"]
        assert (await changes.receive()).source == "B"
        for i in range(3):
            a.update([i])
        await changes.receive()
        await changes.receive()
        with pytest.raises(repred.SubscriptionOverflow):
            await changes.receive()
    assert a.statistics().listeners == 0
    with pytest.raises(ValueError):
        repred.subscribe(a, max_buffer=0)


async def test_subscription_ends_when_left():
    a = gset("A")
    sub = repred.subscribe(a)
    with sub:
        a.update(["x"])
    assert [c.change async for c in sub] == [["x"]]


async def test_a_subscription_to_one_key_or_row():
    from repred.types import doc, model

    wall = FakeWall()
    m = model(wall=wall)
    with repred.subscribe(m, key="colour") as changes:
        m.set("size", 3)
        m.set("colour", "blue")
        m.apply([(["colour", "red"], wall.now + 5, "B")])
        assert (await changes.receive()).change == ["colour", "blue"]
        assert (await changes.receive()).change == ["colour", "red"]
    d = doc()
    with repred.subscribe(d, key="row1") as changes:
        d.set("row2", {"a": 1})
        d.set("row1", {"a": 2, "b": 3})
        got = [(await changes.receive()).change for _ in range(2)]
        assert got == [["row1", "a", 2], ["row1", "b", 3]]
    with pytest.raises(ValueError, match="no keys"):
        repred.subscribe(gset("A"), key="x")


async def _linked(autojump_clock):
    a, b = model(id="A" * 40), model(id="B")
    left, right = trio.testing.memory_stream_pair()
    return a, b, left, right


async def test_a_lone_write_goes_out_without_waiting_on_a_timer(autojump_clock):
    a, b, left, right = await _linked(autojump_clock)
    async with trio.open_nursery() as nursery:
        ca = await nursery.start(repred.replicate, a, left)
        await nursery.start(repred.replicate, b, right)
        await ca.wait_synced()
        start = trio.current_time()
        a.set("x", 1)
        with repred.subscribe(b) as changes:
            await changes.receive()
        assert trio.current_time() == start  # no virtual time passed
        nursery.cancel_scope.cancel()


async def test_a_producer_that_never_blocks_still_streams_and_is_coalesced(
    autojump_clock,
):
    """A producer that yields after every write but never blocks: the link
    must not wait for it to stop (entries flow while it writes), and must
    not send a message per write either."""
    a, b, left, right = await _linked(autojump_clock)
    async with trio.open_nursery() as nursery:
        ca = await nursery.start(repred.replicate, a, left)
        await nursery.start(repred.replicate, b, right)
        await ca.wait_synced()
        sent_before = ca.statistics().bytes_out
        seen_midway = None
        for i in range(3000):
            a.set(f"k{i}", i)
            await trio.lowlevel.checkpoint()
            if i == 2000:
                seen_midway = len(b.to_dict())
        assert seen_midway is not None
        assert seen_midway >= 1000  # it flowed while the producer wrote
        # The last writes go out when the gathering ends: its timer (virtual
        # here), not the loop going idle, so wait for them, not for idle.
        with repred.subscribe(b) as changes:
            while len(b.to_dict()) < 3000:
                await changes.receive()
        # Coalesced into batches: a batch line names its 40-character source
        # once, where a line per write would name it 3000 times.
        per_entry = (ca.statistics().bytes_out - sent_before) / 3000
        assert per_entry < 45, per_entry
        nursery.cancel_scope.cancel()
