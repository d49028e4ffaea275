"""Node addresses: ``host:port``, what a member may be, and which spellings
name this node.

A member is a ``host:port`` some node can dial: a real port, not a wildcard
address. One address has many spellings (``localhost``, ``127.1``,
``127.0.0.1``); :class:`OwnAddress` knows them all for this node, so that a
node never dials itself under another name.

Pure: no trio, no sockets opened (``socket.inet_aton`` only parses).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["OwnAddress", "canonical_host", "parse_address", "parse_member"]

_WILDCARDS = {"0.0.0.0", "::", "*", ""}
#: Spellings :class:`OwnAddress` remembers before it starts afresh.
_CACHE_LIMIT = 65_536


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` to ``(host, port)``.

    Raises:
        ValueError: not of that form.
    """
    if type(text) is not str:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not sep
        or not host
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or len(host) > 253
        or any(c.isspace() for c in host)
    ):
        raise ValueError(f"expected HOST:PORT, not {text!r:.80}")
    return host, int(port)


def parse_member(text: str) -> tuple[str, int]:
    """A member address: ``host:port`` that some node can dial.

    Raises:
        ValueError: not ``host:port``, or a wildcard address.
    """
    host, port = parse_address(text)
    if host in _WILDCARDS or canonical_host(host) in ("0.0.0.0", "::"):
        raise ValueError(f"{text!r} is a wildcard address, not a member")
    return host, port


def canonical_host(host: str) -> str:
    """One spelling per address: ``127.1`` and ``127.0.0.1`` are the same."""
    host = host.lower().rstrip(".")
    if host in ("localhost", "ip6-localhost", "ip6-loopback"):
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:  # the short IPv4 forms inet_aton takes: 127.1, 2130706433
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return host


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_local(host: str) -> bool:
    return _is_loopback(host) or host in ("0.0.0.0", "::")


@final
class OwnAddress:
    """This node's address (``host:port``) and the hosts it listens on and
    advertises: whether an address names this node, in any spelling.

    A node listening on a loopback address or on every interface is also
    named by any loopback or wildcard address with its port. Answers are
    remembered: every heartbeat names a node.
    """

    def __init__(self, address: str, hosts: Iterable[str]) -> None:
        self.address = address
        self.port = parse_address(address)[1]
        self._hosts = {canonical_host(h) for h in hosts}
        self._local = any(_is_local(h) for h in self._hosts)
        self._known: dict[str, bool] = {}

    def names(self, address: str) -> bool:
        """Whether ``address`` names this node."""
        known = self._known.get(address)
        if known is None:
            if len(self._known) >= _CACHE_LIMIT:
                self._known.clear()
            known = self._known[address] = self._names(address)
        return known

    def _names(self, address: str) -> bool:
        if address == self.address:
            return True
        try:
            host, port = parse_address(address)
        except ValueError:
            return False
        if port != self.port:
            return False
        host = canonical_host(host)
        return host in self._hosts or (self._local and _is_local(host))
