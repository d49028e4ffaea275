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
)
from ._log import limited
from ._store import StoreError
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
    encode_batch,
    encode_digest,
    encode_expect,
    encode_snapshot,
    entry_snippet,
    fast_entry,
    loads_batch,
    loads_line,
    parse_entry,
    parse_message,
    snippet,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._replica import Replica, Run

log = logging.getLogger("repred")

#: A data_to_send() call for at least this many sources encodes with the
#: cyclic garbage collector paused (see the module docstring).
_GC_PAUSE_SOURCES = 64
_loads = orjson.loads
_dumps = orjson.dumps
_OPT = orjson.OPT_APPEND_NEWLINE
_JSONDecodeError = orjson.JSONDecodeError

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
    """Counters of one session.

    Attributes:
        updates_in: entries received that were new to the replica.
        updates_out: entries sent.
        bytes_in: bytes received.
        bytes_out: bytes handed out by :meth:`Session.data_to_send`.
        lines_in: complete lines received (keep-alives included).
        deferred: entries not applied because they were stamped too far
            ahead (they arrive again on a later link).
        refused: entries new to the replica (and snapshots) not applied
            because this side does not receive on this link
            (``receive=False``).
        entries_received: entries received, new or not (a measure of a
            long sync's progress, with ``entries_expected``).
        entries_expected: how many entries the peer said its history holds,
            if it said (a repred peer does); ``None`` otherwise.
        antientropy_rounds: anti-entropy rounds this side started.
        antientropy_differed: rounds (started by either side) in which the
            two replicas turned out to hold different entries.
        repaired_in: entries taken from the peer by anti-entropy.
        repaired_out: entries sent to the peer by anti-entropy.
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
    """:func:`loads_batch` with the cyclic collector paused, if it ran: the
    decoder allocates a container per change, and nothing else runs.

    Each array change becomes a tuple here, as the history keeps it, so
    that no list per entry is alive while the entries are applied: lists
    alive when the collector runs would be promoted to its oldest
    generation and bring on full collections, each of which walks the
    whole history.
    """
    running = gc.isenabled()
    gc.disable()
    try:
        batch = loads_batch(line)
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
        max_line_bytes: longest line accepted from the peer (announced to
            it in the digest).
        batch_entries: entries read from one source's history at a time.
        batch_bytes: :meth:`data_to_send` stops adding entries past this.
        batches: offer batched framing (a repred extension, used only when
            the peer offers it too; see :mod:`repred._wire`). Without it,
            this side sends one entry per line and refuses batches.
        send: send entries. With ``False``, nothing but the digest (and
            keep-alives) goes out: no history, no ``"SYNC"``, no live entry
            (JS scuttlebutt's ``createWriteStream``). The peer therefore never
            counts this link as synced.
        receive: apply what the peer sends. With ``False``, its entries and
            snapshots are checked and counted as refused
            (:attr:`SessionStatistics.refused`), never applied, and the link
            stays up: a read-only mirror (JS ``createReadStream``).
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
        self.our_state = SessionState.HELLO
        self.their_state = SessionState.HELLO
        #: The peer's "SYNC" arrived (it may have closed since).
        self.sync_received = False
        self._decoder = LineDecoder(max_line_bytes)
        self._batch_entries = batch_entries
        self._batch_bytes = batch_bytes
        self._batches = batches
        self._send = send
        self._receive = receive
        self._refused = 0
        self._received = 0
        self._expected: int | None = None
        self._ae_offered = (
            antientropy
            and send
            and receive
            and replica.antientropy
            and max_line_bytes >= AE_MIN_LINE_BYTES
        )
        #: Anti-entropy with the peer, once both offered it.
        self._ae: AntiEntropy | None = None
        #: The round that follows the sync is yet to start (or not: see
        #: _starts_round), and what decides who starts it.
        self._ae_due = False
        self._entries_out = 0
        self._history_out = 0
        self._history_in = 0
        #: The clock our digest says (what we held before the sync).
        self._digest_clock = dict(replica.clock) if self._ae_offered else {}
        self._out: list[bytes] = [
            encode_digest(
                replica.id,
                self._digest_clock if self._ae_offered else replica.clock,
                replica.type_name,
                max_line_bytes,
                batches=batches,
                antientropy=self._ae_offered,
                receive=receive,
            )
        ]
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
        self._snapshot_seen = 0
        self._updates_in = 0
        self._updates_out = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._deferred = 0
        self._detach: Callable[[], None] | None = replica.watch(self._on_applied)

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
        return ae is None or (not self._ae_due and ae.settled and ae.ended > 0)

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
        if ae is None or not self.synced or self._ae_due:
            return False
        if not ae.start():
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
        # The hot path of every sync. Entries are checked as they are
        # decoded and grouped into runs (one source, stamps increasing) that
        # the replica applies in one call; a batch line is a run already.
        # Anything else goes through _handle_message, after the entries
        # before it have been applied, as does the precise error for any
        # line that fails a check.
        runs: list[Run] = []
        source: str | None = None
        stamps: list[float] = []
        changes: list[Any] = []
        sigs: list[str | None] | None = None
        last = -1.0
        live = self.their_state is not SessionState.HELLO
        batches = self._batches
        for line in lines:
            if live and batches and line.startswith(BATCH_PREFIX):
                try:
                    batch = _decode_batch(line)
                except RemoteProtocolError:
                    self._apply(runs)
                    raise
                # Applied at once: decoded values die young (see the module
                # docstring).
                runs.append(
                    (batch.source, batch.stamps, batch.changes, batch.signatures)
                )
                self._apply(runs)
                runs = []
                source = None
                continue
            try:
                msg = _loads(line)
            except _JSONDecodeError:
                self._apply(runs)
                loads_line(line)  # raises the typed error
                raise  # pragma: no cover
            if type(msg) is list and live:
                entry = fast_entry(msg, line)
                if entry is None:
                    self._apply(runs)
                    runs = []
                    source = None
                    entry = parse_entry(msg, line)  # raises, or a signed entry
                change, ts, src = entry[0], entry[1], entry[2]
                signature = entry[3] if len(entry) > 3 else None
                if (
                    src == source
                    and ts > last
                    and (signature is None or sigs is not None)
                ):
                    stamps.append(ts)
                    changes.append(change)
                    if sigs is not None:
                        sigs.append(signature)
                else:
                    source, stamps, changes = src, [ts], [change]
                    sigs = None if signature is None else [signature]
                    runs.append((src, stamps, changes, sigs))
                last = ts
            else:
                self._apply(runs)
                runs = []
                source = None
                self._handle_message(msg, line, events)
                live = self.their_state is not SessionState.HELLO
        self._apply(runs)

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

    def _handle_message(self, raw: Any, line: bytes, events: list[object]) -> None:
        if type(raw) is list and self.their_state is SessionState.HELLO:
            raise _bad("entry before the digest", "no-digest", line)
        msg = parse_message(raw, line)
        if type(msg) is Batch and self.their_state is SessionState.HELLO:
            raise _bad("a batch before the digest", "no-digest", line)
        if type(msg) is tuple:
            signatures = None if len(msg) == 3 else [msg[3]]
            self._apply([(msg[2], [msg[1]], [msg[0]], signatures)])
        elif type(msg) is Batch:
            if not self._batches:
                raise _bad("a batch, which this side did not offer", "bad-batch", line)
            self._apply([(msg.source, msg.stamps, msg.changes, msg.signatures)])
        elif msg is KEEPALIVE:
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
            ae.receive(msg, line)
            if self.wakeup is not None:
                self.wakeup()
            return
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
            sent = self._sent
            for source, ts in snapshot.clock.items():
                if sent.get(source, -1) < ts:
                    sent[source] = ts

    def _send_snapshot(self) -> None:
        """Queue our snapshot if the peer lacks part of what it covers."""
        replica = self.replica
        self._snapshot_seen = replica.snapshot_version
        if replica.snapshot is None or self.peer is None:
            return
        update, clock = replica.snapshot
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
            if sent.get(source, -1) < ts:
                sent[source] = ts
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
        self.replica.twin_seen(digest.id)
        if digest.max_line is not None:
            self._peer_max_line = digest.max_line + 1  # the LF is not counted
        self._batched = self._batches and digest.batch == BATCH_FORMAT
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
        sent = self._sent = dict(digest.clock)
        replica = self.replica
        logs = replica._history.logs
        clock = replica.clock
        # Sources with the most outstanding entries go first (scuttle-depth).
        outstanding = [
            (len(log._stamps), source)
            if source not in sent
            else (log.count_after(sent[source]), source)
            for source, log in logs.items()
            if source not in sent or clock[source] > sent[source]
        ]
        outstanding.sort(key=itemgetter(0), reverse=True)
        if digest.progress and self._send:
            self._out.append(encode_expect(sum(map(itemgetter(0), outstanding))))
        self._queue = collections.deque(map(itemgetter(1), outstanding))
        # Sources queued since (by new entries): the first queue is not in
        # it, so a source may stand in the queue twice; its second turn
        # finds nothing left to send, and costs a lookup.
        self._queued = set()
        if not self._send:
            self._queue.clear()
            self._advance("ours", _Event.DIGEST)
            self._advance("ours", _Event.SENT_ALL)  # there is nothing to send
            return
        self._send_snapshot()
        self._advance("ours", _Event.DIGEST)
        if self.wakeup is not None:
            self.wakeup()

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
        queue = self._queue
        queued = self._queued
        sent = self._sent
        logs = self.replica._history.logs
        limit = self._batch_entries
        budget = self._batch_bytes
        peer_max = self._peer_max_line
        # No batch line longer than the peer takes or the budget allows.
        longest = int(min(peer_max, budget))
        size = 0
        sent_count = 0
        batched = self._batched
        dumps = _dumps
        opt = _OPT
        while queue and size < budget:
            source = queue.popleft()
            log = logs.get(source)
            if log is None:
                if queued:
                    queued.discard(source)
                continue
            stamps = log._stamps
            floor = sent.get(source)
            start = 0 if floor is None else bisect_right(stamps, floor)
            if log._live == len(stamps):  # no dropped entries: slice directly
                if start == 0 and len(stamps) <= limit:
                    changes = log._changes  # all of it (read, not changed)
                else:
                    stamps = stamps[start : start + limit]
                    changes = log._changes[start : start + limit]
            else:
                batch = log.after(sent.get(source, -1), limit)
                stamps = [ts for ts, _ in batch]
                changes = [change for _, change in batch]
            # Signatures travel with their entries, as they came.
            held = log._sigs
            sigs = list(map(held.get, stamps)) if held else None
            if sigs is not None and not any(sigs):
                sigs = None
            more = len(stamps) == limit  # more of it after these
            line = b""
            # A lone entry goes as a plain line: cheaper to read than a batch.
            if batched and len(stamps) > 1:
                line = encode_batch(source, stamps, changes, sigs)
                while len(line) > longest and len(stamps) > 1:
                    # Too long: at most half the entries, fewer if their
                    # size says so; the rest go next.
                    n = len(stamps)
                    n = min(n // 2, n * longest // len(line)) or 1
                    stamps, changes = stamps[:n], changes[:n]
                    sigs = None if sigs is None else sigs[:n]
                    more = True
                    line = encode_batch(source, stamps, changes, sigs) if n > 1 else b""
            if line:
                out.append(line)
                size += len(line)
            else:
                for i, (ts, change) in enumerate(zip(stamps, changes, strict=True)):
                    signature = None if sigs is None else sigs[i]
                    if signature is None:
                        line = dumps([change, ts, source], option=opt)
                    else:
                        line = dumps([change, ts, source, signature], option=opt)
                    if len(line) > peer_max:
                        self._too_long_for_peer(change, ts, source, len(line))
                    out.append(line)
                    size += len(line)
                    if size >= budget and i + 1 < len(stamps):
                        stamps = stamps[: i + 1]  # the budget is spent
                        more = True
                        break
            if stamps:
                sent[source] = stamps[-1]
                sent_count += len(stamps)
            if more:
                queue.appendleft(source)  # it goes on first
            elif queued:
                queued.discard(source)
        self._updates_out += sent_count
        self._entries_out += sent_count

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
        raise LocalProtocolError(
            f"entry of {size} bytes is over the peer's line limit",
        )

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
