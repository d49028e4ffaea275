"""Connections still opening: a TLS handshake, or an HTTP request head.

A connection that never finishes opening holds a socket and a task until
its timeout. The servers keep at most ``limit`` of them, and at most
``per_client`` from one client address; one more, past either bound,
pushes out the oldest (of that client, or of all), as a listener's
:class:`repred._links.LinkTable` pushes out the quietest link. So stalled
openings from one address cost a bounded share and never lock others out,
and a new connection is always taken: one from the same address as a flood
is served if it opens before ``per_client`` newer ones arrive.

A client address is an IPv4 address, or the /64 network of an IPv6 one (a
single host commonly holds a whole /64).
"""

from __future__ import annotations

import ipaddress
import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, final

import trio

from ._log import limited

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["DEFAULT_PENDING_PER_CLIENT", "PendingTable", "client_key"]

#: Connections still opening that one client address may hold at once.
DEFAULT_PENDING_PER_CLIENT = 16


def client_key(stream: trio.abc.Stream) -> str | None:
    """Who ``stream`` comes from, as the bounds count clients (see the
    module docstring); ``None`` when it is not a socket's."""
    inner: object = stream
    while (sock := getattr(inner, "socket", None)) is None:
        inner = getattr(inner, "transport_stream", None)  # (TLS over a socket)
        if inner is None:
            return None
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    if not isinstance(peer, tuple):
        return None  # (a Unix socket: one client as far as we can tell)
    try:
        address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@final
class PendingTable:
    """Connections still opening, at most ``limit`` in all and
    ``per_client`` from one client (see the module docstring)."""

    def __init__(
        self, limit: int, per_client: int = DEFAULT_PENDING_PER_CLIENT
    ) -> None:
        if type(limit) is not int or limit < 1:
            raise ValueError("the bound on connections opening must be positive")
        self.limit = limit
        self.per_client = max(1, min(per_client, limit))
        # Oldest first (dicts keep the order things came in).
        self._all: dict[trio.CancelScope, str | None] = {}
        self._by_client: dict[str | None, dict[trio.CancelScope, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    @contextmanager
    def hold(self, stream: trio.abc.Stream) -> Iterator[trio.CancelScope]:
        """Count ``stream`` as opening while the block runs. If newer ones
        push it out, the block is cancelled (``scope.cancelled_caught``)."""
        key = client_key(stream)
        theirs = self._by_client.get(key, {})
        if len(theirs) >= self.per_client:
            self._drop(next(iter(theirs)), f"from {key}")
        if len(self._all) >= self.limit:
            self._drop(next(iter(self._all)), "in all")
        scope = trio.CancelScope()
        self._all[scope] = key
        self._by_client.setdefault(key, {})[scope] = None
        try:
            with scope:
                yield scope
        finally:
            self._forget(scope)

    def _drop(self, scope: trio.CancelScope, where: str) -> None:
        self._forget(scope)
        scope.cancel()
        limited(
            logging.INFO,
            "opening",
            "repred: too many connections opening %s; dropped the oldest",
            where,
        )

    def _forget(self, scope: trio.CancelScope) -> None:
        if scope not in self._all:
            return
        key = self._all.pop(scope)
        theirs = self._by_client[key]
        del theirs[scope]
        if not theirs:
            del self._by_client[key]
