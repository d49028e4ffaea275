"""Hundreds of peers in one process, over memory streams, on a mock clock."""

import pytest
import trio

import repred
from repred.testing import simulate_peers

from .helpers import wait_until


async def simulate(n, *, seed=0, nursery):
    sim = await simulate_peers(nursery, n, seed=seed)
    return sim.network, sim.peers, sim.data


@pytest.mark.slow  # 200 peers
async def test_two_hundred_peers_converge(autojump_clock):
    async with trio.open_nursery() as nursery:
        _, peers, data = await simulate(200, nursery=nursery)
        data[-1].set("hello", "world")
        data[0].set("from-first", 1)
        start = trio.current_time()
        with trio.fail_after(300):
            for d in data:
                await wait_until(d, lambda d=d: len(d.to_dict()) == 2)
        took = trio.current_time() - start
        assert all(d.to_dict() == {"hello": "world", "from-first": 1} for d in data)
        assert took < 60, took
        # Membership reaches everyone too: each peer knows all 200 nodes.
        with trio.fail_after(300):
            for p in peers:
                await wait_until(p.membership, lambda p=p: len(p.members()) == 200)
        nursery.cancel_scope.cancel()


async def test_a_partitioned_peer_heals_through_its_seed(autojump_clock):
    async with trio.open_nursery() as nursery:
        # Ten peers (the first ten of the twenty this seed draws, peer 5's
        # seed among them): what heals it is its seed, not the crowd.
        net, peers, data = await simulate(10, seed=3, nursery=nursery)
        with trio.fail_after(300):
            await wait_until(peers[5].membership, lambda: len(peers[5].members()) == 10)
        net.cut(peers[5].address)
        for conn in list(peers[5]._links):
            conn.close()
        data[0].set("during", "cut")
        await trio.sleep(20)
        assert data[5].get("during") is None
        net.heal()
        with trio.fail_after(300):
            await wait_until(data[5], lambda: data[5].get("during") == "cut")
        nursery.cancel_scope.cancel()


# -- failure detection ---------------------------------------------------------


async def _formed(sim):
    n = len(sim.peers)
    with trio.fail_after(300):
        for p in sim.peers:
            await wait_until(p.membership, lambda p=p: len(p.members()) == n)


class Events:
    """What every peer of a simulation said, and a way to wait for it."""

    def __init__(self):
        self.seen = []
        self._waiting = []

    def __call__(self, event):
        self.seen.append((trio.current_time(), event))
        for predicate, count, done in self._waiting:
            if sum(1 for _, e in self.seen if predicate(e)) >= count:
                done.set()

    async def wait(self, predicate, count):
        done = trio.Event()
        self._waiting.append((predicate, count, done))
        if sum(1 for _, e in self.seen if predicate(e)) >= count:
            done.set()
        await done.wait()


def _is(kind, peer):
    return lambda e: e["event"] == kind and e["peer"] == peer


async def test_a_node_that_stops_is_seen_down_everywhere_within_down_after(
    autojump_clock,
):
    events = Events()
    async with trio.open_nursery() as nursery:
        sim = await simulate_peers(
            nursery, 20, seed=4, latency=0.01, down_after=5.0, on_event=events
        )
        await _formed(sim)
        await trio.sleep(10)  # links come and go: nobody is seen down
        assert not [e for _, e in events.seen if e["event"] == "down"]
        victim = sim.peers[7].address
        sim.stop(7)
        # Its links close: whoever held one checks it at once, and the
        # suspicion spreads within a heartbeat.
        with trio.fail_after(5.0 + 1.0):
            await events.wait(_is("down", victim), 19)
        await trio.sleep(10)
        downs = [e["peer"] for _, e in events.seen if e["event"] == "down"]
        assert downs == [victim] * 19
        assert all(victim not in p.members() for p in sim.peers if p.address != victim)
        nursery.cancel_scope.cancel()


async def test_a_node_that_hangs_is_seen_down_and_up_again_once_it_speaks(
    autojump_clock,
):
    events = Events()
    async with trio.open_nursery() as nursery:
        sim = await simulate_peers(
            nursery,
            12,
            seed=5,
            latency=0.01,
            down_after=5.0,
            connect_timeout=30.0,
            on_event=events,
        )
        await _formed(sim)
        victim = sim.peers[3].address
        sim.network.hang(victim)
        # The links dialled to it go quiet, and a new one gets no answer
        # within its stay: three heartbeats at most (not connect_timeout,
        # 30 s), then down_after.
        with trio.fail_after(3 + 5 + 1):
            await events.wait(_is("down", victim), 11)
        sim.data[0].set("while", "hung")
        sim.network.heal()
        # It hears what was said of it and refutes: up everywhere again,
        # and the suspicions it wrote of the others while it hung are
        # refuted by them in turn.
        with trio.fail_after(120):
            await events.wait(_is("up", victim), 11)
            await wait_until(sim.data[3], lambda: sim.data[3].get("while") == "hung")
            for p in sim.peers:
                state = p.membership.state
                await wait_until(
                    p.membership,
                    lambda state=state: all(e[0] == "alive" for e in state.values()),
                )
        nursery.cancel_scope.cancel()


async def test_a_node_that_comes_back_at_its_address_is_up_again(autojump_clock):
    events = Events()
    async with trio.open_nursery() as nursery:
        sim = await simulate_peers(
            nursery, 8, seed=6, latency=0.01, down_after=3.0, on_event=events
        )
        await _formed(sim)
        victim = sim.peers[2]
        sim.stop(2)
        with trio.fail_after(10):
            await events.wait(_is("down", victim.address), 7)
        host, port = victim.address.rsplit(":", 1)
        async with repred.open_peer(
            host=host,
            port=int(port),
            seeds=[sim.peers[0].address],
            transport=sim.network,
            wall=lambda: trio.current_time() * 1000,
        ):
            with trio.fail_after(10):
                await events.wait(_is("up", victim.address), 7 + 7)
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_what_a_node_sends_a_round_does_not_grow_with_the_network(
    autojump_clock,
):
    per_node = {}
    for n in (20, 100):
        async with trio.open_nursery() as nursery:
            sim = await simulate_peers(
                nursery, n, seed=1, latency=0.01, gossip_interval=3.0
            )
            await _formed(sim)
            await trio.sleep(10)  # past the first links and their digests
            sent = sum(sim.network.bytes_sent.values())
            await trio.sleep(10)
            per_node[n] = (sum(sim.network.bytes_sent.values()) - sent) / n / 10
            nursery.cancel_scope.cancel()
    # (Heartbeats and whole digests grew it fivefold: 300 bytes a member.)
    assert per_node[100] < 1.5 * per_node[20], per_node
