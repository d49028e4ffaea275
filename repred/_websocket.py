"""Links over WebSockets (trio-websocket): the same line protocol as TCP.

Each WebSocket message, text or binary, carries bytes of the same
newline-delimited stream; a receiver accepts any split of lines across
messages (JS ``websocket-stream`` sends each chunk of a Node stream as one
binary message). This side sends binary messages of at most 16 KiB. Every
guarantee of TCP links holds, because everything above the framing is the
same code: digests, histories, the live tail, no echo, hostile input ending
only its link, statistics, ``wait_synced()`` and the timeouts.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import urllib.parse
from typing import TYPE_CHECKING, Any, NoReturn, cast

import trio
import trio_websocket

from ._connection import Connection, ConnectionStatistics, run_link
from ._errors import PeerClosed, SyncTimeout
from ._groups import single_errors
from ._http import Replay, Request, RequestPolicy, header, read_request, respond
from ._options import (
    DEFAULT_ANTIENTROPY_INTERVAL,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_MAX_LINKS,
    DEFAULT_SEND_TIMEOUT,
    LinkOptions,
    pick,
)
from ._pending import PendingTable
from ._serving import serve_streams, stream_server
from ._session import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ENTRIES
from ._tls import start_tls
from ._wire import DEFAULT_MAX_LINE_BYTES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Collection

    from ._replica import Replica

__all__ = ["MessageStream", "connect_websocket", "open_websocket", "serve_websocket"]

#: Room a message may take beyond the line limit (a sender may pack a line
#: and the start of the next into one message).
_MESSAGE_SLACK = 64 * 1024
#: Seconds a WebSocket close handshake may take before the TCP connection
#: is dropped anyway.
_CLOSE_WITHIN = 1.0


class MessageStream(trio.abc.Stream):
    """A WebSocket connection as a byte stream: each message is a chunk.

    Sends go as binary messages; text messages received are taken as their
    UTF-8 bytes. The end of the connection reads as the end of the stream.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.ws.send_message(bytes(data))
        except trio_websocket.ConnectionClosed as exc:
            raise trio.BrokenResourceError(f"WebSocket closed: {exc.reason}") from None

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            message = await self.ws.get_message()
        except trio_websocket.ConnectionClosed:
            return b""
        return message.encode() if isinstance(message, str) else bytes(message)

    async def aclose(self) -> None:
        # A WebSocket ends with a close frame each way; the links close their
        # streams forcefully (cancelled), which would drop the TCP connection
        # without one. So the close is shielded, and bounded.
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_WITHIN):
            await self.ws.aclose()


async def serve_websocket(
    replica: Replica,
    port: int,
    *,
    host: str | None = "127.0.0.1",
    hosts: Collection[str] | None = (),
    origins: Collection[str] | None = (),
    live: bool = True,
    handler_nursery: trio.Nursery | None = None,
    on_connection: Callable[[Connection], None] | None = None,
    max_links: int = DEFAULT_MAX_LINKS,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_entries: int = DEFAULT_BATCH_ENTRIES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    batches: bool = True,
    send: bool = True,
    receive: bool = True,
    antientropy_interval: float | None = DEFAULT_ANTIENTROPY_INTERVAL,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept peers over WebSockets and replicate with each (any path).

    Like :func:`repred.serve_tcp` (the same options; with ``ssl_context``
    it serves ``wss://``), with WebSocket framing: see
    :mod:`repred._websocket`.

    Who may connect (each refusal is a 403 before the upgrade, logged): the
    ``Host`` header must name this server: its address (any address, on
    every interface), ``localhost``, on a loopback address or every
    interface also ``127.0.0.1`` and ``::1``, or a name in ``hosts``
    (``None``, or ``"*"`` in it: any name, for a proxy that checks names
    itself), so that a page whose name an attacker pointed at this address
    (DNS rebinding) is refused; and a browser's request (one with
    ``Origin``; programs send none) must come from a page of this server's
    own origin or of ``origins`` (``"http://host:port"``; ``None``: any).

    Raises:
        ValueError: a name in ``hosts`` or an origin that is not one (at
            the call), or a bad option as for :func:`repred.serve_tcp`.
    """
    options = pick(LinkOptions, locals())
    policy = RequestPolicy.serving(host, hosts=hosts, origins=origins)
    handler = stream_server(replica, live, options, max_links, on_connection)
    answer = functools.partial(_answer, policy=policy)
    await serve_streams(
        websocket_server(lambda path: handler, answer, options, max_links),
        port,
        host=host,
        ssl_context=ssl_context,
        handshake_timeout=handshake_timeout,
        max_links=max_links,
        handler_nursery=handler_nursery,
        task_status=task_status,
    )


def websocket_server(
    route: Callable[[str], Callable[[trio.abc.Stream], Awaitable[None]] | None],
    answer: Callable[[trio.abc.Stream, Request], Awaitable[bytes | None]],
    options: LinkOptions,
    max_pending: int,
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """A handler that reads an HTTP request on each stream, lets ``answer``
    respond to it (a refusal, a page) or take it as a WebSocket upgrade (it
    gives back the bytes read), and hands each WebSocket, as a
    :class:`MessageStream`, to ``route(path)`` (a path that routes nowhere
    gets 404).

    Each request is read within the handshake timeout and 16 KiB; at most
    ``max_pending`` are read at once, bounded as TLS handshakes are (see
    :func:`repred._tls.tls_server`).
    """
    pending = PendingTable(max_pending)
    upgrade = websocket_upgrade(route, options)

    async def handle(stream: trio.abc.Stream) -> None:
        head = None
        with pending.hold(stream):
            read = await read_request(stream, options.handshake_timeout)
            if read is not None:
                head = await answer(stream, read)
        if head is None:
            await trio.aclose_forcefully(stream)
        else:
            await upgrade(Replay(stream, head))

    return handle


async def _answer(
    stream: trio.abc.Stream, read: Request, policy: RequestPolicy
) -> bytes | None:
    """The bytes read of a WebSocket request ``policy`` takes (to replay to
    the upgrade), or ``None`` once another request is answered: 400 for
    one that is no WebSocket upgrade, 403 for one ``policy`` refuses."""
    conn, request, head = read
    wants = header(request.headers, b"upgrade")
    if wants is None or wants.lower() != b"websocket":
        await respond(stream, conn, 400, b"a WebSocket endpoint\n")
        return None
    refused = policy.refusal(request.headers)
    if refused is not None:
        await respond(stream, conn, 403, refused)
        return None
    return head


def websocket_upgrade(
    route: Callable[[str], Callable[[trio.abc.Stream], Awaitable[None]] | None],
    options: LinkOptions,
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """Take the WebSocket handshake of a request whose head was read (and is
    replayed in front of ``stream``), and run ``route(path)`` on it."""

    async def upgrade(stream: trio.abc.Stream) -> None:
        try:
            async with trio.open_nursery() as nursery:
                ws = target = None
                with trio.move_on_after(options.handshake_timeout):
                    request = await trio_websocket.wrap_server_stream(
                        nursery,
                        stream,
                        max_message_size=options.max_line_bytes + _MESSAGE_SLACK,
                    )
                    target = route(request.path.split("?", 1)[0])
                    if target is None:
                        await request.reject(404, body=b"no such replica\n")
                    else:
                        ws = await request.accept()
                if ws is not None and target is not None:
                    await target(MessageStream(ws))
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    return upgrade


async def connect_websocket(
    replica: Replica,
    url: str,
    *,
    live: bool = True,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_entries: int = DEFAULT_BATCH_ENTRIES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    batches: bool = True,
    send: bool = True,
    receive: bool = True,
    antientropy_interval: float | None = DEFAULT_ANTIENTROPY_INTERVAL,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
) -> ConnectionStatistics:
    """Connect to a peer at a ``ws://`` or ``wss://`` URL and replicate.

    The options are those of :func:`repred.connect_tcp`.

    Raises:
        OSError: the connection could not be made.
        PeerClosed: the WebSocket handshake failed (the message says why).
        RepredError: as :func:`repred.replicate`.
    """
    options = pick(LinkOptions, locals())
    async with open_websocket(
        url,
        ssl_context=ssl_context,
        max_message_size=max_line_bytes + _MESSAGE_SLACK,
        timeout=handshake_timeout,
    ) as ws:
        return await run_link(
            replica,
            MessageStream(ws),
            live=live,
            on_start=task_status.started,
            options=options,
        )


@contextlib.asynccontextmanager
async def open_websocket(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_LINE_BYTES + _MESSAGE_SLACK,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A client WebSocket connection to ``url`` (``ws://`` or ``wss://``).

    The TCP (and TLS) stream is this function's own, and it is closed on
    the way out whatever happened: trio-websocket's client leaves its socket
    open when the server ends the connection first.

    Raises:
        ValueError: not a ``ws://`` or ``wss://`` URL.
        OSError: the connection could not be made.
        PeerClosed: the handshake failed (the message says why).
        SyncTimeout: it took longer than ``timeout``.
    """
    parts, host, port, resource = _target(url)
    secure = parts.scheme == "wss"
    stream: Any = await trio.open_tcp_stream(host, port)
    watched: _Watched | None = None
    try:
        async with _handshake_errors(url), trio.open_nursery() as nursery:
            with trio.move_on_after(timeout) as handshake:
                if secure:
                    stream = await start_tls(
                        stream,
                        ssl_context or ssl.create_default_context(),
                        server_hostname=host,
                        timeout=timeout,
                    )
                # trio-websocket waits for a response even once the server
                # has closed: the handshake ends when the stream does.
                watched = _Watched(stream, handshake.cancel)
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    cast("Any", watched),  # any trio stream does
                    parts.netloc,
                    resource,
                    extra_headers=extra_headers,
                    max_message_size=max_message_size,
                )
                watched.on_end = None
            if watched is not None and watched.ended:
                raise PeerClosed(
                    f"{url} closed the connection during the WebSocket handshake"
                    " (is it a WebSocket endpoint? a repred TCP port takes"
                    " connect_tcp, a gossip port open_peer)"
                )
            if handshake.cancelled_caught:
                raise SyncTimeout(f"no WebSocket handshake within {timeout} s")
            try:
                yield ws
            finally:
                await MessageStream(ws).aclose()
    finally:
        await trio.aclose_forcefully(stream)


def _target(url: str) -> tuple[urllib.parse.SplitResult, str, int, str]:
    """A ``ws://`` or ``wss://`` URL's parts, host, port and resource."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts, parts.hostname, port, resource


class _Watched(trio.abc.Stream):
    """A client's stream, which calls ``on_end`` once if the server ends it
    or it fails (``ended``): what a handshake waits on must not outlive it."""

    def __init__(self, stream: Any, on_end: Callable[[], object]) -> None:
        self.stream = stream
        self.on_end: Callable[[], object] | None = on_end
        self.ended = False

    def _end(self) -> None:
        if self.on_end is not None:
            self.ended = True
            self.on_end()
            self.on_end = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data: bytes = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end()
            raise
        if not data:
            self._end()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


@contextlib.asynccontextmanager
async def _handshake_errors(url: str) -> AsyncIterator[None]:
    """The single error that ended a client connection, and a failed
    handshake as :class:`PeerClosed`."""
    try:
        async with single_errors():
            yield
    except trio_websocket.HandshakeError as exc:
        raise PeerClosed(f"WebSocket handshake with {url} failed: {exc!r}") from None
