"""No peer can erase, partition, stall or exhaust another.

Each test is one attack from the list a hostile (or broken) peer was found
to make, with valid-looking messages only; most run in virtual time on a
``MemoryNetwork``.
"""

import itertools
import random
from contextlib import AsyncExitStack

import orjson
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import repred
from repred import SqliteStore
from repred._wire import LineDecoder
from repred.protocol import Session
from repred.testing import Faults, MemoryNetwork, pump
from repred.types import gset, model, orset, two_phase_set

from .helpers import FakeWall, examples, read_until_closed, sync, wait_until

EPOCH = 1_700_000_000_000


def trio_wall(offset_ms=0.0):
    """A wall clock on trio's (virtual) clock, ``offset_ms`` off true time."""
    return lambda: EPOCH + trio.current_time() * 1000 + offset_ms


def digest_line(peer_id="evil", clock=None):
    return orjson.dumps({"id": peer_id, "clock": clock or {}}) + b"\n"


async def start_peer(nursery, **options):
    """Run a peer in ``nursery``; return it and the scope that stops it."""
    scope = trio.CancelScope()

    async def run(task_status):
        with scope:
            async with repred.open_peer(**options) as peer:
                task_status.started(peer)
                await trio.sleep_forever()

    return await nursery.start(run), scope


async def chain(stack, data, network, **options):
    """Peers on ``network``, one per replica, each seeded with those before."""
    peers = []
    for i, d in enumerate(data):
        peers.append(
            await stack.enter_async_context(
                repred.open_peer(
                    replicas={"data": d},
                    seeds=[p.address for p in peers],
                    transport=network,
                    wall=trio_wall(),
                    rng=random.Random(i),
                    **options,
                )
            )
        )
    return peers


def held(r):
    return {(e.source, e.ts) for e in r.history()}


# -- 1. snapshots cannot erase -------------------------------------------------


@pytest.mark.parametrize("factory", [gset, two_phase_set, orset])
def test_a_hostile_snapshot_erases_nothing(tmp_path, factory):
    wall = FakeWall()
    victim = factory(id="victim", wall=wall, store=SqliteStore(tmp_path / "v.db"))
    for item in ("a", "b", "c"):
        wall.now += 1
        victim.add(item)
    before_state, before = repr(victim.state), held(victim)
    assert len(before) == 3
    s = Session(victim)
    s.data_to_send()
    empty = [] if factory is gset else {}
    attack = {"snapshot": empty, "clock": {"victim": wall.now + 60_000}}
    s.receive_data(digest_line() + orjson.dumps(attack) + b"\n")
    assert held(victim) == before
    assert repr(victim.state) == before_state
    newcomer = factory(id="new", wall=wall)
    sync(victim, newcomer)
    assert repr(newcomer.state) == before_state
    victim.close()
    reopened = factory(store=SqliteStore(tmp_path / "v.db"), wall=wall)
    assert held(reopened) == before
    reopened.close()


def test_a_snapshot_from_a_peer_joins_and_keeps_what_was_held():
    wall = FakeWall()
    victim = gset(id="victim", wall=wall)
    victim.add("mine")
    victim.apply([(["theirs"], wall.now - 10, "other")])
    before = held(victim)
    s = Session(victim)
    s.data_to_send()
    snap = {"snapshot": ["x", "y"], "clock": {"other": wall.now, "third": wall.now}}
    s.receive_data(digest_line() + orjson.dumps(snap) + b"\n")
    assert held(victim) == before
    assert victim.state == {"mine", "theirs", "x", "y"}
    assert victim.clock["third"] == wall.now


json_scalar = st.one_of(st.integers(0, 5), st.sampled_from(["a", "b", "c"]))
sources = st.sampled_from(["victim", "s1", "s2", "s3"])
stamps = st.one_of(
    st.integers(EPOCH - 1000, EPOCH + 1000),
    st.integers(EPOCH, EPOCH + 10**9),
    st.just(EPOCH + 1),
)
messages = st.one_of(
    st.builds(
        lambda c, t, s: orjson.dumps([c, t, s]),
        st.lists(json_scalar, max_size=3),
        stamps,
        sources,
    ),
    st.builds(
        lambda upd, clock: orjson.dumps({"snapshot": upd, "clock": clock}),
        st.lists(json_scalar, max_size=3),
        st.dictionaries(sources, stamps, max_size=3),
    ),
    st.builds(
        lambda clock: orjson.dumps({"id": "z", "clock": clock}),
        st.dictionaries(sources, stamps, max_size=3),
    ),
    st.sampled_from([b'"SYNC"', b'"KEEPALIVE"', b"nonsense", b"[1,2]", b"{}"]),
)


@settings(max_examples=examples(150))
@given(st.lists(st.lists(messages, max_size=8), min_size=1, max_size=5))
def test_no_sequence_of_messages_makes_a_replica_lose_an_entry(links):
    wall = FakeWall(EPOCH)
    victim = gset(id="victim", wall=wall)
    for item in ("a", "b"):
        wall.now += 1
        victim.add(item)
    victim.apply([(["c"], EPOCH - 500, "s1")])
    for link in links:
        kept = held(victim)
        s = Session(victim)
        s.data_to_send()
        data = digest_line() + b"".join(m + b"\n" for m in link)
        try:
            s.receive_data(data)
        except repred.RemoteProtocolError:
            pass
        s.close()
        # No stamp is ever lost, and nothing of the replica's own: a second
        # version of an unsigned source's entry may take the place of the
        # one held (every replica keeps the same one), never one of ours.
        assert kept <= held(victim)
        assert {"a", "b"} <= victim.state


# -- 2. bounded sources, digests that always fit ---------------------------------


def test_flooding_sources_is_refused_and_the_digest_always_fits():
    wall = FakeWall()
    victim = model(id="victim", wall=wall)
    s = Session(victim)
    s.data_to_send()
    lines = [digest_line()]
    for i in range(5000):
        source = f"{i:05d}" + "x" * 245
        lines.append(orjson.dumps([["k", i], wall.now - 5000 + i, source]) + b"\n")
    with pytest.raises(repred.RemoteProtocolError) as info:
        s.receive_data(b"".join(lines))
    assert info.value.reason == "too-many-sources"
    assert 1000 < len(victim.clock) < 5000
    # Every peer with default settings still takes this replica's digest.
    digest = Session(victim).data_to_send()
    assert len(digest) < repred.protocol.DEFAULT_MAX_LINE_BYTES
    other = model(id="other")
    sync(victim, other)
    assert other.to_dict() == victim.to_dict()


def test_the_source_bound_fits_ten_thousand_short_ids():
    wall = FakeWall()
    victim = model(id="victim", wall=wall)
    entries = [
        (["k", i], wall.now - 50_000 + i, f"node-{i:011d}") for i in range(40_000)
    ]
    with pytest.raises(repred.RemoteProtocolError):
        victim.apply(entries)
    assert 10_000 <= len(victim.clock) <= repred.protocol.DEFAULT_MAX_SOURCES
    digest = Session(victim).data_to_send()
    assert len(digest) < repred.protocol.DEFAULT_MAX_LINE_BYTES


def test_many_writers_sync_in_one_pass():
    """A real queue of sources: a link touches each source once."""
    wall = FakeWall()
    writers = model(id="hub", wall=wall, max_sources=30_000)
    writers.apply([(["k", i], wall.now - 30_000 + i, f"w{i}") for i in range(20_000)])
    fresh = model(id="fresh", wall=wall, max_sources=30_000)
    pair = [
        Session(writers, max_line_bytes=8 << 20),
        Session(fresh, max_line_bytes=8 << 20),
    ]
    rounds = pump(*pair)
    assert fresh.to_dict() == writers.to_dict()
    assert rounds < 200  # 64 KB batches, not a round per source


# -- 3. clocks -------------------------------------------------------------------


async def test_a_relayed_stamp_at_the_bound_never_cuts_honest_writes(autojump_clock):
    network = MemoryNetwork()
    offsets = {"a": 0, "b": -1000, "c": 2000}
    data = {n: model(id=n, wall=trio_wall(off)) for n, off in offsets.items()}
    attacker = model(id="x", wall=trio_wall(repred.protocol.DEFAULT_MAX_DRIFT_MS - 100))
    fast = {"heartbeat_interval": 0.5, "gossip_interval": 1.0, "seed_interval": 1.0}
    async with AsyncExitStack() as stack:
        peers = {}
        for n, off in offsets.items():
            peers[n] = await stack.enter_async_context(
                repred.open_peer(
                    replicas={"data": data[n]},
                    seeds=[p.address for p in peers.values()],
                    transport=network,
                    wall=trio_wall(off),
                    rng=random.Random(n),
                    **fast,
                )
            )
        await stack.enter_async_context(
            repred.open_peer(
                replicas={"data": attacker},
                seeds=[peers["a"].address],
                transport=network,
                wall=trio_wall(repred.protocol.DEFAULT_MAX_DRIFT_MS - 100),
                rng=random.Random(9),
                **fast,
            )
        )
        for second in range(60):
            attacker.set("x", second)
            for n, d in data.items():
                d.set(f"{n}{second}", second)
            await trio.sleep(1)
        want = {f"{n}{i}" for n in offsets for i in range(60)}
        with trio.fail_after(120):
            for d in data.values():
                await wait_until(d, lambda d=d: want <= set(d.to_dict()))
        # The attacker's entries, at the bound for a and c, are past it for
        # b (a second behind): b defers them instead of cutting its links.
        assert data["a"].get("x") is not None
        assert data["b"].deferred > 0


def test_own_clock_runs_at_most_max_ahead_past_the_wall():
    wall = FakeWall()
    r = model(id="r", wall=wall)
    r.apply([(["k", 1], wall.now + repred.protocol.DEFAULT_MAX_DRIFT_MS - 1, "fast")])
    r.set("mine", 1)
    assert r.clock["r"] <= wall.now + repred.protocol.DEFAULT_MAX_AHEAD_MS + 1
    # A peer 4 minutes behind still takes this replica's writes.
    behind = model(id="behind", wall=lambda: wall.now - 4 * 60_000 + 1000)
    sync(r, behind)
    assert behind.get("mine") == 1


def test_a_future_entry_ends_no_link_and_blocks_no_other_source():
    wall = FakeWall()
    r = model(id="r", wall=wall)
    s = Session(r)
    s.data_to_send()
    s.receive_data(
        digest_line()
        + orjson.dumps([["far", 1], wall.now + 10**9, "f"])
        + b"\n"
        + orjson.dumps([["later", 2], wall.now + 10**9 + 5, "f"])
        + b"\n"
        + orjson.dumps([["ok", 3], wall.now, "g"])
        + b"\n"
        + b'"SYNC"\n'
    )
    assert r.to_dict() == {"ok": 3}
    assert "f" not in r.clock  # nothing of f is claimed
    assert s.statistics().deferred == 2
    assert s.sync_received


# -- 4, 5, 6. membership -------------------------------------------------------


async def test_self_is_recognised_under_any_spelling():
    async with repred.open_peer() as peer:
        port = peer.port
        for spelling in ("localhost", "127.0.0.1", "127.1", "LOCALHOST", "127.0.0.2"):
            assert peer.is_self(f"{spelling}:{port}"), spelling
        assert not peer.is_self(f"127.0.0.1:{port + 1}")
        for wildcard in ("0.0.0.0", "::", "[::]"):
            with pytest.raises(ValueError):
                repred._address.parse_member(f"{wildcard}:{port}")


@pytest.mark.parametrize(
    "junk", ["not an address", "host:0", "host:70000", "0.0.0.0:80", ":80", "a b:1"]
)
def test_junk_members_are_refused_on_the_link(junk):
    from repred._members import members_replica

    members = members_replica(wall=FakeWall())
    s = Session(members)
    s.data_to_send()
    entry = orjson.dumps([[junk, "alive", "evil"], EPOCH, "evil"]) + b"\n"
    with pytest.raises(repred.RemoteProtocolError):
        s.receive_data(digest_line() + entry)
    assert members.state == {}


def test_a_member_address_is_checked_on_every_entry():
    # Checks are remembered for speed; refusals must not be, nor may a
    # good address stand in for a bad one.
    from repred._members import members_replica

    wall = FakeWall()
    members = members_replica(wall=wall)
    for ts in range(3):
        members.apply([(["10.1.2.3:4", "alive", "good"], wall.now - 100 + ts, "good")])
        for junk in ("0.0.0.0:4", "10.1.2.3:0", ["10.1.2.3:4"]):
            bad = f"bad{ts}"
            with pytest.raises(ValueError):
                members.apply([([junk, "alive", bad], wall.now + ts, bad)])
    assert members.state == {"10.1.2.3:4": ("alive", wall.now - 98, "good", "good")}


def test_the_membership_map_is_bounded_and_reaped():
    from repred._members import View, members_replica

    wall = FakeWall()
    view = View(members_replica(wall=wall, max_members=100))
    members = view.members
    entries = [
        ([f"10.0.{i // 250}.{i % 250}:1", "alive", f"s{i}"], wall.now + i, f"s{i}")
        for i in range(150)
    ]
    members.apply(entries)
    assert len(members.state) == 100
    assert len(view.up(5.0)) == 100  # nothing passed over is seen
    members.trim()
    view.join("127.0.0.1:5")
    for address in list(members.state):
        view.suspect(address)
    wall.now += 10_000
    assert len(view.reap(older_than=5.0)) == 100
    assert list(members.state) == ["127.0.0.1:5"]
    assert len(list(members.history())) == 1


async def _junk_members(network, victim, n, address_of):
    """A hostile node that announces ``n`` fake members, then goes away."""
    fake = model(id="junk", wall=trio_wall())
    async with repred.open_peer(
        replicas={"data": fake},
        seeds=[victim.address],
        transport=network,
        wall=trio_wall(),
        heartbeat_interval=0.5,
    ) as hostile:
        now = EPOCH + trio.current_time() * 1000 + 5
        ghosts = [f"ghost{i}" for i in range(n)]
        hostile.membership.apply(
            [([address_of(i), "alive", g], now, g) for i, g in enumerate(ghosts)]
        )
        with trio.fail_after(60):
            await wait_until(
                victim.membership, lambda: len(victim.membership.state) >= n
            )


@pytest.mark.slow  # a flood of 10,000 members
async def test_ten_thousand_junk_members_do_not_stall_a_peer(autojump_clock):
    network = MemoryNetwork()
    data = [model(id=f"h{i}", wall=trio_wall()) for i in range(3)]
    opts = {
        "heartbeat_interval": 1.0,
        "gossip_interval": 10.0,
        "seed_interval": 5.0,
        "reap_after": 30.0,
    }
    async with AsyncExitStack() as stack:
        peers = await chain(stack, data, network, **opts)
        await _junk_members(network, peers[0], 10_000, lambda i: f"ghost{i}:1")
        data[1].set("after", "junk")
        with trio.fail_after(120):
            for d in data:
                await wait_until(d, lambda d=d: d.get("after") == "junk")
        # No junk member ever answers: each is suspected by the first node
        # that fails to dial it (gossip picks random members; the network
        # shares the work), and is down down_after later.
        with trio.fail_after(600):
            await _all_suspected(peers[0], [f"ghost{i}:1" for i in range(10_000)])
        await trio.sleep(5)  # down_after
        assert len(peers[0].members()) == 3
        # reap_after after its suspicion, and the junk is gone everywhere.
        await trio.sleep(40)
        for p in peers:
            assert len(p.membership.state) == 3


async def test_junk_members_leave_nothing_behind_once_reaped(autojump_clock):
    # Every address a node failed to dial was remembered (its failures and
    # when to retry it) after the map forgot it: a stream of junk members,
    # each reaped in its turn, grew those without bound.
    network = MemoryNetwork()
    data = [model(id=f"h{i}", wall=trio_wall()) for i in range(3)]
    opts = {"heartbeat_interval": 1.0, "seed_interval": 5.0, "reap_after": 30.0}
    async with AsyncExitStack() as stack:
        peers = await chain(stack, data, network, **opts)
        ghosts = [f"ghost{i}:1" for i in range(20)]
        await _junk_members(network, peers[0], 20, lambda i: ghosts[i])
        with trio.fail_after(600):
            await _all_suspected(peers[0], ghosts)
        await trio.sleep(20)  # long enough to be dialled and fail again
        assert set(peers[0].statistics().suspects) & set(ghosts)
        await trio.sleep(40)  # reap_after since the suspicions
        assert len(peers[0].membership.state) == 3
        assert not set(peers[0].statistics().suspects) & set(ghosts)


async def test_a_live_node_its_peers_were_turned_against_is_known_again(
    autojump_clock,
):
    # A version of a node's one "alive" entry, forged with a smaller hash and
    # sent to every node but it, wins its stamp everywhere else: they see it
    # suspected, and forget it once reaped, while it never hears of it (its
    # own version is what it holds). Nothing is written while nothing
    # changes, so it says again that it is alive every reap_after / 2.
    from repred._hashtree import entry_hash

    network = MemoryNetwork()
    data = [model(id=f"h{i}", wall=trio_wall()) for i in range(3)]
    opts = {
        "heartbeat_interval": 1.0,
        "seed_interval": 5.0,
        "down_after": 3.0,
        "reap_after": 30.0,
    }
    async with AsyncExitStack() as stack:
        peers = await chain(stack, data, network, **opts)
        victim = peers[0].address
        with trio.fail_after(60):
            for p in peers[1:]:
                await wait_until(p.membership, lambda p=p: victim in p.members())
        _, ts, node_id, source = peers[1].membership.entry(victim)
        held = entry_hash(ts, [victim, "alive", node_id])
        fake = next(
            f"x{k}"
            for k in itertools.count()
            if entry_hash(ts, [victim, "suspect", f"x{k}"]) < held
        )
        for p in peers[1:]:
            p.membership.apply([([victim, "suspect", fake], ts, source)])
        await trio.sleep(4)  # down_after
        assert all(victim not in p.members() for p in peers[1:])
        await trio.sleep(60)  # reaped by now, and reap_after / 2 over
        assert all(victim in p.members() for p in peers[1:])


async def test_maps_filled_with_different_junk_do_not_cut_nodes_apart(
    autojump_clock,
):
    # Each node's map filled to max_members with addresses of its own: a
    # full map refused the others' junk by ending the link that brought it,
    # data and all, so every link between honest nodes broke.
    network = MemoryNetwork()
    data = [model(id=f"h{i}", wall=trio_wall()) for i in range(4)]
    opts = {"heartbeat_interval": 1.0, "seed_interval": 5.0, "max_members": 24}
    async with AsyncExitStack() as stack:
        peers = await chain(stack, data, network, **opts)
        with trio.fail_after(60):
            for p in peers:
                await wait_until(p.membership, lambda p=p: len(p.members()) == 4)
        now = EPOCH + trio.current_time() * 1000
        for j, p in enumerate(peers):
            junk = f"junk{j}"
            p.membership.apply(
                [([f"10.{j}.0.{i}:7", "alive", junk], now + i, junk) for i in range(20)]
            )
        await trio.sleep(30)  # the junk travels, and fills every map
        assert all(p.connections() for p in peers)  # (none, when refused)
        data[0].set("after", "junk")
        with trio.fail_after(60):
            for d in data:
                await wait_until(d, lambda d=d: d.get("after") == "junk")
        assert all(len(p.membership.state) <= 24 for p in peers)


async def _all_suspected(peer, addresses):
    """Wait until ``peer``'s map has suspected every one of ``addresses``."""
    state = peer.membership.state
    waiting = {a for a in addresses if a in state and state[a][0] != "suspect"}
    done = trio.Event()
    if not waiting:
        return

    def heard(effect, ts, source, origin):
        if effect[1] == "suspect":
            waiting.discard(effect[0])
            if not waiting:
                done.set()

    remove = peer.membership.add_listener(heard)
    try:
        await done.wait()
    finally:
        remove()


async def test_suspicions_written_at_will_never_take_a_live_node_down(
    autojump_clock,
):
    """A member may write any suspicion, stamped now or stamped so that
    it counts as old: the node it names refutes each at once, and no node
    ever sees it down."""
    network = MemoryNetwork(latency=0.01)
    events = []
    data = [model(id=f"s{i}", wall=trio_wall()) for i in range(5)]
    opts = {
        "heartbeat_interval": 1.0,
        "gossip_interval": 3.0,
        "seed_interval": 5.0,
        "down_after": 3.0,
        "on_event": events.append,
    }
    async with AsyncExitStack() as stack:
        peers = await chain(stack, data, network, **opts)
        with trio.fail_after(60):
            for p in peers:
                await wait_until(p.membership, lambda p=p: len(p.members()) == 5)
        hostile, target = peers[4].membership, peers[1]
        for i in range(40):
            hostile.note(target.address, "suspect", target.membership.id)
            await trio.sleep(0.25)
            # Just newer than the refutation, so it wins, but stamped long
            # before the forger's own clock: it counts from its arrival.
            newest = hostile.entry(target.address)[1]
            hostile.apply([([target.address, "suspect", "x"], newest + 1, f"f{i}")])
            await trio.sleep(0.015)  # a hop: some hold it, unrefuted yet
            assert any(p.statistics().suspected for p in peers)
            assert all(target.address in p.members() for p in peers)
            await trio.sleep(0.25)
        await trio.sleep(5)
        assert [e for e in events if e["event"] == "down"] == []
        for p in peers:
            assert target.address in p.members()
            assert p.membership.entry(target.address)[0] == "alive"


async def test_a_verifying_network_takes_suspicions_from_its_writers_only(
    autojump_clock,
):
    network = MemoryNetwork(latency=0.01)
    keys = [repred.SigningKey.generate() for _ in range(3)]
    writers = {k.id for k in keys}
    async with AsyncExitStack() as stack:
        peers = []
        for key in keys:
            peers.append(
                await stack.enter_async_context(
                    repred.open_peer(
                        transport=network,
                        wall=trio_wall(),
                        seeds=[p.address for p in peers],
                        signing_key=key,
                        verify=True,
                        writers=writers,
                    )
                )
            )
        with trio.fail_after(60):
            for p in peers:
                await wait_until(p.membership, lambda p=p: len(p.members()) == 3)
        # A node with no key of the writers' writes a suspicion and links.
        async with repred.open_peer(
            transport=network, wall=trio_wall(), seeds=[peers[0].address]
        ) as outsider:
            outsider.membership.note(peers[1].address, "suspect", keys[1].id)
            await trio.sleep(10)
        for p in peers:
            assert p.membership.entry(peers[1].address)[0] == "alive"
            assert outsider.address not in p.membership.state
        # What a writer suspects is signed, and taken.
        peers[0].membership.note(peers[2].address, "suspect", keys[2].id)
        with trio.fail_after(10):
            await wait_until(
                peers[1].membership,
                lambda: peers[1].membership.entry(peers[2].address)[3] in writers,
            )


async def test_tarpits_and_a_dead_seed_do_not_partition_the_network(autojump_clock):
    network = MemoryNetwork()

    async def tarpit(stream):
        await trio.sleep_forever()  # accepts, never speaks

    async with trio.open_nursery() as nursery:
        tarpits = [
            await network.listen("tarpit", 0, tarpit, nursery) for _ in range(10)
        ]
        seed_data = model(id="seed", wall=trio_wall())
        data = [model(id=n, wall=trio_wall()) for n in "bcd"]
        opts = {"heartbeat_interval": 0.5, "gossip_interval": 1.0, "seed_interval": 1.0}
        async with AsyncExitStack() as stack:
            seed, seed_scope = await start_peer(
                nursery,
                replicas={"data": seed_data},
                transport=network,
                wall=trio_wall(),
                **opts,
            )
            peers = [
                await stack.enter_async_context(
                    repred.open_peer(
                        replicas={"data": d},
                        seeds=[seed.address],
                        transport=network,
                        wall=trio_wall(),
                        rng=random.Random(i),
                        **opts,
                    )
                )
                for i, d in enumerate(data)
            ]
            with trio.fail_after(60):
                for p in peers:
                    await wait_until(p.membership, lambda p=p: len(p.members()) == 4)
            # Ten tarpits join the membership; the seed dies.
            now = EPOCH + trio.current_time() * 1000
            for i, address in enumerate(tarpits):
                peers[0].membership.apply(
                    [([address, "alive", f"tarpit{i}"], now + i, f"tarpit{i}")]
                )
            seed_scope.cancel()
            for i in range(3):
                data[0].set(f"w{i}", i)
            with trio.fail_after(180):
                for d in data:
                    await wait_until(
                        d, lambda d=d: all(d.get(f"w{i}") == i for i in range(3))
                    )
            stats = peers[0].statistics()
            assert stats.dial_failures > 0  # tarpits count as failures
        nursery.cancel_scope.cancel()


# -- 7. partitions heal without seeds -----------------------------------------


async def test_a_long_partition_heals_after_the_seed_died(autojump_clock):
    network = MemoryNetwork()
    names = ["s", "a", "b", "c"]
    data = {n: model(id=n, wall=trio_wall()) for n in names}
    opts = {"heartbeat_interval": 1.0, "gossip_interval": 3.0, "seed_interval": 5.0}
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        seed, seed_scope = await start_peer(
            nursery,
            replicas={"data": data["s"]},
            transport=network,
            wall=trio_wall(),
            **opts,
        )
        peers = {}
        for n in "abc":
            peers[n] = await stack.enter_async_context(
                repred.open_peer(
                    replicas={"data": data[n]},
                    seeds=[seed.address],
                    transport=network,
                    wall=trio_wall(),
                    rng=random.Random(n),
                    **opts,
                )
            )
        with trio.fail_after(120):
            for p in peers.values():
                await wait_until(p.membership, lambda p=p: len(p.members()) == 4)
        network.partition(
            [seed.address, peers["a"].address],
            [peers["b"].address, peers["c"].address],
        )
        data["a"].set("left", 1)
        data["b"].set("right", 2)
        await trio.sleep(100)
        seed_scope.cancel()  # the seed dies mid-split
        await trio.sleep(200)
        network.heal()
        with trio.fail_after(300):
            for n in "abc":
                await wait_until(
                    data[n], lambda n=n: data[n].to_dict() == {"left": 1, "right": 2}
                )
        nursery.cancel_scope.cancel()


# -- 8. idle and half-done links ---------------------------------------------------


async def test_a_peer_that_trickles_a_line_is_cut(autojump_clock):
    left, right = trio.testing.memory_stream_pair()
    victim = model(id="victim")

    async def trickle():
        peer = Session(model(id="slow"))
        await right.send_all(peer.data_to_send())
        await right.send_all(b'"SYNC"\n[["k",')
        for _ in range(1000):
            await trio.sleep(1)
            await right.send_all(b"1")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        start = trio.current_time()
        with pytest.raises(repred.SyncTimeout, match="progress"):
            await repred.replicate(victim, left, keepalive_interval=5)
        assert trio.current_time() - start <= 16
        nursery.cancel_scope.cancel()


async def test_a_black_holed_live_link_is_noticed(autojump_clock):
    left, right = trio.testing.memory_stream_pair()

    async def hole():
        peer = Session(model(id="hole"))
        await right.send_all(peer.data_to_send() + b'"SYNC"\n')
        await trio.sleep_forever()  # then nothing, not even keep-alives

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hole)
        start = trio.current_time()
        with pytest.raises(repred.SyncTimeout):
            await repred.replicate(model(id="me"), left, keepalive_interval=2)
        assert trio.current_time() - start <= 7
        nursery.cancel_scope.cancel()


async def test_quiet_live_links_stay_up_on_keepalives(autojump_clock):
    a, b = model(id="a"), model(id="b")
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        conn_a = await nursery.start(
            lambda task_status: repred.replicate(
                a, left, keepalive_interval=2, task_status=task_status
            )
        )
        conn_b = await nursery.start(
            lambda task_status: repred.replicate(
                b, right, keepalive_interval=2, task_status=task_status
            )
        )
        await trio.sleep(60)  # a minute of quiet: keep-alives hold it open
        a.set("still", "up")
        with trio.fail_after(5):
            await wait_until(b, lambda: b.get("still") == "up")
        assert conn_a.synced
        assert conn_b.synced
        nursery.cancel_scope.cancel()


class SlowReceive(trio.abc.ReceiveStream):
    """Reads about 4 KB a second from ``inner``."""

    def __init__(self, inner):
        self.inner = inner

    async def receive_some(self, max_bytes=None):
        await trio.sleep(1)
        return await self.inner.receive_some(4096)

    async def aclose(self):
        await self.inner.aclose()


async def test_a_slow_honest_reader_is_not_cut(autojump_clock):
    a = model(id="a")
    for i in range(3000):
        a.set(f"key-{i:05d}", "v" * 60)
    b = model(id="b")
    # Lockstep: a send waits until the reader has taken the bytes.
    send_a, recv_b = trio.testing.lockstep_stream_one_way_pair()
    send_b, recv_a = trio.testing.lockstep_stream_one_way_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: repred.replicate(
                b, trio.StapledStream(send_b, SlowReceive(recv_b)), live=False
            )
        )
        start = trio.current_time()
        stats = await repred.replicate(
            a, trio.StapledStream(send_a, recv_a), live=False, send_timeout=10
        )
        took = trio.current_time() - start
    assert stats.updates_out == 3000
    assert took > 30  # it was slow: about 4 KB a second
    assert b.to_dict() == a.to_dict()


async def test_idle_connections_past_the_bound_push_out_only_idle_ones():
    server = model(id="server")
    server.set("k", 1)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            # No idle link times out while the test runs: only being pushed
            # out ends one.
            lambda task_status: repred.serve_tcp(
                server, 0, max_links=10, handshake_timeout=3600, task_status=task_status
            )
        )
        port = listeners[0].socket.getsockname()[1]
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(50)]
        client = model(id="client")
        with trio.fail_after(30):
            await repred.connect_tcp(
                client, "127.0.0.1", port, live=False, close_timeout=0
            )
        assert client.to_dict() == {"k": 1}
        # At least 40 of them were pushed out: each reads to its end, while
        # a kept one blocks for ever.
        send_end, ended = trio.open_memory_channel[None](len(idle))

        async def reads_to_its_end(stream):
            await read_until_closed(stream)
            send_end.send_nowait(None)

        async with trio.open_nursery() as readers:
            for stream in idle:
                readers.start_soon(reads_to_its_end, stream)
            with trio.fail_after(30):
                for _ in range(40):
                    await ended.receive()
            readers.cancel_scope.cancel()
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_an_oversized_hello_is_refused():
    from repred._mux import MAX_HELLO_BYTES

    async with repred.open_peer() as peer:
        stream = await trio.open_tcp_stream("127.0.0.1", peer.port)
        await stream.send_all(b"{" + b" " * (MAX_HELLO_BYTES + 10))
        with trio.fail_after(10):
            await read_until_closed(stream)
        await stream.aclose()


# -- 9. linear-time decoding ------------------------------------------------------


def test_a_line_fed_a_byte_at_a_time_costs_linear_work():
    limit = 1 << 20
    decoder = LineDecoder(limit)
    line = b"[" + b"1," * ((limit - 10) // 2) + b"1]"
    for i in range(len(line)):
        assert decoder.feed(line[i : i + 1]) == []
    assert decoder.feed(b"\n") == [line]
    fed = len(line) + 1
    assert decoder.scanned <= 2 * fed


# -- 10. equivocation and impersonation -----------------------------------------


def test_equivocation_settles_on_one_version_and_is_reported(caplog):
    # A writer that sends two versions of one stamp cannot split replicas,
    # nor get an honest relay cut off: each keeps the version with the
    # smaller hash, whichever came first, and says so.
    wall = FakeWall()
    a, b = model(id="a", wall=wall), model(id="b", wall=wall)
    a.apply([(["k", "one"], wall.now, "liar")])
    b.apply([(["k", "two"], wall.now, "liar")])
    s = Session(b)
    s.data_to_send()
    peer = Session(a)
    first = peer.data_to_send()
    peer.receive_data(digest_line("b", {}))
    s.receive_data(first + peer.data_to_send())  # the link stays up
    assert "two different entries with stamp" in caplog.text
    assert "'liar'" in caplog.text
    assert b.statistics().equivocations == 1
    sync(a, b)
    assert a.get("k") == b.get("k")


def test_an_entry_forged_in_our_own_name_is_not_taken_but_old_ones_restore(caplog):
    # Stamped later than this replica could have written: not applied (it
    # waits, as an entry stamped too far ahead does), and said: someone
    # else writes in its name. The link that brought it stays up.
    wall = FakeWall()
    victim = model(id="victim", wall=wall)
    victim.set("real", 1)
    s = Session(victim)
    s.data_to_send()
    forged = orjson.dumps([["real", "forged"], wall.now + 60_000, "victim"]) + b"\n"
    s.receive_data(digest_line() + forged)
    assert victim.get("real") == 1
    assert s.statistics().deferred == 1
    assert victim.statistics().twin_ids == 1
    assert "writes under this replica's id 'victim'" in caplog.text
    # A node that lost its store takes its own older entries back from peers.
    keeper = model(id="keeper", wall=wall)
    sync(victim, keeper)
    reborn = model(id="victim", wall=wall)
    sync(keeper, reborn)
    assert reborn.get("real") == 1
    wall.now += 1
    reborn.set("after", 2)
    assert reborn.clock["victim"] > victim.clock["victim"]


# -- faults on the wire -----------------------------------------------------------


async def test_peers_converge_after_faults_on_the_wire_stop(autojump_clock):
    network = MemoryNetwork(rng=random.Random(5))
    data = [model(id=f"n{i}", wall=trio_wall()) for i in range(4)]
    opts = {"heartbeat_interval": 0.5, "gossip_interval": 1.0, "seed_interval": 1.0}
    async with AsyncExitStack() as stack:
        await chain(stack, data, network, **opts)
        network.faults = Faults(
            delay=0.2,
            stall=0.02,
            cut=0.05,
            duplicate=0.05,
            reorder=0.05,
            stall_for=20.0,
        )
        for step in range(40):
            data[step % 4].set(f"k{step}", step)
            await trio.sleep(0.5)
        network.faults = None
        want = {f"k{step}": step for step in range(40)}
        with trio.fail_after(300):
            for d in data:
                await wait_until(d, lambda d=d: d.to_dict() == want)


@pytest.mark.slow  # 5,000 sockets
# The 5,000 client ends, the server's 512 links and what the process holds.
@pytest.mark.open_files(5000 + 1024)
async def test_five_thousand_idle_links_cost_bounded_memory():
    import tracemalloc

    server = model(id="server")
    server.set("k", 1)
    async with AsyncExitStack() as idle, trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, server, 0)
        port = listeners[0].socket.getsockname()[1]
        tracemalloc.start()
        try:
            for _ in range(5000):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await idle.enter_async_context(stream)
                await stream.send_all(b'{"id":"idle","clock":{}}\n')
            await trio.testing.wait_all_tasks_blocked()
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        # At most max_links (512) links are held, a few KB each; the client
        # ends of the 5,000 sockets are counted here too.
        assert held < 64 << 20
        client = model(id="client")
        with trio.fail_after(30):
            await repred.connect_tcp(
                client, "127.0.0.1", port, live=False, close_timeout=0
            )
        assert client.to_dict() == {"k": 1}
        nursery.cancel_scope.cancel()
