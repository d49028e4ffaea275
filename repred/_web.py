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
upgrade is handed, with the bytes already read, to trio-websocket. Who may
use the port is a :class:`repred._http.RequestPolicy`: every request must
name, in ``Host``, a name the peer serves (its address, the advertised
host, ``localhost`` and the loopback addresses when it listens on them, and
the names given with ``web_hosts=`` or ``--web-host``), so that a page
whose name was pointed at this address (DNS rebinding) gets 403 for pages
and links alike; a browser's WebSocket must come from this server's own
origin, or one given with ``web_origins=`` or ``--web-origin``; programs
(no ``Origin`` header) may always connect.

Limits: a request head of at most 16 KiB within the handshake timeout, at
most ``max_links`` heads being read and 16 from one client address (the
oldest pushed out past that, see :mod:`repred._pending`), at most
``max_links`` WebSocket links per replica (the quietest is dropped), and
everything the WebSocket links promise (see :mod:`repred._websocket`).
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import TYPE_CHECKING

import trio

from ._http import Replay, RequestPolicy, header, read_request, respond
from ._links import LinkOptions, stream_server
from ._pending import PendingTable
from ._websocket import websocket_upgrade

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    import h11

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
    policy: RequestPolicy | None = None,
    options: LinkOptions | None = None,
    max_links: int = 512,
    on_connection: Callable[[Connection], None] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the pages and a WebSocket link per replica on ``host:port``.

    Args:
        replicas: the replicas to offer, by name (``/replicas/NAME``).
        policy: who may use the port (by default the names ``host`` serves
            and the pages of this server's own origin:
            ``RequestPolicy.serving(host)``).
        options: the links' options (:class:`LinkOptions`).
    """
    policy = policy or RequestPolicy.serving(host)
    options = options or LinkOptions()
    handlers = {
        name: stream_server(replica, True, options, max_links, on_connection)
        for name, replica in replicas.items()
    }
    prefix = "/replicas/"

    def route(path: str) -> Callable[[trio.abc.Stream], Awaitable[None]] | None:
        return handlers.get(path[len(prefix) :]) if path.startswith(prefix) else None

    upgrade = websocket_upgrade(route, options)
    # Requests being read (each within the handshake timeout): at most
    # max_links, 16 from one address, the oldest pushed out past that.
    pending = PendingTable(max_links)

    async def handle(stream: trio.abc.Stream) -> None:
        head = None
        with pending.hold(stream):
            read = await read_request(stream, options.handshake_timeout)
            if read is not None:
                head = await _answer(stream, read, policy)
        if head is not None:
            await upgrade(Replay(stream, head))

    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(listeners)


async def _answer(
    stream: trio.abc.Stream,
    read: tuple[h11.Connection, h11.Request, bytes],
    policy: RequestPolicy,
) -> bytes | None:
    """Answer a request read from ``stream`` (a page, or why not), or, for
    a WebSocket upgrade ``policy`` takes, give back the bytes read, to be
    replayed to the upgrade. Host and origin are checked on the request as
    h11 read it, before anything else."""
    conn, event, head = read
    path = event.target.split(b"?", 1)[0].decode("latin-1")
    wants = header(event.headers, b"upgrade")
    websocket = wants is not None and wants.lower() == b"websocket"
    refused = policy.refusal(event.headers, upgrade=websocket)
    if refused is not None:
        await respond(stream, conn, 403, refused)
    elif websocket:
        return head
    elif event.method not in (b"GET", b"HEAD"):
        await respond(stream, conn, 405, b"method not allowed\n")
    elif path in PAGES:
        name, content_type = PAGES[path]
        body = _page(name) if event.method == b"GET" else b""
        await respond(stream, conn, 200, body, content_type)
    else:
        await respond(stream, conn, 404, b"not found\n")
    return None
