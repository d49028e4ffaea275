"""Gossip peers: several named replicas over one link, membership, dialling.

Every node keeps its own replicas and a replicated membership map (node
address -> its newest heartbeat stamp), so the list of nodes reaches every
node, as in Dynamo. Each node beats into it, keeps a few outgoing links to
random live nodes (moving on every few seconds), and now and then re-dials a
node it has not heard from, so partitions heal without seeds, as in Serf.

Membership is validated, bounded and reaped:

* a member is a ``host:port`` with a real port, not a wildcard address and
  not this node under another spelling (``localhost``, ``127.1``, ...);
  anything else is refused on the link that brought it;
* a heartbeat is the stamp of its entry, so one from the future is deferred
  like any stamp (see :data:`repred.DEFAULT_MAX_DRIFT_MS`);
* the map holds at most ``max_members`` nodes (16,384 by default);
* a node that fails ``SUSPECT_AFTER`` dials in a row is suspect: it leaves
  :meth:`Peer.members` and is re-dialled only with backoff (up to
  ``max_backoff``); a node not heard from for ``reap_after`` (an hour by
  default) is forgotten.

A dial has a connect timeout, and a link counts as a success only once the
other side has completed the handshake: a listener that accepts and never
speaks is a failure. Several dials run at once, each in its own task.

The link protocol carries several replicas over one stream. Each side first
sends a hello line, ``{"repred-peer": 2, "node": "host:port", "replicas":
{name: type}}``; then every line of every replica's scuttlebutt session goes
as ``seq TAB name TAB line``, where ``seq`` counts the lines sent on the link
(1, 2, ...): a line lost, repeated or reordered on the way ends the link
before it is applied, so no source's entries are ever taken out of order.
A replica the other side lacks (or holds with another type) is skipped; a
line for a replica the two did not agree on is refused.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import random
import socket
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs
import orjson
import trio

from ._errors import RemoteProtocolError, RepredError
from ._links import (
    DEFAULT_ANTIENTROPY_INTERVAL,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_LINKS,
    DEFAULT_SEND_TIMEOUT,
    Connection,
    LinkOptions,
    LinkTable,
    run_channel,
    single_errors,
    start_tls,
    tls_server,
)
from ._log import RateLimitedLog
from ._replica import Replica, new_id, wall_ms
from ._session import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ENTRIES, Session
from ._wire import DEFAULT_MAX_LINE_BYTES, LineDecoder, loads_strict, snippet

if TYPE_CHECKING:
    import ssl
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Mapping,
        Sequence,
    )

    from ._divergence import Divergence
    from ._trust import SigningKey, Writers

__all__ = [
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_REAP_AFTER",
    "MEMBERS",
    "SUSPECT_AFTER",
    "Members",
    "Peer",
    "PeerOptions",
    "PeerStatistics",
    "TcpTransport",
    "open_peer",
    "parse_address",
    "parse_member",
]

log = logging.getLogger("repred.peer")
#: Records peers can cause, bounded (see repred._log).
limited = RateLimitedLog(log)

#: The name of the membership replica every peer carries.
MEMBERS = "_members"
PEER_PROTOCOL = 2
#: The most nodes a membership map holds.
DEFAULT_MAX_MEMBERS = 16_384
#: Seconds after its last heartbeat that a node is forgotten: an hour.
DEFAULT_REAP_AFTER = 3600.0
#: Dials in a row that fail before a node is suspect.
SUSPECT_AFTER = 3
#: Outgoing live links a peer keeps at once (each to a random live node).
DEFAULT_FANOUT = 3
#: Random draws from the live members before falling back to the seeds.
_PICK_SAMPLES = 64
#: The longest hello accepted, and its limits.
MAX_HELLO_BYTES = 64 * 1024
MAX_HELLO_REPLICAS = 256
MAX_NAME_LENGTH = 128

_WILDCARDS = {"0.0.0.0", "::", "*", ""}


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
    if host in _WILDCARDS or _canonical(host) in ("0.0.0.0", "::"):
        raise ValueError(f"{text!r} is a wildcard address, not a member")
    return host, port


def _canonical(host: str) -> str:
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


def _bad(message: str, line: bytes, reason: str = "not-a-peer") -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason, line=snippet(line))


# -- the membership map ------------------------------------------------------


def _member_key(change: Any) -> str:
    """A membership change is ``[address]``; the address must be a member."""
    if not isinstance(change, list | tuple) or len(change) != 1:
        raise ValueError(f"a membership change is [address], not {change!r:.80}")
    address = change[0]
    if type(address) is not str:
        raise ValueError(f"a member is HOST:PORT, not {address!r:.80}")
    _check_member(address)
    return address


@functools.lru_cache(maxsize=DEFAULT_MAX_MEMBERS)
def _check_member(address: str) -> None:
    """``parse_member``, remembered for the addresses seen lately: every
    heartbeat a node takes in names one of a few known nodes, and parsing
    an address (``ipaddress``, ``inet_aton``) costs more than applying it.
    A refused address raises, so it is never remembered."""
    parse_member(address)


def _heard(
    state: dict[str, float],
    change: list[Any],
    stamp: tuple[float, str],
    *,
    cap: int,
    own: str,
) -> list[Any]:
    """Record that a node was heard from, at the stamp of its heartbeat.

    Converges because the primitive keeps only the heartbeat with the
    greatest stamp per address: the newest wins everywhere. A full map
    takes no new node from peers (the node's own heartbeat always goes in).
    """
    address = change[0]
    if address not in state and len(state) >= cap and stamp[1] != own:
        raise ValueError(f"the membership map is full ({cap} nodes)")
    state[address] = stamp[0]
    return change


class Members(Replica):
    """The replicated membership map: address -> newest heartbeat stamp (ms)."""

    __slots__ = ()

    def beat(self, address: str) -> None:
        """Say that ``address`` (this node) is alive now."""
        self.update([address])

    def reap(self, before_ms: float) -> list[str]:
        """Forget the nodes last heard from before ``before_ms``; return them."""
        gone = [a for a, t in self.state.items() if t < before_ms]
        if gone:
            for address in gone:
                del self.state[address]
            self._forget_keys(gone)
        return gone


def members_replica(
    *,
    wall: Callable[[], float],
    max_members: int = DEFAULT_MAX_MEMBERS,
    node_id: str | None = None,
    signing_key: SigningKey | None = None,
    verify: bool = False,
    writers: Writers | None = None,
) -> Members:
    """A new membership map (type ``"members"``) whose heartbeats go out
    under ``node_id``; signed with ``signing_key``, and only signed ones
    taken with ``verify``."""
    own = node_id or (new_id() if signing_key is None else signing_key.id)
    members = Members(
        functools.partial(_heard, cap=max_members, own=own),
        {},
        id=own,
        last_write_wins=_member_key,
        stamped=True,
        type_name="members",
        wall=wall,
        checks_first=True,
        signing_key=signing_key,
        verify=verify,
        writers=writers,
    )
    # Heartbeats heal themselves within a beat: comparing trees of them
    # would cost more than it finds.
    members.antientropy = False
    return members


# -- the link framing -------------------------------------------------------


class _Mux:
    """Framing for a peer link: a hello, then ``name TAB line`` per line."""

    def __init__(
        self,
        replicas: Mapping[str, Any],
        node: str,
        options: LinkOptions,
        *,
        receive_writes: bool = True,
    ) -> None:
        self._replicas = replicas
        self._decoder = LineDecoder(MAX_HELLO_BYTES)
        self._options = options
        #: Apply what the peer writes to the named replicas (membership is
        #: always received: heartbeats keep the network whole).
        self._receive_writes = receive_writes
        self._out = [
            orjson.dumps(
                {
                    "repred-peer": PEER_PROTOCOL,
                    "node": node,
                    "replicas": {n: r.type_name for n, r in replicas.items()},
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
        ]
        self.hello: dict[str, Any] | None = None
        #: Lines numbered in each direction: a line lost, repeated or
        #: reordered on the way ends the link before it is applied.
        self._seq_in = 0
        self._seq_out = 0
        self.sessions: list[Session] = []
        self._by_name: dict[bytes, Session] = {}
        self._wakeup: Callable[[], None] | None = None

    @property
    def peer_id(self) -> str | None:
        return None if self.hello is None else self.hello["node"]

    @property
    def handshake_done(self) -> bool:
        return self.hello is not None

    @property
    def lines_in(self) -> int:
        return self._decoder.lines

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    @property
    def expects_keepalives(self) -> bool:
        return True  # every peer link is between repred peers

    def keepalive(self) -> None:
        for session in self.sessions:
            session.keepalive()

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        self._wakeup = wakeup

    def feed(self, data: bytes | bytearray) -> list[object]:
        events: list[object] = []
        if data:
            self._route(self._decoder.feed(data), events)
            if self._decoder.error is not None:
                raise self._decoder.error
            return events
        rest = self._decoder.eof()
        self._route([rest] if rest is not None else [], events)
        for session in self.sessions:
            if session.their_state.value not in ("closed", "error"):
                events += session.receive_data(None)
        return events

    def _route(self, lines: list[bytes], events: list[object]) -> None:
        start = 0
        if self.hello is None and lines:
            self._on_hello(lines[0])
            start = 1
        current: Session | None = None
        bodies: list[bytes] = []
        by_name = self._by_name
        for line in lines[start:]:
            seq, tab, rest = line.partition(b"\t")
            name, tab2, body = rest.partition(b"\t")
            if not (tab and tab2):
                raise _bad("a peer line is SEQ TAB NAME TAB LINE", line)
            self._seq_in += 1
            if seq != b"%d" % self._seq_in:
                # A line lost, repeated or out of place on the way (a bad
                # middlebox, or a peer's bug): nothing after it can be
                # trusted to keep each source's entries in order.
                if current is not None and bodies:
                    events += current.receive_data(b"\n".join(bodies) + b"\n")
                raise _bad(
                    f"line {seq[:20]!r} where line {self._seq_in} was due",
                    line,
                    "out-of-order",
                )
            session = by_name.get(name)
            if session is None:
                raise _bad(
                    f"a line for replica {name[:80]!r}, not one both sides hold",
                    line,
                    "unknown-replica",
                )
            if session is not current:
                if current is not None and bodies:
                    events += current.receive_data(b"\n".join(bodies) + b"\n")
                current, bodies = session, []
            bodies.append(body)
        if current is not None and bodies:
            events += current.receive_data(b"\n".join(bodies) + b"\n")

    def _on_hello(self, line: bytes) -> None:
        msg = loads_strict(line, "replicas")
        if (
            type(msg) is not dict
            or msg.get("repred-peer") != PEER_PROTOCOL
            or type(msg.get("node")) is not str
            or len(msg["node"]) > 300
            or type(msg.get("replicas")) is not dict
        ):
            raise _bad("not a repred peer (no hello)", line)
        theirs = msg["replicas"]
        if len(theirs) > MAX_HELLO_REPLICAS or not all(
            type(n) is str
            and type(t) is str
            and 0 < len(n) <= MAX_NAME_LENGTH
            and len(t) <= MAX_NAME_LENGTH
            for n, t in theirs.items()
        ):
            raise _bad("a hello with too many or bad replica names", line)
        for name, replica in self._replicas.items():
            if theirs.get(name) == replica.type_name:
                options = self._options
                if not self._receive_writes and name != MEMBERS:
                    options = attrs.evolve(options, receive=False)
                session = options.session(replica)
                session.wakeup = self._wakeup
                self.sessions.append(session)
                self._by_name[name.encode()] = session
            elif name in theirs:
                _log_type_mismatch(msg["node"], name, theirs[name], replica.type_name)
        self.hello = msg
        # Past the hello, a line may carry a whole entry and its prefix.
        self._decoder.set_limit(self._options.max_line_bytes + 256)
        if self._wakeup is not None:
            self._wakeup()

    def data_to_send(self) -> bytes:
        out = self._out
        self._out = []
        for name, session in self._by_name.items():
            data = session.data_to_send()
            if data:
                prefix = b"\t" + name + b"\t"
                for line in data[:-1].split(b"\n"):
                    self._seq_out += 1
                    out.append(b"%d%s%s\n" % (self._seq_out, prefix, line))
        return b"".join(out)


_mismatches_logged: set[tuple[str, str]] = set()


def _log_type_mismatch(node: str, name: str, theirs: str, ours: str) -> None:
    """Said once per node and name: a shared name with different types."""
    if (node, name) in _mismatches_logged or len(_mismatches_logged) > 10_000:
        return
    _mismatches_logged.add((node, name))
    log.warning(
        "peer %s holds replica %r as type %r, this node as %r: not replicated",
        node,
        name,
        theirs,
        ours,
    )


# -- the peer -----------------------------------------------------------------


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


@attrs.frozen(kw_only=True)
class PeerStatistics:
    """A snapshot of a peer.

    Attributes:
        address: where this peer listens, ``host:port``.
        members: the nodes seen alive recently (this one included).
        known: every node in the membership map.
        suspects: nodes that failed several dials in a row.
        links: open links, inbound and outbound.
        dials: outbound connection attempts.
        dial_failures: attempts that failed (connect, handshake or protocol).
        accepted: inbound connections accepted.
        refused: entries of the named replicas not applied because the peer
            is ``read_only``, over every link so far.
    """

    address: str
    members: tuple[str, ...]
    known: int
    suspects: tuple[str, ...]
    links: int
    dials: int
    dial_failures: int
    accepted: int
    refused: int = 0


def _seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and 0 < value < math.inf):
        raise ValueError(f"{attribute.name} must be a positive number of seconds")


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be a positive int")


@attrs.frozen(kw_only=True)
class PeerOptions:
    """How a gossip peer paces itself; see :func:`open_peer` for each."""

    heartbeat_interval: float = attrs.field(default=1.0, validator=_seconds)
    down_after: float = attrs.field(default=5.0, validator=_seconds)
    gossip_interval: float = attrs.field(default=3.0, validator=_seconds)
    seed_interval: float = attrs.field(default=5.0, validator=_seconds)
    max_backoff: float = attrs.field(default=30.0, validator=_seconds)
    connect_timeout: float = attrs.field(default=5.0, validator=_seconds)
    reap_after: float = attrs.field(default=DEFAULT_REAP_AFTER, validator=_seconds)
    fanout: int = attrs.field(default=DEFAULT_FANOUT, validator=_count)
    max_members: int = attrs.field(default=DEFAULT_MAX_MEMBERS, validator=_count)
    max_links: int = attrs.field(default=DEFAULT_MAX_LINKS, validator=_count)


def _check_peer(
    host: str, advertise: str | None, replicas: Mapping[str, Any], seeds: Sequence[str]
) -> None:
    """Refuse what a peer cannot run with, at the call."""
    if host in ("0.0.0.0", "::", "") and not advertise:
        raise ValueError(
            f"listening on {host!r} (every interface) needs advertise=, the"
            " host other nodes should dial"
        )
    if MEMBERS in replicas:
        raise ValueError(f"the replica name {MEMBERS!r} is the peer's own")
    for name in replicas:
        bad = "\t" in name or "\n" in name or not 0 < len(name) <= MAX_NAME_LENGTH
        if bad:
            raise ValueError(f"bad replica name {name!r}")
    for seed in seeds:
        parse_member(seed)


@final
class Peer:
    """A running gossip peer; made by :func:`open_peer`."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        replicas: Mapping[str, Any],
        seeds: Sequence[str],
        options: PeerOptions,
        link_options: LinkOptions,
        on_event: Callable[[dict[str, Any]], None] | None,
        rng: random.Random,
        transport: Any,
        wall: Callable[[], float],
        advertise: str | None,
        read_only: bool = False,
        trust: Mapping[str, Any] | None = None,
    ) -> None:
        trust = trust or {}
        _check_peer(host, advertise, replicas, seeds)
        self._advertise = advertise
        self._read_only = read_only
        self.host = host
        self.port = port
        self.address = ""
        #: Where the web port listens ("host:port"), if open_peer was given one.
        self.web_address: str | None = None
        self.options = options
        self._transport = transport
        self._wall = wall
        self.membership = members_replica(
            wall=wall, max_members=options.max_members, **trust
        )
        self.replicas = {**replicas, MEMBERS: self.membership}
        self.seeds = list(seeds)
        self._on_event = on_event
        self._rng = rng
        self._options = link_options
        self._inbound = LinkTable(options.max_links)
        self._links: dict[Connection, str] = {}
        self._dialling: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._alive: set[str] = set()
        self._alive_list: list[str] = []
        self._self_hosts: set[str] = set()
        self._self_cache: dict[str, bool] = {}
        self._known_list: list[str] = []
        self._known_at = -math.inf
        self._dials = 0
        self._dial_failures = 0
        self._accepted = 0
        #: Entries refused (read_only) on links that have ended.
        self._refused = 0

    def __repr__(self) -> str:
        return f"<repred.Peer {self.address} links={len(self._links)}>"

    # -- what a user reads --------------------------------------------

    def connections(self) -> list[Connection]:
        """The links open now, inbound and outbound."""
        return list(self._links)

    def members(self, within: float | None = None) -> list[str]:
        """Nodes heard from in the last ``within`` s (default: down_after).

        Suspects (nodes this one failed to reach several times in a row)
        are left out. This node is always in.
        """
        horizon = (self.options.down_after if within is None else within) * 1000
        now = self._wall()
        failures = self._failures
        return sorted(
            node
            for node, beat in self.membership.state.items()
            if now - beat <= horizon
            and (failures.get(node, 0) < SUSPECT_AFTER or node == self.address)
        )

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            address=self.address,
            members=tuple(self.members()),
            known=len(self.membership.state),
            suspects=tuple(
                sorted(n for n, f in self._failures.items() if f >= SUSPECT_AFTER)
            ),
            links=len(self._links),
            dials=self._dials,
            dial_failures=self._dial_failures,
            accepted=self._accepted,
            refused=self._refused + sum(c.statistics().refused for c in self._links),
        )

    # -- running -------------------------------------------------------

    def _watch_divergence(self) -> Callable[[], None]:
        """Say what anti-entropy finds in the named replicas, as events."""
        removers = []
        for name, replica in self.replicas.items():
            if name != MEMBERS:
                handler = functools.partial(self._on_divergence, name)
                removers.append(replica.on_divergence(handler))

        def remove() -> None:
            for r in removers:
                r()

        return remove

    def _on_divergence(self, name: str, found: Divergence) -> None:
        event: dict[str, Any] = {
            "event": found.kind,
            "replica": name,
            "source": found.source,
            "message": found.message,
        }
        if found.ts is not None:
            event["ts"] = found.ts
        if found.kind == "repaired":
            event["entries"] = found.entries
        self._emit(event)

    async def _start(self, nursery: trio.Nursery) -> None:
        bound = await self._transport.listen(
            self.host, self.port, self._handle_inbound, nursery
        )
        self.port = parse_address(bound)[1]
        # What other nodes dial: the bound address, unless told otherwise.
        self.address = f"{self._advertise}:{self.port}" if self._advertise else bound
        self._self_hosts = {
            _canonical(h) for h in (self.host, self._advertise or self.host)
        }
        self._beat()
        nursery.start_soon(self._heartbeats)
        for _ in range(self.options.fanout):
            nursery.start_soon(self._gossip)
        nursery.start_soon(self._redial)

    def is_self(self, address: str) -> bool:
        """Whether ``address`` names this node, in any spelling."""
        known = self._self_cache.get(address)
        if known is None:
            known = self._self_cache[address] = self._names_self(address)
            if len(self._self_cache) > 4 * DEFAULT_MAX_MEMBERS:
                self._self_cache.clear()
        return known

    def _names_self(self, address: str) -> bool:
        if address == self.address:
            return True
        try:
            host, port = parse_address(address)
        except ValueError:
            return False
        if port != self.port:
            return False
        host = _canonical(host)
        if host in self._self_hosts:
            return True
        listens_locally = any(
            _is_loopback(h) or h in ("0.0.0.0", "::") for h in self._self_hosts
        )
        return listens_locally and (_is_loopback(host) or host in ("0.0.0.0", "::"))

    def node_id(self, address: str) -> str | None:
        """The id the node at ``address`` beats under (its ``node_id``), as
        last heard; ``None`` if it is not in the membership map."""
        stamp = self.membership.newest(address)
        return None if stamp is None else stamp[1]

    def _emit(self, event: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("peer event handler raised")

    def _beat(self) -> None:
        self.membership.beat(self.address)
        self.membership.reap(self._wall() - self.options.reap_after * 1000)
        alive = {n for n in self.members() if not self.is_self(n)}
        for node in sorted(alive - self._alive):
            self._emit({"event": "up", "peer": node, "id": self.node_id(node)})
        for node in sorted(self._alive - alive):
            self._emit({"event": "down", "peer": node})
        self._alive = alive
        self._alive_list = sorted(alive)

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.options.heartbeat_interval)
            self._beat()

    async def _run_link(
        self,
        stream: trio.abc.Stream,
        *,
        live: bool,
        label: str,
        started: Callable[[Connection], None] | None = None,
    ) -> None:
        channel = _Mux(
            self.replicas,
            self.address,
            self._options,
            # Read-only holds on every link, whichever side dialled.
            receive_writes=not self._read_only,
        )
        conn_ref: list[Connection] = []

        def on_start(conn: Connection) -> None:
            conn_ref.append(conn)
            self._links[conn] = label
            if label == "inbound":
                self._inbound.add(conn)
            if started is not None:
                started(conn)

        try:
            await run_channel(
                channel, stream, live=live, on_start=on_start, options=self._options
            )
        finally:
            for conn in conn_ref:
                self._links.pop(conn, None)
                self._inbound.discard(conn)
                self._refused += conn.statistics().refused

    async def _handle_inbound(self, stream: trio.abc.Stream) -> None:
        self._accepted += 1
        try:
            await self._run_link(stream, live=True, label="inbound")
        except RemoteProtocolError as exc:
            limited(
                logging.WARNING,
                "refused",
                "inbound link refused: %s: %s",
                type(exc).__name__,
                exc,
            )
        except RepredError as exc:
            limited(
                logging.DEBUG,
                "closed",
                "inbound link closed: %s: %s",
                type(exc).__name__,
                exc,
            )
        except Exception:
            log.exception("inbound link failed")

    async def _dial(self, node: str, *, live: bool, duration: float) -> bool:
        """Link to ``node``; ``live`` for ``duration`` s, else one sync.

        A success is a link whose handshake completed.
        """
        self._dials += 1
        self._dialling.add(node)
        link: Connection | None = None

        def started(conn: Connection) -> None:
            nonlocal link
            link = conn

        try:
            with trio.fail_after(self.options.connect_timeout):
                stream = await self._transport.connect(node, source=self.address)
            with trio.move_on_after(
                duration if live else self.options.connect_timeout * 4
            ):
                await self._run_link(stream, live=live, label=node, started=started)
        except (OSError, ValueError, trio.TooSlowError, RepredError) as exc:
            self._dial_failed(node, exc)
            return False
        except Exception as exc:
            # Nothing a peer does may stop this one: a failure here is a bug,
            # logged in full, and the node is retried like any other.
            log.exception("link to %s failed", node)
            self._dial_failed(node, exc)
            return False
        finally:
            self._dialling.discard(node)
        if link is None or not link.handshake_done:
            self._dial_failed(node, TimeoutError("no handshake"))
            return False
        if self._failures.pop(node, 0):
            limited(logging.INFO, "dial", "reached %s again", node)
        self._retry_at.pop(node, None)
        return True

    def _dial_failed(self, node: str, exc: BaseException) -> None:
        self._dial_failures += 1
        failures = self._failures.get(node, 0) + 1
        self._failures[node] = failures
        delay = min(
            self.options.max_backoff,
            self.options.heartbeat_interval * 2 ** min(failures - 1, 32),
        )
        self._retry_at[node] = trio.current_time() + delay * self._rng.uniform(0.5, 1.5)
        if failures == 1:  # said once; retried quietly with backoff
            limited(
                logging.INFO,
                "dial",
                "cannot link to %s: %s: %s",
                node,
                type(exc).__name__,
                exc,
            )
        else:
            limited(
                logging.DEBUG,
                "redial",
                "still cannot link to %s (%d tries)",
                node,
                failures,
            )

    def _ready(self, node: str) -> bool:
        return self._retry_at.get(node, 0.0) <= trio.current_time()

    def _eligible(self, node: str, linked: set[str]) -> bool:
        return (
            node not in linked
            and node not in self._dialling
            and self._ready(node)
            and not self.is_self(node)
        )

    def _pick(self) -> str | None:
        """A random live node to link to, or a seed if none is free.

        Drawn by sampling, so a pick costs the same with ten thousand
        members as with ten.
        """
        linked = set(self._links.values())
        failures = self._failures
        alive = self._alive_list
        rng = self._rng
        for _ in range(min(len(alive), _PICK_SAMPLES)):
            node = rng.choice(alive)
            if failures.get(node, 0) < SUSPECT_AFTER and self._eligible(node, linked):
                return node
        seeds = [s for s in self.seeds if self._eligible(s, linked)]
        return rng.choice(seeds) if seeds else None

    async def _gossip(self) -> None:
        while True:
            node = self._pick()
            if node is None:
                await trio.sleep(self.options.heartbeat_interval)
                continue
            # Stay linked for a while, then move on to another random node.
            jitter = self._rng.uniform(0.75, 1.25)
            linked = await self._dial(
                node, live=True, duration=self.options.gossip_interval * jitter
            )
            if not linked:
                # At most ten failed dials per heartbeat from each loop.
                await trio.sleep(self.options.heartbeat_interval / 10)

    def _quiet_node(self, linked: set[str]) -> str | None:
        """A random known node not heard from lately (or suspect), if any."""
        known = self._known_sample()
        rng = self._rng
        for _ in range(min(len(known), _PICK_SAMPLES)):
            node = rng.choice(known)
            suspect = self._failures.get(node, 0) >= SUSPECT_AFTER
            if (node not in self._alive or suspect) and self._eligible(node, linked):
                return node
        return None

    def _known_sample(self) -> list[str]:
        """A list of every known node, rebuilt at most once per heartbeat."""
        now = trio.current_time()
        if (
            self._known_at + self.options.heartbeat_interval <= now
            or not self._known_list
        ):
            self._known_list = list(self.membership.state)
            self._known_at = now
        return self._known_list

    async def _redial(self) -> None:
        """Now and then, sync once with a seed and with a node not heard from.

        Nodes seen down, or suspect, are dialled again with backoff, so a
        partition heals even when every seed is gone.
        """
        while True:
            await trio.sleep(self.options.seed_interval * self._rng.uniform(0.75, 1.25))
            linked = set(self._links.values())
            targets = [s for s in self.seeds if self._eligible(s, linked)]
            quiet = self._quiet_node(linked)
            if quiet is not None:
                targets.append(quiet)
            async with trio.open_nursery() as nursery:
                for node in targets:
                    nursery.start_soon(
                        functools.partial(self._dial, node, live=False, duration=0)
                    )


def _peer_links(
    options: PeerOptions,
    send_timeout: float,
    max_line_bytes: int,
    batch_entries: int,
    batch_bytes: int,
    antientropy_interval: float | None = DEFAULT_ANTIENTROPY_INTERVAL,
) -> LinkOptions:
    """The options of a peer's links, paced by its heartbeat."""
    return LinkOptions(
        send_timeout=send_timeout,
        handshake_timeout=min(DEFAULT_HANDSHAKE_TIMEOUT, options.connect_timeout),
        close_timeout=1.0,
        # A stalled link is noticed within three heartbeats (and never
        # within less than 1.5 s, which a busy machine can take).
        keepalive_interval=max(options.heartbeat_interval, 0.5),
        max_line_bytes=max_line_bytes,
        batch_entries=batch_entries,
        batch_bytes=batch_bytes,
        antientropy_interval=antientropy_interval,
    )


@asynccontextmanager
async def open_peer(
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    replicas: Mapping[str, Any] | None = None,
    seeds: Sequence[str] = (),
    heartbeat_interval: float = 1.0,
    down_after: float = 5.0,
    gossip_interval: float = 3.0,
    seed_interval: float = 5.0,
    max_backoff: float = 30.0,
    connect_timeout: float = 5.0,
    reap_after: float = DEFAULT_REAP_AFTER,
    fanout: int = DEFAULT_FANOUT,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_links: int = DEFAULT_MAX_LINKS,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    rng: random.Random | None = None,
    transport: Any = None,
    wall: Callable[[], float] | None = None,
    advertise: str | None = None,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_entries: int = DEFAULT_BATCH_ENTRIES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    ssl_context: ssl.SSLContext | None = None,
    client_ssl_context: ssl.SSLContext | None = None,
    read_only: bool = False,
    signing_key: SigningKey | None = None,
    verify: bool = False,
    writers: Writers | None = None,
    node_id: str | None = None,
    web_port: int | None = None,
    web_origins: Collection[str] = (),
    web_hosts: Collection[str] = (),
    antientropy_interval: float | None = DEFAULT_ANTIENTROPY_INTERVAL,
) -> AsyncIterator[Peer]:
    """Run a gossip peer inside the caller's trio program.

    ``async with repred.open_peer(port=8001, replicas={"data": m}) as peer``
    listens on ``port``, beats into the membership map, links to random live
    nodes and re-dials ``seeds`` and quiet nodes; everything stops when the
    block ends.

    Args:
        port: where to listen (0: any free port; see ``peer.address``).
        host: the address to listen on (and to advertise, by default).
        advertise: the host other nodes should dial, when it is not
            ``host`` (needed when listening on every interface).
        replicas: the named replicas to replicate; a name the other side
            lacks is skipped.
        seeds: ``"host:port"`` of nodes to dial first and re-dial now and
            then.
        heartbeat_interval: seconds between heartbeats. Links send a
            keep-alive after this much quiet, and a link quiet for three
            heartbeats is cut: a stalled link is noticed within three.
        down_after: a node with no heartbeat for this long is down.
        gossip_interval: seconds an outgoing link lasts before the peer
            moves on to another random node.
        seed_interval: seconds between re-dials of the seeds and of one
            node not heard from (so partitions heal without seeds).
        max_backoff: the longest wait before re-dialling a failing node.
        connect_timeout: seconds a dial may take to connect and to complete
            its handshake.
        reap_after: seconds after its last heartbeat that a node is
            forgotten (an hour by default).
        fanout: outgoing live links kept at once.
        max_members: the most nodes the membership map holds.
        max_links: the most inbound links held at once (the quietest is
            dropped to make room).
        on_event: called with ``{"event": "up", "peer": "host:port", "id":
            node_id}`` and ``{"event": "down", "peer": "host:port"}``, and
            with what anti-entropy finds in a named replica (see
            :class:`repred.Divergence`): ``{"event": kind, "replica": name,
            "source": ..., "message": ...}`` where kind is ``"repaired"``
            (with ``"entries"``), ``"equivocation"`` (with ``"ts"``),
            ``"twin-id"`` or ``"banned"``.
        antientropy_interval: seconds between anti-entropy rounds on a
            live link (a round also follows every sync; see
            :func:`repred.replicate`).
        rng: the source of randomness (tests pass a seeded one).
        transport: how peers reach each other: TCP by default;
            :class:`repred.testing.MemoryNetwork` for simulations.
        wall: the wall clock in ms for heartbeats (simulations pass trio's).
        send_timeout, max_line_bytes, batch_entries, batch_bytes: as for
            :func:`repred.replicate`, for every link.
        ssl_context: link over TLS: the server-side context for inbound
            links (a context that requires client certificates makes it
            mutual TLS). Needs ``client_ssl_context`` too.
        client_ssl_context: the client-side context for dials (trust in the
            other nodes' certificates, and this node's own chain for mutual
            TLS). Nodes are dialled by their ``host:port``, so their
            certificates must name that host.
        read_only: serve the named replicas but apply nothing that other
            nodes write to them, on any link, whichever side dialled
            (membership still flows); what they send is counted in
            :attr:`PeerStatistics.refused`. The web port's links are
            read-only too; a :func:`repred.connect_redis` link beside the
            peer is the caller's, given ``receive=False`` for the named
            replicas (as the peer command's ``--read-only`` does).
        node_id: the id this node's heartbeats go out under, and that
            ``up`` events and :meth:`Peer.node_id` report for it: give the
            id of the node's own replica (the peer command does), so that
            the source of an update names its host. The signing key's id
            with ``signing_key``; a random one otherwise.
        web_port: also serve, on this port, the pages and a WebSocket link
            per named replica (see :mod:`repred._web`): ``GET /`` the
            live page of the replica named ``"data"``, ``GET /todo`` that of
            the ``doc()`` named ``"todo"``, ``ws://HOST:PORT/replicas/NAME``
            for each; :attr:`Peer.web_address` says where.
        web_origins: origins besides the web port's own whose pages may
            open WebSocket links (``"http://host:port"``).
        web_hosts: names the web port's requests may carry in ``Host``
            besides ``host`` (any address, on every interface),
            ``advertise``, ``localhost`` (and 127.0.0.1 and ::1 when
            listening on them); ``"*"``: any. Every other name gets 403, so
            that a page whose name was pointed at this address (DNS
            rebinding) can neither read the pages nor link.
        signing_key, verify, writers: as for :func:`repred.repred`, for the
            membership map: heartbeats are signed with the key, and a
            verifying peer takes only signed ones (from ``writers`` only,
            if given: then no one else can announce a node up).

    Raises:
        TypeError, ValueError: a bad option, at the call.
        OSError: the port cannot be bound.
        Exception: whatever the ``async with`` block raised, as itself
            (never wrapped in an exception group).
    """
    web_policy = None
    if web_port is not None:
        from ._http import RequestPolicy  # (only with a web port)

        web_policy = RequestPolicy.serving(
            host, advertise=advertise, hosts=web_hosts, origins=web_origins
        )
    options = PeerOptions(
        heartbeat_interval=heartbeat_interval,
        down_after=down_after,
        gossip_interval=gossip_interval,
        seed_interval=seed_interval,
        max_backoff=max_backoff,
        connect_timeout=connect_timeout,
        reap_after=reap_after,
        fanout=fanout,
        max_members=max_members,
        max_links=max_links,
    )
    link_options = _peer_links(
        options,
        send_timeout,
        max_line_bytes,
        batch_entries,
        batch_bytes,
        antientropy_interval,
    )
    peer = Peer(
        host=host,
        port=port,
        replicas=replicas or {},
        seeds=seeds,
        options=options,
        link_options=link_options,
        on_event=on_event,
        rng=rng or random.Random(),
        transport=transport
        or TcpTransport(
            ssl_context,
            client_ssl_context,
            handshake_timeout=connect_timeout,
            max_handshakes=max_links,
        ),
        wall=wall or wall_ms,
        advertise=advertise,
        read_only=read_only,
        trust={
            "node_id": node_id,
            "signing_key": signing_key,
            "verify": verify,
            "writers": writers,
        },
    )
    stop_watching = peer._watch_divergence()
    async with single_errors(), trio.open_nursery() as nursery:
        await peer._start(nursery)
        if web_port is not None:
            from ._web import serve_web  # (loads the WebSocket and HTTP stack)

            web = await nursery.start(
                functools.partial(
                    serve_web,
                    replicas or {},
                    web_port,
                    host=host,
                    policy=web_policy,
                    options=attrs.evolve(link_options, receive=not read_only),
                    max_links=max_links,
                )
            )
            peer.web_address = f"{host}:{web[0].socket.getsockname()[1]}"
        try:
            yield peer
        finally:
            stop_watching()
            nursery.cancel_scope.cancel()
