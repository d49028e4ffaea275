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
from repred.testing import MemoryNetwork
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
    mux.feed(b'{"repred-peer":3,"node":"x:1","replicas":{"data":"union"}}\n')
    assert mux.peer_id == "x:1"
    assert len(mux.sessions) == 1
    with pytest.raises(repred.RemoteProtocolError) as info:
        mux.feed(b'1\tother\t{"id":"Z","clock":{}}\n')  # not agreed on
    assert info.value.reason == "unknown-replica"
    mux = Mux({"data": gset("A")}, "127.0.0.1:1", LinkOptions())
    mux.feed(b'{"repred-peer":3,"node":"x:1","replicas":{"data":"union"}}\n')
    with pytest.raises(repred.RemoteProtocolError) as info:
        mux.feed(b"no tab here\n")
    assert info.value.reason == "not-a-peer"
    with pytest.raises(repred.RemoteProtocolError):
        Mux({}, "n:1", LinkOptions()).feed(b'{"id":"A","clock":{}}\n')


async def test_mux_refuses_lines_lost_repeated_or_reordered():
    hello = b'{"repred-peer":3,"node":"x:1","replicas":{"data":"union"}}\n'
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
            b'{"repred-peer":3,"node":"x:1","replicas":{"data":"union"}}\n1\tdata\t[1,2\n',
            b'{"repred-peer":3,"node":"x:1","replicas":{"data":"union"}}\n'
            + b"x" * 3_000_000,
            # Nothing shared: the link ends at once, with no error.
            b'{"repred-peer":3,"node":"x:1","replicas":{"data":"orset"}}\n',
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


# -- liveness: links are probes ------------------------------------------------


def _virtual_wall():
    return lambda: 1_700_000_000_000 + trio.current_time() * 1000


def _hello(node, stay=None, replicas=None):
    hello = {
        "repred-peer": 3,
        "node": node,
        "replicas": {"_members": "membership"} if replicas is None else replicas,
    }
    if stay is not None:
        hello["stay"] = stay
    import orjson

    return orjson.dumps(hello) + b"\n"


async def _fake(network, nursery, behave):
    """A listener that answers dials as ``behave(stream)`` says."""
    return await network.listen("127.0.0.1", 0, behave, nursery)


def _known(peer, address, node_id="them"):
    """``peer``'s map learns that ``address`` is alive, said by its node."""
    now = 1_700_000_000_000 + trio.current_time() * 1000
    peer.membership.apply([([address, "alive", node_id], now, node_id)])


SLOW_GOSSIP = {
    "heartbeat_interval": 1.0,
    "gossip_interval": 5.0,
    "seed_interval": 60.0,
    "fanout": 1,
}


@pytest.mark.parametrize("synced", [False, True])
async def test_a_node_that_ends_a_live_link_early_is_checked_and_kept(
    synced, autojump_clock
):
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:

        async def answers_then_hangs_up(stream):
            await stream.send_all(_hello(address) + (_SYNCED if synced else b""))
            if synced:
                await trio.sleep(0.5)
            await stream.aclose()

        address = await _fake(network, nursery, answers_then_hangs_up)
        async with repred.open_peer(
            transport=network, wall=_virtual_wall(), **SLOW_GOSSIP
        ) as peer:
            _known(peer, address)
            await trio.sleep(4)
            stats = peer.statistics()
            # Its live link ended before its time: a sync checked on it, and
            # it answered, so it is no suspect.
            assert stats.probes >= 1
            assert peer.membership.entry(address)[0] == "alive"
        nursery.cancel_scope.cancel()


async def test_a_live_link_says_how_long_it_means_to_stay_and_a_sync_does_not(
    autojump_clock,
):
    import orjson

    network = MemoryNetwork()
    hellos = []
    async with trio.open_nursery() as nursery:

        async def records(stream):
            data = await stream.receive_some()
            hellos.append(orjson.loads(data.split(b"\n")[0]))
            await stream.send_all(_hello(address) + _SYNCED)
            await trio.sleep(1)
            await stream.aclose()

        address = await _fake(network, nursery, records)
        async with repred.open_peer(
            transport=network, wall=_virtual_wall(), seeds=[address], **SLOW_GOSSIP
        ) as peer:
            _known(peer, address)
            await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    stays = [h.get("stay") for h in hellos]
    # The gossip link (to the only other member) means to stay a gossip
    # interval, give or take a quarter; the check that follows its
    # early end is one sync.
    assert 5.0 * 0.75 <= stays[0] <= 5.0 * 1.25
    assert None in stays[1:]


async def test_a_node_that_goes_silent_on_a_link_dialled_to_it_is_suspected(
    autojump_clock,
):
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:

        async def answers_then_goes_silent(stream):
            await stream.send_all(_hello(address))
            await trio.sleep_forever()

        address = await _fake(network, nursery, answers_then_goes_silent)
        async with repred.open_peer(
            transport=network,
            wall=_virtual_wall(),
            connect_timeout=60.0,  # not the dial: the link's silence
            **SLOW_GOSSIP,
        ) as peer:
            _known(peer, address)
            with trio.fail_after(1.0 + 3 * 1.0 + 1.0):
                await wait_until(
                    peer.membership,
                    lambda: peer.membership.entry(address)[0] == "suspect",
                )
            assert peer.membership.entry(address)[3] == peer.membership.id
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("stay", "lasts", "probed"),
    [
        (30.0, 2.0, True),  # synced, and gone long before its time
        (None, 2.0, False),  # a link its dialler did not mean to keep
        (2.0, 2.0, False),  # on time
        (2.0, "unsynced", True),  # on time, but it never finished its sync
        (30.0, "bad", False),  # it broke the protocol: it is there
    ],
)
async def test_an_inbound_link_that_ends_before_its_stay_has_its_dialler_checked(
    stay, lasts, probed, autojump_clock
):
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        linked, claimed = [await stack_peer(nursery, network) for _ in range(2)]
        async with repred.open_peer(
            transport=network,
            wall=_virtual_wall(),
            seeds=[linked.address],
            **SLOW_GOSSIP,
        ) as peer:
            # Its one gossip link goes to the seed and stays for seconds;
            # it knows of the other, but has no link to it of its own (a
            # live link to a node says enough of it).
            await wait_until(peer.membership, lambda: linked.address in peer.members())
            _known(peer, claimed.address, claimed.membership.id)
            stream = await network.connect(peer.address, source=claimed.address)
            await stream.send_all(_hello(claimed.address, stay))
            if lasts == "unsynced":
                await trio.sleep(stay)
            else:
                await stream.send_all(_SYNCED)
                await trio.sleep(1 if lasts == "bad" else lasts)
            if lasts == "bad":
                await stream.send_all(b"9\t_members\tjunk\n")  # refused
            await stream.aclose()
            await trio.sleep(0.5)
            assert (peer.statistics().probes > 0) is probed
            # Whoever it claimed to be answered: nobody is suspected.
            assert peer.statistics().suspected == ()
        nursery.cancel_scope.cancel()


async def test_links_that_end_early_make_a_node_check_another_once_a_heartbeat(
    autojump_clock,
):
    # A hello's node is whatever its dialler says: many short links each
    # naming one live node made this one dial that node once per link.
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        linked, claimed = [await stack_peer(nursery, network) for _ in range(2)]
        async with repred.open_peer(
            transport=network,
            wall=_virtual_wall(),
            seeds=[linked.address],
            **SLOW_GOSSIP,
        ) as peer:
            await wait_until(peer.membership, lambda: linked.address in peer.members())
            _known(peer, claimed.address, claimed.membership.id)
            before = peer.statistics().probes
            for _ in range(50):  # five seconds: five heartbeats
                stream = await network.connect(peer.address, source="6.6.6.6:1")
                await stream.send_all(_hello(claimed.address, 86400) + _SYNCED)
                await trio.sleep(0.1)
                await stream.aclose()
            await trio.sleep(0.5)
            assert 1 <= peer.statistics().probes - before <= 6
        nursery.cancel_scope.cancel()


#: A membership digest and "SYNC", as a peer with an empty map sends them.
_SYNCED = b'1\t_members\t{"id":"fake","clock":{}}\n2\t_members\t"SYNC"\n'


async def stack_peer(nursery, network):
    """A peer running in ``nursery`` until it is cancelled."""

    async def run(task_status):
        async with repred.open_peer(
            transport=network, wall=_virtual_wall(), **SLOW_GOSSIP
        ) as peer:
            task_status.started(peer)
            await trio.sleep_forever()

    return await nursery.start(run)


async def test_a_node_refutes_a_suspicion_of_itself_at_once(autojump_clock):
    network = MemoryNetwork(latency=0.01)
    slow = {**SLOW_GOSSIP, "heartbeat_interval": 10.0, "down_after": 30.0}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            repred.open_peer(transport=network, wall=_virtual_wall(), **slow)
        )
        b = await stack.enter_async_context(
            repred.open_peer(
                transport=network, wall=_virtual_wall(), seeds=[a.address], **slow
            )
        )
        with trio.fail_after(5):
            await wait_until(a.membership, lambda: b.address in a.membership.state)
            await wait_until(b.membership, lambda: a.address in b.membership.state)
        a.membership.note(b.address, "suspect", b.membership.id)
        # A hop there, a hop back: long before the next heartbeat.
        with trio.fail_after(0.1):
            await wait_until(
                a.membership, lambda: a.membership.entry(b.address)[0] == "alive"
            )
        assert a.membership.entry(b.address)[3] == b.membership.id


async def test_another_spelling_of_a_members_address_is_not_a_member():
    # "127.1:P" reaches the node at "127.0.0.1:P": counted as a member of
    # its own, it stayed up for good (every dial to it succeeded), so one
    # machine counted twice, and placement put two copies on it.
    fast = {"heartbeat_interval": 0.05, "down_after": 0.5, "gossip_interval": 0.1}
    async with AsyncExitStack() as stack:
        b = await stack.enter_async_context(repred.open_peer(**fast))
        a = await stack.enter_async_context(repred.open_peer(seeds=[b.address], **fast))
        with trio.fail_after(10):
            await wait_until(a.membership, lambda: b.address in a.members())
        alias = "127.1:" + b.address.rsplit(":", 1)[1]
        _known(a, alias, "an-alias")
        assert alias in a.members()
        with trio.fail_after(10):
            while alias in a.members():  # noqa: ASYNC110  (real dials)
                await trio.sleep(0.05)
        assert b.address in a.members()
