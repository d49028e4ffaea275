"""One-way links: a read-only mirror (receive=False) and a write-only
link (send=False), as JS scuttlebutt's createReadStream/createWriteStream."""

from __future__ import annotations

import errno
from contextlib import AsyncExitStack

import pytest
import trio

import repred
from repred.protocol import Session
from repred.testing import MemoryNetwork
from repred.types import model

from .helpers import SessionPair


def _filled(id: str, n: int = 20) -> repred.Replica:
    m = model(id=id)
    for i in range(n):
        m.set(f"{id}{i}", i)
    return m


@pytest.mark.parametrize("batches", [True, False])
def test_a_mirror_that_does_not_receive_serves_and_refuses(batches):
    mirror, writer = _filled("M"), _filled("W")
    pair = SessionPair(mirror, writer, batches=batches)
    pair.a = Session(mirror, receive=False, batches=batches)
    pair.pump()
    assert writer.to_dict() == {**mirror.to_dict(), **writer.to_dict()}
    assert set(mirror.to_dict()) == {f"M{i}" for i in range(20)}
    stats = pair.a.statistics()
    assert stats.refused == 20
    assert stats.updates_in == 0
    assert pair.a.synced
    assert pair.b.synced
    # Live writes are refused too, and the link stays up.
    writer.set("late", 1)
    pair.pump()
    assert "late" not in mirror
    assert pair.a.statistics().refused == 21
    mirror.set("news", 1)
    pair.pump()
    assert writer.get("news") == 1


def test_a_link_that_does_not_send_sends_only_its_digest():
    reader, source = _filled("R"), _filled("S")
    pair = SessionPair(reader, source)
    pair.a = Session(reader, send=False)
    pair.pump()
    sent = b"".join(pair.a_to_b)
    assert sent.count(b"\n") == 1
    assert sent.startswith(b'{"id":"R"')
    assert set(reader.to_dict()) >= {f"S{i}" for i in range(20)}
    assert set(source.to_dict()) == {f"S{i}" for i in range(20)}
    assert pair.a.synced  # it had nothing to send: done once the peer's SYNC came
    reader.set("local", 1)
    pair.pump()
    assert "local" not in source
    assert b"".join(pair.a_to_b) == sent


async def test_one_way_links_over_tcp():
    mirror, writer = _filled("M"), _filled("W")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: repred.serve_tcp(
                mirror, 0, receive=False, task_status=task_status
            )
        )
        port = listeners[0].socket.getsockname()[1]
        stats = await repred.connect_tcp(writer, "127.0.0.1", port, live=False)
        assert stats.synced
        assert set(writer.to_dict()) >= set(mirror.to_dict())
        assert not any(k.startswith("W") for k in mirror.to_dict())
        # A pull-only client: takes everything, gives nothing.
        puller = _filled("P")
        stats = await repred.connect_tcp(
            puller, "127.0.0.1", port, live=False, send=False
        )
        assert stats.synced
        assert stats.updates_out == 0
        assert set(puller.to_dict()) >= set(mirror.to_dict())
        nursery.cancel_scope.cancel()


async def test_options_are_checked():
    with pytest.raises(TypeError, match="send must be a bool"):
        await repred.connect_tcp(model(), "127.0.0.1", 1, send="yes")


async def test_a_mirror_that_dials_refuses_what_the_served_side_sends():
    """receive=False holds whichever side dialled: here the mirror dials."""
    mirror, writer = _filled("M"), _filled("W")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, writer, 0)
        port = listeners[0].socket.getsockname()[1]
        stats = await repred.connect_tcp(
            mirror, "127.0.0.1", port, live=False, receive=False
        )
        assert stats.synced
        assert stats.refused == 20
        assert stats.updates_in == 0
        assert not any(k.startswith("W") for k in mirror.to_dict())
        assert set(writer.to_dict()) >= set(mirror.to_dict())  # it still serves
        nursery.cancel_scope.cancel()


class _OneWayNetwork(MemoryNetwork):
    """A network on which one node may not dial another (the other way
    round works): so a test knows which side dialled every link."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: set[tuple[str, str]] = set()

    async def connect(self, address: str, *, source: str) -> trio.abc.Stream:
        if (source, address) in self.refused:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.ECONNREFUSED, f"{source} may not dial {address}")
        return await super().connect(address, source=source)


def _wall():
    return 1_700_000_000_000 + trio.current_time() * 1000


@pytest.mark.parametrize("dials", ["read-only node", "writer"])
async def test_a_read_only_peer_applies_no_data_whichever_side_dials(
    dials, autojump_clock
):
    network = _OneWayNetwork()
    ro_data, writer_data = model(id="ro", wall=_wall), model(id="w", wall=_wall)
    ro_data.set("from-ro", 1)
    writer_data.set("early", 1)
    opts = {
        "transport": network,
        "wall": _wall,
        "heartbeat_interval": 0.5,
        "gossip_interval": 2.0,
        "seed_interval": 1.0,
    }
    async with AsyncExitStack() as stack:

        async def peer(data, seeds=(), **more):
            return await stack.enter_async_context(
                repred.open_peer(replicas={"data": data}, seeds=seeds, **opts, **more)
            )

        if dials == "read-only node":
            writer = await peer(writer_data)
            ro = await peer(ro_data, [writer.address], read_only=True)
            network.refused.add((writer.address, ro.address))
        else:
            ro = await peer(ro_data, read_only=True)
            writer = await peer(writer_data, [ro.address])
            network.refused.add((ro.address, writer.address))
        await trio.sleep(5)
        writer_data.set("injected", "evil")
        await trio.sleep(10)  # several gossip rounds, links up and down
        # Membership flows both ways (each map holds the other under its
        # own id, whichever side may not dial), the read-only node's data
        # goes out...
        for a, b in [(ro, writer), (writer, ro)]:
            assert a.node_id(b.address) == b.membership.id
        assert writer_data.get("from-ro") == 1
        # ...but nothing the writer wrote, before or during a link, lands.
        assert "injected" not in ro_data
        assert "early" not in ro_data
        stats = ro.statistics()
        assert stats.refused >= 2  # counted, over links that came and went
        if dials == "read-only node":
            assert stats.dials > stats.dial_failures
        else:
            assert stats.accepted > 0


def test_a_side_that_does_not_receive_says_so_in_its_digest():
    """So a client that cannot otherwise tell (a page) shows its writes as
    refused instead of sending them into the void."""
    import orjson

    def digest(**options):
        first = Session(model(id="A"), **options).data_to_send().split(b"\n")[0]
        return orjson.loads(first)

    assert digest(receive=False)["receive"] == 0
    assert "receive" not in digest()  # as before: JS peers see no change
    # A repred peer reading such a digest goes on as before.
    mirror, writer = _filled("M"), _filled("W")
    pair = SessionPair(mirror, writer)
    pair.a = Session(mirror, receive=False)
    pair.pump()
    assert pair.b.synced
    assert set(writer.to_dict()) >= set(mirror.to_dict())
