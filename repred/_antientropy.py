"""Anti-entropy: two replicas find and repair what they hold differently.

Theory of operation
-------------------

A digest says how far a replica has each source, not what it holds. After
every sync, and then every ``antientropy_interval`` seconds on a live link,
each side of a link between two repred peers (both digests offer
``"antientropy"``)
starts a *round*: it sends the root fingerprint of everything it holds (see
:mod:`repred._hashtree`). When the roots agree, that is the whole cost: one
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
    "send me these entries";
``["T", state, clock]`` and ``["X"]``
    for a type that folds its history into snapshots, once either side has:
    the sender's state and clock fingerprints; "send me your snapshot".

Each side restricts every range to the stamps ``[horizon, upto]``, where
``upto`` is the clock both agreed on and ``horizon`` the newest stamp either
may have dropped by its type's own bound, so both compute fingerprints of
exactly the same entries. What one side finds the other lacks it sends as
*repairs* (``{"repair": source, "stamps", "changes"[, "signatures"]}``,
entries as their author wrote them), which the other takes with
:meth:`Replica.repair`: checked as any entry, and settled by the same rule
on every replica when two versions of a stamp meet (the smaller entry hash
wins). A side whose reply holds no range ends the round. Proofs of
equivocation (two valid signatures on one stamp) go out at the start of each
round, so that a verifying network refuses the source everywhere.

A round costs one root each way when the replicas agree, and O(d log n)
fingerprints and the d differing entries when they differ in d of n.

Nothing here does I/O: the session feeds it messages and drains its lines.
"""

from __future__ import annotations

import collections
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Any

import orjson

from ._errors import RemoteProtocolError
from ._hashtree import ITEMS, MAX_LEVEL, Node, bucket_of, entry_hash, fingerprint, span
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
    from collections.abc import Iterable, Sequence

    from ._replica import Replica

__all__ = ["AntiEntropy"]

#: A source's record: ``(source, clock, node, count, fingerprint)``.
Record = tuple[str, float, "Node | None", int, bytes]

#: Repairs go out in lines of at most this many entries.
_REPAIR_ENTRIES = 1024
#: The most proofs sent on one link.
_MAX_PROOFS = 64
#: The longest step this side writes (the peer's limit is at least 64 KiB,
#: or it is not offered anti-entropy).
_MAX_STEP_BYTES = 256 * 1024
#: The most ranges a step (and its continuations) may call for in reply.
_MAX_PENDING = 1 << 16
#: The most entries one "I" range lists.
_MAX_LISTED = 512
#: A range's list is cut into pieces of about this many bytes.
_PIECE_BYTES = 16 * 1024

_OPT = orjson.OPT_SORT_KEYS


class AntiEntropy:
    """One link's side of anti-entropy over one replica.

    Args:
        replica: the replica compared.
        origin: passed to the replica with what arrives (the session, so
            that nothing is echoed back to it).
        max_line: the longest line the peer takes.
    """

    def __init__(
        self,
        replica: Replica,
        origin: object,
        max_line: float,
        common: dict[str, float] | None = None,
    ) -> None:
        self.replica = replica
        #: What both sides held before their sync: per source, the older of
        #: the two digests' clocks. The round that follows the sync compares
        #: only that: what the sync itself moved is, by construction, what
        #: the sender holds (later rounds compare everything).
        self._common = common or {}
        self._origin = origin
        self._max_line = max_line
        self._started = 0
        #: My round in progress, and the peer's (a number), if any.
        self._mine: int | None = None
        self._theirs: int | None = None
        #: The horizon each open round compares above.
        self._horizons: dict[tuple[bool, int], float] = {}
        #: The rounds that compare only what both held before the sync.
        self._after_sync: set[tuple[bool, int]] = set()
        #: The replies gathered for a step that goes on in the next one.
        self._pending: dict[tuple[bool, int], list[Any]] = {}
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
            self._mine is None
            and self._theirs is None
            and not self._repairs
            and not self._out
            and not self._snapshot_due
        )

    # -- starting --------------------------------------------------------

    def start(self, *, after_sync: bool = False) -> bool:
        """Start a round, unless one of ours is in progress; ``True`` if so.
        ``after_sync``: the round that follows the sync (see ``common``)."""
        if self._mine is not None:
            return False
        self._send_proofs()
        self._started += 1
        rnd = self._mine = self._started
        horizon = self.replica.horizon()
        key = (True, rnd)
        self._horizons[key] = horizon
        if after_sync:
            self._after_sync.add(key)
        root = self._root(horizon, key)
        self.rounds += 1
        self._out.append(
            encode_ae(
                "root",
                rnd,
                True,
                h=horizon,
                fp=root.hex(),
                snap=self.replica.snapshot is not None,
                sync=after_sync,
            )
        )
        return True

    def _send_proofs(self) -> None:
        for first, second in self.replica.proofs():
            source = first[2]
            if source not in self._proofs_sent and len(self._proofs_sent) < _MAX_PROOFS:
                self._proofs_sent.add(source)
                self._out.append(encode_proof(first, second))

    # -- receiving -------------------------------------------------------

    def receive(self, msg: AeMessage, line: bytes) -> None:
        """Take one anti-entropy message from the peer."""
        ours = not msg.mine  # the round is ours if the peer did not start it
        if msg.kind == "root":
            self._on_root(msg, line)
            return
        if msg.round != (self._mine if ours else self._theirs):
            # A round that ended, or never was (a stream replayed): its
            # findings would be stale. Nothing is applied from it.
            return
        if msg.kind == "end":
            self._close(ours)
            return
        key = (ours, msg.round)
        replies = self._pending.setdefault(key, [])
        for rng in msg.ranges:
            if rng[0] == "H":  # the peer compares above a newer horizon
                self._horizons[key] = max(self._horizons[key], rng[1])
                continue
            replies += self._on_range(rng, key)
        if len(replies) > _MAX_PENDING:
            raise RemoteProtocolError(
                "an anti-entropy step that calls for too much at once",
                reason="bad-antientropy",
                line=line[:200],
            )
        if not msg.more:  # answered once whole
            del self._pending[key]
            self._reply(ours, msg.round, replies)

    def _on_root(self, msg: AeMessage, line: bytes) -> None:
        if self._theirs is not None:
            self._close(False)  # a new round of theirs ends the last one
        self._theirs = msg.round
        horizon = max(msg.horizon, self.replica.horizon())
        key = (False, msg.round)
        self._horizons[key] = horizon
        if msg.sync:
            self._after_sync.add(key)
        # A newer horizon than theirs goes first, for both to compare above.
        first: list[Any] = [["H", horizon]] if horizon > msg.horizon else []
        replica = self.replica
        if msg.sync and not self._common:
            self._reply(False, msg.round, [])  # nothing both held before
            return
        if replica.has_snapshot_fn and (msg.snap or replica.snapshot is not None):
            state, clock = self._state_fingerprints()
            self._reply(False, msg.round, [["T", state.hex(), clock.hex()]])
            return
        if not first and msg.fp == self._root(horizon, key):
            self._reply(False, msg.round, [])
            return
        self.differed += 1
        buckets = self._buckets(horizon, key)
        fps = [
            [b, fingerprint(_bucket_bytes(r)).hex()] for b, r in sorted(buckets.items())
        ]
        self._reply(False, msg.round, [*first, ["B", fps]])

    def _reply(self, ours: bool, rnd: int, replies: list[Any]) -> None:
        """Send what this message called for, or end the round."""
        # The peer's "mine" is the opposite of ours.
        if not replies:
            self._out.append(encode_ae("end", rnd, ours))
            self._close(ours)
            return
        messages = _messages(replies, int(min(self._max_line, _MAX_STEP_BYTES)))
        for i, ranges in enumerate(messages):
            more = {"more": True} if i + 1 < len(messages) else {}
            self._out.append(encode_ae("step", rnd, ours, ranges=ranges, **more))

    def _close(self, ours: bool) -> None:
        self.ended += 1
        rnd = self._mine if ours else self._theirs
        key = (ours, rnd if rnd is not None else -1)
        self._horizons.pop(key, None)
        self._pending.pop(key, None)
        self._after_sync.discard(key)
        if ours:
            self._mine = None
        else:
            self._theirs = None

    # -- one range ---------------------------------------------------------

    def _on_range(self, rng: tuple[Any, ...], key: tuple[bool, int]) -> list[Any]:
        tag = rng[0]
        horizon = self._horizons[key]
        if tag == "B":
            return self._on_buckets(rng[1], horizon, key)
        if tag == "S":
            return self._on_sources(rng[1], rng[2], horizon)
        if tag == "R":
            source, upto, node, count, fp = rng[1]
            return self._on_record(source, upto, node, count, fp, horizon)
        if tag == "N":
            return self._on_children(rng[1], rng[2], rng[3], rng[4], horizon)
        if tag == "I":
            return self._on_items(rng[1], rng[2], rng[3], rng[4], horizon)
        if tag == "W":
            self._queue_node(rng[1], rng[2], rng[3], horizon)
            return []
        if tag == "E":
            self._queue(rng[1], rng[2])
            return []
        if tag == "T":
            return self._on_state(rng[1], rng[2])
        self._snapshot_due = True  # "X": send ours
        return []

    def _on_buckets(
        self, theirs: dict[int, bytes], horizon: float, key: tuple[bool, int]
    ) -> list[Any]:
        mine = self._buckets(horizon, key)
        # A bucket only one side holds names sources the other does not
        # know yet: in flight, compared on a later round.
        differ = sorted(
            b
            for b, fp in theirs.items()
            if b in mine and fp != fingerprint(_bucket_bytes(mine[b]))
        )
        if not differ:
            return []
        records = [_wire_record(r) for b in differ for r in mine[b]]
        return [["S", differ, piece] for piece in _pieces(records)]

    def _on_sources(
        self, covered: frozenset[int], theirs: list[Record], horizon: float
    ) -> list[Any]:
        """Their records of the sources in differing buckets: compare each
        source up to the older of the two clocks (both claim every entry up
        to it; newer ones may be in flight, or dropped as dominated)."""
        clock = self.replica.clock
        replies: list[Any] = []
        for source, their_clock, node, count, fp in theirs:
            mine = clock.get(source)
            if mine is None:
                continue  # a source new to us: the next sync brings it
            if their_clock <= mine:
                replies += self._on_record(
                    source, their_clock, node, count, fp, horizon
                )
            else:  # they hold newer entries: they compare at our clock
                _, _, my_node, my_count, my_fp = self._record(source, horizon, mine)
                replies.append(
                    ["R", *_wire_record((source, mine, my_node, my_count, my_fp))]
                )
        return replies

    def _on_record(
        self,
        source: str,
        upto: float,
        node: Node | None,
        count: int,
        fp: bytes,
        horizon: float,
    ) -> list[Any]:
        """Their record of ``source`` up to ``upto`` (at most our clock)."""
        if self.replica.clock.get(source, -1) < upto:
            return []  # (cannot be: clocks never go back)
        mine = self._record(source, horizon, upto)
        if (mine[2], mine[4]) == (node, fp):  # (counts are a guide only)
            return []
        return self._compare_source(source, upto, node, count, horizon)

    def _compare_source(
        self, source: str, upto: float, node: Node | None, count: int, horizon: float
    ) -> list[Any]:
        """Their record of ``source`` differs from ours: descend."""
        if node is None:  # they hold nothing in range: send all of ours
            self._queue_range(source, horizon, upto)
            return []
        lo, hi = span(node)
        # Ours outside their deepest node is certainly theirs to lack.
        self._queue_range(source, horizon, min(lo, upto), exclusive=True)
        if hi <= upto:
            self._queue_range(source, hi, upto)
        return self._compare_node(source, upto, node, count, horizon)

    def _compare_node(
        self, source: str, upto: float, node: Node, count: int, horizon: float
    ) -> list[Any]:
        mine_count, _ = self._node(source, node, horizon, upto)
        if mine_count == 0:
            return [["W", source, upto, *node]]
        if mine_count <= ITEMS or node[0] >= MAX_LEVEL:
            return [
                ["I", source, upto, *node, self._items(source, node, horizon, upto)]
            ]
        kids = self._children(source, node, horizon, upto)
        return [["N", source, upto, *node, [[s, c, fp.hex()] for s, c, fp in kids]]]

    def _on_children(
        self,
        source: str,
        upto: float,
        node: Node,
        theirs: list[tuple[int, int, bytes]],
        horizon: float,
    ) -> list[Any]:
        if self.replica.clock.get(source, -1) < upto:
            return []  # (cannot be: clocks never go back)
        mine = {s: (c, fp) for s, c, fp in self._children(source, node, horizon, upto)}
        level, index = node
        replies: list[Any] = []
        seen = set()
        for slot, count, fp in theirs:
            seen.add(slot)
            child = (level + 1, index * 16 + slot)
            if mine.get(slot, (0, b""))[1] != fp:
                replies += self._compare_node(source, upto, child, count, horizon)
        for slot in mine.keys() - seen:
            self._queue_node(source, upto, (level + 1, index * 16 + slot), horizon)
        return replies

    def _on_items(
        self,
        source: str,
        upto: float,
        node: Node,
        theirs: list[tuple[float, bytes]],
        horizon: float,
    ) -> list[Any]:
        mine = dict(self._item_pairs(source, node, horizon, upto))
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
        mine_state, mine_clock = self._state_fingerprints()
        if mine_clock != clock or mine_state == state:
            return []
        self.differed += 1
        self._snapshot_due = True
        return [["X"]]

    # -- what this side holds -------------------------------------------

    def _root(self, horizon: float, key: tuple[bool, int]) -> bytes:
        buckets = self._buckets(horizon, key)
        return fingerprint(
            b"".join(
                bytes((b,)) + fingerprint(_bucket_bytes(records))
                for b, records in sorted(buckets.items())
            )
        )

    def _buckets(
        self, horizon: float, key: tuple[bool, int]
    ) -> dict[int, list[Record]]:
        """Every source's record, by bucket: each up to its clock, or, in
        the round after a sync, up to what both held before it."""
        out: dict[int, list[Record]] = {}
        clock = self._common if key in self._after_sync else self.replica.clock
        for source, upto in clock.items():
            out.setdefault(bucket_of(source), []).append(
                self._record(source, horizon, upto)
            )
        for records in out.values():
            records.sort()
        return out

    def _record(self, source: str, horizon: float, upto: float) -> Record:
        log = self.replica.log_of(source)
        if log is None:
            return source, upto, None, 0, b""
        node, count, fp = log.tree().summary(log.view(), horizon, upto)
        return source, upto, node, count, fp

    def _node(
        self, source: str, node: Node, horizon: float, upto: float
    ) -> tuple[int, bytes]:
        log = self.replica.log_of(source)
        if log is None:
            return 0, b""
        return log.tree().node(log.view(), node, horizon, upto)

    def _children(
        self, source: str, node: Node, horizon: float, upto: float
    ) -> list[tuple[int, int, bytes]]:
        log = self.replica.log_of(source)
        if log is None:
            return []
        return log.tree().children(log.view(), node, horizon, upto)

    def _item_pairs(
        self, source: str, node: Node, horizon: float, upto: float
    ) -> list[tuple[float, bytes]]:
        """``(ts, entry hash)`` of our entries of ``node`` in ``[horizon, upto]``."""
        log = self.replica.log_of(source)
        if log is None:
            return []
        view = log.view()
        stamps, changes = view.stamps, view.changes
        lo, hi = span(node)
        i = bisect_left(stamps, max(lo, horizon))
        j = bisect_left(stamps, hi) if hi <= upto else bisect_right(stamps, upto)
        return [
            (ts, entry_hash(ts, change))
            for ts, change in zip(stamps[i:j], changes[i:j], strict=True)
            if change is not view.gone
        ]

    def _items(self, source: str, node: Node, horizon: float, upto: float) -> list[Any]:
        pairs = self._item_pairs(source, node, horizon, upto)
        # (Only at the deepest level can a node hold more than ITEMS; the
        # rest of such a node is compared on a later round.)
        return [[ts, h.hex()] for ts, h in pairs[:_MAX_LISTED]]

    def _state_fingerprints(self) -> tuple[bytes, bytes]:
        replica = self.replica
        state = replica.snapshot_of_state()
        clock = sorted(replica.clock.items())
        return (
            fingerprint(orjson.dumps(state, option=_OPT)),
            fingerprint(orjson.dumps(clock)),
        )

    # -- repairs -----------------------------------------------------------

    def _queue_range(
        self, source: str, low: float, high: float, *, exclusive: bool = False
    ) -> None:
        log = self.replica.log_of(source)
        if log is None:
            return
        stamps = log.view().stamps  # (dropped ones are skipped when sent)
        chosen = [
            t for t in _between(stamps, low, high) if not (exclusive and t == high)
        ]
        self._queue(source, chosen)

    def _queue_node(self, source: str, upto: float, node: Node, horizon: float) -> None:
        lo, hi = span(node)
        log = self.replica.log_of(source)
        if log is None:
            return
        stamps = log.view().stamps  # (dropped ones are skipped when sent)
        self._queue(
            source, [t for t in _between(stamps, max(lo, horizon), upto) if t < hi]
        )

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
        log = self.replica.log_of(source)
        if log is None:
            return b""
        held = [(ts, log.get(ts)) for ts in stamps]
        held = [(ts, c) for ts, c in held if c is not None]
        if not held:
            return b""
        sigs = [log.signature(ts) for ts, _ in held]
        line = encode_repair(
            source,
            [ts for ts, _ in held],
            [c for _, c in held],
            sigs if any(sigs) else None,
        )
        if len(line) > self._max_line and len(held) > 1:
            half = len(held) // 2
            self._repairs.appendleft((source, [ts for ts, _ in held[half:]]))
            self._repairs.appendleft((source, [ts for ts, _ in held[:half]]))
            return b""
        if len(line) > self._max_line:
            return b""  # one entry the peer cannot take (it refuses it anyway)
        self.repaired_out += len(held)
        return line


def _between(stamps: Sequence[float], low: float, high: float) -> list[float]:
    return list(stamps[bisect_left(stamps, low) : bisect_right(stamps, high)])


def _bucket_bytes(records: Iterable[Record]) -> bytes:
    """What a bucket's fingerprint covers: each source's entries, not its
    clock (two clocks may differ for good where a newest entry was dropped
    as dominated before it reached one of them)."""
    rows = [_wire_record(r) for r in records]
    return orjson.dumps([row[:1] + row[2:] for row in rows])


def _wire_record(record: Record) -> list[Any]:
    source, clock, node, count, fp = record
    if node is None:
        return [source, clock, -1, -1, 0, ""]
    return [source, clock, node[0], node[1], count, fp.hex()]


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
