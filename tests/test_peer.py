"""The peer network API over real loopback TCP, in one process."""

import gc
import logging
import random
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

import repred
from repred import Connection, LinkOptions
from repred._address import parse_address
from repred._mux import Mux
from repred.protocol import Session
from repred.types import model

from .helpers import gset, read_until_closed, wait_until

FAST = {
    "heartbeat_interval": 0.05,
    "down_after": 0.5,
    "gossip_interval": 0.2,
    "seed_interval": 0.2,
    "max_backoff": 0.5,
    "connect_timeout": 2.0,
}


async def _wait_members(peer, n):
    while len(peer.members()) < n:
        await wait_until(peer.membership, lambda: len(peer.members()) >= n)


async def test_a_chain_of_peers_shares_members_and_data():
    data = [model(id=f"d{i}") for i in range(4)]
    async with AsyncExitStack() as stack:
        peers = []
        for i, d in enumerate(data):
            seeds = [peers[-1].address] if peers else []
            peers.append(
                await stack.enter_async_context(
                    repred.open_peer(
                        replicas={"data": d}, seeds=seeds, rng=random.Random(i), **FAST
                    )
                )
            )
        data[0].set("first", 1)
        data[-1].set("last", 2)
        with trio.fail_after(20):
            for d in data:
                await wait_until(d, lambda d=d: d.to_dict() == {"first": 1, "last": 2})
            for p in peers:
                await _wait_members(p, 4)
        stats = peers[0].statistics()
        assert stats.address == peers[0].address
        assert set(stats.members) == {p.address for p in peers}


async def test_names_the_other_side_lacks_are_skipped():
    a_data, a_extra, b_data = gset("A"), gset("AX"), gset("B")
    a_data.update(["a"])
    a_extra.update(["only-a"])
    b_data.update(["b"])
    async with (
        repred.open_peer(replicas={"data": a_data, "extra": a_extra}, **FAST) as pa,
        repred.open_peer(replicas={"data": b_data}, seeds=[pa.address], **FAST),
    ):
        with trio.fail_after(20):
            await wait_until(b_data, lambda: b_data.state == {"a", "b"})
            await wait_until(a_data, lambda: a_data.state == {"a", "b"})
    assert a_extra.state == {"only-a"}


async def test_mux_refuses_unknown_names_and_non_peers():
    mux = Mux({"data": gset("A")}, "127.0.0.1:1", LinkOptions())
    mux.feed(b'{"repred-peer":2,"node":"x:1","replicas":{"data":"union"}}\n')
    assert mux.peer_id == "x:1"
    assert len(mux.sessions) == 1
    with pytest.raises(repred.RemoteProtocolError) as info:
        mux.feed(b'1\tother\t{"id":"Z","clock":{}}\n')  # not agreed on
    assert info.value.reason == "unknown-replica"
    mux = Mux({"data": gset("A")}, "127.0.0.1:1", LinkOptions())
    mux.feed(b'{"repred-peer":2,"node":"x:1","replicas":{"data":"union"}}\n')
    with pytest.raises(repred.RemoteProtocolError) as info:
        mux.feed(b"no tab here\n")
    assert info.value.reason == "not-a-peer"
    with pytest.raises(repred.RemoteProtocolError):
        Mux({}, "n:1", LinkOptions()).feed(b'{"id":"A","clock":{}}\n')


async def test_mux_refuses_lines_lost_repeated_or_reordered():
    hello = b'{"repred-peer":2,"node":"x:1","replicas":{"data":"union"}}\n'
    digest = b'{"id":"Z","clock":{}}'
    for lines in [
        [b"1", b"1"],  # repeated
        [b"2"],  # one lost
        [b"1", b"3"],  # one lost in the middle
    ]:
        a = gset("A")
        mux = Mux({"data": a}, "127.0.0.1:1", LinkOptions())
        mux.feed(hello)
        body = b"".join(seq + b"\tdata\t" + digest + b"\n" for seq in lines)
        with pytest.raises(repred.RemoteProtocolError) as info:
            mux.feed(body)
        assert info.value.reason == "out-of-order"


async def test_dead_seeds_and_wrong_protocols_are_retried_quietly(
    caplog, autojump_clock
):
    caplog.set_level(logging.DEBUG, logger="repred.peer")

    async def not_a_peer(stream):
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, not_a_peer, 0)
        bogus = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        with trio.socket.socket() as sock:
            await sock.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{sock.getsockname()[1]}"
        async with repred.open_peer(seeds=[dead, bogus], **FAST) as peer:
            # Thirty seconds of virtual time: many retries, each after a
            # jittered backoff capped at max_backoff.
            await trio.sleep(30)
            failures = peer.statistics().dial_failures
            # Each of the two is retried, and never sooner than half the
            # backoff after a failure: once the backoff is at max_backoff,
            # at most one try per 0.25 s each (plus the few before that).
            floor = FAST["max_backoff"] * 0.5
            assert 2 * 5 <= failures <= 2 * (30 / floor + 5)
            assert peer.statistics().suspects == tuple(sorted([dead, bogus]))
        nursery.cancel_scope.cancel()
    said = [r for r in caplog.records if r.levelno == logging.INFO]
    # Each bad address is reported once (churn: INFO, not WARNING), then
    # retried quietly with backoff.
    assert sorted({r.getMessage().split()[3] for r in said}) == sorted(
        [dead + ":", bogus + ":"]
    )
    assert len(said) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.slow  # 1,000 reconnects over TCP
async def test_reconnects_without_new_data_leave_memory_flat():
    import tracemalloc

    a, b = gset("A"), gset("B")
    a.update(["x"])
    steady = {**FAST, "gossip_interval": 1000.0}
    async with (
        repred.open_peer(replicas={"data": a}, **steady) as pa,
        repred.open_peer(replicas={"data": b}, **steady) as pb,
    ):
        tracemalloc.start()
        try:
            for i in range(1000):
                assert await pb._dial(pa.address, live=False, duration=0)
                if i == 199:
                    await trio.testing.wait_all_tasks_blocked(0.01)
                    early = tracemalloc.get_traced_memory()[0]
            await trio.testing.wait_all_tasks_blocked(0.01)
            late = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        gc.collect()
        alive = [
            o for o in gc.get_objects() if isinstance(o, Session | Connection | Mux)
        ]
        # Only the two long-lived gossip links (a mux, a connection and two
        # sessions at each end) may remain.
        assert len(alive) <= 16, len(alive)
    # 800 more reconnects. A leaked connection or session (a few KB each)
    # would add megabytes; what may remain is trio's deadline heap, which it
    # prunes lazily (tens of bytes per timed send).
    assert late - early < 1_000_000, (early, late)


async def test_hundreds_of_reconnects_leave_tasks_and_links_flat():
    a, b = gset("A"), gset("B")
    steady = {**FAST, "gossip_interval": 1000.0}  # gossip links stay put
    async with (
        repred.open_peer(replicas={"data": a}, **steady) as pa,
        repred.open_peer(replicas={"data": b}, **steady) as pb,
    ):
        baseline = None
        for i in range(300):
            a.update([i])
            ok = await pb._dial(pa.address, live=False, duration=0)
            assert ok
            if i == 100:
                baseline = len(_all_tasks())
        await trio.testing.wait_all_tasks_blocked(0.01)
        # A leak would add a task or more per reconnect (300 of them); the slack
        # is for the two long-lived gossip links, which come up at any time.
        assert len(_all_tasks()) <= (baseline or 0) + 12
        # Only the links up now watch the replicas, not one per reconnect.
        assert a.statistics().watchers <= 4
        assert b.statistics().watchers <= 4
        assert b.state == set(range(300))


def _all_tasks():
    root = trio.lowlevel.current_root_task()
    found, todo = [], [root]
    while todo:
        task = todo.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


def test_addresses_are_checked():
    assert parse_address("h:1") == ("h", 1)
    for bad in ("h", ":1", "h:x", "h:0", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


async def test_reserved_and_bad_names_are_refused():
    with pytest.raises(ValueError):
        async with repred.open_peer(replicas={"_members": gset("A")}):
            pass  # pragma: no cover
    with pytest.raises(ValueError):
        async with repred.open_peer(replicas={"a\tb": gset("A")}):
            pass  # pragma: no cover


async def test_listening_everywhere_needs_an_advertised_host():
    with pytest.raises(ValueError, match="advertise"):
        async with repred.open_peer(host="0.0.0.0"):
            pass  # pragma: no cover
    async with repred.open_peer(host="0.0.0.0", advertise="127.0.0.1", **FAST) as a:
        assert a.address.startswith("127.0.0.1:")
        d = gset("D")
        async with repred.open_peer(
            replicas={"data": d}, seeds=[a.address], **FAST
        ) as b:
            with trio.fail_after(20):
                await wait_until(b.membership, lambda: a.address in b.members())


async def test_hostile_inbound_connections_do_not_disturb_a_peer():
    d = gset("D")
    d.update(["kept"])
    async with repred.open_peer(replicas={"data": d}, **FAST) as peer:
        host, port = parse_address(peer.address)
        for payload in (
            b"GET / HTTP/1.1\r\n\r\n",
            b'{"repred-peer":2,"node":"x:1","replicas":{"data":"union"}}\n1\tdata\t[1,2\n',
            b'{"repred-peer":2,"node":"x:1","replicas":{"data":"union"}}\n'
            + b"x" * 3_000_000,
            # Nothing shared: the link ends at once, with no error.
            b'{"repred-peer":2,"node":"x:1","replicas":{"data":"orset"}}\n',
        ):
            stream = await trio.open_tcp_stream(host, port)
            try:
                await stream.send_all(payload)
            except trio.BrokenResourceError:
                pass
            with trio.fail_after(10):
                await read_until_closed(stream)
            await stream.aclose()
        assert d.state == {"kept"}
        other = gset("O")
        async with repred.open_peer(
            replicas={"data": other}, seeds=[peer.address], **FAST
        ):
            with trio.fail_after(20):
                await wait_until(other, lambda: "kept" in other.state)
