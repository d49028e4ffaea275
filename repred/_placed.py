"""Placed documents: each on ``copies`` members of a gossip peer's cluster.

Theory of operation
-------------------

A peer given ``documents=factory`` (see :func:`repred.open_peer`) keeps a
document on its owners only: the ``copies`` members that
:func:`repred.owners` names, over the members it sees (Dynamo's preference
list; the members are the membership map's, settled once the same on two
heartbeats in a row, so that a flapping view moves nothing).

* An owner holds the durable copy, made by ``factory(name)``. Any other
  node that asks for the document (:meth:`repred.Peer.document`, or the
  web port) holds a *live copy*, linked to the first owner that answers:
  its writes reach that owner at once, and the owner's reach it.
* Documents travel on *document links* (:mod:`repred._doclink`), one per
  node this node dials, each carrying a session per document as needed.
  A node dials its own: what a node is told of its documents' copies comes
  from the node it reached at that address, never from one that called.
* What each node owes the others (a new owner's copy, an owner's catch-up
  after a write, the checks before a copy is dropped) is the pure ledger's
  (:mod:`repred._ledger`); this module runs its jobs, at most ``handoffs``
  at once, each bounded by ``handoff_timeout`` without progress and
  retried with backoff when it fails, and says what happened (``on_event``
  and :class:`repred.DocumentStatistics`).
* A job ends well once the other node's clock for the document (its
  digest, then its ``clock`` lines) covers this node's: it holds all of
  it, applied and committed. That is what :meth:`repred.Peer.wait_replicated`
  counts, and what lets a node drop a copy it no longer owns.

Bounds: at most ``max_documents`` documents held; at most
:data:`repred._doclink.MAX_LINK_DOCUMENTS` sessions a peer opens on one
link, at most ``max_links`` document links from peers (the quietest is
dropped past that); a document a peer opened that is still empty when its
sessions end is not kept.
"""

from __future__ import annotations

import logging
import math
import weakref
from typing import TYPE_CHECKING, Any, Protocol, final

import attrs
import trio

from ._connection import run_channel, run_link
from ._doclink import DocChannel, LinkDoc, check_document_name, covers
from ._errors import RemoteProtocolError, RepredError
from ._ledger import HANDOFF, SYNC, Ledger
from ._log import limited, peer_log
from ._placement import owners as owners_among
from ._serving import LinkTable, link_errors_logged

if TYPE_CHECKING:
    import random
    from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping

    from ._connection import Connection
    from ._ledger import Job
    from ._options import LinkOptions, PeerOptions, PlacementOptions
    from ._replica import Replica


class PeerView(Protocol):
    """What placed documents read of the gossip peer they run in
    (:class:`repred.Peer`): its address and the members it sees up."""

    address: str

    def members(self, within: float | None = None) -> list[str]: ...

    def node_id(self, address: str) -> str | None: ...


__all__ = ["DOCS_PREFIX", "DocumentStatistics", "Placed"]

#: How a document link's first bytes begin (a gossip link's do not).
DOCS_PREFIX = b'{"repred-docs":'
#: An attempt that keeps making progress still ends after this many
#: ``handoff_timeout``: it resumes on the next.
_MAX_ROUNDS = 10
#: Heartbeats after which the members seen are settled on even if they
#: were never the same twice in a row.
_UNSETTLED = 5


@attrs.frozen(kw_only=True)
class DocumentStatistics:
    """What a placed peer holds and has moved (:attr:`repred.PeerStatistics.documents`).

    Attributes:
        copies: how many members own each document.
        held: documents this node holds, in any role.
        owned: held as one of their owners.
        live_copies: held for the program or the web port, owned elsewhere.
        leaving: held, owned no more, waiting for the owners to hold them.
        handoffs: copies made at nodes that newly own a document.
        syncs: owners' copies brought up to date (after writes, or for a
            :meth:`repred.Peer.wait_replicated`).
        failures: tries of either that failed (each retried with backoff).
        pending: hand-offs and syncs owed, running or waiting.
        received: documents this node newly owns that a peer brought here.
        dropped: copies dropped once their owners held all of them.
        released: documents peers opened here that stayed empty.
        refused: peers' requests to open a document here that were refused.
        links: document links open (dialled and called).
        bytes_in: bytes received on document links.
        bytes_out: bytes sent on document links.
    """

    copies: int
    held: int
    owned: int
    live_copies: int
    leaving: int
    handoffs: int
    syncs: int
    failures: int
    pending: int
    received: int
    dropped: int
    released: int
    refused: int
    links: int
    bytes_in: int
    bytes_out: int


class _Failed(Exception):
    """A job's try failed, for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.define(eq=False)
class _Link:
    """A document link this node dialled."""

    node: str
    channel: DocChannel
    ready: trio.Event = attrs.Factory(trio.Event)
    conn: Connection | None = None
    error: str | None = None
    closed: bool = False
    idle: int = 0


@final
class Placed:
    """The placed documents of one peer (see the module docstring); made by
    :func:`repred.open_peer` when it is given ``documents=``."""

    def __init__(
        self,
        *,
        factory: Callable[[str], Replica],
        options: PlacementOptions,
        peer_options: PeerOptions,
        link_options: LinkOptions,
        connect: Callable[[str], Awaitable[trio.abc.Stream]],
        emit: Callable[[dict[str, Any]], None],
        rng: random.Random,
        held: Iterable[str] = (),
        discard: Callable[[str], None] | None = None,
        reserved: Collection[str] = (),
    ) -> None:
        self.options = options
        self._factory = factory
        self._peer_options = peer_options
        # A document session compares hash trees once, after its sync: a
        # round every few seconds on each would keep idle ones busy.
        self._link_options = attrs.evolve(link_options, antientropy_interval=None)
        self._web_options = attrs.evolve(
            link_options, receive=not peer_options.read_only
        )
        self._connect = connect
        self._emit = emit
        self._rng = rng
        self._reserved = frozenset(reserved)
        self._held_at_start = _held_names(held, self._reserved)
        self._discard = discard
        self.ledger = Ledger(
            options.copies,
            concurrency=options.handoffs,
            max_documents=options.max_documents,
            grace=peer_options.heartbeat_interval * 2,
            backoff=peer_options.heartbeat_interval,
            max_backoff=peer_options.max_backoff,
            rng=rng,
        )
        self.replicas: dict[str, Replica] = {}
        self._unwatch: dict[str, Callable[[], None]] = {}
        #: Documents a peer brought here, said once their first entries come.
        self._fresh: dict[str, str] = {}
        #: Sessions peers have open on each document.
        self._uses: dict[str, int] = {}
        self._outbound: dict[str, _Link] = {}
        self._inbound: set[DocChannel] = set()
        self._inbound_table = LinkTable(peer_options.max_links)
        self._web_table = LinkTable(peer_options.max_links)
        self._live: set[str] = set()
        self._signals: dict[str, trio.Event] = {}
        self._wake = trio.Event()
        self._ended_bytes = [0, 0]
        #: The node each session peers opened here came from, once looked up.
        self._session_node: weakref.WeakKeyDictionary[object, str] = (
            weakref.WeakKeyDictionary()
        )
        self._nursery: trio.Nursery | None = None
        self._peer: PeerView | None = None
        #: The id each settled member was last seen under (see _restarts).
        self._ids: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<Placed {len(self.replicas)} documents>"

    # -- running ----------------------------------------------------------

    async def run(
        self,
        peer: PeerView,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold the documents held at start, settle on the members, and
        run the jobs, until cancelled."""
        self._peer = peer
        self.ledger.node = peer.address
        self.ledger.view([peer.address], trio.current_time())
        for name in self._held_at_start:
            if name not in self.replicas:
                self._add(name)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._views)
            nursery.start_soon(self._runner)
            nursery.start_soon(self._reaper)
            task_status.started()
            await trio.sleep_forever()

    def close(self) -> None:
        """Close every replica held (their stores)."""
        for name in list(self.replicas):
            self._unwatch.pop(name)()
            self.replicas.pop(name).close()

    def _add(self, name: str) -> Replica:
        """Make ``name``'s replica with the factory, and hold it."""
        replica = self._factory(name)
        self.replicas[name] = replica
        self.ledger.hold(name)

        def on_run(source: str, ts: float, origin: object) -> None:
            self._on_run(name, origin)

        self._unwatch[name] = replica.watch(on_run)
        return replica

    def _on_run(self, name: str, origin: object) -> None:
        """``name`` gained entries: owners must hear of them (at once if
        they were written here or on a node that does not own it)."""
        came_from = self._fresh.pop(name, None)
        if came_from is not None:
            self.ledger.counts["received"] += 1
            self._emit({"event": "received", "document": name, "from": came_from})
        node = None if origin is None else self._node_of(name, origin)
        self.ledger.changed(name, trio.current_time(), source=node)
        self._wake.set()

    def _node_of(self, name: str, session: object) -> str | None:
        """The node whose link a session is on (``None``: not known)."""
        node = self._session_node.get(session)
        if node is None:
            channels = [link.channel for link in self._outbound.values()]
            for channel in [*channels, *self._inbound]:
                doc = channel.docs.get(name)
                if doc is not None and doc.session is session:
                    node = channel.peer_id
                    if node is not None:
                        self._session_node[session] = node
                    break
        return node

    def _signal(self, name: str) -> None:
        event = self._signals.pop(name, None)
        if event is not None:
            event.set()

    async def _changed(self, name: str) -> None:
        """Until something about ``name`` changes (a link's answer, a clock,
        a job's end, the members)."""
        event = self._signals.get(name)
        if event is None:
            event = self._signals[name] = trio.Event()
        await event.wait()

    def _start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    # -- the members --------------------------------------------------------

    async def _views(self) -> None:
        """Settle on the members once they are the same on two heartbeats
        in a row, or on the latest after they differed from those settled
        on for :data:`_UNSETTLED` heartbeats (a member that comes and goes
        must not hold placement back)."""
        assert self._peer is not None
        pending: frozenset[str] | None = None
        unsettled = 0
        while True:
            await trio.sleep(self._peer_options.heartbeat_interval)
            self._restarts()
            members = frozenset(self._peer.members())
            if members == self.ledger.members:
                pending, unsettled = None, 0
                continue
            unsettled += 1
            if members == pending or unsettled >= _UNSETTLED:
                pending, unsettled = None, 0
                self._settle(members)
            else:
                pending = members

    def _restarts(self) -> None:
        """A member that came back under a new id within ``down_after``
        (it never left the members) holds nothing of what it held before,
        as far as anyone knows: what it was seen to hold no longer counts."""
        assert self._peer is not None
        ids, now = self._ids, trio.current_time()
        for node in self.ledger.members:
            new = self._peer.node_id(node)
            old = ids.get(node)
            if new is not None and old is not None and new != old:
                if self.ledger.restarted(node, now):
                    self._wake.set()
            if new is not None:
                ids[node] = new
        for node in [n for n in ids if n not in self.ledger.members]:
            del ids[node]

    def _settle(self, members: frozenset[str]) -> None:
        now = trio.current_time()
        self.ledger.view(members, now)
        for name, held in self.ledger.held.items():
            if not held.owner and held.kept:
                self._keep_linked(name)
        for name in list(self._signals):
            self._signal(name)
        self._wake.set()

    # -- jobs ---------------------------------------------------------------

    async def _runner(self) -> None:
        ledger = self.ledger
        while True:
            for job in ledger.start(trio.current_time()):
                self._start_soon(self._run, job)
            for name in ledger.take_cancelled():
                self._maybe_drop(name)  # its last job was owed no more
            self._wake = trio.Event()
            due = ledger.next_due()
            if due is None or ledger.running >= ledger.concurrency:
                due = math.inf
            with trio.move_on_at(due):
                await self._wake.wait()

    async def _run(self, job: Job) -> None:
        replica = self.replicas.get(job.name)
        clock = {} if replica is None else dict(replica.clock)
        try:
            entries = await self._attempt(job, replica, clock)
        except _Failed as failed:
            self._failed(job, failed.reason)
        except Exception:
            peer_log.exception("placed document %s: a job failed", job.name)
            self._failed(job, "error")
        else:
            self.ledger.done(job, trio.current_time(), clock, sent=entries > 0)
            if job.kind == HANDOFF and entries:
                self._emit(
                    {
                        "event": "handoff",
                        "document": job.name,
                        "to": job.to,
                        "entries": entries,
                    }
                )
        # Either way the job may have been the last one owed on a copy that
        # is leaving (a failed one is dropped once no longer owed).
        self._maybe_drop(job.name)
        self._signal(job.name)
        self._wake.set()

    def _failed(self, job: Job, reason: str) -> None:
        delay = self.ledger.failed(job, trio.current_time(), reason)
        self._emit(
            {
                "event": "handoff-failed",
                "kind": job.kind,
                "document": job.name,
                "to": job.to,
                "attempts": job.attempts,
                "reason": reason,
                "retry_in": round(delay, 3),
            }
        )
        limited(
            logging.INFO,
            "handoff-failed",
            "cannot bring %s's copy of %s up to date (%s); retrying",
            job.to,
            job.name,
            reason,
            logger=peer_log,
        )

    async def _attempt(
        self, job: Job, replica: Replica | None, clock: dict[str, float]
    ) -> int:
        """One try of ``job``: link, open, and wait until the other node
        holds ``clock``. Returns the entries sent for it."""
        if replica is None:
            raise _Failed("not held")
        try:
            with trio.fail_after(self._peer_options.connect_timeout):
                channel = await self._link(job.to)
        except trio.TooSlowError:
            # (A node cut off, or gone: retried with backoff, and said so.)
            raise _Failed("no link within connect_timeout") from None
        doc = channel.docs.get(job.name)
        if not job.pull and (doc is None or doc.state != "open"):
            if covers(await self._probe(channel, job.name), clock):
                return 0  # the copy is there: nothing to send
        doc = channel.open(job.name, replica)
        before = _sent(doc)
        if job.pull:
            await self._until(
                channel, job.name, lambda d: d.synced and covers(d.known, clock)
            )
        else:
            await self._until(channel, job.name, lambda d: covers(d.known, clock))
        return _sent(channel.docs.get(job.name)) - before

    async def _probe(self, channel: DocChannel, name: str) -> dict[str, float] | None:
        """How far the node at the other end of ``channel`` holds ``name``."""
        channel.probe(name)
        with trio.move_on_after(self.options.handoff_timeout):
            while name not in channel.answers:
                if channel.closed:
                    raise _Failed("closed")
                await self._changed(name)
            return channel.answers.pop(name)
        raise _Failed("no answer")

    async def _until(
        self, channel: DocChannel, name: str, done: Callable[[LinkDoc], bool]
    ) -> LinkDoc:
        """Until ``done(doc)`` for ``name``'s session on ``channel``; each
        ``handoff_timeout`` must see it make progress."""
        timeout = self.options.handoff_timeout
        progress = -1
        for _ in range(_MAX_ROUNDS):
            with trio.move_on_after(timeout):
                while True:
                    doc = self._doc_on(channel, name)
                    if doc.state == "open" and done(doc):
                        return doc
                    await self._changed(name)
            doc = self._doc_on(channel, name)
            if doc.activity == progress:
                raise _Failed("no progress")
            progress = doc.activity
        raise _Failed("too slow")

    def _doc_on(self, channel: DocChannel, name: str) -> LinkDoc:
        doc = channel.docs.get(name)
        if doc is None:
            raise _Failed("closed")
        if doc.state == "refused":
            channel.close(name)
            raise _Failed(doc.reason or "refused")
        return doc

    # -- links this node dials ------------------------------------------------

    async def _link(self, node: str) -> DocChannel:
        """The document link to ``node`` (dialled if there is none)."""
        link = self._outbound.get(node)
        if link is None or link.closed:
            channel = DocChannel(
                self.ledger.node,
                self.options.copies,
                self,
                self._link_options,
                on_change=self._signal,
            )
            link = self._outbound[node] = _Link(node, channel)
            self._start_soon(self._dial, link)
        await link.ready.wait()
        if link.closed:
            raise _Failed(link.error or "closed")
        return link.channel

    async def _dial(self, link: _Link) -> None:
        def started(conn: Connection) -> None:
            link.conn = conn
            link.ready.set()

        try:
            with trio.fail_after(self._peer_options.connect_timeout):
                stream = await self._connect(link.node)
            await run_channel(
                link.channel,
                stream,
                live=True,
                on_start=started,
                options=self._link_options,
            )
        except RemoteProtocolError as exc:
            # (Nodes given different copies=, say: worth saying.)
            link.error = f"{type(exc).__name__}: {exc}"[:200]
            limited(
                logging.WARNING,
                "document-link",
                "document link to %s refused: %s",
                link.node,
                link.error,
                logger=peer_log,
            )
        except (OSError, trio.TooSlowError, RepredError) as exc:
            link.error = f"{type(exc).__name__}: {exc}"[:200]
        except Exception:
            peer_log.exception("document link to %s failed", link.node)
            link.error = "error"
        finally:
            self._ended(link)

    def _ended(self, link: _Link) -> None:
        link.closed = True
        link.ready.set()
        if self._outbound.get(link.node) is link:
            del self._outbound[link.node]
        self._count_ended(link.channel)
        for doc in link.channel.end():
            if not doc.ours:
                self.released(doc.name, doc.replica)
        for name in list(self._signals):
            self._signal(name)  # (a probe waiting for its answer)

    def _count_ended(self, channel: DocChannel) -> None:
        self._ended_bytes[0] += channel.bytes_in
        self._ended_bytes[1] += channel.bytes_out
        self.ledger.counts["refused"] += channel.refused

    async def _reaper(self) -> None:
        """Close sessions this node opened that carried nothing for a
        while, and links left with none."""
        interval = max(
            self._peer_options.gossip_interval,
            4 * self._peer_options.heartbeat_interval,
        )
        while True:
            await trio.sleep(interval)
            for link in list(self._outbound.values()):
                self._reap(link)

    def _reap(self, link: _Link) -> None:
        channel = link.channel
        busy = {
            job.name
            for job in self.ledger.jobs.values()
            if job.to == link.node and job.running
        }
        for doc in list(channel.docs.values()):
            quiet = doc.activity == doc.idle_mark
            doc.idle_mark = doc.activity
            if (
                doc.ours
                and doc.state == "open"
                and quiet
                and not doc.keep
                and doc.name not in busy
            ):
                channel.close(doc.name)
        link.idle = link.idle + 1 if not channel.docs else 0
        if link.idle >= 2 and link.conn is not None:
            link.conn.close()

    # -- links peers call -----------------------------------------------------

    async def take(self, stream: trio.abc.Stream) -> trio.abc.Stream | None:
        """Serve a document link on ``stream`` if that is what it opens
        with; else give the stream back, with what was read, for the
        gossip link."""
        from ._http import Replay  # (a stream whose first bytes are read again)

        head = b""
        with trio.move_on_after(self._peer_options.connect_timeout):
            while len(head) < len(DOCS_PREFIX) and DOCS_PREFIX.startswith(head):
                data = await stream.receive_some(len(DOCS_PREFIX) - len(head))
                if not data:
                    break
                head += data
        if not head.startswith(DOCS_PREFIX):
            return Replay(stream, head)
        await self._serve(Replay(stream, head))
        return None

    async def _serve(self, stream: trio.abc.Stream) -> None:
        channel = DocChannel(
            self.ledger.node,
            self.options.copies,
            self,
            self._link_options,
            on_change=self._signal,
        )
        started: list[Connection] = []

        def on_start(conn: Connection) -> None:
            started.append(conn)
            self._inbound_table.add(conn)

        self._inbound.add(channel)
        try:
            with link_errors_logged(peer_log, closed=logging.DEBUG):
                await run_channel(
                    channel,
                    stream,
                    live=True,
                    on_start=on_start,
                    options=self._link_options,
                )
        finally:
            self._inbound.discard(channel)
            for conn in started:
                self._inbound_table.discard(conn)
            self._count_ended(channel)
            for doc in channel.end():
                if not doc.ours:
                    self.released(doc.name, doc.replica)

    def clock(self, name: str) -> Mapping[str, float] | None:
        """How far this node holds ``name`` (see
        :class:`repred._doclink.DocHost`)."""
        replica = self.replicas.get(name)
        return None if replica is None else replica.clock

    def accept(self, peer: str, name: str, type_name: str) -> Replica | str:
        """A peer's link would open ``name`` here (see
        :class:`repred._doclink.DocHost`)."""
        if name in self._reserved:
            return "reserved"
        replica = self.replicas.get(name)
        if replica is None:
            if not self._may_own(name):
                return "not-owner"
            if self.ledger.full:
                return "full"
            try:
                replica = self._add(name)
            except Exception:
                peer_log.exception("placed document %s: the factory failed", name)
                return "failed"
            self._fresh[name] = peer
            if self.ledger.role(name) == "leaving":
                # Taken as an owner among the members seen now, before this
                # node settled on them: if it does not own it after all, it
                # checks with those that do, and then lets it go.
                self.ledger.changed(name, trio.current_time(), source=None)
                self._wake.set()
        if replica.type_name != type_name:
            return "type"
        self._uses[name] = self._uses.get(name, 0) + 1
        return replica

    def _may_own(self, name: str) -> bool:
        """Whether this node owns ``name`` among the members it settled on
        or among those it sees now (nodes settle a heartbeat or two apart:
        a copy brought meanwhile is taken, not refused)."""
        me = self.ledger.node
        if me in self.ledger.owners(name):
            return True
        assert self._peer is not None
        seen = frozenset(self._peer.members())
        return me in owners_among(name, seen, self.options.copies)

    def released(self, name: str, replica: Replica) -> None:
        """A session a peer opened on ``name`` ended."""
        uses = self._uses.get(name, 0) - 1
        if uses > 0:
            self._uses[name] = uses
            return
        self._uses.pop(name, None)
        if self.replicas.get(name) is replica:
            self._release_if_empty(name)

    def _release_if_empty(self, name: str) -> None:
        """A document left empty, that nothing here or on a link uses, is
        not kept (a peer, or a page, that named it and wrote nothing)."""
        held = self.ledger.held.get(name)
        if (
            held is not None
            and not self.replicas[name].clock
            and not held.kept
            and name not in self._uses
            and not self.ledger.owed(name)
        ):
            self._fresh.pop(name, None)
            self.ledger.counts["released"] += 1
            self._forget(name)

    # -- dropping -----------------------------------------------------------

    def _maybe_drop(self, name: str) -> None:
        """Drop ``name`` if it may go; if it is leaving and nothing is owed
        for it yet, owe the checks that will let it go."""
        replica = self.replicas.get(name)
        if replica is None:
            return
        if not self.ledger.droppable(name, replica.clock):
            if self.ledger.recheck(name, replica.clock, trio.current_time()):
                self._wake.set()
            return
        self.ledger.counts["dropped"] += 1
        self._emit(
            {
                "event": "copy-dropped",
                "document": name,
                "owners": self.ledger.owners(name),
            }
        )
        self._forget(name)

    def _forget(self, name: str) -> None:
        """Stop holding ``name``: its sessions closed, its replica closed,
        and its store discarded."""
        for link in self._outbound.values():
            link.channel.close(name)
        for channel in self._inbound:
            channel.close(name)
        self._unwatch.pop(name)()
        self.ledger.forget(name)
        self._uses.pop(name, None)
        self.replicas.pop(name).close()
        if self._discard is not None:
            try:
                self._discard(name)
            except Exception:
                peer_log.exception("placed document %s: discard failed", name)
        self._signal(name)

    # -- live copies -------------------------------------------------------

    def _keep_linked(self, name: str) -> None:
        if name not in self._live:
            self._live.add(name)
            self._start_soon(self._live_copy, name)

    async def _live_copy(self, name: str) -> None:
        """Keep a live copy of ``name`` linked to one of its owners while
        it is one (owned elsewhere, kept here)."""
        attempts = 0
        try:
            while self.ledger.role(name) == "copy":
                if await self._link_copy(name):
                    attempts = 0
                    continue
                attempts += 1
                delay = min(
                    self._peer_options.max_backoff,
                    self._peer_options.heartbeat_interval * 2.0 ** min(attempts, 16),
                )
                with trio.move_on_after(delay * self._rng.uniform(0.5, 1.5)):
                    while self.ledger.role(name) == "copy":
                        await self._changed(name)  # (the members changed)
        finally:
            self._live.discard(name)
            for link in self._outbound.values():
                doc = link.channel.docs.get(name)
                if doc is not None:
                    doc.keep = False

    async def _link_copy(self, name: str) -> bool:
        """Link the live copy to the first owner that takes it, and stay
        until that link ends; ``False`` if none took it."""
        replica = self.replicas[name]
        for node in self.ledger.owners(name):
            try:
                with trio.fail_after(self._peer_options.connect_timeout):
                    channel = await self._link(node)
                channel.open(name, replica, keep=True)
                await self._until(channel, name, lambda d: d.synced)
            except (_Failed, trio.TooSlowError):
                continue
            self._signal(name)
            while self._linked(channel, name, node):
                await self._changed(name)
            doc = channel.docs.get(name)
            if doc is not None:
                doc.keep = False  # (closed once idle, if no longer needed)
            return True
        self._signal(name)
        return False

    def _linked(self, channel: DocChannel, name: str, node: str) -> bool:
        doc = channel.docs.get(name)
        return (
            doc is not None
            and doc.state == "open"
            and self.ledger.role(name) == "copy"
            and node in self.ledger.owners(name)
        )

    def _synced_with_owner(self, name: str) -> bool:
        owners = self.ledger.owners(name)
        for node, link in self._outbound.items():
            doc = link.channel.docs.get(name)
            if node in owners and doc is not None and doc.synced:
                return True
        return False

    # -- what the peer offers ------------------------------------------------

    def owners(self, name: str) -> list[str]:
        check_document_name(name)
        return self.ledger.owners(name)

    def holding(self) -> list[str]:
        return sorted(n for n, h in self.ledger.held.items() if h.owner)

    def _get(self, name: str) -> Replica:
        """``name``'s replica here, made if it is not held yet."""
        check_document_name(name)
        if name in self._reserved:
            raise ValueError(
                f"{name!r} names one of the peer's replicas=, not a document"
            )
        replica = self.replicas.get(name)
        if replica is None:
            if self.ledger.full:
                raise RepredError(
                    f"this node holds max_documents={self.ledger.max_documents}"
                    " documents already"
                )
            replica = self._add(name)
        return replica

    async def document(self, name: str) -> Replica:
        """``name``'s replica on this node, pinned (see
        :meth:`repred.Peer.document`)."""
        replica = self._get(name)
        self.ledger.held[name].pinned = True
        await self._first_sync(name)
        return replica

    async def _first_sync(self, name: str) -> None:
        """Link ``name``'s copy here to its owners, and wait (for at most
        ``connect_timeout``) until it synced with one, if another owns it."""
        held = self.ledger.held[name]
        now = trio.current_time()
        if held.owner:
            for node in self.ledger.owners(name):
                if node != self.ledger.node:
                    self.ledger.request(name, node, SYNC, now, pull=True)
            self._wake.set()
        else:
            self._keep_linked(name)
        others = [n for n in self.ledger.owners(name) if n != self.ledger.node]
        if others:
            with trio.move_on_after(self._peer_options.connect_timeout):
                while not self._synced_with_owner(name):
                    await self._changed(name)

    def _unuse(self, name: str) -> None:
        """A web link using ``name`` ended: a copy nothing uses any more
        goes once its owners hold it, and one left empty at once."""
        held = self.ledger.held.get(name)
        if held is None:
            return
        held.uses -= 1
        if held.kept:
            return
        if not held.owner:
            self.ledger.changed(name, trio.current_time(), source=None)
            self._wake.set()
        self._release_if_empty(name)

    async def wait_replicated(self, name: str, copies: int) -> None:
        """See :meth:`repred.Peer.wait_replicated`."""
        check_document_name(name)
        if type(copies) is not int or not 1 <= copies <= self.options.copies:
            raise ValueError(f"copies must be an int from 1 to {self.options.copies}")
        replica = self.replicas.get(name)
        if replica is None:
            raise ValueError(
                f"this node holds no copy of {name!r}: call document() first"
            )
        clock = dict(replica.clock)
        while self.ledger.confirmed(name, clock) < copies:
            if name not in self.replicas:
                raise RepredError(f"{name!r} was dropped here while waiting")
            now = trio.current_time()
            for node in self.ledger.owners(name):
                held = self.ledger.held[name]
                if node != self.ledger.node and not covers(
                    held.covered.get(node), clock
                ):
                    self.ledger.request(name, node, SYNC, now)
            self._wake.set()
            await self._changed(name)

    def web_handler(
        self, name: str
    ) -> Callable[[trio.abc.Stream], Awaitable[None]] | None:
        """What serves ``/replicas/NAME`` for a document (``None``: no such
        name)."""
        try:
            check_document_name(name)
        except ValueError:
            return None
        if name in self._reserved:
            return None
        options = self._web_options

        async def serve(stream: trio.abc.Stream) -> None:
            started: list[Connection] = []

            def on_start(conn: Connection) -> None:
                started.append(conn)
                self._web_table.add(conn)

            with link_errors_logged(peer_log, closed=logging.DEBUG):
                replica = self._get(name)
                self.ledger.held[name].uses += 1
                try:
                    await self._first_sync(name)
                    await run_link(
                        replica, stream, live=True, on_start=on_start, options=options
                    )
                finally:
                    for conn in started:
                        self._web_table.discard(conn)
                    self._unuse(name)

        return serve

    def statistics(self) -> DocumentStatistics:
        ledger = self.ledger
        roles = [ledger.role(name) for name in ledger.held]
        counts = ledger.counts
        channels = [link.channel for link in self._outbound.values()] + list(
            self._inbound
        )
        return DocumentStatistics(
            copies=self.options.copies,
            held=len(roles),
            owned=roles.count("owner"),
            live_copies=roles.count("copy"),
            leaving=roles.count("leaving"),
            handoffs=counts["handoffs"],
            syncs=counts["syncs"],
            failures=counts["failures"],
            pending=ledger.pending(),
            received=counts["received"],
            dropped=counts["dropped"],
            released=counts["released"],
            refused=sum(c.refused for c in channels) + counts["refused"],
            links=len(channels),
            bytes_in=self._ended_bytes[0] + sum(c.bytes_in for c in channels),
            bytes_out=self._ended_bytes[1] + sum(c.bytes_out for c in channels),
        )


def _held_names(held: Iterable[str], reserved: Collection[str]) -> list[str]:
    """``open_peer``'s ``held=``, each name checked at the call."""
    names = [check_document_name(n) for n in held]
    for name in names:
        if name in reserved:
            raise ValueError(f"held= names {name!r}, one of the peer's replicas=")
    return names


def _sent(doc: LinkDoc | None) -> int:
    """Entries the session of ``doc`` sent so far."""
    if doc is None or doc.session is None:
        return 0
    return doc.session.statistics().updates_out
