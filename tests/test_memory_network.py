"""The simulated network: latency, order, end of stream, cuts, byte counts."""

import random

import pytest
import trio
import trio.testing

from repred.testing import Faults, MemoryNetwork


async def open_link(network, nursery, *, source="a:1"):
    """A link from ``source`` to a listener; returns (ours, theirs, times)."""
    accepted = []
    arrived = []

    async def handler(stream):
        accepted.append(stream)
        try:
            while data := await stream.receive_some():
                arrived.append((trio.current_time(), bytes(data)))
        except trio.ClosedResourceError:
            return  # this end closed itself
        arrived.append((trio.current_time(), b""))

    address = await network.listen("b", 2, handler, nursery)
    ours = await network.connect(address, source=source)
    await trio.testing.wait_all_tasks_blocked()
    return ours, accepted[0], arrived


async def test_a_chunk_arrives_after_the_latency_and_the_sender_goes_on(
    autojump_clock,
):
    network = MemoryNetwork(latency=0.25)
    async with trio.open_nursery() as nursery:
        ours, _, arrived = await open_link(network, nursery)
        start = trio.current_time()
        await ours.send_all(b"one")
        # The sender is not held for the latency: the bytes are on the way.
        assert trio.current_time() == start
        await ours.send_all(b"two")
        await ours.aclose()
        await trio.sleep(1)
        assert {t for t, _ in arrived} == {start + 0.25}
        assert b"".join(data for _, data in arrived) == b"onetwo"
        assert arrived[-1][1] == b""  # the end, after what was sent before it
        nursery.cancel_scope.cancel()


async def test_chunks_keep_their_order_on_every_link(autojump_clock):
    network = MemoryNetwork(latency=0.01)
    async with trio.open_nursery() as nursery:
        links = []
        for i in range(3):
            accepted = []

            async def handler(stream, accepted=accepted):
                accepted.append(b"")
                while data := await stream.receive_some():
                    accepted[0] += data

            address = await network.listen("h", 10 + i, handler, nursery)
            links.append((await network.connect(address, source="s:1"), accepted))
        for n in range(200):
            for stream, _ in links:
                await stream.send_all(b"%d," % n)
            if n % 7 == 0:
                await trio.sleep(0.003)
        await trio.sleep(1)
        want = b"".join(b"%d," % n for n in range(200))
        assert [accepted[0] for _, accepted in links] == [want] * 3
        nursery.cancel_scope.cancel()


async def test_bytes_are_counted_by_sender(autojump_clock):
    network = MemoryNetwork(latency=0.01)
    async with trio.open_nursery() as nursery:
        ours, theirs, _ = await open_link(network, nursery, source="a:1")
        await ours.send_all(b"12345")
        await theirs.send_all(b"123")
        await ours.send_all(memoryview(b"67"))
        assert network.bytes_sent == {"a:1": 7, "b:2": 3}
        nursery.cancel_scope.cancel()


async def test_a_sender_learns_that_the_other_end_closed(autojump_clock):
    network = MemoryNetwork(latency=0.01)
    async with trio.open_nursery() as nursery:
        ours, theirs, _ = await open_link(network, nursery)
        await theirs.aclose()
        await ours.send_all(b"lost")  # on the way when the far end learns
        await trio.sleep(0.1)
        with pytest.raises(trio.BrokenResourceError):
            await ours.send_all(b"refused")
        nursery.cancel_scope.cancel()


async def test_a_partition_breaks_links_and_loses_what_was_on_the_way(
    autojump_clock,
):
    network = MemoryNetwork(latency=0.5)
    async with trio.open_nursery() as nursery:
        ours, _, arrived = await open_link(network, nursery, source="a:1")
        await ours.send_all(b"before")
        await trio.sleep(1)
        await ours.send_all(b"in flight")
        network.partition(["a:1"], ["b:2"])
        await trio.sleep(1)
        assert [data for _, data in arrived] == [b"before", b""]
        with pytest.raises(trio.BrokenResourceError):
            await ours.send_all(b"after")
        nursery.cancel_scope.cancel()


async def test_without_latency_bytes_arrive_at_once(autojump_clock):
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        ours, _, arrived = await open_link(network, nursery)
        start = trio.current_time()
        await ours.send_all(b"now")
        await trio.testing.wait_all_tasks_blocked()
        assert arrived == [(start, b"now")]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("latency", [0.0, 0.1])
async def test_a_cut_delivers_part_of_the_chunk_then_the_end(autojump_clock, latency):
    network = MemoryNetwork(latency=latency, rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        ours, _, arrived = await open_link(network, nursery)
        await ours.send_all(b"whole")
        network.faults = Faults(cut=1.0)
        with pytest.raises(trio.BrokenResourceError):
            await ours.send_all(b"0123456789")
        await trio.sleep(1)
        data = b"".join(d for _, d in arrived)
        assert data.startswith(b"whole")
        assert b"0123456789".startswith(data[5:])
        assert arrived[-1][1] == b""  # the far end sees the link end
        with pytest.raises(trio.BrokenResourceError):
            await ours.send_all(b"more")
        nursery.cancel_scope.cancel()


async def test_closed_links_are_forgotten(autojump_clock):
    # A simulation opens thousands of links a simulated second: the network
    # must not keep each one it ever carried.
    network = MemoryNetwork(latency=0.01)
    async with trio.open_nursery() as nursery:

        async def handler(stream):
            async with stream:
                await stream.receive_some()

        address = await network.listen("h", 1, handler, nursery)
        for _ in range(50):
            stream = await network.connect(address, source="s:1")
            await stream.send_all(b"x")
            await stream.aclose()
        await trio.sleep(1)
        assert network._links == set()
        nursery.cancel_scope.cancel()


async def test_a_hung_address_holds_what_its_links_carry_until_it_heals(
    autojump_clock,
):
    network = MemoryNetwork(latency=0.01)
    async with trio.open_nursery() as nursery:
        ours, _, arrived = await open_link(network, nursery)
        network.hang("b:2")
        await ours.send_all(b"one")
        # It can still be dialled, as a hung process's kernel accepts.
        other = await network.connect("b:2", source="c:1")
        await trio.sleep(10)
        assert arrived == []
        network.heal()
        await ours.send_all(b"two")
        await ours.aclose()
        await trio.sleep(1)
        assert b"".join(data for _, data in arrived) == b"onetwo"
        assert arrived[-1][1] == b""
        await other.aclose()
        nursery.cancel_scope.cancel()
