"""Links over WebSockets: the line protocol in messages split any way."""

from __future__ import annotations

import functools
import random

import orjson
import pytest
import trio
import trio_websocket

import repred
from repred._websocket import open_websocket
from repred.types import model

from .helpers import wait_until


def _filled(n: int = 300, id: str = "server") -> repred.Replica:
    m = model(id=id)
    for i in range(n):
        m.set(f"k{i}", i)
    return m


async def _serve(nursery, replica, **options) -> str:
    listeners = await nursery.start(
        functools.partial(repred.serve_websocket, replica, 0, **options)
    )
    return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/replicas/data"


@pytest.mark.parametrize("batches", [True, False])
async def test_a_sync_and_a_live_tail_over_websockets(batches):
    server = _filled()
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, server)
        client = model(id="client")
        client.set("from-client", 1)
        conn = await nursery.start(
            functools.partial(repred.connect_websocket, client, url, batches=batches)
        )
        with trio.fail_after(10):
            await conn.wait_synced()
            assert client.to_dict() == server.to_dict()
            stats = conn.statistics()
            assert stats.updates_in == 300
            assert stats.entries_expected == 300
            server.set("live", "yes")
            await wait_until(client, lambda: client.get("live") == "yes")
            client.set("back", "too")
            await wait_until(server, lambda: server.get("back") == "too")
            # Closed from one end, the WebSocket ends with a close frame each
            # way (cancelled at both ends at once, each would wait for the
            # other's).
            conn.close()
            await conn.wait_closed()
        nursery.cancel_scope.cancel()


async def test_lines_split_any_way_across_messages():
    """A client that sends its digest and entries in messages cut at random
    places, text and binary mixed, as JS websocket-stream may."""
    server = model(id="server")
    source = _filled(50, id="writer")
    lines = [b'{"id":"raw","clock":{}}\n']
    lines += [
        orjson.dumps([list(e.change), e.ts, e.source]) + b"\n" for e in source.history()
    ]
    lines.append(b'"SYNC"\n')
    data = b"".join(lines)
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, server)
        async with open_websocket(url) as ws:
            at = 0
            while at < len(data):
                step = rng.randint(1, 40)
                piece = data[at : at + step]
                at += step
                await ws.send_message(piece if rng.random() < 0.5 else piece.decode())
            with trio.fail_after(10):
                await wait_until(server, lambda: server.to_dict() == source.to_dict())
        nursery.cancel_scope.cancel()


async def until_closed(ws, payload: bytes | str | None = None) -> None:
    """Send ``payload`` (if any), then read until the server closes."""
    if payload is not None:
        await ws.send_message(payload)  # may find it closed already
    while True:
        await ws.get_message()


async def _refused(url: str, payload: bytes | str) -> None:
    """Send ``payload``; the server must end the connection."""
    async with open_websocket(url, max_message_size=1 << 22) as ws:
        with trio.fail_after(10):
            with pytest.raises(trio_websocket.ConnectionClosed):
                await until_closed(ws, payload)


async def test_hostile_websocket_clients_end_only_their_link():
    server = _filled(20)
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, server, max_line_bytes=4096)
        await _refused(url, b"garbage that is not JSON\n")
        await _refused(url, b'{"id":"x","clock":{}}\n' + b"[" * 10_000)  # no line end
        await _refused(url, b"x" * 200_000)  # one message over the limit
        # A far-future stamp is deferred, and the link stays up.
        async with open_websocket(url) as ws:
            await ws.send_message(
                b'{"id":"x","clock":{}}\n'
                + orjson.dumps([["far", 1], 2**52, "x"])
                + b"\n"
            )
            await ws.send_message(orjson.dumps([["near", 1], 1, "y"]) + b"\n")
            with trio.fail_after(10):
                await wait_until(server, lambda: server.get("near") == 1)
        assert "far" not in server
        # And the server still serves.
        good = model(id="good")
        await repred.connect_websocket(good, url, live=False)
        assert good.get("near") == 1
        nursery.cancel_scope.cancel()


async def test_a_client_that_never_sends_its_digest_is_cut(autojump_clock):
    server = _filled(5)
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, server, handshake_timeout=5)
        async with open_websocket(url) as ws:
            with pytest.raises(trio_websocket.ConnectionClosed):
                await until_closed(ws)
        nursery.cancel_scope.cancel()


async def test_origins_are_checked():
    server = _filled(5)
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, server, origins={"http://good.example"})
        with pytest.raises(repred.PeerClosed, match="403"):
            async with open_websocket(
                url, extra_headers=[(b"Origin", b"http://evil.example")]
            ):
                pass
        async with open_websocket(
            url, extra_headers=[(b"Origin", b"http://good.example")]
        ):
            pass
        # A program (no Origin header) is let in.
        await repred.connect_websocket(model(id="p"), url, live=False)
        nursery.cancel_scope.cancel()


async def test_a_refused_handshake_is_a_clear_error(autojump_clock):
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, model(id="tcp"), 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(repred.RepredError):
            await repred.connect_websocket(
                model(id="c"), f"ws://127.0.0.1:{port}/", handshake_timeout=1
            )
        nursery.cancel_scope.cancel()


async def test_a_server_that_closes_during_the_handshake_is_said_at_once():
    # A repred TCP port reads the upgrade request as a line, refuses it and
    # closes: the client says so, instead of waiting out its handshake
    # timeout (30 s) and then blaming the time.
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, model(id="tcp"), 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(repred.PeerClosed, match="closed the connection"):
            await repred.connect_websocket(model(id="c"), f"ws://127.0.0.1:{port}/")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("server", ["serve_websocket", "web port"])
async def test_connections_that_never_finish_a_handshake_are_bounded(server):
    replica = _filled(5)
    async with trio.open_nursery() as nursery:
        if server == "serve_websocket":
            listeners = await nursery.start(
                functools.partial(repred.serve_websocket, replica, 0, max_links=3)
            )
        else:
            from repred._web import serve_web

            listeners = await nursery.start(
                functools.partial(serve_web, {"data": replica}, 0, max_links=3)
            )
        port = listeners[0].socket.getsockname()[1]
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        # A fourth pushes out the oldest silent one, without waiting for a
        # timeout, and is served.
        path = "/replicas/data" if server == "web port" else "/"
        good = model(id="good")
        with trio.fail_after(5):
            await repred.connect_websocket(
                good, f"ws://127.0.0.1:{port}{path}", live=False
            )
            assert await silent[0].receive_some(10) == b""
        assert good.to_dict() == replica.to_dict()
        for stream in silent:
            await stream.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.slow  # 1,000 sockets
async def test_a_thousand_idle_websockets_cost_bounded_links():
    """Upgraded connections that never send a digest: at most max_links are
    held (the quietest is dropped for a new one), and the server serves."""
    server = _filled(5)
    held = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                repred.serve_websocket,
                server,
                0,
                max_links=50,
                on_connection=held.append,
            )
        )
        url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
        async with trio.open_nursery() as idle:
            for _ in range(1000):
                await idle.start(_idle_client, url)
            await trio.testing.wait_all_tasks_blocked()
            live = [c for c in held if not c._scope.cancel_called]
            assert len(live) <= 50
            good = model(id="good")
            with trio.fail_after(10):
                await repred.connect_websocket(good, url, live=False)
            assert good.to_dict() == server.to_dict()
            idle.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


async def _idle_client(url, task_status=trio.TASK_STATUS_IGNORED):
    async with open_websocket(url) as ws:
        task_status.started()
        try:
            await until_closed(ws)
        except trio_websocket.ConnectionClosed:
            pass


async def test_a_client_that_stops_reading_is_cut():
    server = model(id="server")
    for i in range(4000):  # 16 MB: more than the sockets' buffers hold
        server.set(f"k{i}", "x" * 4000)
    conns = []
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, server, send_timeout=1, on_connection=conns.append)
        async with open_websocket(url) as ws:
            await ws.send_message(b'{"id":"slow","clock":{}}\n')
            # It reads nothing: its queue fills, the server's sends stall,
            # and the server gives up on it after send_timeout.
            while not conns:
                await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(10):
                await conns[0].wait_closed()
        good = model(id="good")
        await repred.connect_websocket(good, url, live=False)
        assert len(good.to_dict()) == 4000
        nursery.cancel_scope.cancel()


async def test_a_timeout_inside_a_connection_is_not_a_handshake_timeout():
    async with trio.open_nursery() as nursery:
        url = await _serve(nursery, _filled(1))
        with pytest.raises(trio.TooSlowError):
            await _slow_inside(url)
        nursery.cancel_scope.cancel()


async def _slow_inside(url):
    async with open_websocket(url):
        with trio.fail_after(0.01):
            await trio.sleep_forever()


async def test_a_tls_handshake_that_never_ends_is_a_handshake_timeout(
    autojump_clock,
):
    async def silent(stream):
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, silent, 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(repred.RepredError):
            await repred.connect_websocket(
                model(id="c"), f"wss://127.0.0.1:{port}/", handshake_timeout=5
            )
        nursery.cancel_scope.cancel()
