"""HTTP/1.1 for the WebSocket and web servers: request heads read with h11,
and who may use a server (:class:`RequestPolicy`).

Nothing here parses HTTP by hand: h11 reads the request head (bounded in
size and time), and a WebSocket upgrade is handed to trio-websocket with the
bytes already read replayed in front of the stream.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import urllib.parse
from typing import TYPE_CHECKING

import attrs
import h11
import trio

from ._log import limited

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

__all__ = [
    "HEAD_LIMIT",
    "LOOPBACK_NAMES",
    "Replay",
    "Request",
    "RequestPolicy",
    "check_origin",
    "header",
    "host_name",
    "read_request",
    "respond",
]

#: The names a server on a loopback address (or on every interface) is
#: reached by from its own machine.
LOOPBACK_NAMES = frozenset(("localhost", "127.0.0.1", "::1"))

#: A host name or an address, as a ``Host`` header or an option gives it.
_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9_])?|[0-9a-f:.]*:[0-9a-f:.]*")


def host_name(text: str) -> str:
    """``text`` as a name to compare: lower case, without a trailing dot
    or the brackets of an IPv6 address.

    Raises:
        ValueError: not a host name or address (a URL, a port, spaces...).
    """
    if type(text) is not str:
        raise ValueError(f"a host name is a str, not {text!r}")
    name = text.lower().removesuffix(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not _NAME.fullmatch(name) or len(name) > 253:
        raise ValueError(f"not a host name or address: {text!r}")
    return name


def _address(name: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name or "")
    except ValueError:
        return None


def check_origin(text: str) -> str:
    """``text`` if it is an origin as a browser sends one,
    ``http(s)://host[:port]`` (no path, no user, a real port).

    Raises:
        ValueError: it is not.
    """
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # (a bad port raises here)
    except (ValueError, TypeError, AttributeError):
        port = -1
    if (
        type(text) is not str
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == -1
        or "@" in parts.netloc
        or text != f"{parts.scheme}://{parts.netloc}"
    ):
        raise ValueError(
            f"{text!r} is not an origin: http://host[:port] or https://host[:port]"
        )
    return text


@attrs.frozen
class RequestPolicy:
    """Which requests an HTTP server takes: the one owner of the rules on
    the ``Host`` header and on ``Origin``, for the peer's web port and for
    :func:`repred.serve_websocket`.

    The rules are those :func:`repred.serve_websocket` states: ``Host``
    first, then ``Origin`` (for WebSocket upgrades).

    Attributes:
        hosts: the names ``Host`` may carry, as :func:`host_name` gives them.
        origins: the other origins whose pages may link.
        addresses: any IP address may be named too (a server on every
            interface is reached by each of its addresses; naming an
            address involves no name an attacker could point elsewhere).
    """

    hosts: frozenset[str] | None
    origins: frozenset[str] | None
    addresses: bool = False

    @classmethod
    def serving(
        cls,
        host: str | None,
        *,
        advertise: str | None = None,
        hosts: Collection[str] | None = (),
        origins: Collection[str] | None = (),
    ) -> RequestPolicy:
        """The policy of a server bound to ``host``: the names it serves
        are that address (on every interface: any address), ``advertise``,
        ``localhost`` (and 127.0.0.1 and ::1 when it listens on loopback),
        and ``hosts`` (``"*"`` among them, or ``hosts=None``: any name).

        Raises:
            ValueError: a name in ``hosts`` or an origin that is not one.
        """
        allowed = (
            None
            if origins is None
            else frozenset(check_origin(o).lower() for o in origins)
        )
        if hosts is None or "*" in hosts:
            return cls(None, allowed)
        names = {"localhost", *map(host_name, hosts)}
        everywhere = host in (None, "", "0.0.0.0", "::")
        for given in (None if everywhere else host, advertise):
            if given:
                names.add(host_name(given))
        address = _address(host)
        loopback = host == "localhost" or (address is not None and address.is_loopback)
        if everywhere or loopback:
            names |= LOOPBACK_NAMES
        return cls(frozenset(names), allowed, addresses=everywhere)

    def refusal(
        self, headers: Iterable[tuple[bytes, bytes]], *, upgrade: bool = True
    ) -> bytes | None:
        """Why a request is refused (the body of a 403), or ``None``.
        ``Origin`` counts for WebSocket upgrades only (pages are for anyone
        who may reach them)."""
        pairs = list(headers)
        host = header(pairs, b"host")
        if self.hosts is not None and not self._serves(host):
            limited(
                logging.INFO,
                "host",
                "repred: request refused: Host %r is not a name this server"
                " serves (allow it with hosts=, or --web-host)",
                None if host is None else host[:100],
            )
            return b"host not allowed\n"
        origin = header(pairs, b"origin")
        if upgrade and origin is not None and not self._from_own_page(origin, host):
            limited(
                logging.INFO,
                "origin",
                "repred: WebSocket refused: origin %r not allowed",
                origin[:100],
            )
            return b"origin not allowed\n"
        return None

    def _serves(self, host: bytes | None) -> bool:
        assert self.hosts is not None
        if host is None:
            return False
        text = host.decode("latin-1")
        name, _, port = text.rpartition(":")
        if not name or (name.count(":") and not name.endswith("]")):
            name, port = text, ""  # no port (an IPv6 address has colons)
        if port and not port.isdigit():
            return False
        try:
            name = host_name(name)
        except ValueError:
            return False
        return name in self.hosts or (self.addresses and _address(name) is not None)

    def _from_own_page(self, origin: bytes, host: bytes | None) -> bool:
        text = origin.decode("latin-1").lower()
        if self.origins is None or text in self.origins:
            return True
        own = None if host is None else host.decode("latin-1").lower()
        return own is not None and text in (f"http://{own}", f"https://{own}")


HEAD_LIMIT = 16 * 1024

#: A request's head as :func:`read_request` gives it: h11's connection, the
#: request, and the bytes read (to replay to a WebSocket upgrade).
Request = tuple[h11.Connection, h11.Request, bytes]


class Replay(trio.abc.Stream):
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


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


async def respond(
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


async def read_request(stream: trio.abc.Stream, seconds: float) -> Request | None:
    """A request's head, read with h11 (and the bytes read), or ``None``."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    head = bytearray()
    try:
        with trio.fail_after(seconds):
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    break
                data = await stream.receive_some(4096)
                if not data:
                    return None
                head += data
                conn.receive_data(bytes(data))
    except (trio.TooSlowError, h11.RemoteProtocolError, trio.BrokenResourceError):
        limited(logging.INFO, "web-request", "repred: a bad or slow HTTP request")
        return None
    if not isinstance(event, h11.Request):
        return None
    return conn, event, bytes(head)
