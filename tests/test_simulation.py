"""Hundreds of peers in one process, over memory streams, on a mock clock."""

import random

import trio

import repred
from repred.testing import MemoryNetwork
from repred.types import model

from .helpers import wait_until


async def simulate(n, *, seed=0, nursery):
    """Start ``n`` peers, each seeded with one random earlier peer."""
    net = MemoryNetwork()
    rng = random.Random(seed)

    def wall():
        return trio.current_time() * 1000

    data = [model(id=f"n{i}", wall=wall) for i in range(n)]
    peers = []

    async def run(i, task_status):
        seeds = [peers[rng.randrange(i)].address] if i else []
        async with repred.open_peer(
            replicas={"data": data[i]},
            seeds=seeds,
            transport=net,
            wall=wall,
            rng=random.Random(seed * 1000 + i),
            heartbeat_interval=1.0,
            down_after=30.0,
            gossip_interval=1.0,
            seed_interval=10.0,
        ) as peer:
            task_status.started(peer)
            await trio.sleep_forever()

    for i in range(n):
        peers.append(await nursery.start(run, i))
    return net, peers, data


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
        net, peers, data = await simulate(20, seed=3, nursery=nursery)
        with trio.fail_after(300):
            await wait_until(peers[5].membership, lambda: len(peers[5].members()) == 20)
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
