"""The protocol for one link, as a state machine: bytes in, bytes out.

Theory of operation
-------------------

A :class:`Session` joins one :class:`~repred.Replica` to one peer. It
never does I/O: the caller feeds it what arrived (:meth:`receive_data`) and
sends what it produces (:meth:`data_to_send`). The trio edge is one such
caller; tests are another.

Both sides run the same sequence; neither is client or server (the wire
protocol of JS scuttlebutt). Each side has an outgoing and an incoming
state, and every change of state happens in :meth:`Session._advance`,
through the table :data:`TRANSITIONS`::

    outgoing:  HELLO --peer digest--> HISTORY --all sent--> LIVE
    incoming:  HELLO --digest--> HISTORY --"SYNC"--> LIVE --EOF--> CLOSED
               (EOF before "SYNC": HISTORY --EOF--> CLOSED)

    any error, either side: ERROR (terminal; the session is detached)

* ``HELLO``: our digest ``{"id", "clock"}`` is queued at once. Nothing else
  can go out before the peer's digest says what it has.
* ``HISTORY``: we send every entry newer than the peer's clock, source by
  source, each source in stamp order (so the peer's clock stays an exact
  summary however the link is cut), sources with the most outstanding
  entries first, in bounded batches. Then ``"SYNC"``.
* ``LIVE``: new entries go out as the replica applies them.

What to send is never queued. The session keeps only ``sent``, the newest
stamp per source the peer is known to have (from its digest, from what we
sent, and from what it sent us), and a queue of sources that may have more
(a deque, so a link costs time linear in the sources it touches). Each call
to :meth:`data_to_send` reads the next batch straight from the replica's
history. So a slow peer costs nothing while it is slow (natural
backpressure), and an entry that came from the peer is never echoed back.

Everything the peer sends is checked before it touches the replica; the
first bad message raises :class:`RemoteProtocolError`, after every good
message before it has been applied, and leaves the replica exactly as it
was before that message.

Batches: between two repred peers, history and live entries travel as
batches, one source per line (see :mod:`repred._wire`); each batch is
decoded, checked and applied as one run, so the work that does not depend
on the entry (clock, bounds, store clock row, waking other links) is done
once per batch. A batch that breaks a wire rule is refused whole, with
nothing of it applied; an entry the replica refuses (equivocation, a
forgery, a reducer error) is refused with the entries before it applied,
exactly as on a one-entry-per-line link.

Garbage collection: the cyclic collector is paused (if it was running) only
while the library itself allocates and runs no other code: decoding one
batch line, and encoding the lines of one :meth:`data_to_send` call for 64
sources or more. It is restored before the call returns, whatever happens.
Reducers and listeners always run with the collector as the
application left it. While it decodes a batch, the session also turns each
array change into the tuple the history keeps, so that no container per
entry is alive while a received chunk is applied: containers alive when the
collector runs are promoted to its oldest generation, and bring on full
collections, each of which walks the whole history (three or four in a
1M-key sync before; none now).
"""

from __future__ import annotations

import collections
import enum
import gc
import logging
from bisect import bisect_right
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from ._antientropy import AntiEntropy
from ._errors import (
    IncompatiblePeerError,
    LocalProtocolError,
    RemoteProtocolError,
    StoreError,
)
from ._history import runs
from ._log import limited, log
from ._replica import log_of
from ._wire import (
    BATCH_FORMAT,
    BATCH_PREFIX,
    DEFAULT_MAX_LINE_BYTES,
    KEEPALIVE,
    KEEPALIVE_LINE,
    SYNC,
    SYNC_LINE,
    AeMessage,
    Batch,
    Digest,
    Expect,
    LineDecoder,
    Proof,
    Repair,
    RepairSnapshot,
    Snapshot,
    decode,
    encode_batch,
    encode_digest,
    encode_expect,
    encode_snapshot,
    entry_snippet,
    snippet,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._history import Run
    from ._replica import Replica


#: A data_to_send() call for at least this many sources encodes with the
#: cyclic garbage collector paused (see the module docstring).
_GC_PAUSE_SOURCES = 64
_dumps = orjson.dumps
_OPT = orjson.OPT_APPEND_NEWLINE

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_ENTRIES",
    "TRANSITIONS",
    "Digest",
    "PeerEOF",
    "Session",
    "SessionState",
    "SessionStatistics",
    "SyncReceived",
]

#: At most this many entries of one source are read from history at a time.
DEFAULT_BATCH_ENTRIES = 1024
#: :meth:`Session.data_to_send` stops adding entries past this many bytes.
DEFAULT_BATCH_BYTES = 64 * 1024


class SessionState(enum.Enum):
    #: Our digest is queued; the peer's has not arrived.
    HELLO = "hello"
    #: Outgoing: sending history. Incoming: receiving history.
    HISTORY = "history"
    #: ``"SYNC"`` has gone out (outgoing) or come in (incoming).
    LIVE = "live"
    #: Incoming only: the peer's stream ended.
    CLOSED = "closed"
    #: The session failed; it is detached from the replica.
    ERROR = "error"


class _Event(enum.Enum):
    DIGEST = "digest"  # the peer's digest arrived
    SENT_ALL = "sent-all"  # our history, and "SYNC" after it, went out
    SYNC = "sync"  # the peer's "SYNC" arrived
    EOF = "eof"  # the peer's stream ended


_S = SessionState

#: Every legal change of state: ``(side, state, event) -> new state``.
#: Anything else is a protocol error (or, for our side, a bug).
TRANSITIONS: dict[tuple[str, SessionState, _Event], SessionState] = {
    ("ours", _S.HELLO, _Event.DIGEST): _S.HISTORY,
    ("ours", _S.HISTORY, _Event.SENT_ALL): _S.LIVE,
    ("theirs", _S.HELLO, _Event.DIGEST): _S.HISTORY,
    ("theirs", _S.HELLO, _Event.EOF): _S.CLOSED,
    ("theirs", _S.HISTORY, _Event.SYNC): _S.LIVE,
    ("theirs", _S.HISTORY, _Event.EOF): _S.CLOSED,
    ("theirs", _S.LIVE, _Event.EOF): _S.CLOSED,
}


#: The reason given when the peer causes an event its state does not allow.
_REFUSALS = {_Event.DIGEST: "duplicate-digest", _Event.SYNC: "unexpected-sync"}

#: Anti-entropy is offered only on links whose both sides take lines this
#: long (its steps are cut to fit).
AE_MIN_LINE_BYTES = 64 * 1024
#: A sync that is not live waits at most this long (ms) after its digest for
#: the anti-entropy round that follows it.
AE_SETTLE_MS = 30_000

#: The messages anti-entropy adds (see repred._antientropy).
_AE_MESSAGES = (AeMessage, Repair, RepairSnapshot, Proof)


@attrs.frozen
class SyncReceived:
    """The peer sent ``"SYNC"``: everything it had at connect is applied."""


@attrs.frozen
class PeerEOF:
    """The peer's stream ended."""


@attrs.frozen(kw_only=True)
class SessionStatistics:
    """Counters of one session: those of :class:`repred.ConnectionStatistics`
    (which sums them over a link's sessions), for this session alone, and
    ``lines_in``, the complete lines received (keep-alives included).
    ``bytes_out`` counts what :meth:`Session.data_to_send` handed out, and
    ``refused`` the snapshots ``receive=False`` kept out too.
    """

    updates_in: int
    updates_out: int
    bytes_in: int
    bytes_out: int
    lines_in: int = 0
    deferred: int = 0
    refused: int = 0
    entries_received: int = 0
    entries_expected: int | None = None
    antientropy_rounds: int = 0
    antientropy_differed: int = 0
    repaired_in: int = 0
    repaired_out: int = 0


def _decode_batch(line: bytes) -> Batch:
    """:func:`loads_batch` with the cyclic collector paused, if it ran, and
    each array change made the tuple the history keeps (see the module
    docstring): the decoder allocates a container per change, and nothing
    else runs."""
    running = gc.isenabled()
    gc.disable()
    try:
        batch: Batch = decode(line, batches=True)
        changes = batch.changes
        if set(map(type, changes)) == {list}:
            changes[:] = map(tuple, changes)
        else:
            changes[:] = [tuple(c) if type(c) is list else c for c in changes]
        return batch
    finally:
        if running:
            gc.enable()


def _bad(message: str, reason: str, line: bytes) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason, line=snippet(line))


class Session:
    """One link's side of the protocol, over one replica.

    Args:
        replica: the replica to replicate.
        max_line_bytes, batch_entries, batch_bytes, batches, send, receive:
            as :class:`repred.LinkOptions` describes them (``batch_bytes``:
            :meth:`data_to_send` stops adding entries past this; without
            ``batches`` this side also refuses batches).
        antientropy: offer anti-entropy (a repred extension, used only when
            the peer offers it too, on a link that sends and receives; see
            :mod:`repred._antientropy`): after the sync, and whenever
            :meth:`antientropy` is called, both sides compare hash trees of
            what they hold and repair what differs.

    Attributes:
        wakeup: called (with no arguments) whenever the session gains
            something to send; the I/O layer uses it to wake its writer.
        peer: the peer's :class:`Digest`, once received.
    """

    def __init__(
        self,
        replica: Replica,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        batch_entries: int = DEFAULT_BATCH_ENTRIES,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        batches: bool = True,
        send: bool = True,
        receive: bool = True,
        antientropy: bool = True,
    ) -> None:
        if max_line_bytes < 64 or batch_entries < 1 or batch_bytes < 1:
            raise ValueError("limits must be positive (max_line_bytes >= 64)")
        self.replica = replica
        self.wakeup: Callable[[], None] | None = None
        self.peer: Digest | None = None
        self.our_state = self.their_state = SessionState.HELLO
        #: The peer's "SYNC" arrived (it may have closed since).
        self.sync_received = False
        self._decoder = LineDecoder(max_line_bytes)
        self._batch_entries = batch_entries
        self._batch_bytes = batch_bytes
        self._batches = batches
        self._send = send
        self._receive = receive
        self._refused = self._received = 0
        self._expected: int | None = None
        #: Anti-entropy with the peer, once both offered it.
        self._ae: AntiEntropy | None = None
        #: The round that follows the sync is yet to start (or not: see
        #: _starts_round), and what decides who starts it.
        self._ae_due, self._ae_since = False, 0.0
        self._entries_out = self._history_out = self._history_in = 0
        self._ae_offered = (
            antientropy
            and send
            and receive
            and replica.antientropy
            and max_line_bytes >= AE_MIN_LINE_BYTES
        )
        #: The clock our digest says (what we held before the sync).
        self._digest_clock = dict(replica.clock) if self._ae_offered else {}
        self._out: list[bytes] = [self._hello(max_line_bytes)]
        #: The longest line the peer takes (with its newline), once known.
        self._peer_max_line = float("inf")
        #: The peer reads batches (both sides are repred).
        self._batched = False
        self._sent: dict[str, float] = {}
        #: Sources that may have entries the peer lacks, in sending order.
        self._queue: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        #: Sources whose entries are passed over on this link (see
        #: Replica.apply).
        self._skipped: set[str] = set()
        self._snapshot_seen = self._deferred = 0
        self._updates_in = self._updates_out = self._bytes_in = self._bytes_out = 0
        self._detach: Callable[[], None] | None = replica.watch(self._on_applied)

    def _hello(self, max_line_bytes: int) -> bytes:
        """The digest this session opens with."""
        offered, replica = self._ae_offered, self.replica
        return encode_digest(
            replica.id,
            self._digest_clock if offered else replica.clock,
            replica.type_name,
            max_line_bytes,
            batches=self._batches,
            antientropy=offered,
            receive=self._receive,
            instance=replica.instance if offered else None,
        )

    def __repr__(self) -> str:
        peer = self.peer.id if self.peer else None
        return (
            f"<Session {self.replica.id!r}<->{peer!r}"
            f" out={self.our_state.value} in={self.their_state.value}>"
        )

    # -- state -------------------------------------------------------------

    def _advance(self, side: str, event: _Event, line: bytes = b"") -> None:
        """Move one side's state by the table, or fail the session."""
        state = self.our_state if side == "ours" else self.their_state
        new = TRANSITIONS.get((side, state, event))
        if new is None:
            reason = _REFUSALS.get(event, f"unexpected-{event.value}")
            raise _bad(f"{event.value} in state {state.value}", reason, line)
        if side == "ours":
            self.our_state = new
        else:
            self.their_state = new
            if event is _Event.SYNC:
                self.sync_received = True

    @property
    def sync_sent(self) -> bool:
        """``"SYNC"`` has been handed out by :meth:`data_to_send`."""
        return self.our_state is SessionState.LIVE

    @property
    def synced(self) -> bool:
        """Both sides have exchanged everything they had at connect."""
        return self.sync_sent and self.sync_received

    @property
    def settled(self) -> bool:
        """After the sync, the anti-entropy round that follows it has ended
        and every repair has gone out (or there is no anti-entropy on this
        link)."""
        ae = self._ae
        if ae is None or (not self._ae_due and ae.settled and ae.ended > 0):
            return True
        # A peer whose round never ends does not hold a sync that is not
        # live for ever: past the bound, the round is given up.
        return self.replica.wall() - self._ae_since > AE_SETTLE_MS

    def _starts_round(self) -> bool:
        """Whether this side starts the round that follows the sync: the
        side that sent more entries (it finished first, and its tree may be
        computed while the other still reads); the smaller id on a tie;
        both, for twins. Both sides count the same entries (those before
        each "SYNC"), so exactly one starts."""
        sent, got = self._history_out, self._history_in
        if sent != got:
            return sent > got
        peer = None if self.peer is None else self.peer.id
        return peer is None or self.replica.id <= peer

    def antientropy(self) -> bool:
        """Start an anti-entropy round now, if the link has one and none of
        this side's is in progress; ``True`` if one started."""
        ae = self._ae
        if ae is None or not self.synced or self._ae_due or not ae.start():
            return False
        if self.wakeup is not None:
            self.wakeup()
        return True

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held from the peer."""
        return self._decoder.buffered

    @property
    def lines_in(self) -> int:
        """Complete lines received so far (a measure of the peer's progress)."""
        return self._decoder.lines

    @property
    def peer_is_repred(self) -> bool:
        """The peer's digest announced repred's protocol (not JS scuttlebutt)."""
        return self.peer is not None and self.peer.version is not None

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            updates_in=self._updates_in,
            updates_out=self._updates_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            lines_in=self._decoder.lines,
            deferred=self._deferred,
            refused=self._refused,
            entries_received=self._received,
            entries_expected=self._expected,
            antientropy_rounds=0 if self._ae is None else self._ae.rounds,
            antientropy_differed=0 if self._ae is None else self._ae.differed,
            repaired_in=0 if self._ae is None else self._ae.repaired_in,
            repaired_out=0 if self._ae is None else self._ae.repaired_out,
        )

    # -- incoming ------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | None) -> list[object]:
        """Feed bytes from the peer (``b""`` or ``None``: the stream ended).

        Every complete line is processed at once: entries are applied to the
        replica. Returns the events seen: a :class:`Digest`,
        :class:`SyncReceived`, :class:`PeerEOF`.

        Raises:
            RemoteProtocolError: the peer broke the protocol. Every message
                before the bad one was applied; the bad one changed nothing.
                The session is then detached and unusable.
            StoreError: the replica's store could not keep what arrived (the
                rows stay queued in the store); the session is detached.
            LocalProtocolError: data fed after an error or after the end.
        """
        if self.their_state in (SessionState.ERROR, SessionState.CLOSED):
            raise LocalProtocolError(
                f"receive_data() after the session ended ({self.their_state.value})"
            )
        events: list[object] = []
        try:
            if data:
                self._bytes_in += len(data)
                decoder = self._decoder
                lines = decoder.feed(data)
                if lines:
                    self._handle(lines, events)
                if decoder.error is not None:
                    raise decoder.error
            else:
                rest = self._decoder.eof()
                if rest is not None:
                    self._handle([rest], events)
                self._advance("theirs", _Event.EOF)
                events.append(PeerEOF())
        except Exception:
            # A bad message, or a store that could not keep what arrived:
            # either way this link is over.
            self._fail()
            raise
        return events

    def _handle(self, lines: list[bytes], events: list[object]) -> None:
        # The hot path of every sync. Each line goes through the one
        # decoder (repred._wire.decode), which checks it; entries are
        # grouped into runs (one source, stamps increasing, see
        # repred._history.runs) that the replica applies in one call, and a
        # batch line is a run already. Anything else goes through
        # _handle_message, after the entries before it have been applied,
        # as does a line that fails a check.
        entries: list[tuple[Any, ...]] = []
        live = self.their_state is not SessionState.HELLO
        batches = self._batches
        try:
            for line in lines:
                if batches and line.startswith(BATCH_PREFIX):
                    msg: Any = _decode_batch(line)
                else:
                    msg = decode(line)
                kind = type(msg)
                if kind is tuple and live:
                    entries.append(msg)
                elif kind is Batch and live and batches:
                    self._apply_entries(entries)
                    # Applied at once: decoded values die young (see the
                    # module docstring).
                    self._apply([(msg.source, msg.stamps, msg.changes, msg.signatures)])
                else:
                    self._apply_entries(entries)
                    self._handle_message(msg, line, events)
                    live = self.their_state is not SessionState.HELLO
        finally:
            # What came before a bad line is applied; the bad one raises.
            self._apply_entries(entries)

    def _apply_entries(self, entries: list[tuple[Any, ...]]) -> None:
        """Apply the entries gathered so far (the list is emptied first, so
        that a refusal never applies them twice)."""
        if entries:
            grouped = runs(entries, canonical=True)
            entries.clear()
            self._apply(grouped)

    def _apply(self, runs: list[Run]) -> None:
        if not runs:
            return
        sent = self._sent
        for source, stamps, _, _ in runs:
            # The peer has these: they are never sent back to it.
            if sent.get(source, -1) < stamps[-1]:
                sent[source] = stamps[-1]
            self._received += len(stamps)
        if not self._receive:
            # Counted as refused: what would have been new here.
            clock = self.replica.clock
            for source, stamps, _, _ in runs:
                self._refused += len(stamps) - bisect_right(
                    stamps, clock.get(source, -1)
                )
            return
        replica = self.replica
        skipped = self._skipped
        deferred = replica.deferred
        try:
            self._updates_in += replica.apply_runs(runs, self, skipped=skipped)
        except (RemoteProtocolError, StoreError):
            raise  # the replica's refusal names the entry; a store's is ours
        except Exception as exc:
            change, ts, source = self._first_unapplied(runs)
            raise RemoteProtocolError(
                f"the reducer refused an entry from the peer: {exc!r}",
                reason="reducer-error",
                line=entry_snippet(change, ts, source),
            ) from exc
        finally:
            self._deferred += replica.deferred - deferred

    def _first_unapplied(self, runs: list[Run]) -> tuple[Any, float, str]:
        """The entry a failed apply stopped at: the first one neither
        covered by the clock nor deferred."""
        clock = self.replica.clock
        for source, stamps, changes, _ in runs:
            i = bisect_right(stamps, clock.get(source, -1))
            if i < len(stamps) and source not in self._skipped:
                return changes[i], stamps[i], source
        raise AssertionError("no entry failed")  # pragma: no cover

    def _handle_message(self, msg: Any, line: bytes, events: list[object]) -> None:
        if type(msg) is tuple or type(msg) is Batch:
            if self.their_state is SessionState.HELLO:
                raise _bad("entries before the digest", "no-digest", line)
            raise _bad("a batch, which this side did not offer", "bad-batch", line)
        if msg is KEEPALIVE:
            pass
        elif type(msg) is Expect:
            if (
                self.their_state is not SessionState.HISTORY
                or self._expected is not None
            ):
                raise _bad("an announcement out of place", "bad-expect", line)
            self._expected = msg.entries
        elif type(msg) is Snapshot:
            self._on_snapshot(msg, line)
        elif type(msg) in _AE_MESSAGES:
            self._on_antientropy(msg, line)
        elif msg is SYNC:
            self._history_in = self._received
            self._advance("theirs", _Event.SYNC, line)
            events.append(SyncReceived())
        else:
            self._on_digest(msg, line)
            events.append(msg)

    def _on_antientropy(
        self, msg: AeMessage | Repair | RepairSnapshot | Proof, line: bytes
    ) -> None:
        if type(msg) is Proof:
            if self.their_state is SessionState.HELLO:
                raise _bad("a proof before the digest", "no-digest", line)
            self.replica.prove(msg.first, msg.second)
            return
        ae = self._ae
        if ae is None or self.their_state is not SessionState.LIVE:
            raise _bad(
                "an anti-entropy message on a link without it, or before SYNC",
                "bad-antientropy",
                line,
            )
        if type(msg) is AeMessage:
            try:
                ae.receive(msg, line)
            except (IndexError, KeyError, TypeError, ValueError) as exc:
                # (A bug of ours, or a case the checks missed: said in full,
                # and only this link ends.)
                log.exception("repred: anti-entropy failed on a peer's message")
                raise _bad(
                    f"an anti-entropy message this side cannot follow: {exc!r}",
                    "bad-antientropy",
                    line,
                ) from exc
        else:
            try:
                if isinstance(msg, Repair):
                    self._sent_upto(msg.source, msg.stamps[-1])
                    ae.take_repair(msg.source, msg.stamps, msg.changes, msg.signatures)
                elif isinstance(msg, RepairSnapshot):
                    ae.take_snapshot(msg.update, msg.clock)
            except (RemoteProtocolError, StoreError):
                raise
            except Exception as exc:  # the reducer refused it
                raise RemoteProtocolError(
                    f"the replica refused what anti-entropy sent: {exc!r}",
                    reason="reducer-error",
                    line=snippet(line),
                ) from exc
        if self.wakeup is not None:
            self.wakeup()

    def _sent_upto(self, source: str, ts: float) -> None:
        """The peer holds entries of ``source`` up to ``ts``."""
        if self._sent.get(source, -1) < ts:
            self._sent[source] = ts

    def _on_snapshot(self, snapshot: Snapshot, line: bytes) -> None:
        if self.their_state not in (SessionState.HISTORY, SessionState.LIVE):
            raise _bad("a snapshot before the digest", "no-digest", line)
        if not self._receive:
            self._refused += 1
            return
        deferred = self.replica.deferred
        try:
            applied = self.replica.apply_snapshot(snapshot.update, snapshot.clock, self)
            self._deferred += self.replica.deferred - deferred
        except RemoteProtocolError as exc:
            exc.line = snippet(line)
            raise
        except Exception as exc:
            raise RemoteProtocolError(
                f"the replica refused the peer's snapshot: {exc!r}",
                reason="reducer-error",
                line=snippet(line),
            ) from exc
        if applied:
            self._updates_in += 1
            for source, ts in snapshot.clock.items():
                self._sent_upto(source, ts)

    def _send_snapshot(self) -> None:
        """Queue our snapshot if the peer lacks part of what it covers."""
        replica = self.replica
        self._snapshot_seen = replica.snapshot_version
        if replica.compacted is None or self.peer is None:
            return
        update, clock = replica.compacted
        sent = self._sent
        if all(sent.get(s, -1) >= ts for s, ts in clock.items()):
            return
        if self.peer.version is None:
            # A JS scuttlebutt peer cannot take a snapshot: it gets the tail.
            limited(
                logging.WARNING,
                "snapshot-to-js",
                "repred: peer %r predates this replica's snapshot and cannot receive"
                " one (not a repred peer); it gets only the entries after it",
                self.peer.id,
            )
            return
        self._out.append(encode_snapshot(update, clock))
        for source, ts in clock.items():
            self._sent_upto(source, ts)
        self._updates_out += 1

    def _on_digest(self, digest: Digest, line: bytes) -> None:
        theirs = digest.type_name
        if theirs is not None and theirs != self.replica.type_name:
            raise IncompatiblePeerError(
                f"peer replicates {theirs!r}, this replica is"
                f" {self.replica.type_name!r} (replicas of one type must share"
                " a type name: pass the same type_name= to both)",
                reason="incompatible-type",
                line=snippet(line),
            )
        self._advance("theirs", _Event.DIGEST, line)
        self.peer = digest
        self.replica.twin_seen(
            digest.id, digest.instance, digest.clock.get(self.replica.id)
        )
        if digest.max_line is not None:
            self._peer_max_line = digest.max_line + 1  # the LF is not counted
        self._batched = self._batches and digest.batch == BATCH_FORMAT
        self._offer_antientropy(digest)
        self._plan_history(digest)
        if not self._send:
            self._queue.clear()
            self._advance("ours", _Event.DIGEST)
            self._advance("ours", _Event.SENT_ALL)  # there is nothing to send
            return
        self._send_snapshot()
        self._advance("ours", _Event.DIGEST)
        if self.wakeup is not None:
            self.wakeup()

    def _offer_antientropy(self, digest: Digest) -> None:
        """Anti-entropy with the peer, if both offered it."""
        if (
            self._ae_offered
            and digest.antientropy
            and self._peer_max_line > AE_MIN_LINE_BYTES
        ):
            mine = self._digest_clock
            common = {
                s: min(ts, mine[s]) for s, ts in digest.clock.items() if s in mine
            }
            self._ae = AntiEntropy(self.replica, self, self._peer_max_line, common)
            self._ae_due = True
            self._ae_since = self.replica.wall()

    def _plan_history(self, digest: Digest) -> None:
        """What the peer lacks, in sending order: sources with the most
        outstanding entries first (scuttle-depth)."""
        self._sent = dict(digest.clock)
        outstanding = self.replica.outstanding(self._sent)
        outstanding.sort(key=itemgetter(0), reverse=True)
        if digest.progress and self._send:
            self._out.append(encode_expect(sum(map(itemgetter(0), outstanding))))
        self._queue = collections.deque(map(itemgetter(1), outstanding))
        # Sources queued since (by new entries): the first queue is not in
        # it, so a source may stand in the queue twice; its second turn
        # finds nothing left to send, and costs a lookup.
        self._queued = set()

    # -- outgoing ------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The next bytes to send to the peer (``b""`` when there is nothing).

        At most about ``batch_bytes`` of entries per call: call again after
        sending, until it returns ``b""``.

        Raises:
            LocalProtocolError: an entry is longer than the peer's announced
                line limit (the session fails; see the log).
        """
        state = self.our_state
        if (
            self._send
            and self.replica.snapshot_version != self._snapshot_seen
            and state is not SessionState.HELLO
            and state is not SessionState.ERROR
        ):
            # Before any entry: the snapshot covers entries no longer kept.
            self._send_snapshot()
        out = self._out
        self._out = []
        if state is SessionState.HISTORY or state is SessionState.LIVE:
            if len(self._queue) >= _GC_PAUSE_SOURCES and gc.isenabled():
                gc.disable()  # see the module docstring
                try:
                    self._fill(out)
                finally:
                    gc.enable()
            elif self._queue:
                self._fill(out)
            if state is SessionState.HISTORY and not self._queue:
                out.append(SYNC_LINE)
                self._history_out = self._entries_out
                self._advance("ours", _Event.SENT_ALL)
            ae = self._ae
            if ae is not None and self.our_state is SessionState.LIVE:
                if self._ae_due and self.sync_received:
                    self._ae_due = False
                    if self._starts_round():
                        ae.start(after_sync=True)
                out += ae.data(self._batch_bytes)
        data = b"".join(out)
        self._bytes_out += len(data)
        return data

    def keepalive(self) -> None:
        """Queue a keep-alive line (JS peers ignore it), once past the hello.

        The I/O layer sends one when the link has been quiet for a while, so
        that the peer can tell a quiet link from a dead one.
        """
        if self.our_state is SessionState.LIVE and not self._out:
            self._out.append(KEEPALIVE_LINE)
            if self.wakeup is not None:
                self.wakeup()

    def _fill(self, out: list[bytes]) -> None:
        """Add what the queued sources have for the peer, up to the budget."""
        queue, queued, sent = self._queue, self._queued, self._sent
        replica = self.replica
        budget = self._batch_bytes
        size = sent_count = 0
        while queue and size < budget:
            source = queue.popleft()
            log = log_of(replica, source)
            if log is None:
                queued.discard(source)
                continue
            stamps, changes, sigs = log.batch(sent.get(source, -1), self._batch_entries)
            more = len(stamps) == self._batch_entries  # more of it after these
            n, lines, cut = self._encode(source, stamps, changes, sigs, budget - size)
            out += lines
            size += sum(map(len, lines))
            if n:
                sent[source] = stamps[n - 1]
                sent_count += n
            if more or cut:
                queue.appendleft(source)  # it goes on first
            else:
                queued.discard(source)
        self._updates_out += sent_count
        self._entries_out += sent_count

    def _encode(
        self,
        source: str,
        stamps: list[float],
        changes: list[Any],
        sigs: list[str | None] | None,
        room: int,
    ) -> tuple[int, list[bytes], bool]:
        """``(n, lines, cut)``: the first ``n`` entries as lines for the
        peer (one batch, or a line each); ``cut`` if the rest must wait."""
        # A lone entry goes as a plain line: cheaper to read than a batch.
        if self._batched and len(stamps) > 1:
            # No batch line longer than the peer takes or the budget allows.
            longest = int(min(self._peer_max_line, self._batch_bytes))
            n = len(stamps)
            line = encode_batch(source, stamps, changes, sigs)
            while len(line) > longest and n > 1:
                # Too long: at most half the entries, fewer if their size
                # says so; the rest go next.
                n = min(n // 2, n * longest // len(line)) or 1
                if n > 1:
                    line = encode_batch(
                        source,
                        stamps[:n],
                        changes[:n],
                        None if sigs is None else sigs[:n],
                    )
            if n > 1:
                return n, [line], n < len(stamps)
            # One entry at a time, then: the rest go next.
            one, lines, _ = self._lines(source, stamps[:1], changes[:1], sigs, room)
            return one, lines, len(stamps) > 1
        return self._lines(source, stamps, changes, sigs, room)

    def _lines(
        self,
        source: str,
        stamps: list[float],
        changes: list[Any],
        sigs: list[str | None] | None,
        room: int,
    ) -> tuple[int, list[bytes], bool]:
        """One line per entry (as JS peers read them), within ``room``."""
        peer_max = self._peer_max_line
        lines, size = [], 0
        for i, (ts, change) in enumerate(zip(stamps, changes, strict=True)):
            # (encode_entry, inline: a line per entry is a JS peer's sync)
            if sigs is None or sigs[i] is None:
                line = _dumps([change, ts, source], option=_OPT)
            else:
                line = _dumps([change, ts, source, sigs[i]], option=_OPT)
            if len(line) > peer_max:
                self._too_long_for_peer(change, ts, source, len(line))
            lines.append(line)
            size += len(line)
            if size >= room and i + 1 < len(stamps):
                return i + 1, lines, True  # the budget is spent
        return len(stamps), lines, False

    def _too_long_for_peer(
        self, change: Any, ts: float, source: str, size: int
    ) -> None:
        """An entry the peer will refuse: say so, and end this link only."""
        key = None
        key_of = self.replica.last_write_wins
        if key_of is not None:
            try:
                key = key_of(change)
            except Exception:  # pragma: no cover  (recorded entries have keys)
                key = None
        peer = self.peer.id if self.peer is not None else None
        limited(
            logging.WARNING,
            "too-long-for-peer",
            "repred: entry (source %r, ts %r, key %r) is %d bytes, over the"
            " %d byte line limit of peer %r; closing the link to it (it cannot"
            " receive this source past that entry)",
            source,
            ts,
            key,
            size,
            self._peer_max_line - 1,
            peer,
        )
        self._fail()
        raise LocalProtocolError(f"entry of {size} bytes is over the peer's line limit")

    def _on_applied(self, source: str, ts: float, origin: object) -> None:
        if source in self._queued:
            # Already queued (the hot case of a stream of writes): only the
            # link's writer needs to hear that more came.
            if origin is not self and self.wakeup is not None:
                self.wakeup()
            return
        if origin is self or self.our_state is SessionState.HELLO or not self._send:
            return
        if (
            self._sent.get(source, -1) >= ts
            and self.replica.snapshot_version == self._snapshot_seen
        ):
            return
        self._queued.add(source)  # (not queued: see the top)
        self._queue.append(source)
        if self.wakeup is not None:
            self.wakeup()

    # -- ending --------------------------------------------------------

    def close(self) -> None:
        """Detach from the replica. Idempotent."""
        if self._detach is not None:
            self._detach()
            self._detach = None

    def _fail(self) -> None:
        self.their_state = SessionState.ERROR
        self.our_state = SessionState.ERROR
        self._out = []
        self._queue.clear()
        self._queued.clear()
        self.close()
