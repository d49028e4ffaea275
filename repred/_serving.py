"""Serving links: every stream a listener accepts becomes a link, within
bounds.

A listener keeps at most ``max_links`` links (:class:`LinkTable`: one more
drops the quietest), opens each over TLS if it must (bounded handshakes,
see :mod:`repred._tls`), and logs whatever ends one peer's link without
letting it go further (:func:`link_errors_logged`): nothing one peer does
may take a server down.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from ._connection import run_link
from ._errors import RemoteProtocolError, RepredError
from ._groups import single_errors
from ._log import limited, log
from ._tls import tls_server

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Iterator

    from ._connection import Connection
    from ._options import LinkOptions
    from ._replica import Replica

__all__ = ["LinkTable", "link_errors_logged", "serve_streams", "stream_server"]


async def serve_streams(
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
    port: int,
    *,
    host: str | None,
    ssl_context: ssl.SSLContext | None,
    handshake_timeout: float,
    max_links: int,
    handler_nursery: trio.Nursery | None,
    task_status: trio.TaskStatus[list[Any]],
) -> NoReturn:
    """Serve TCP on ``port``, each stream to ``handler`` (over TLS, with
    ``ssl_context``: at most ``max_links`` handshakes at once, each within
    ``handshake_timeout``)."""
    serving = handler
    if ssl_context is not None:
        serving = tls_server(
            handler, ssl_context, timeout=handshake_timeout, max_handshakes=max_links
        )
    async with single_errors():
        await trio.serve_tcp(
            serving,
            port,
            host=host,
            handler_nursery=handler_nursery,
            task_status=task_status,
        )
    raise AssertionError("trio.serve_tcp returned")  # pragma: no cover


def stream_server(
    replica: Replica,
    live: bool,
    options: LinkOptions,
    max_links: int,
    on_connection: Callable[[Connection], None] | None,
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """A handler that replicates with each stream it is given, keeping at
    most ``max_links`` at once; whatever one peer does ends only its own
    connection, and is logged (bounded, see :mod:`repred._log`)."""
    links = LinkTable(max_links)

    async def handler(stream: trio.abc.Stream) -> None:
        started: list[Connection] = []

        def on_start(conn: Connection) -> None:
            started.append(conn)
            links.add(conn)
            if on_connection is not None:
                on_connection(conn)

        try:
            with link_errors_logged():
                await run_link(
                    replica, stream, live=live, on_start=on_start, options=options
                )
        finally:
            for conn in started:
                links.discard(conn)

    return handler


@contextmanager
def link_errors_logged(
    logger: logging.Logger = log, closed: int = logging.INFO
) -> Iterator[None]:
    """Log whatever ends one peer's link (bounded, see :mod:`repred._log`)
    and let it go no further: nothing one peer does may take a server down.
    A refusal is a WARNING; a link that closed is logged at ``closed``; a
    failure no peer should cause is logged in full."""
    try:
        yield
    except RemoteProtocolError as exc:
        limited(
            logging.WARNING,
            "refused",
            "repred: refused what a peer sent: %s",
            _describe(exc),
            logger=logger,
        )
    except RepredError as exc:
        limited(
            closed,
            "closed",
            "repred: connection closed: %s",
            _describe(exc),
            logger=logger,
        )
    except Exception:
        logger.exception("repred: connection failed")


class LinkTable:
    """The inbound links of one listener, at most ``limit`` of them.

    Adding one past the limit closes the link whose peer made progress
    least recently: a flood of idle connections pushes out only idle ones.
    """

    def __init__(self, limit: int) -> None:
        if type(limit) is not int or limit < 1:
            raise ValueError("max_links must be a positive int")
        self.limit = limit
        self._links: set[Connection] = set()

    def add(self, conn: Connection) -> None:
        """Take a new link, dropping the quietest if there are too many."""
        while len(self._links) >= self.limit:
            quietest = min(self._links, key=lambda c: c.last_progress)
            self._links.discard(quietest)
            limited(
                logging.INFO,
                "too-many-links",
                "repred: too many links; dropped the quietest: %r",
                quietest,
            )
            quietest.close()
        self._links.add(conn)

    def discard(self, conn: Connection) -> None:
        """A link ended."""
        self._links.discard(conn)


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    name = type(exc).__name__
    return f"{name}({reason}): {exc}" if reason else f"{name}: {exc}"
