"""One-way links: a read-only mirror (receive=False) and a write-only
link (send=False), as JS scuttlebutt's createReadStream/createWriteStream."""

from __future__ import annotations

import pytest
import trio

import repred
from repred.protocol import Session
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
