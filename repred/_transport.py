"""How gossip peers reach each other: a :class:`Transport`.

:func:`repred.open_peer` listens and dials through one: TCP by default
(:class:`TcpTransport`, over TLS with ``ssl_context`` and
``client_ssl_context``), or :class:`repred.testing.MemoryNetwork`, where a
simulated cluster runs in one process.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Protocol, final

import trio

from ._address import parse_address
from ._options import DEFAULT_MAX_LINKS
from ._tls import start_tls, tls_server

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

__all__ = ["TcpTransport", "Transport"]


class Transport(Protocol):
    """How peers reach each other: what :func:`repred.open_peer` takes as
    ``transport=``. :class:`repred.testing.MemoryNetwork` is one; TCP (and
    TLS over it) is the default.

    Addresses are ``"host:port"`` strings.
    """

    async def listen(
        self,
        host: str,
        port: int,
        handler: Callable[[trio.abc.Stream], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> str:
        """Serve ``handler`` on ``host:port`` (port 0: any free one) with
        tasks in ``nursery``, until it is cancelled; return the address
        bound.

        Raises:
            OSError: the address cannot be bound.
        """
        ...

    async def connect(self, address: str, *, source: str) -> trio.abc.Stream:
        """A stream to the peer at ``address``; ``source`` is the address
        of the peer that dials.

        Raises:
            OSError: nothing answers there.
        """
        ...


@final
class TcpTransport:
    """How peers reach each other by default: TCP, or TLS over TCP.

    Args:
        ssl_context: the server-side context for inbound links.
        client_ssl_context: the client-side context for dials (its
            certificate chain, if any, is presented: mutual TLS).
        handshake_timeout: seconds a TLS handshake may take.
        max_handshakes: inbound TLS handshakes at once (more are closed).
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 5.0,
        max_handshakes: int = DEFAULT_MAX_LINKS,
    ) -> None:
        if (ssl_context is None) != (client_ssl_context is None):
            raise ValueError(
                "a TLS peer needs both ssl_context (to serve) and"
                " client_ssl_context (to dial)"
            )
        self._server = ssl_context
        self._client = client_ssl_context
        self._timeout = handshake_timeout
        self._max_handshakes = max_handshakes

    async def listen(
        self,
        host: str,
        port: int,
        handler: Callable[[trio.abc.Stream], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> str:
        """Serve ``handler`` on ``host:port``; return the address bound."""
        if self._server is not None:
            handler = tls_server(
                handler,
                self._server,
                timeout=self._timeout,
                max_handshakes=self._max_handshakes,
            )
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, port, host=host)
        )
        return f"{host}:{listeners[0].socket.getsockname()[1]}"

    async def connect(self, address: str, *, source: str) -> trio.abc.Stream:
        """A stream to ``address``; ``source`` is the dialling peer's address."""
        host, port = parse_address(address)
        stream = await trio.open_tcp_stream(host, port)
        if self._client is None:
            return stream
        return await start_tls(
            stream, self._client, server_hostname=host, timeout=self._timeout
        )
