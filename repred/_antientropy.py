"""Anti-entropy: two replicas find and repair what they hold differently.

Theory of operation
-------------------

A digest says how far a replica has each source, not what it holds. After
every sync, and then every ``antientropy_interval`` seconds on a live link,
one side of a link between two repred peers (both digests offer
``"antientropy"``) starts a *round*: it sends the root fingerprint of
everything it holds (see :mod:`repred._hashtree` and
:mod:`repred._summary`). When the roots agree, that is the whole cost: one
line each way. When they differ, the two sides descend together, each
message answering the last (so a round is a single token passed back and
forth), through these *ranges*:

``["B", [[bucket, fp], ...]]``
    the sender's fingerprint of each of its 256 buckets of sources;
``["S", [bucket, ...], [[source, clock, level, index, count, fp], ...]]``
    its record of each source in the buckets that differed: the source's
    clock, and the deepest node holding all its entries, with their count
    and fingerprint. A source is compared up to the older of the two
    clocks: both claim every entry up to it, and a newer one may be in
    flight, or gone for good where the type dropped it as dominated;
``["R", source, clock, level, index, count, fp]``
    the same record, for a source the other side holds newer entries of:
    "compare up to my clock";
``["N", source, upto, level, index, [[slot, count, fp], ...]]``
    the non-empty children of a node that differed;
``["I", source, upto, level, index, [[ts, hash], ...]]``
    every entry of a small node that differed (stamp and entry hash);
``["W", source, upto, level, index]``
    "send me every entry of this node": the sender holds none there;
``["E", source, [ts, ...]]``
    "send me these entries" (among those the other side listed);
``["T", state, clock]`` and ``["X"]``
    for a type that folds its history into snapshots, once either side has:
    the sender's state and clock fingerprints; "send me your snapshot";
``["H", horizon]``
    "compare only entries stamped from here on" (a type that drops its
    old entries by its own bound).

Every range must answer one the other side sent in this round (a record it
listed, a node whose children or entries it listed, entries it named): a
range that answers nothing ends the link. So a round costs each side work
in proportion to what it sent itself, and a peer may start a round at most
every :data:`MIN_ROUND_MS`. Each side restricts every range to the stamps
``[horizon, upto]``, where ``upto`` is the clock both agreed on and
``horizon`` the newest stamp either may have dropped by its type's own
bound, so both compute fingerprints of exactly the same entries. What one
side finds the other lacks it sends as *repairs* (``{"repair": source,
"stamps", "signatures"?, "changes"}``, entries as their author wrote
them), which the other takes with :meth:`Replica.repair`: checked as any
entry, and settled by the same rule on every replica when two versions of a
stamp meet. A side whose reply holds no range ends the round. Proofs of
equivocation (two valid signatures on one stamp) go out at the start of each
round, so that a verifying network refuses the source everywhere.

A round costs one root each way when the replicas agree, and O(d log n)
fingerprints and the d differing entries when they differ in d of n.

Nothing here does I/O: the session feeds it messages and drains its lines.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import orjson

from ._errors import RemoteProtocolError
from ._hashtree import FANOUT, ITEMS, MAX_LEVEL, fingerprint, span
from ._replica import log_of
from ._summary import bucket_bytes, summary_of, wire_record
from ._wire import (
    MAX_AE_ITEMS,
    MAX_AE_RANGES,
    AeMessage,
    encode_ae,
    encode_proof,
    encode_repair,
    encode_repair_snapshot,
)

if TYPE_CHECKING:
    from ._hashtree import Node
    from ._replica import Replica
    from ._summary import Record

__all__ = ["MIN_ROUND_MS", "AntiEntropy"]

#: A peer may start a round at most this often (ms, by this replica's wall
#: clock): more often, it is answered at once, with nothing computed.
MIN_ROUND_MS = 100
#: Repairs go out in lines of at most this many entries.
_REPAIR_ENTRIES = 1024
#: The most proofs sent on one link.
_MAX_PROOFS = 64
#: The longest step this side writes (the peer's limit is at least 64 KiB,
#: or it is not offered anti-entropy).
_MAX_STEP_BYTES = 256 * 1024
#: The most entries one "I" range lists.
_MAX_LISTED = 512
#: A range's list is cut into pieces of about this many bytes.
_PIECE_BYTES = 16 * 1024


class _Round:
    """One round in progress: what it compares, and what may answer it."""

    __slots__ = ("after_sync", "expected", "horizon", "pending", "seen", "wanted")

    def __init__(self, horizon: float, after_sync: bool) -> None:
        self.horizon = horizon
        self.after_sync = after_sync
        #: The ranges the other side may send: each answers one of ours.
        self.expected: set[tuple[Any, ...]] = set()
        #: Per source, the stamps we listed (what "E" may ask for).
        self.wanted: dict[str, set[float]] = {}
        #: Replies gathered for a step that goes on in the next one.
        self.pending: list[Any] = []
        #: The sources whose records were compared (each once a round).
        self.seen: set[str] = set()

    def expect(self, ranges: list[Any]) -> None:
        """We send ``ranges``: note what may answer them."""
        for rng in ranges:
            tag = rng[0]
            if tag == "B":
                self.expected.update(("S", b) for b, _ in rng[1])
            elif tag == "S":
                for record in rng[2]:
                    self._expect_record(record)
            elif tag == "R":
                self._expect_record(rng[1:])
            elif tag == "N":
                source, upto, level, index = rng[1:5]
                for slot, _, _ in rng[5]:
                    self.expected.add(
                        ("node", source, upto, level + 1, index * FANOUT + slot)
                    )
            elif tag == "I":
                self.wanted.setdefault(rng[1], set()).update(ts for ts, _ in rng[5])
            elif tag == "T":
                self.expected.add(("X",))

    def _expect_record(self, record: list[Any]) -> None:
        source, clock, level, index = record[:4]
        self.expected.add(("R", source))
        if level >= 0:
            self.expected.add(("node", source, clock, level, index))

    def answers(self, rng: tuple[Any, ...], line: bytes) -> None:
        """Refuse a range that answers none of ours (each answers once)."""
        tag = rng[0]
        if tag in ("N", "I", "W"):
            key: tuple[Any, ...] = ("node", rng[1], rng[2], *rng[3])
        elif tag == "R":
            key = ("R", rng[1][0])
        elif tag == "S":
            for bucket in rng[1]:
                if ("S", bucket) not in self.expected:
                    raise _unasked(rng, line)
            return  # (its records are each taken once: see _on_sources)
        elif tag == "E":
            listed = self.wanted.get(rng[1], set())
            if not listed.issuperset(rng[2]):
                raise _unasked(rng, line)
            listed.difference_update(rng[2])
            return
        elif tag in ("B", "T"):
            key = ("root",)
        elif tag == "X":
            key = ("X",)
        else:  # "H": a newer horizon, in answer to a root
            return
        if key not in self.expected:
            raise _unasked(rng, line)
        self.expected.discard(key)


def _unasked(rng: tuple[Any, ...], line: bytes) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"an anti-entropy range {rng[0]!r} that answers nothing asked",
        reason="bad-antientropy",
        line=line[:200],
    )


class AntiEntropy:
    """One link's side of anti-entropy over one replica.

    Args:
        replica: the replica compared.
        origin: passed to the replica with what arrives (the session, so
            that nothing is echoed back to it).
        max_line: the longest line the peer takes.
        common: what both sides held before their sync: per source, the
            older of the two digests' clocks. The round that follows the
            sync compares only that: what the sync itself moved is, by
            construction, what the sender holds (later rounds compare
            everything).
    """

    def __init__(
        self,
        replica: Replica,
        origin: object,
        max_line: float,
        common: dict[str, float] | None = None,
    ) -> None:
        self.replica = replica
        self._summary = summary_of(replica)
        self._common = common or {}
        self._origin = origin
        self._max_line = max_line
        self._started = 0
        #: The rounds in progress: ours (True) and the peer's (False).
        self._rounds: dict[bool, tuple[int, _Round]] = {}
        #: When the peer last started a round (this replica's wall, ms).
        self._their_last = -float(MIN_ROUND_MS)
        self._out: list[bytes] = []
        #: Entries to send as repairs: (source, stamps), in order.
        self._repairs: collections.deque[tuple[str, list[float]]] = collections.deque()
        self._snapshot_due = False
        self._proofs_sent: set[str] = set()
        self.rounds = 0
        #: Rounds ended, started by either side.
        self.ended = 0
        self.differed = 0
        self.repaired_in = 0
        self.repaired_out = 0

    @property
    def settled(self) -> bool:
        """No round is in progress either way, and no repair waits to go."""
        return (
            not self._rounds
            and not self._repairs
            and not self._out
            and not self._snapshot_due
        )

    # -- starting --------------------------------------------------------

    def start(self, *, after_sync: bool = False) -> bool:
        """Start a round, unless one of ours is in progress; ``True`` if so.
        ``after_sync``: the round that follows the sync (see ``common``)."""
        if True in self._rounds:
            return False
        for first, second in self.replica.proofs():
            source = first[2]
            if source not in self._proofs_sent and len(self._proofs_sent) < _MAX_PROOFS:
                self._proofs_sent.add(source)
                self._out.append(encode_proof(first, second))
        self._started += 1
        rnd = self._started
        horizon = self.replica.horizon()
        state = _Round(horizon, after_sync)
        state.expected.add(("root",))
        self._rounds[True] = (rnd, state)
        root, _ = self._summary.root(horizon, self._common if after_sync else None)
        self.rounds += 1
        fp, snap = root.hex(), self.replica.compacted is not None
        root_line = encode_ae(
            "root", rnd, True, h=horizon, fp=fp, snap=snap, sync=after_sync
        )
        self._out.append(root_line)
        return True

    # -- receiving -------------------------------------------------------

    def receive(self, msg: AeMessage, line: bytes) -> None:
        """Take one anti-entropy message from the peer."""
        ours = not msg.mine  # the round is ours if the peer did not start it
        if msg.kind == "root":
            self._on_root(msg)
            return
        current = self._rounds.get(ours)
        if current is None or current[0] != msg.round:
            # A round that ended, or never was (a stream replayed): its
            # findings would be stale. Nothing is applied from it.
            return
        state = current[1]
        if msg.kind == "end":
            self._close(ours)
            return
        replies = state.pending
        for rng in msg.ranges:
            state.answers(rng, line)
            if rng[0] == "H":  # the peer compares above a newer horizon
                state.horizon = max(state.horizon, rng[1])
                continue
            replies += self._on_range(rng, state, line)
        if not msg.more:  # answered once whole
            state.pending = []
            self._reply(ours, msg.round, replies)

    def _on_root(self, msg: AeMessage) -> None:
        if False in self._rounds:
            self._close(False)  # a new round of theirs ends the last one
        now = self.replica.wall()
        state = _Round(max(msg.horizon, self.replica.horizon()), msg.sync)
        self._rounds[False] = (msg.round, state)
        if now - self._their_last < MIN_ROUND_MS or (msg.sync and not self._common):
            # Too soon after the last (nothing computed), or nothing both
            # held before the sync.
            self._reply(False, msg.round, [])
            return
        self._their_last = now
        self._reply(False, msg.round, self._answer_root(msg, state))

    def _answer_root(self, msg: AeMessage, state: _Round) -> list[Any]:
        # A newer horizon than theirs goes first, for both to compare above.
        first: list[Any] = [["H", state.horizon]] if state.horizon > msg.horizon else []
        replica = self.replica
        if msg.snap or replica.compacted is not None:
            if not replica.has_snapshot_fn:
                return []  # a folded history this side cannot compare
            state_fp, clock_fp = self._summary.state()
            return [["T", state_fp.hex(), clock_fp.hex()]]
        limits = self._common if state.after_sync else None
        root, buckets = self._summary.root(state.horizon, limits)
        if not first and msg.fp == root:
            return []
        self.differed += 1
        fps = [
            [b, fingerprint(bucket_bytes(r)).hex()] for b, r in sorted(buckets.items())
        ]
        return [*first, ["B", fps]]

    def _reply(self, ours: bool, rnd: int, replies: list[Any]) -> None:
        """Send what this message called for, or end the round."""
        # The peer's "mine" is the opposite of ours.
        if not replies:
            self._out.append(encode_ae("end", rnd, ours))
            self._close(ours)
            return
        self._rounds[ours][1].expect(replies)
        messages = _messages(replies, int(min(self._max_line, _MAX_STEP_BYTES)))
        for i, ranges in enumerate(messages):
            more = {"more": True} if i + 1 < len(messages) else {}
            self._out.append(encode_ae("step", rnd, ours, ranges=ranges, **more))

    def _close(self, ours: bool) -> None:
        if self._rounds.pop(ours, None) is not None:
            self.ended += 1

    # -- one range ---------------------------------------------------------

    def _on_range(self, rng: tuple[Any, ...], state: _Round, line: bytes) -> list[Any]:
        tag, horizon = rng[0], state.horizon
        if tag == "B":
            return self._on_buckets(rng[1], state)
        if tag == "S":
            return self._on_sources(rng[2], state)
        if tag == "R":
            return self._on_record(rng[1], horizon)
        if tag == "N":
            return self._on_children(rng, horizon, line)
        if tag == "I":
            return self._on_items(rng, horizon)
        if tag == "W":
            self._queue_node(rng[1], rng[2], rng[3], horizon)
            return []
        if tag == "E":
            self._queue(rng[1], sorted(rng[2]))
            return []
        if not self.replica.has_snapshot_fn:
            # The peer compares states, and this side cannot take a snapshot
            # (it verifies signatures, or its type folds none): nothing to
            # compare. (An "X" answers only a "T" of ours, which this side
            # never sends.)
            return []
        if tag == "T":
            return self._on_state(rng[1], rng[2])
        self._snapshot_due = True  # "X": send ours
        return []

    def _on_buckets(self, theirs: dict[int, bytes], state: _Round) -> list[Any]:
        limits = self._common if state.after_sync else None
        _, mine = self._summary.root(state.horizon, limits)
        # A bucket only one side holds names sources the other does not
        # know yet: in flight, compared on a later round.
        differ = sorted(
            b
            for b, fp in theirs.items()
            if b in mine and fp != fingerprint(bucket_bytes(mine[b]))
        )
        if not differ:
            return []
        records = [wire_record(r) for b in differ for r in mine[b]]
        return [["S", differ, piece] for piece in _pieces(records)]

    def _on_sources(self, theirs: list[Record], state: _Round) -> list[Any]:
        """Their records of the sources in differing buckets: compare each
        source up to the older of the two clocks (both claim every entry up
        to it; newer ones may be in flight, or dropped as dominated)."""
        clock = self.replica.clock
        replies: list[Any] = []
        for record in theirs:
            source, their_clock = record[0], record[1]
            mine = clock.get(source)
            if mine is None or source in state.seen:
                continue  # a source new to us (the next sync brings it), or twice
            state.seen.add(source)
            if their_clock <= mine:
                replies += self._on_record(record, state.horizon)
            else:  # they hold newer entries: they compare at our clock
                record = self._summary.record(source, state.horizon, mine)
                replies.append(["R", *wire_record(record)])
        return replies

    def _on_record(self, theirs: Record, horizon: float) -> list[Any]:
        """Their record of a source up to ``upto`` (at most our clock)."""
        source, upto, node, _, fp = theirs  # (counts are a guide only)
        if self.replica.clock.get(source, -1) < upto:
            return []  # (cannot be: clocks never go back)
        mine = self._summary.record(source, horizon, upto)
        if (mine[2], mine[4]) == (node, fp):
            return []
        if node is None:  # they hold nothing in range: send all of ours
            self._queue(source, self._summary.stamps(source, horizon, upto))
            return []
        lo, hi = span(node)
        # Ours outside their deepest node is certainly theirs to lack.
        outside = self._summary.stamps(source, horizon, min(lo, upto))
        self._queue(source, [t for t in outside if t < lo])
        if hi <= upto:
            self._queue(source, self._summary.stamps(source, hi, upto))
        return self._compare_node(source, upto, node, horizon)

    def _compare_node(
        self, source: str, upto: float, node: Node, horizon: float
    ) -> list[Any]:
        count, _ = self._summary.node(source, node, horizon, upto)
        if count == 0:
            return [["W", source, upto, *node]]
        if count <= ITEMS or node[0] >= MAX_LEVEL:
            pairs = self._summary.items(source, node, horizon, upto)[:_MAX_LISTED]
            return [["I", source, upto, *node, [[ts, h.hex()] for ts, h in pairs]]]
        kids = self._summary.children(source, node, horizon, upto)
        return [["N", source, upto, *node, [[s, c, fp.hex()] for s, c, fp in kids]]]

    def _on_children(
        self, rng: tuple[Any, ...], horizon: float, line: bytes
    ) -> list[Any]:
        """Their children of a node that differed: ``["N", source, upto,
        node, [(slot, count, fp), ...]]``, checked."""
        _, source, upto, node, theirs = rng
        level, index = node
        if level >= MAX_LEVEL:
            raise RemoteProtocolError(
                "children of a node at the deepest level",
                reason="bad-antientropy",
                line=line[:200],
            )
        mine = {
            s: fp for s, _, fp in self._summary.children(source, node, horizon, upto)
        }
        replies: list[Any] = []
        for slot, _, fp in theirs:
            child = (level + 1, index * FANOUT + slot)
            if mine.pop(slot, b"") != fp:
                replies += self._compare_node(source, upto, child, horizon)
        for slot in mine:  # ours alone: theirs to lack
            self._queue_node(source, upto, (level + 1, index * FANOUT + slot), horizon)
        return replies

    def _on_items(self, rng: tuple[Any, ...], horizon: float) -> list[Any]:
        """Their entries of a small node: ``["I", source, upto, node, [(ts,
        hash), ...]]``, checked."""
        _, source, upto, node, theirs = rng
        mine = dict(self._summary.items(source, node, horizon, upto))
        want, give = [], []
        for ts, h in theirs:
            held = mine.pop(ts, None)
            if held is None or (held != h and h < held):
                want.append(ts)
            elif held != h:
                give.append(ts)
        give += mine  # what they did not list
        self._queue(source, sorted(give))
        return [["E", source, want]] if want else []

    def _on_state(self, state: bytes, clock: bytes) -> list[Any]:
        mine_state, mine_clock = self._summary.state()
        if mine_clock != clock or mine_state == state:
            return []
        self.differed += 1
        self._snapshot_due = True
        return [["X"]]

    # -- repairs -----------------------------------------------------------

    def _queue_node(self, source: str, upto: float, node: Node, horizon: float) -> None:
        lo, hi = span(node)
        stamps = self._summary.stamps(source, max(lo, horizon), upto)
        self._queue(source, [t for t in stamps if t < hi])

    def _queue(self, source: str, stamps: list[float]) -> None:
        if stamps:
            self._repairs.append((source, stamps))

    def take_repair(
        self, source: str, stamps: list[float], changes: list[Any], sigs: Any
    ) -> None:
        """Entries the peer found this replica lacks."""
        self.repaired_in += self.replica.repair(
            [(source, stamps, changes, sigs)], self._origin
        )

    def take_snapshot(self, update: Any, clock: dict[str, float]) -> None:
        """The peer's whole state, for a replica whose state differs."""
        if self.replica.has_snapshot_fn:
            self.replica.join_snapshot(update, clock, self._origin)

    # -- sending -----------------------------------------------------------

    def data(self, budget: int) -> list[bytes]:
        """The lines to send now: repairs (at most about ``budget`` bytes of
        them), then the round's messages."""
        out: list[bytes] = []
        size = 0
        while self._repairs and size < budget:
            line = self._repair_line()
            if line:
                out.append(line)
                size += len(line)
        if self._snapshot_due and not self._repairs:
            self._snapshot_due = False
            replica = self.replica
            out.append(
                encode_repair_snapshot(replica.snapshot_of_state(), dict(replica.clock))
            )
        out += self._out
        self._out = []
        return out

    def _repair_line(self) -> bytes:
        source, stamps = self._repairs.popleft()
        if len(stamps) > _REPAIR_ENTRIES:
            self._repairs.appendleft((source, stamps[_REPAIR_ENTRIES:]))
            stamps = stamps[:_REPAIR_ENTRIES]
        log = log_of(self.replica, source)
        if log is None:
            return b""
        held = [(ts, log.get(ts)) for ts in stamps]
        stamps = [ts for ts, c in held if c is not None]
        if not stamps:
            return b""
        changes = [c for _, c in held if c is not None]
        sigs = [log.signature(ts) for ts in stamps]
        line = encode_repair(source, stamps, changes, sigs if any(sigs) else None)
        if len(line) > self._max_line and len(stamps) > 1:
            half = len(stamps) // 2
            self._repairs.appendleft((source, stamps[half:]))
            self._repairs.appendleft((source, stamps[:half]))
            return b""
        if len(line) > self._max_line:
            return b""  # one entry the peer cannot take (it refuses it anyway)
        self.repaired_out += len(stamps)
        return line


def _pieces(items: list[Any]) -> list[list[Any]]:
    """``items`` cut into lists of about :data:`_PIECE_BYTES` each."""
    out: list[list[Any]] = []
    piece: list[Any] = []
    size = 0
    for item in items:
        n = len(orjson.dumps(item))
        if piece and (size + n > _PIECE_BYTES or len(piece) >= MAX_AE_ITEMS // 8):
            out.append(piece)
            piece, size = [], 0
        piece.append(item)
        size += n
    if piece or not out:
        out.append(piece)
    return out


def _messages(ranges: list[Any], limit: int) -> list[list[Any]]:
    """Ranges packed into steps within the peer's line limit and the wire's
    bounds on ranges and listed items per message."""
    out: list[list[Any]] = []
    message: list[Any] = []
    size = items = 0
    for rng in ranges:
        n = len(orjson.dumps(rng)) + 1
        k = _listed(rng)
        if message and (
            size + n > limit - 128
            or items + k > MAX_AE_ITEMS
            or len(message) >= MAX_AE_RANGES
        ):
            out.append(message)
            message, size, items = [], 0, 0
        message.append(rng)
        size += n
        items += k
    if message:
        out.append(message)
    return out


def _listed(rng: list[Any]) -> int:
    """How many listed entries a range counts for (as the wire counts them)."""
    tag = rng[0]
    if tag == "B":
        return len(rng[1])
    if tag == "S":
        return len(rng[1]) + len(rng[2])
    if tag in ("N", "I"):
        return len(rng[5])
    if tag == "E":
        return len(rng[2])
    return 0
