"""Real TCP on loopback, port 0: serving, connecting, and hostile clients."""

import logging
from functools import partial

import pytest
import trio
import trio.testing

import repred
from repred.types import model

from .helpers import gset, wait_until


async def _serve(nursery, replica, **options):
    listeners = await nursery.start(partial(repred.serve_tcp, replica, 0, **options))
    return listeners[0].socket.getsockname()[1]


async def test_sync_and_live_updates_over_tcp():
    server, client = model(id="S"), model(id="C")
    server.set("from", "server")
    client.set("to", "server")
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server)
        conn = await nursery.start(repred.connect_tcp, client, "127.0.0.1", port)
        await conn.wait_synced()
        assert (
            server.to_dict() == client.to_dict() == {"from": "server", "to": "server"}
        )
        with repred.subscribe(client) as changes:
            server.set("live", True)
            assert (await changes.receive()).change == ["live", True]
        nursery.cancel_scope.cancel()


async def test_offline_peer_catches_up_with_only_what_it_lacks():
    server, client = gset("S"), gset("C")
    for i in range(100):
        server.update([i])
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server)
        first = await repred.connect_tcp(client, "127.0.0.1", port, live=False)
        assert first.updates_in == 100
        for i in range(100, 110):
            server.update([i])
        second = await repred.connect_tcp(client, "127.0.0.1", port, live=False)
        assert second.updates_in == 10
        assert second.updates_out == 0
        nursery.cancel_scope.cancel()
    assert client.state == set(range(110))


async def test_connect_to_a_dead_port_raises_one_oserror():
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OSError):
        await repred.connect_tcp(gset("A"), "127.0.0.1", port)


HOSTILE = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b'{"id":"X","clock":{}}\n[null,1,"X"]\n',
    b'{"id":"X","clock":{}}\n[["evil"],1e300,"S"]\n',
    b'{"id":"X","clock":{}}\n' + b"[" * 100_000,
    b"\xff\xfe\xfd\n",
    b'{"nope":true}\n',
    b'{"id":"X","clock":{},"type":"model"}\n',
    b'[["early"],1,"X"]\n',
]


async def test_hostile_clients_close_only_their_connection(caplog):
    caplog.set_level(logging.WARNING, logger="repred")
    server = gset("S")
    server.update(["safe"])
    before = (set(server.state), dict(server.clock))
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server, max_line_bytes=50_000)
        good = gset("G")
        conn = await nursery.start(repred.connect_tcp, good, "127.0.0.1", port)
        await conn.wait_synced()
        for payload in HOSTILE:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(payload)
            # The server closes on us: read until EOF.
            with trio.fail_after(10):
                while True:
                    try:
                        if not await stream.receive_some(65536):
                            break
                    except trio.BrokenResourceError:
                        break
            await stream.aclose()
        # The server survived and still serves the good peer, live.
        assert (set(server.state), dict(server.clock)) == before
        good.update(["still-here"])
        with repred.subscribe(server) as changes:
            await changes.receive()
        assert "still-here" in server.state
        nursery.cancel_scope.cancel()
    assert caplog.text.count("refused what a peer sent") >= len(HOSTILE)


async def test_many_clients_on_one_server():
    server = gset("S")
    clients = [gset(f"C{i}") for i in range(8)]
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server)
        conns = [
            await nursery.start(repred.connect_tcp, c, "127.0.0.1", port)
            for c in clients
        ]
        for i, c in enumerate(clients):
            c.update([i])
        for conn in conns:
            await conn.wait_synced()
        with trio.fail_after(10):
            for c in clients:
                await wait_until(c, lambda c=c: c.state == set(range(8)))
        nursery.cancel_scope.cancel()
