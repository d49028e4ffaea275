"""Hundreds of peers in one process, over memory streams, on a mock clock."""

import pytest
import trio

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
