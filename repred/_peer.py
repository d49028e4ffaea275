"""Gossip peers: several named replicas over one link, membership, dialling.

Every node keeps its own replicas and a replicated membership map (node
address -> newest heartbeat, wall ms), so the list of nodes reaches every
node, as in Dynamo. Each node beats into it, drops its outgoing link every
few seconds and dials a random node seen alive recently: no leader, no
central server. Seeds are re-dialled now and then, so a partition heals.

The link protocol carries several replicas over one stream. Each side first
sends a hello line, ``{"repred-peer": 1, "node": "host:port", "replicas":
{name: type}}``; then every line of every replica's scuttlebutt session goes
as ``name TAB line``. A replica the other side lacks (or holds with another
type) is skipped, not an error.
"""

from __future__ import annotations

import functools
import logging
import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs
import orjson
import trio

from ._errors import RemoteProtocolError, ReplicaError
from ._replica import wall_ms
from ._session import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_ENTRIES,
    SessionState,
    SyncSession,
)
from ._trio import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    Connection,
    LinkOptions,
    run_channel,
    single_errors,
)
from ._wire import DEFAULT_MAX_LINE_BYTES, LineDecoder, loads_line
from .types import Model, model

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

__all__ = [
    "MEMBERS",
    "Peer",
    "PeerStatistics",
    "TcpTransport",
    "open_peer",
    "parse_address",
]

log = logging.getLogger("repred.peer")

#: The name of the membership replica every peer carries.
MEMBERS = "_members"
PEER_PROTOCOL = 1


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` to ``(host, port)``.

    Raises:
        ValueError: not of that form.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


def _bad(message: str, line: bytes) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason="not-a-peer", line=line[:200])


class _Mux:
    """Framing for a peer link: a hello, then ``name TAB line`` per line."""

    def __init__(
        self, replicas: Mapping[str, Any], node: str, options: LinkOptions
    ) -> None:
        self._replicas = replicas
        self._decoder = LineDecoder(options.max_line_bytes + 256)
        self._options = options
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
        self.sessions: list[SyncSession] = []
        self._by_name: dict[bytes, SyncSession] = {}
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
            if session.their_state not in (SessionState.CLOSED, SessionState.ERROR):
                events += session.receive_data(None)
        return events

    def _route(self, lines: list[bytes], events: list[object]) -> None:
        start = 0
        if self.hello is None and lines:
            self._on_hello(lines[0])
            start = 1
        current: SyncSession | None = None
        bodies: list[bytes] = []
        for line in lines[start:]:
            name, tab, body = line.partition(b"\t")
            if not tab:
                raise _bad("a peer line is NAME TAB LINE", line)
            session = self._by_name.get(name)
            if session is not current:
                if current is not None and bodies:
                    events += current.receive_data(b"\n".join(bodies) + b"\n")
                current, bodies = session, []
            if session is not None:
                bodies.append(body)
        if current is not None and bodies:
            events += current.receive_data(b"\n".join(bodies) + b"\n")

    def _on_hello(self, line: bytes) -> None:
        msg = loads_line(line)
        if (
            type(msg) is not dict
            or msg.get("repred-peer") != PEER_PROTOCOL
            or type(msg.get("node")) is not str
            or type(msg.get("replicas")) is not dict
        ):
            raise _bad("not a repred peer (no hello)", line)
        theirs = msg["replicas"]
        for name, replica in self._replicas.items():
            if theirs.get(name) == replica.type_name:
                session = self._options.session(replica)
                session.wakeup = self._wakeup
                self.sessions.append(session)
                self._by_name[name.encode()] = session
        self.hello = msg
        if self._wakeup is not None:
            self._wakeup()

    def data_to_send(self) -> bytes:
        out = self._out
        self._out = []
        for name, session in self._by_name.items():
            data = session.data_to_send()
            if data:
                prefix = name + b"\t"
                out.append(prefix + data[:-1].replace(b"\n", b"\n" + prefix) + b"\n")
        return b"".join(out)


class TcpTransport:
    """How peers reach each other by default: TCP."""

    async def listen(
        self,
        host: str,
        port: int,
        handler: Callable[[trio.abc.Stream], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> str:
        """Serve ``handler`` on ``host:port``; return the address bound."""
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, port, host=host)
        )
        return f"{host}:{listeners[0].socket.getsockname()[1]}"

    async def connect(self, address: str, *, source: str) -> trio.abc.Stream:
        """A stream to ``address``; ``source`` is the dialling peer's address."""
        host, port = parse_address(address)
        return await trio.open_tcp_stream(host, port)


@attrs.frozen(kw_only=True)
class PeerStatistics:
    """A snapshot of a peer.

    Attributes:
        address: where this peer listens, ``host:port``.
        members: the nodes seen alive recently (this one included).
        links: open links, inbound and outbound.
        dials: outbound connection attempts.
        dial_failures: attempts that failed (connect or protocol).
        accepted: inbound connections accepted.
    """

    address: str
    members: tuple[str, ...]
    links: int
    dials: int
    dial_failures: int
    accepted: int


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
        heartbeat_interval: float,
        down_after: float,
        gossip_interval: float,
        seed_interval: float,
        max_backoff: float,
        connect_timeout: float,
        on_event: Callable[[dict[str, Any]], None] | None,
        rng: random.Random,
        transport: Any,
        wall: Callable[[], float],
        advertise: str | None,
        options: LinkOptions,
    ) -> None:
        if host in ("0.0.0.0", "::", "") and not advertise:
            raise ValueError(
                f"listening on {host!r} (every interface) needs advertise=, the"
                " host other nodes should dial"
            )
        self._advertise = advertise
        if MEMBERS in replicas:
            raise ValueError(f"the replica name {MEMBERS!r} is the peer's own")
        for name in replicas:
            if not name or "\t" in name or "\n" in name:
                raise ValueError(f"bad replica name {name!r}")
        for seed in seeds:
            parse_address(seed)
        self.host = host
        self.port = port
        self.address = ""
        self._transport = transport
        self._wall = wall
        self.membership: Model = model(wall=wall)
        self.replicas = {**replicas, MEMBERS: self.membership}
        self.seeds = list(seeds)
        self.heartbeat_interval = heartbeat_interval
        self.down_after = down_after
        self.gossip_interval = gossip_interval
        self.seed_interval = seed_interval
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self._on_event = on_event
        self._rng = rng
        self._options = options
        self._links: dict[Connection, str] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._alive: set[str] = set()
        self._dials = 0
        self._dial_failures = 0
        self._accepted = 0

    def __repr__(self) -> str:
        return f"<repred.Peer {self.address} links={len(self._links)}>"

    # -- what a user reads --------------------------------------------

    def members(self, within: float | None = None) -> list[str]:
        """Nodes whose heartbeat is at most ``within`` s old (default: down_after)."""
        horizon = (self.down_after if within is None else within) * 1000
        now = self._wall()
        return sorted(
            node
            for node, beat in self.membership.to_dict().items()
            if isinstance(beat, int | float) and now - beat <= horizon
        )

    def links(self) -> list[str]:
        """The nodes this peer has a link to now."""
        return sorted(set(self._links.values()))

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            address=self.address,
            members=tuple(self.members()),
            links=len(self._links),
            dials=self._dials,
            dial_failures=self._dial_failures,
            accepted=self._accepted,
        )

    # -- running -------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        bound = await self._transport.listen(
            self.host, self.port, self._handle_inbound, nursery
        )
        self.port = parse_address(bound)[1]
        # What other nodes dial: the bound address, unless told otherwise.
        self.address = f"{self._advertise}:{self.port}" if self._advertise else bound
        self._beat()
        nursery.start_soon(self._heartbeats)
        nursery.start_soon(self._gossip)
        nursery.start_soon(self._redial_seeds)

    def _emit(self, event: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("peer event handler raised")

    def _beat(self) -> None:
        self.membership.set(self.address, self._wall())
        alive = set(self.members()) - {self.address}
        for node in sorted(alive - self._alive):
            self._emit({"event": "up", "peer": node})
        for node in sorted(self._alive - alive):
            self._emit({"event": "down", "peer": node})
        self._alive = alive

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            self._beat()

    async def _run_link(
        self, stream: trio.abc.Stream, *, live: bool, label: str
    ) -> None:
        channel = _Mux(self.replicas, self.address, self._options)
        conn_ref: list[Connection] = []

        def on_start(conn: Connection) -> None:
            conn_ref.append(conn)
            self._links[conn] = label

        try:
            await run_channel(
                channel,
                stream,
                live=live,
                on_start=on_start,
                options=self._options,
            )
        finally:
            for conn in conn_ref:
                self._links.pop(conn, None)

    async def _handle_inbound(self, stream: trio.abc.Stream) -> None:
        self._accepted += 1
        try:
            await self._run_link(stream, live=True, label="inbound")
        except ReplicaError as exc:
            log.info("inbound link closed: %s: %s", type(exc).__name__, exc)
        except Exception:
            log.exception("inbound link failed")

    async def _dial(self, node: str, *, live: bool, duration: float) -> bool:
        """Link to ``node``; ``live`` for ``duration`` s, else one sync."""
        self._dials += 1
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await self._transport.connect(node, source=self.address)
            with trio.move_on_after(duration if live else self.connect_timeout * 4):
                await self._run_link(stream, live=live, label=node)
        except (OSError, ValueError, trio.TooSlowError, ReplicaError) as exc:
            self._dial_failed(node, exc)
            return False
        except Exception as exc:
            # Nothing a peer does may stop this one: a failure here is a bug,
            # logged in full, and the node is retried like any other.
            log.exception("link to %s failed", node)
            self._dial_failed(node, exc)
            return False
        if self._failures.pop(node, 0):
            log.info("reached %s again", node)
        self._retry_at.pop(node, None)
        return True

    def _dial_failed(self, node: str, exc: BaseException) -> None:
        self._dial_failures += 1
        failures = self._failures.get(node, 0) + 1
        self._failures[node] = failures
        delay = min(
            self.max_backoff, self.heartbeat_interval * 2 ** min(failures - 1, 32)
        )
        self._retry_at[node] = trio.current_time() + delay * self._rng.uniform(0.5, 1.5)
        if failures == 1:  # said once; retried quietly with backoff
            log.warning("cannot link to %s: %s: %s", node, type(exc).__name__, exc)
        else:
            log.debug("still cannot link to %s (%d tries)", node, failures)

    def _ready(self, node: str) -> bool:
        return self._retry_at.get(node, 0.0) <= trio.current_time()

    def _pick(self) -> str | None:
        linked = set(self._links.values())
        candidates = [
            n
            for n in self.members()
            if n != self.address and n not in linked and self._ready(n)
        ]
        if not candidates:
            candidates = [s for s in self.seeds if s not in linked and self._ready(s)]
        return self._rng.choice(candidates) if candidates else None

    async def _gossip(self) -> None:
        while True:
            node = self._pick()
            if node is None:
                await trio.sleep(self.heartbeat_interval)
                continue
            # Stay linked for a while, then move on to another random node.
            jitter = self._rng.uniform(0.75, 1.25)
            await self._dial(node, live=True, duration=self.gossip_interval * jitter)

    async def _redial_seeds(self) -> None:
        while True:
            for seed in self.seeds:
                if seed != self.address and seed not in self._links.values():
                    if self._ready(seed):
                        await self._dial(seed, live=False, duration=0)
            await trio.sleep(self.seed_interval * self._rng.uniform(0.75, 1.25))


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
    on_event: Callable[[dict[str, Any]], None] | None = None,
    rng: random.Random | None = None,
    transport: Any = None,
    wall: Callable[[], float] | None = None,
    advertise: str | None = None,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_entries: int = DEFAULT_BATCH_ENTRIES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> AsyncIterator[Peer]:
    """Run a gossip peer inside the caller's trio program.

    ``async with repred.open_peer(port=8001, replicas={"data": m}) as peer``
    listens on ``port``, beats into the membership map, links to random live
    nodes and re-dials ``seeds``; everything stops when the block ends.

    Args:
        port: where to listen (0: any free port; see ``peer.address``).
        host: the address to listen on (and to advertise, by default).
        advertise: the host other nodes should dial, when it is not
            ``host`` (needed when listening on every interface).
        replicas: the named replicas to replicate; a name the other side
            lacks is skipped.
        seeds: ``"host:port"`` of nodes to dial first and re-dial now and
            then, so that partitions heal.
        heartbeat_interval: seconds between heartbeats.
        down_after: a node with no heartbeat for this long is down.
        gossip_interval: seconds an outgoing link lasts before the peer
            moves on to another random node.
        seed_interval: seconds between re-dials of the seeds.
        max_backoff: the longest wait before re-dialling a failing node.
        connect_timeout: seconds a dial may take.
        on_event: called with ``{"event": "up"|"down", "peer": "host:port"}``.
        rng: the source of randomness (tests pass a seeded one).
        transport: how peers reach each other: TCP by default;
            :class:`repred.testing.MemoryNetwork` for simulations.
        wall: the wall clock in ms for heartbeats (simulations pass trio's).
        send_timeout, max_line_bytes, batch_entries, batch_bytes: as for
            :func:`replicate`, for every link.

    Raises:
        TypeError, ValueError: a bad option, at the call.
        OSError: the port cannot be bound.
        Exception: whatever the ``async with`` block raised, as itself
            (never wrapped in an exception group).
    """
    peer = Peer(
        host=host,
        port=port,
        replicas=replicas or {},
        seeds=seeds,
        heartbeat_interval=heartbeat_interval,
        down_after=down_after,
        gossip_interval=gossip_interval,
        seed_interval=seed_interval,
        max_backoff=max_backoff,
        connect_timeout=connect_timeout,
        on_event=on_event,
        rng=rng or random.Random(),
        transport=transport or TcpTransport(),
        wall=wall or wall_ms,
        advertise=advertise,
        options=LinkOptions(
            send_timeout=send_timeout,
            handshake_timeout=min(DEFAULT_HANDSHAKE_TIMEOUT, connect_timeout),
            close_timeout=1.0,
            max_line_bytes=max_line_bytes,
            batch_entries=batch_entries,
            batch_bytes=batch_bytes,
        ),
    )
    async with single_errors():
        async with trio.open_nursery() as nursery:
            await peer._start(nursery)
            try:
                yield peer
            finally:
                nursery.cancel_scope.cancel()
