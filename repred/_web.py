"""The peer's web port: its pages and a WebSocket link per named replica.

One port serves:

* ``GET /``: the live map page (the replica named ``"data"``);
* ``GET /todo``: the talk's todo lists, on the ``doc()`` named ``"todo"``;
* ``GET /repred.js``: the JavaScript client the pages use, which any other
  page may load too;
* a WebSocket at ``/replicas/NAME`` for each named replica, speaking the
  plain single-replica protocol (an unmodified JS scuttlebutt Model piped
  through ``websocket-stream`` replicates with ``/replicas/data``), and, on
  a peer that places documents, for any other document name (a live copy
  on this node linked to an owner, or the owner's own).

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

from ._http import RequestPolicy, header, respond
from ._options import DEFAULT_MAX_LINKS, LinkOptions
from ._serving import stream_server
from ._websocket import websocket_server

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ._connection import Connection
    from ._http import Request
    from ._replica import Replica

    #: What serves one stream.
    Handler = Callable[[trio.abc.Stream], Awaitable[None]]

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
    max_links: int = DEFAULT_MAX_LINKS,
    on_connection: Callable[[Connection], None] | None = None,
    documents: Callable[[str], Handler | None] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the pages and a WebSocket link per replica on ``host:port``.

    Args:
        replicas: the replicas to offer, by name (``/replicas/NAME``).
        policy: who may use the port (by default the names ``host`` serves
            and the pages of this server's own origin:
            ``RequestPolicy.serving(host)``).
        options: the links' options (:class:`LinkOptions`).
        documents: what serves ``/replicas/NAME`` for a name that is not
            one of ``replicas`` (``None`` from it: 404).
    """
    policy = policy or RequestPolicy.serving(host)
    options = options or LinkOptions()
    handlers = {
        name: stream_server(replica, True, options, max_links, on_connection)
        for name, replica in replicas.items()
    }
    prefix = "/replicas/"

    def route(path: str) -> Handler | None:
        if not path.startswith(prefix):
            return None
        name = path[len(prefix) :]
        handler = handlers.get(name)
        if handler is None and documents is not None:
            return documents(name)
        return handler

    # Requests being read (each within the handshake timeout): at most
    # max_links, 16 from one address, the oldest pushed out past that.
    answer = functools.partial(_answer, policy=policy)
    handle = websocket_server(route, answer, options, max_links)
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(listeners)


async def _answer(
    stream: trio.abc.Stream, read: Request, policy: RequestPolicy
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
