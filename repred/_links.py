"""The link functions: replicate with one peer over any stream, over TCP
as a client, or as a server.

Each takes its options as keywords of its own (see
:class:`repred.LinkOptions`, where each is described) and checks them at
the call; the connection itself is :mod:`repred._connection`'s, the
serving :mod:`repred._serving`'s, TLS :mod:`repred._tls`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import trio

from ._connection import Connection, ConnectionStatistics, run_link
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
from ._serving import serve_streams, stream_server
from ._session import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ENTRIES
from ._tls import start_tls
from ._wire import DEFAULT_MAX_LINE_BYTES

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from ._replica import Replica

__all__ = ["connect_tcp", "replicate", "serve_tcp"]


async def replicate(
    replica: Replica,
    stream: trio.abc.Stream,
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
    task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
) -> ConnectionStatistics:
    """Replicate ``replica`` with one peer over ``stream``, any
    ``trio.abc.Stream``; the stream is closed on return.

    Both sides exchange digests, send each other what the other lacks, and
    (with ``live=True``) go on streaming new entries until the stream ends.
    With ``live=False`` it returns once both sides have exchanged everything
    they had. Under ``nursery.start`` it reports the :class:`Connection`.
    The other options are described in :class:`LinkOptions`.

    Live writes go out as soon as the program pauses: a write with nothing
    after it leaves within two turns of the scheduler. While writes keep
    coming (a loop that writes and yields), they are gathered into one send
    for up to 2 ms or 256 writes, so a producer pays for one send per many
    writes. In a test, wait for what should arrive (:func:`subscribe` on the
    other side), not for every task to block: the end of a gathering is a
    timer, which ``trio.testing.wait_all_tasks_blocked`` does not wait for.

    Returns:
        The connection's final statistics.

    Raises:
        TypeError, ValueError: a bad option (at the call).
        RemoteProtocolError: the peer broke the protocol (a subclass says
            how). Everything it sent before was applied; the offending
            message changed nothing.
        PeerClosed: the stream ended or broke before the peer's ``"SYNC"``.
        SyncTimeout: the peer stopped reading, or sent no digest in time.
        StoreError: the replica's store could not keep what arrived.
    """
    options = pick(LinkOptions, locals())
    return await run_link(
        replica, stream, live=live, on_start=task_status.started, options=options
    )


async def connect_tcp(
    replica: Replica,
    host: str,
    port: int,
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
    """Connect to a peer over TCP and :func:`replicate` with it.

    With ``ssl_context`` (a client-side ``ssl.SSLContext``), the link runs
    over TLS, and ``host`` is the name the peer's certificate must carry;
    a context that holds a certificate chain presents it (mutual TLS). The
    other options are those of :func:`replicate`.

    Raises:
        OSError: the connection could not be made.
        PeerClosed: the TLS handshake failed (the message says why).
        RepredError: as :func:`replicate`.
    """
    options = pick(LinkOptions, locals())
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if ssl_context is not None:
        stream = await start_tls(
            stream, ssl_context, server_hostname=host, timeout=options.handshake_timeout
        )
    return await run_link(
        replica, stream, live=live, on_start=task_status.started, options=options
    )


async def serve_tcp(
    replica: Replica,
    port: int,
    *,
    host: str | None = "127.0.0.1",
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
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept peers on a TCP port and replicate with each; runs until cancelled.

    Used as ``listeners = await nursery.start(repred.serve_tcp, replica, 0)``,
    it reports its listeners the way ``trio.serve_tcp`` does (port 0 picks a
    free port; ``host``, ``handler_nursery`` as there). One replica serves
    any number of connections at once, at most ``max_links`` (a new one
    past it drops the connection that has been quiet longest); each new
    :class:`Connection` is given to ``on_connection``. With ``ssl_context``
    (server-side; one that requires client certificates makes it mutual
    TLS), links run over TLS, and a client whose handshake fails is logged
    and dropped. ``live`` and the other options are those of
    :func:`replicate`, for each connection.

    Error handling: a bad option raises at the call; a port that cannot be
    bound raises ``OSError``; whatever one peer does ends only that peer's
    connection: the error is logged on the ``"repred"`` logger and serving
    goes on.
    """
    options = pick(LinkOptions, locals())
    handler = stream_server(replica, live, options, max_links, on_connection)
    await serve_streams(
        handler,
        port,
        host=host,
        ssl_context=ssl_context,
        handshake_timeout=options.handshake_timeout,
        max_links=max_links,
        handler_nursery=handler_nursery,
        task_status=task_status,
    )
