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

import trio

from ._http import Replay, header, read_request, respond
from ._links import LinkOptions, stream_server
from ._log import limited
from ._websocket import websocket_upgrade

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Mapping

    from ._links import Connection
    from ._replica import Replica

__all__ = ["PAGES", "serve_web"]

#: The files served, by path: (file in ``repred/web``, content type).
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/todo": ("todo.html", "text/html; charset=utf-8"),
    "/repred.js": ("repred.js", "text/javascript; charset=utf-8"),
}


@functools.cache
def _page(name: str) -> bytes:
    return importlib.resources.files("repred").joinpath("web", name).read_bytes()


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
    prefix = "/replicas/"

    def route(path: str) -> Callable[[trio.abc.Stream], Awaitable[None]] | None:
        return handlers.get(path[len(prefix) :]) if path.startswith(prefix) else None

    # The origin is checked on the request as h11 read it (which has the
    # Host header the page's own origin is made of), before the upgrade.
    upgrade = websocket_upgrade(route, options)
    requests = trio.CapacityLimiter(max_links)

    async def handle(stream: trio.abc.Stream) -> None:
        # At most max_links requests are read at once (each within the
        # handshake timeout); more are closed at once.
        try:
            requests.acquire_nowait()
        except trio.WouldBlock:
            limited(logging.INFO, "web-busy", "repred: too many requests under way")
            await trio.aclose_forcefully(stream)
            return
        try:
            read = await read_request(stream, options.handshake_timeout)
        finally:
            requests.release()
        if read is None:
            return
        conn, event, head = read
        path = event.target.split(b"?", 1)[0].decode("latin-1")
        wants = header(event.headers, b"upgrade")
        if wants is not None and wants.lower() == b"websocket":
            origin = header(event.headers, b"origin")
            if origin is not None and not _allowed(
                origin, header(event.headers, b"host"), allowed
            ):
                limited(
                    logging.INFO,
                    "origin",
                    "repred: WebSocket refused: origin %r not allowed",
                    origin[:100],
                )
                await respond(stream, conn, 403, b"origin not allowed\n")
            else:
                await upgrade(Replay(stream, head))
        elif event.method not in (b"GET", b"HEAD"):
            await respond(stream, conn, 405, b"method not allowed\n")
        elif path in PAGES:
            name, content_type = PAGES[path]
            body = _page(name) if event.method == b"GET" else b""
            await respond(stream, conn, 200, body, content_type)
        else:
            await respond(stream, conn, 404, b"not found\n")

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
