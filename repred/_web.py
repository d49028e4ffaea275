"""The peer's web port: its pages and a WebSocket link per named replica.

One port serves:

* ``GET /``: the live map page (the replica named ``"data"``);
* ``GET /todo``: the talk's todo lists, on the ``doc()`` named ``"todo"``;
* ``GET /repred.js``: the JavaScript client the pages use, which any other
  page may load too;
* a WebSocket at ``/replicas/NAME`` for each named replica, speaking the
  plain single-replica protocol (an unmodified JS scuttlebutt Model piped
  through ``websocket-stream`` replicates with ``/replicas/data``).

Requests are read with h11 (no HTTP parsing written here); a WebSocket
upgrade is handed, with the bytes already read, to trio-websocket. A
browser's WebSocket must come from this server's own origin, or one of
``origins``; programs (no ``Origin`` header) may always connect. Limits: a
request head of at most 16 KiB within the handshake timeout, at most
``max_links`` WebSocket links per replica (the quietest is dropped), and
everything the WebSocket links promise (see :mod:`repred._websocket`).
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
from typing import TYPE_CHECKING

import h11
import trio
import trio_websocket

from ._links import LinkOptions, stream_server
from ._log import limited
from ._websocket import _MESSAGE_SLACK, MessageStream

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping

    from ._links import Connection
    from ._replica import Replica

__all__ = ["PAGES", "serve_web"]

#: The files served, by path: (file in ``repred/web``, content type).
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/todo": ("todo.html", "text/html; charset=utf-8"),
    "/repred.js": ("repred.js", "text/javascript; charset=utf-8"),
}

_HEAD_LIMIT = 16 * 1024


@functools.cache
def _page(name: str) -> bytes:
    return importlib.resources.files("repred").joinpath("web", name).read_bytes()


class _Replay(trio.abc.Stream):
    """A stream whose first bytes were already read: they are read again."""

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        self._stream = stream
        self._head = head

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            await trio.lowlevel.checkpoint()
            return head
        return bytes(await self._stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self._stream.aclose()


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


async def _respond(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("cache-control", "no-cache"),
        ("connection", "close"),
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def serve_web(
    replicas: Mapping[str, Replica],
    port: int,
    *,
    host: str = "127.0.0.1",
    origins: Collection[str] = (),
    options: LinkOptions | None = None,
    max_links: int = 512,
    on_connection: Callable[[Connection], None] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the pages and a WebSocket link per replica on ``host:port``.

    Args:
        replicas: the replicas to offer, by name (``/replicas/NAME``).
        origins: other origins whose pages may open WebSocket links
            (``"http://host:port"``), besides this server's own.
        options: the links' options (:class:`LinkOptions`).
    """
    options = options or LinkOptions()
    handlers = {
        name: stream_server(replica, True, options, max_links, on_connection)
        for name, replica in replicas.items()
    }
    allowed = frozenset(origins)

    async def handle(stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_HEAD_LIMIT)
        head = bytearray()
        try:
            with trio.fail_after(options.handshake_timeout):
                while True:
                    event = conn.next_event()
                    if event is not h11.NEED_DATA:
                        break
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    head += data
                    conn.receive_data(bytes(data))
        except (trio.TooSlowError, h11.RemoteProtocolError, trio.BrokenResourceError):
            limited(logging.INFO, "web-request", "repred: a bad or slow HTTP request")
            return
        if not isinstance(event, h11.Request):
            return
        path = event.target.split(b"?", 1)[0].decode("latin-1")
        upgrade = _header(event.headers, b"upgrade")
        if upgrade is not None and upgrade.lower() == b"websocket":
            await _websocket(stream, bytes(head), event, path)
        elif event.method not in (b"GET", b"HEAD"):
            await _respond(stream, conn, 405, b"method not allowed\n")
        elif path in PAGES:
            name, content_type = PAGES[path]
            body = _page(name) if event.method == b"GET" else b""
            await _respond(stream, conn, 200, body, content_type)
        else:
            await _respond(stream, conn, 404, b"not found\n")

    async def _websocket(
        stream: trio.abc.Stream, head: bytes, request: h11.Request, path: str
    ) -> None:
        prefix = "/replicas/"
        handler = handlers.get(path[len(prefix) :]) if path.startswith(prefix) else None
        origin = _header(request.headers, b"origin")
        own = _header(request.headers, b"host")
        async with trio.open_nursery() as nursery:
            ws_request = await trio_websocket.wrap_server_stream(
                nursery,
                _Replay(stream, head),
                max_message_size=options.max_line_bytes + _MESSAGE_SLACK,
            )
            if handler is None:
                await ws_request.reject(404, body=b"no such replica\n")
                return
            if origin is not None and not _allowed(origin, own, allowed):
                limited(
                    logging.INFO,
                    "origin",
                    "repred: WebSocket refused: origin %r not allowed",
                    origin[:100],
                )
                await ws_request.reject(403, body=b"origin not allowed\n")
                return
            ws = await ws_request.accept()
            await handler(MessageStream(ws))
            nursery.cancel_scope.cancel()

    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(listeners)


def _allowed(origin: bytes, host: bytes | None, others: frozenset[str]) -> bool:
    """A page's origin may link: this server's own, or one of ``others``."""
    text = origin.decode("latin-1")
    if host is not None and text in (
        f"http://{host.decode('latin-1')}",
        f"https://{host.decode('latin-1')}",
    ):
        return True
    return text in others
