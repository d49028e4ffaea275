"""TLS for links: a client's handshake, and servers that bound theirs.

A handshake either completes within its timeout or fails clearly
(:class:`repred.PeerClosed` saying why, :class:`repred.SyncTimeout`); a
server holds at most so many handshakes at once, per client address and
in all (see :mod:`repred._pending`), and a failed one ends only its own
connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._errors import PeerClosed, RepredError, SyncTimeout
from ._log import limited
from ._pending import PendingTable

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

__all__ = ["start_tls", "tls_server"]


async def start_tls(
    stream: trio.abc.Stream,
    ssl_context: ssl.SSLContext,
    *,
    server_hostname: str | None,
    timeout: float,  # noqa: ASYNC109  (the handshake's own bound)
) -> trio.SSLStream[trio.abc.Stream]:
    """Wrap ``stream`` in TLS and complete the handshake, or fail clearly.

    Raises:
        PeerClosed: the handshake failed (a certificate the other side does
            not trust, a peer that does not speak TLS, ...); the stream is
            closed.
        SyncTimeout: the handshake took longer than ``timeout``.
    """
    tls = trio.SSLStream(
        stream,
        ssl_context,
        server_side=server_hostname is None,
        server_hostname=server_hostname,
    )
    try:
        with trio.fail_after(timeout):
            await tls.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise SyncTimeout(f"no TLS handshake within {timeout} s") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        cause = exc.__cause__ or exc
        reason = getattr(cause, "reason", None) or str(cause) or type(cause).__name__
        raise PeerClosed(f"TLS handshake failed: {reason}") from None
    return tls


def tls_server(
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
    ssl_context: ssl.SSLContext,
    *,
    timeout: float,
    max_handshakes: int,
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """``handler``, for streams that must complete a TLS handshake first.

    At most ``max_handshakes`` handshakes run at once, and 16 from one
    client address: one more pushes out the oldest (of that address, or of
    all; see :mod:`repred._pending`), so connections that never finish a
    handshake cost bounded sockets and time, and never keep others out. A
    failed handshake is logged and ends only its connection.
    """
    handshakes = PendingTable(max_handshakes)

    async def tls_handler(stream: trio.abc.Stream) -> None:
        tls = None
        with handshakes.hold(stream):
            try:
                tls = await start_tls(
                    stream, ssl_context, server_hostname=None, timeout=timeout
                )
            except RepredError as exc:
                limited(
                    logging.INFO, "tls-failed", "repred: connection refused: %s", exc
                )
                return
        if tls is None:  # pushed out by newer ones
            await trio.aclose_forcefully(stream)
            return
        await handler(tls)

    return tls_handler
