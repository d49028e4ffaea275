"""Connections that never finish opening (a request head sent halfway, a TLS
handshake never started) are bounded per client address: a flood from one
address pushes out its own oldest, never anyone else's."""

from __future__ import annotations

import functools
import os
import socket
import ssl

import pytest
import trio
import trio.testing

import repred
from repred.types import model

from .helpers import wait_until

trustme = pytest.importorskip("trustme")

#: The address the stalled connections come from (all of 127/8 is loopback).
FLOOD = "127.0.0.2"


def _filled(n: int = 20) -> repred.Replica:
    m = model(id="server")
    for i in range(n):
        m.set(f"k{i}", i)
    return m


async def _stall(port: int, n: int, opening: bytes, address: str = FLOOD) -> list:
    """``n`` connections from ``address`` that send ``opening`` and stop."""
    streams = []
    for _ in range(n):
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=address)
        if opening:
            await stream.send_all(opening)
        streams.append(stream)
    await trio.testing.wait_all_tasks_blocked()
    return streams


def _closed(stream) -> bool:
    """Whether the server has closed ``stream``, asked without waiting (on
    loopback the end arrives as the server closes)."""
    fd = stream.socket.fileno()
    with socket.socket(fileno=os.dup(fd)) as peek:
        try:
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True


async def _page(port: int, address: str = "127.0.0.1") -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=address)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = b""
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                reply += data
    return reply.split(b"\r\n", 1)[0].strip()


HALF_A_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.mark.parametrize("server", ["web port", "serve_websocket"])
async def test_stalled_request_heads_from_one_address_lock_out_no_one(nursery, server):
    replica = _filled()
    if server == "web port":
        from repred._web import serve_web

        serve = functools.partial(serve_web, {"data": replica}, 0, max_links=24)
    else:
        serve = functools.partial(repred.serve_websocket, replica, 0, max_links=24)
    port = (await nursery.start(serve))[0].socket.getsockname()[1]
    # More half-sent heads from one address than the server reads at once.
    stalled = await _stall(port, 60, HALF_A_HEAD)
    # Others are served, page loads and links alike.
    if server == "web port":
        for _ in range(5):
            assert await _page(port) == b"HTTP/1.1 200"
    path = "/replicas/data" if server == "web port" else "/"
    good = model(id="good")
    with trio.fail_after(10):
        await repred.connect_websocket(good, f"ws://127.0.0.1:{port}{path}", live=False)
    assert good.to_dict() == replica.to_dict()
    # The flooding address holds at most its share: its oldest were closed.
    assert [_closed(s) for s in stalled] == [True] * 44 + [False] * 16
    for stream in stalled:
        await stream.aclose()


async def test_a_request_from_a_flooding_address_is_served_too(nursery):
    from repred._web import serve_web

    serve = functools.partial(serve_web, {"data": _filled()}, 0, max_links=24)
    port = (await nursery.start(serve))[0].socket.getsockname()[1]
    stalled = await _stall(port, 16, HALF_A_HEAD)
    # A new request pushes out the oldest stalled one, and is answered.
    assert await _page(port, FLOOD) == b"HTTP/1.1 200"
    assert [_closed(s) for s in stalled] == [True] + [False] * 15
    for stream in stalled:
        await stream.aclose()


@pytest.fixture
def ca():
    return trustme.CA()


def _contexts(ca) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    for ctx in (server, client):
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        ca.configure_trust(ctx)
    server.verify_mode = ssl.CERT_REQUIRED
    return server, client


async def test_stalled_tls_handshakes_from_one_address_lock_out_no_one(nursery, ca):
    replica = _filled()
    server_ctx, client_ctx = _contexts(ca)
    serve = functools.partial(
        repred.serve_tcp, replica, 0, ssl_context=server_ctx, max_links=24
    )
    port = (await nursery.start(serve))[0].socket.getsockname()[1]
    stalled = await _stall(port, 60, b"")
    good = model(id="good")
    with trio.fail_after(10):
        await repred.connect_tcp(
            good, "127.0.0.1", port, live=False, ssl_context=client_ctx
        )
    assert good.to_dict() == replica.to_dict()
    assert [_closed(s) for s in stalled] == [True] * 44 + [False] * 16
    for stream in stalled:
        await stream.aclose()


async def test_stalled_tls_handshakes_do_not_keep_a_new_peer_out(ca):
    server_ctx, client_ctx = _contexts(ca)
    tls = {"ssl_context": server_ctx, "client_ssl_context": client_ctx}
    hub, newcomer = model(id="hub"), model(id="newcomer")
    # Handshakes that never time out here: only pushing out lets one in.
    slow = {"connect_timeout": 3600.0, **tls}
    async with repred.open_peer(replicas={"data": hub}, max_links=24, **slow) as a:
        stalled = await _stall(a.port, 60, b"")
        async with repred.open_peer(
            replicas={"data": newcomer}, seeds=[a.address], **slow
        ):
            newcomer.set("first", 1)
            with trio.fail_after(10):
                await wait_until(hub, lambda: hub.get("first") == 1)
        assert sum(map(_closed, stalled)) >= 44
        for stream in stalled:
            await stream.aclose()


# -- the table ---------------------------------------------------------------


class _Peer(trio.abc.Stream):
    """A stream whose socket reports a given peer address."""

    def __init__(self, address: str) -> None:
        class Socket:
            @staticmethod
            def getpeername():
                return (address, 1234, 0, 0) if ":" in address else (address, 1234)

        self.socket = Socket()

    async def send_all(self, data):  # pragma: no cover
        raise NotImplementedError

    async def wait_send_all_might_not_block(self):  # pragma: no cover
        raise NotImplementedError

    async def receive_some(self, max_bytes=None):  # pragma: no cover
        raise NotImplementedError

    async def aclose(self):  # pragma: no cover
        pass


class _Wrapped(_Peer):
    """A stream over another, as a TLS stream is over its socket's."""

    def __init__(self, address: str) -> None:
        self.transport_stream = _Peer(address)


@pytest.mark.parametrize(
    ("stream", "key"),
    [
        (_Peer("192.0.2.1"), "192.0.2.1"),
        (_Peer("::ffff:192.0.2.1"), "192.0.2.1"),
        (_Peer("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64"),
        (_Peer("fe80::1%eth0"), "fe80::/64"),
        (_Wrapped("192.0.2.1"), "192.0.2.1"),
        (trio.testing.memory_stream_pair()[0], None),
    ],
)
def test_a_client_is_an_ipv4_address_or_an_ipv6_64(stream, key):
    from repred._pending import client_key

    assert client_key(stream) == key


async def test_the_oldest_opening_is_pushed_out_per_client_and_in_all():
    from repred._pending import PendingTable

    table = PendingTable(limit=4, per_client=2)
    outcome: dict[str, bool] = {}

    async def opening(name, address, task_status=trio.TASK_STATUS_IGNORED):
        with table.hold(_Peer(address)) as scope:
            task_status.started()
            await trio.sleep_forever()
        outcome[name] = scope.cancelled_caught  # (only once pushed out)

    async with trio.open_nursery() as nursery:
        await nursery.start(opening, "a1", "192.0.2.1")
        await nursery.start(opening, "a2", "192.0.2.1")
        await nursery.start(opening, "a3", "192.0.2.1")  # pushes out a1
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {"a1": True}
        await nursery.start(opening, "b1", "192.0.2.2")
        await nursery.start(opening, "c1", "192.0.2.3")
        await nursery.start(opening, "d1", "192.0.2.4")  # pushes out a2
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {"a1": True, "a2": True}
        assert len(table) == 4
        nursery.cancel_scope.cancel()
    assert len(table) == 0
    assert outcome == {"a1": True, "a2": True}


# -- at the sizes they were seen at -------------------------------------------


@pytest.mark.slow
async def test_five_hundred_stalled_heads_leave_page_loads_alone(nursery):
    from repred._web import serve_web

    listeners = await nursery.start(serve_web, {"data": _filled()}, 0)
    port = listeners[0].socket.getsockname()[1]
    stalled = await _stall(port, 520, HALF_A_HEAD)
    for _ in range(59):
        assert await _page(port) == b"HTTP/1.1 200"
    for stream in stalled:
        await stream.aclose()


@pytest.mark.slow
async def test_six_hundred_stalled_handshakes_leave_a_new_peer_alone(ca):
    server_ctx, client_ctx = _contexts(ca)
    slow = {"connect_timeout": 3600.0, "ssl_context": server_ctx}
    slow["client_ssl_context"] = client_ctx
    hub, newcomer = model(id="hub"), model(id="newcomer")
    async with repred.open_peer(replicas={"data": hub}, **slow) as a:
        stalled = await _stall(a.port, 600, b"")
        async with repred.open_peer(
            replicas={"data": newcomer}, seeds=[a.address], **slow
        ):
            newcomer.set("first", 1)
            with trio.fail_after(10):
                await wait_until(hub, lambda: hub.get("first") == 1)
        for stream in stalled:
            await stream.aclose()
