"""Gossip peers: several named replicas over many links, membership, dialling.

Every node keeps its own replicas and a replicated membership map (node
address -> what was last said of it, see :mod:`repred._members`), so the
list of nodes reaches every node, as in Dynamo. Each node keeps a few
outgoing links to random live nodes (moving on every few seconds), and now
and then re-dials a node seen down, so partitions heal without seeds, as in
Serf. Each link carries every replica both sides hold, framed by
:mod:`repred._mux`.

Membership costs each node the same however many nodes there are (SWIM's
design; see :mod:`repred._members` for the map and what a node makes of
it). A node writes its entry when it starts and when it must refute a
suspicion, never on a timer. Its links are its probes: each carries a
keep-alive every heartbeat, and each node always holds ``fanout`` links it
dialled, so every live node is watched by the nodes it links to. A node is
suspected (an entry any node may write, and that only the node itself
refutes) by whoever

* fails to dial it (no connection, or no handshake within
  ``connect_timeout``), or
* dialled it and heard nothing for three heartbeats;

and checked, with one sync, by whoever holds a link with it that ends
before its time: a link it dialled that it closed early, or an inbound
link from it that broke or ended well before the ``stay`` its hello
announced. So a node that stops is suspected within a round trip when its
connections close (a process that exits or is killed), within three
heartbeats when it hangs (and ``connect_timeout`` more if no node had a
link dialled to it), and seen down everywhere ``down_after`` after that; a
node that can reach any other refutes a suspicion long before.

Membership is validated, bounded and reaped:

* a member is a ``host:port`` with a real port, not a wildcard address and
  not this node under another spelling (``localhost``, ``127.1``, ...; see
  :mod:`repred._address`); anything else is refused on the link that
  brought it;
* an entry's stamp is a stamp like any, so one from the future is deferred
  (see :data:`repred.DEFAULT_MAX_DRIFT_MS`);
* the map holds at most ``max_members`` nodes (16,384 by default);
* a node that fails ``SUSPECT_AFTER`` dials in a row is left out of this
  node's :meth:`Peer.members` and is re-dialled only with backoff (up to
  ``max_backoff``); a node suspected ``reap_after`` ago (an hour by
  default) is forgotten.

A dial has a connect timeout, and a link counts as a success only once the
other side has completed the handshake: a listener that accepts and never
speaks is a failure. Several dials run at once, each in its own task.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._address import OwnAddress, parse_address
from ._connection import Connection, run_channel
from ._errors import PeerClosed, RemoteProtocolError, RepredError, SyncTimeout
from ._groups import single_errors
from ._log import limited, peer_log
from ._members import MEMBERS, View, members_replica
from ._mux import MAX_NAME_LENGTH, Mux
from ._options import (
    DEFAULT_ANTIENTROPY_INTERVAL,
    DEFAULT_FANOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_DOCUMENTS,
    DEFAULT_MAX_LINKS,
    DEFAULT_MAX_MEMBERS,
    DEFAULT_REAP_AFTER,
    DEFAULT_SEND_TIMEOUT,
    LinkOptions,
    PeerOptions,
    PlacementOptions,
    Trust,
    pick,
)
from ._placed import DocumentStatistics, Placed
from ._replica import wall_ms
from ._serving import LinkTable, link_errors_logged
from ._session import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ENTRIES
from ._transport import TcpTransport
from ._wire import DEFAULT_MAX_LINE_BYTES

if TYPE_CHECKING:
    import ssl
    from collections.abc import (
        AsyncIterator,
        Callable,
        Collection,
        Iterable,
        Mapping,
        Sequence,
    )

    from ._divergence import Divergence
    from ._http import RequestPolicy
    from ._members import Membership
    from ._replica import Replica
    from ._transport import Transport
    from ._trust import SigningKey, Writers

__all__ = ["SUSPECT_AFTER", "Peer", "PeerStatistics", "open_peer"]

#: Dials in a row that fail before a node is suspect.
SUSPECT_AFTER = 3
#: Random draws from the live members before falling back to the seeds.
_PICK_SAMPLES = 64


@attrs.frozen(kw_only=True)
class PeerStatistics:
    """A snapshot of a peer.

    Attributes:
        address: where this peer listens, ``host:port``.
        members: the nodes up (this one included; see :meth:`Peer.members`).
        known: every node in the membership map.
        suspects: nodes this one failed to dial several times in a row.
        links: open links, inbound and outbound.
        dials: outbound connection attempts.
        dial_failures: attempts that failed (connect, handshake or protocol).
        accepted: inbound connections accepted.
        refused: entries of the named replicas not applied because the peer
            is ``read_only``, over every link so far.
        documents: the placed documents (with ``documents=``; else ``None``).
        suspected: nodes the membership map says are suspected (up for
            ``down_after`` after this node heard so, down after that).
        probes: syncs this node made to check on a node whose link ended
            before its time.
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
    documents: DocumentStatistics | None = None
    suspected: tuple[str, ...] = ()
    probes: int = 0


def _check_replicas(replicas: Mapping[str, Any]) -> None:
    """Refuse names a peer cannot carry, at the call."""
    if MEMBERS in replicas:
        raise ValueError(f"the replica name {MEMBERS!r} is the peer's own")
    for name in replicas:
        bad = "\t" in name or "\n" in name or not 0 < len(name) <= MAX_NAME_LENGTH
        if bad:
            raise ValueError(f"bad replica name {name!r}")


@final
class Peer:
    """A running gossip peer; made by :func:`open_peer`.

    Its ``transport`` is how peers reach each other (:class:`Transport`:
    TCP by default), ``rng`` its randomness and ``wall`` its clock in ms
    (simulations pass their own). What happens is said to ``on_event`` (if
    given), one dict per event:
    ``{"event": "up", "peer": "host:port", "id": node_id}`` and
    ``{"event": "down", "peer": "host:port"}`` as nodes come and go, and
    what anti-entropy finds in a named replica (see
    :class:`repred.Divergence`): ``{"event": kind, "replica": name,
    "source": ..., "message": ...}`` where kind is ``"repaired"`` (with
    ``"entries"``), ``"equivocation"`` (with ``"ts"``), ``"twin-id"`` or
    ``"banned"``. A peer that places documents says what moves (see
    :meth:`document`): ``{"event": "handoff", "document", "to", "entries"}``
    when a node that newly owns a document was brought a copy,
    ``{"event": "handoff-failed", "kind", "document", "to", "attempts",
    "reason", "retry_in"}`` when that (``"kind": "handoff"``) or an owner's
    catch-up (``"sync"``) failed and waits to be retried, ``{"event":
    "received", "document", "from"}`` when a peer brought this node a
    document it now owns, and ``{"event": "copy-dropped", "document",
    "owners"}`` when this node dropped a copy once its owners held all of
    it.
    """

    def __init__(
        self,
        *,
        replicas: Mapping[str, Any],
        options: PeerOptions,
        link_options: LinkOptions,
        trust: Trust,
        transport: Transport,
        on_event: Callable[[dict[str, Any]], None] | None,
        rng: random.Random,
        wall: Callable[[], float],
        placed: Callable[..., Placed] | None = None,
    ) -> None:
        _check_replicas(replicas)
        self.options = options
        self.host = options.host
        self.port = options.port
        self.address = ""
        #: Where the web port listens ("host:port"), if open_peer was given one.
        self.web_address: str | None = None
        self._members = members_replica(
            wall=wall,
            max_members=options.max_members,
            node_id=options.node_id,
            trust=trust,
        )
        self.replicas = {**replicas, MEMBERS: self._members}
        self._view = self._watched(View(self._members))
        self.seeds = list(options.seeds)
        #: The web port and who may use it, if there is one.
        self._web = _web(options)
        self._transport = transport
        self._on_event = on_event
        self._rng = rng
        self._link_options = link_options
        self._inbound = LinkTable(options.max_links)
        self._links: dict[Connection, str] = {}
        self._own: OwnAddress | None = None
        self._dialling: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._alive: set[str] = set()
        self._alive_list: list[str] = []
        self._known_list: list[str] = []
        self._known_at = -math.inf
        self._dials = 0
        self._dial_failures = 0
        self._accepted = 0
        #: Entries refused (read_only) on links that have ended.
        self._refused = 0
        #: The placed documents, if any (open_peer's documents=).
        self._placed = None if placed is None else self._place(placed, rng)

    def _place(self, placed: Callable[..., Placed], rng: random.Random) -> Placed:
        """The placed documents, given what this peer offers them."""
        return placed(
            peer_options=self.options,
            link_options=self._link_options,
            connect=self._connect_to,
            emit=self._emit,
            rng=rng,
            reserved=self.replicas.keys(),
        )

    def __repr__(self) -> str:
        return f"<repred.Peer {self.address} links={len(self._links)}>"

    def _watched(self, view: View) -> View:
        """``view``, with what this peer keeps to act on it."""
        view.on_refute = self._refute_soon
        #: What the events were last computed from (see _tick).
        self._seen: tuple[list[str] | None, int] = (None, 0)
        #: Counts changes to _failures (members() depends on them).
        self._failures_changed = 0
        #: Where checks run (None once the peer is closing), and what wakes
        #: the watch to refute.
        self._nursery: trio.Nursery | None = None
        self._wanted: trio.Event | None = None
        self._probes = 0
        #: When each node was last checked: at most once a heartbeat, since
        #: what asks for a check (a hello's node) is the dialler's word.
        self._probed: dict[str, float] = {}
        return view

    # -- what a user reads --------------------------------------------

    def connections(self) -> list[Connection]:
        """The links open now, inbound and outbound."""
        return list(self._links)

    @property
    def membership(self) -> Membership:
        """The replicated membership map: address -> ``(status, ts,
        node_id, source)`` of the newest entry said of it, replicated as
        the type ``"membership"`` (see :mod:`repred._members`)."""
        return self._members

    def members(self, within: float | None = None) -> list[str]:
        """The nodes up, sorted: said alive, or suspected less than
        ``within`` s ago (default: ``down_after``) by this node's clock.

        Nodes this one failed to dial several times in a row are left out.
        This node is always in.
        """
        up = self._view.up(self.options.down_after if within is None else within)
        failures = self._failures
        if not failures:
            return list(up)
        return [
            node
            for node in up
            if failures.get(node, 0) < SUSPECT_AFTER or node == self.address
        ]

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            address=self.address,
            members=tuple(self.members()),
            known=len(self._members.state),
            suspects=tuple(
                sorted(n for n, f in self._failures.items() if f >= SUSPECT_AFTER)
            ),
            links=len(self._links),
            dials=self._dials,
            dial_failures=self._dial_failures,
            accepted=self._accepted,
            refused=self._refused + sum(c.statistics().refused for c in self._links),
            documents=None if self._placed is None else self._placed.statistics(),
            suspected=tuple(self._view.suspected()),
            probes=self._probes,
        )

    # -- placed documents ------------------------------------------------

    def _documents(self) -> Placed:
        if self._placed is None:
            raise RepredError(
                "this peer places no documents: give open_peer documents="
            )
        return self._placed

    async def document(self, name: str) -> Replica:
        """The replica of the placed document ``name`` on this node.

        On one of its owners, the durable copy (made with the ``documents``
        factory); on any other node, a live copy, linked to the first of
        its owners that answers: its writes reach that owner at once (and
        from there the others), and what the owners hold reaches it. It
        returns once the copy has synced with one owner, or after
        ``connect_timeout`` if none answers (it links when one does). The
        copy is kept here while the peer runs, owned or not.

        Raises:
            RepredError: the peer places no documents, or holds
                ``max_documents`` already.
            TypeError, ValueError: a bad name (see :func:`check_document_name
                <repred._doclink.check_document_name>`), or the name of one
                of the peer's ``replicas=``.
        """
        return await self._documents().document(name)

    def owners(self, name: str) -> list[str]:
        """The addresses of the nodes that own the document ``name``, most
        preferred first: :func:`repred.owners` over the members this node
        settled on (every node that sees the same members says the same)."""
        return self._documents().owners(name)

    def holding(self) -> list[str]:
        """The names of the documents this node holds as one of their owners."""
        return self._documents().holding()

    async def wait_replicated(self, name: str, copies: int = 2) -> None:
        """Wait until ``copies`` owners of ``name`` hold everything this node
        holds of it (Dynamo's W): applied, and committed if their replica
        has a store. This node counts if it owns the document.

        Owners say how far they hold a document on the link that brought
        it (see :mod:`repred._doclink`); the copies they lack are sent
        (as a hand-off's are: retried until they arrive, and reported).
        It waits for as long as that takes: bound it with a cancel scope
        (``with trio.fail_after(10): ...``).

        Raises:
            RepredError: the peer places no documents, or dropped its copy
                while waiting.
            ValueError: this node holds no copy of ``name`` (call
                :meth:`document` first), or ``copies`` is not from 1 to the
                peer's ``copies``.
        """
        await self._documents().wait_replicated(name, copies)

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

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[Peer]:
        """Listen, beat, gossip and re-dial (and serve the web port) while
        the block runs."""
        stop_watching = self._watch_divergence()
        try:
            async with single_errors(), trio.open_nursery() as nursery:
                await self._start(nursery)
                if self._web is not None:
                    await self._serve_web(nursery, *self._web)
                try:
                    yield self
                finally:
                    stop_watching()
                    self._nursery = None  # no more probes
                    nursery.cancel_scope.cancel()
        finally:
            if self._placed is not None:
                self._placed.close()  # every link has ended

    async def _start(self, nursery: trio.Nursery) -> None:
        bound = await self._transport.listen(
            self.host, self.port, self._handle_inbound, nursery
        )
        self.port = parse_address(bound)[1]
        # What other nodes dial: the bound address, unless told otherwise.
        advertise = self.options.advertise
        self.address = f"{advertise}:{self.port}" if advertise else bound
        self._own = OwnAddress(self.address, (self.host, advertise or self.host))
        self._nursery = nursery
        self._view.join(self.address)
        nursery.start_soon(self._watch)
        for _ in range(self.options.fanout):
            nursery.start_soon(self._gossip)
        nursery.start_soon(self._redial)
        if self._placed is not None:
            await nursery.start(self._placed.run, self)

    async def _serve_web(
        self, nursery: trio.Nursery, port: int, policy: RequestPolicy
    ) -> None:
        from ._web import serve_web  # (loads the WebSocket and HTTP stack)

        options = self.options
        named = {n: r for n, r in self.replicas.items() if n != MEMBERS}
        web = await nursery.start(
            functools.partial(
                serve_web,
                named,
                port,
                host=self.host,
                policy=policy,
                options=attrs.evolve(self._link_options, receive=not options.read_only),
                max_links=options.max_links,
                documents=None if self._placed is None else self._placed.web_handler,
            )
        )
        self.web_address = f"{self.host}:{web[0].socket.getsockname()[1]}"

    def is_self(self, address: str) -> bool:
        """Whether ``address`` names this node, in any spelling."""
        return self._own is not None and self._own.names(address)

    def node_id(self, address: str) -> str | None:
        """The id the node at ``address`` writes under (its ``node_id``), as
        last heard; ``None`` if it is not in the membership map."""
        entry = self._members.entry(address)
        return None if entry is None else entry[2]

    async def _connect_to(self, node: str) -> trio.abc.Stream:
        return await self._transport.connect(node, source=self.address)

    def _emit(self, event: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                peer_log.exception("peer event handler raised")

    def _tick(self) -> None:
        """Forget old suspicions, and what a full map passed over, and say
        who came and who went."""
        self._members.trim()
        for node in self._view.reap(self.options.reap_after):
            # Nothing is kept of a node the map forgot: junk members come
            # and go, and each would leave its failures behind.
            if self._failures.pop(node, 0):
                self._failures_changed += 1
            self._retry_at.pop(node, None)
        self._view.renew(self.options.reap_after / 2)
        if self._probed:  # (checks are kept for a heartbeat)
            since = trio.current_time() - self.options.heartbeat_interval
            self._probed = {n: t for n, t in self._probed.items() if t > since}
        up = self._view.up(self.options.down_after)
        seen = (up, self._failures_changed)
        if seen[0] is self._seen[0] and seen[1] == self._seen[1]:
            return  # nothing changed: a tick costs nothing per member
        self._seen = seen
        alive = {n for n in self.members() if not self.is_self(n)}
        for node in sorted(alive - self._alive):
            self._emit({"event": "up", "peer": node, "id": self.node_id(node)})
        for node in sorted(self._alive - alive):
            self._emit({"event": "down", "peer": node})
        self._alive = alive
        self._alive_list = sorted(alive)

    def _refute_soon(self) -> None:
        if self._wanted is not None:
            self._wanted.set()

    async def _watch(self) -> None:
        """Every heartbeat, say who came and went; when this node hears
        itself suspected, refute it at once, and then at most once a
        heartbeat (two nodes that claim one address would otherwise take
        turns as fast as the network carries them)."""
        interval = self.options.heartbeat_interval
        while True:
            self._wanted = trio.Event()
            if self._refute():
                self._tick()
                await trio.sleep(interval)
                continue
            self._tick()
            with trio.move_on_after(interval):
                await self._wanted.wait()

    async def _run_link(
        self,
        stream: trio.abc.Stream,
        *,
        live: bool,
        label: str,
        started: Callable[[Connection], None] | None = None,
        stay: float | None = None,
        channels: list[Mux] | None = None,
    ) -> None:
        channel = Mux(
            self.replicas,
            self.address,
            self._link_options,
            # Read-only holds on every link, whichever side dialled.
            receive_writes=not self.options.read_only,
            stay=stay,
        )
        if channels is not None:
            channels.append(channel)
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
                channel,
                stream,
                live=live,
                on_start=on_start,
                options=self._link_options,
            )
        finally:
            for conn in conn_ref:
                self._links.pop(conn, None)
                self._inbound.discard(conn)
                self._refused += conn.statistics().refused

    async def _handle_inbound(self, stream: trio.abc.Stream) -> None:
        self._accepted += 1
        if self._placed is not None:
            # A document link is the placed documents' own.
            gossip = await self._placed.take(stream)
            if gossip is None:
                return
            stream = gossip
        start = trio.current_time()
        channels: list[Mux] = []
        broken = refused = False
        with link_errors_logged(peer_log, closed=logging.DEBUG):
            try:
                await self._run_link(
                    stream, live=True, label="inbound", channels=channels
                )
            except (PeerClosed, SyncTimeout):
                broken = True
                raise
            except RepredError:
                refused = True  # it is there: it broke the protocol
                raise
        stay = channels[0].stay if channels else None
        if stay is None or refused:
            return  # not a live link its dialler meant to keep
        # What its dialler planned, to within a heartbeat (the two sides
        # start their clocks a hop apart).
        margin = min(self.options.heartbeat_interval, stay / 2)
        if broken or trio.current_time() < start + stay - margin:
            node = channels[0].peer_id
            if node is not None:
                self._probe(node)

    async def _dial(self, node: str, *, live: bool, duration: float) -> bool:
        """Link to ``node``; ``live`` for ``duration`` s, else one sync.

        A success is a link whose handshake completed. A node that cannot
        be reached, or that goes silent on a link dialled to it, is
        suspected; one that ends a live link before its time is checked.
        """
        self._dials += 1
        self._dialling.add(node)
        opened: list[Connection] = []
        channels: list[Mux] = []
        try:
            on_time = await self._open_link(node, live, duration, opened, channels)
        except (OSError, ValueError, trio.TooSlowError, RepredError) as exc:
            self._dialling.discard(node)  # (before a probe of it is asked)
            self._dial_failed(node, exc)
            self._lost(node, opened, exc, live)
            return False
        except Exception as exc:
            # Nothing a peer does may stop this one: a failure here is a bug,
            # logged in full, and the node is retried like any other.
            peer_log.exception("link to %s failed", node)
            self._dial_failed(node, exc)
            return False
        finally:
            self._dialling.discard(node)
        if not (opened and opened[0].handshake_done):
            self._dial_failed(node, TimeoutError("no handshake"))
            self._suspect(node)
            return False
        named = channels[0].peer_id
        if named is not None and named != node:
            # Another node answered here: this is another spelling of its
            # address, not a member of its own (a machine counted twice).
            limited(
                logging.INFO, "alias", "%s answers as %s", node, named, logger=peer_log
            )
            self._suspect(node)
            return False
        if self._failures.pop(node, 0):
            self._failures_changed += 1
            limited(logging.INFO, "dial", "reached %s again", node, logger=peer_log)
        self._retry_at.pop(node, None)
        if live and not on_time:
            self._probe(node)  # it closed the link before its time
        return True

    async def _open_link(
        self,
        node: str,
        live: bool,
        duration: float,
        opened: list[Connection],
        channels: list[Mux],
    ) -> bool:
        """Connect to ``node`` and run a link (see :meth:`_dial`); whether
        it lasted as long as this node meant it to."""
        with trio.fail_after(self.options.connect_timeout):
            stream = await self._transport.connect(node, source=self.address)
        with trio.move_on_after(
            duration if live else self.options.connect_timeout * 4
        ) as planned:
            await self._run_link(
                stream,
                live=live,
                label=node,
                started=opened.append,
                stay=duration if live else None,
                channels=channels,
            )
        return planned.cancelled_caught

    def _lost(
        self, node: str, opened: list[Connection], exc: BaseException, live: bool
    ) -> None:
        """What a failed dial says of ``node``: suspect it if it could not be
        reached or went silent, check on it if a live link to it broke (a
        check that breaks is not checked again: a node that takes links and
        drops them would keep this one dialling)."""
        if isinstance(exc, RemoteProtocolError):
            return  # it is there: it broke the protocol
        reached = bool(opened) and opened[0].handshake_done
        if isinstance(exc, SyncTimeout) or not reached:
            self._suspect(node)
        elif isinstance(exc, PeerClosed) and live:
            self._probe(node)

    def _refute(self) -> bool:
        try:
            return self._view.refute()
        except Exception:
            peer_log.exception("could not refute what is said of this node")
            return False

    def _suspect(self, node: str) -> None:
        try:
            self._view.suspect(node)
        except Exception:
            # (The map refused this node's own entry: a bug, said in full;
            # the node is suspected by the next that fails to reach it.)
            peer_log.exception("could not write a suspicion of %s", node)

    def _probe(self, node: str) -> None:
        """Check on ``node`` with one sync (a suspicion if it fails): a link
        with it ended before its time."""
        nursery = self._nursery
        now = trio.current_time()
        if (
            nursery is None
            or node in self._dialling
            or now < self._probed.get(node, -math.inf) + self.options.heartbeat_interval
            or not self._view.is_alive(node)
            or self.is_self(node)
        ):
            return
        self._probed[node] = now
        self._probes += 1
        nursery.start_soon(functools.partial(self._dial, node, live=False, duration=0))

    def _dial_failed(self, node: str, exc: BaseException) -> None:
        self._dial_failures += 1
        failures = self._failures.get(node, 0) + 1
        self._failures[node] = failures
        self._failures_changed += 1
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
                logger=peer_log,
            )
        else:
            limited(
                logging.DEBUG,
                "redial",
                "still cannot link to %s (%d tries)",
                node,
                failures,
                logger=peer_log,
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
            self._known_list = list(self._members.state)
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


def _web(options: PeerOptions) -> tuple[int, RequestPolicy] | None:
    """The web port, and who may use it (see
    :class:`repred._http.RequestPolicy`), if the peer has one."""
    if options.web_port is None:
        return None
    from ._http import RequestPolicy  # (only with a web port)

    policy = RequestPolicy.serving(
        options.host,
        advertise=options.advertise,
        hosts=options.web_hosts,
        origins=options.web_origins,
    )
    return options.web_port, policy


def _peer_links(options: PeerOptions, arguments: Mapping[str, Any]) -> LinkOptions:
    """The options of a peer's links: those :func:`open_peer` was given,
    the others paced by its heartbeat."""
    return attrs.evolve(
        pick(LinkOptions, arguments),
        handshake_timeout=min(DEFAULT_HANDSHAKE_TIMEOUT, options.connect_timeout),
        close_timeout=1.0,
        # A stalled link is noticed within three heartbeats (and never
        # within less than 1.5 s, which a busy machine can take).
        keepalive_interval=max(options.heartbeat_interval, 0.5),
    )


def _new_peer(arguments: Mapping[str, Any]) -> Peer:
    """The peer :func:`open_peer`'s keywords describe, each checked."""
    options = pick(PeerOptions, arguments)
    placement = pick(PlacementOptions, arguments)
    transport = arguments["transport"] or TcpTransport(
        options.ssl_context,
        options.client_ssl_context,
        handshake_timeout=options.connect_timeout,
        max_handshakes=options.max_links,
    )
    placed = None
    if arguments["documents"] is not None:
        if options.read_only:
            # An owner must take its documents' writes: a read-only node
            # would confirm copies it never holds.
            raise ValueError("a read_only peer cannot hold documents=")
        placed = functools.partial(
            Placed,
            factory=arguments["documents"],
            options=placement,
            held=arguments["held"],
            discard=arguments["discard"],
        )
    return Peer(
        replicas=arguments["replicas"] or {},
        options=options,
        link_options=_peer_links(options, arguments),
        trust=pick(Trust, arguments),
        transport=transport,
        on_event=arguments["on_event"],
        rng=arguments["rng"] or random.Random(),
        wall=arguments["wall"] or wall_ms,
        placed=placed,
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
    transport: Transport | None = None,
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
    documents: Callable[[str], Replica] | None = None,
    copies: int = 3,
    held: Iterable[str] = (),
    discard: Callable[[str], None] | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    handoffs: int = 8,
    handoff_timeout: float = 30.0,
) -> AsyncIterator[Peer]:
    """Run a gossip peer inside the caller's trio program.

    ``async with repred.open_peer(port=8001, replicas={"data": m}) as peer``
    listens on ``port``, joins the membership map, links to random live
    nodes and re-dials ``seeds`` and quiet nodes, sharing ``replicas`` by
    name; everything stops when the block ends. With ``documents`` it places
    documents too (see :class:`PlacementOptions`). :class:`Peer` says what
    ``on_event``, ``transport``, ``rng`` and ``wall`` are; every other option
    is described in :class:`PeerOptions`, :class:`PlacementOptions`,
    :class:`LinkOptions` or :class:`Trust`. A bad option raises
    ``TypeError`` or ``ValueError`` at the call, a port that cannot be bound
    ``OSError``; whatever the block raised comes out as itself.
    """
    async with _new_peer(locals())._running() as peer:
        yield peer
