"""What one side holds, as anti-entropy compares it (see repred._antientropy).

A :class:`Summary` reads a replica through its public-within-the-package
methods (its clock, each source's log and that log's hash tree) and gives the
fingerprints a round exchanges: the root, the buckets of sources, a source's
record, a node's children, the entries of a small node, and, for a type that
folds its history into snapshots, its whole state. A replica has one
summary, whichever of its links asks (:func:`summary_of`), and the root is
cached by the replica's revision, so a round between agreeing replicas, on
any link, new or old, costs a lookup, not a pass over every source. Pure:
no I/O.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Any, cast

import orjson

from ._hashtree import bounds, bucket_of, entry_hash, fingerprint
from ._replica import log_of

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._hashtree import Node
    from ._replica import Replica

__all__ = ["Record", "Summary", "bucket_bytes", "summary_of", "wire_record"]

#: A source's record: ``(source, clock, node, count, fingerprint)``.
Record = tuple[str, float, "Node | None", int, bytes]

_OPT = orjson.OPT_SORT_KEYS

#: Roots kept per revision: links ask with their own limits (the clock both
#: sides held before their sync) or none; a few cover the links of a round.
_ROOTS_KEPT = 4

#: Each live replica's summary, by the replica's id (a replica need not be
#: hashable); an entry goes with its replica.
_SUMMARIES: dict[int, Summary] = {}


def summary_of(replica: Replica) -> Summary:
    """The one :class:`Summary` of ``replica``, shared by all its links, so
    a root is computed once per revision, not once per link."""
    key = id(replica)
    summary = _SUMMARIES.get(key)
    if summary is None:
        # A proxy, so that the summary does not keep its replica alive.
        summary = _SUMMARIES[key] = Summary(cast("Replica", weakref.proxy(replica)))
        weakref.finalize(replica, _SUMMARIES.pop, key, None)
    return summary


class Summary:
    """The fingerprints of what ``replica`` holds."""

    __slots__ = ("_roots", "_state_cache", "replica")

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        #: ``(horizon, limits) -> (root, buckets)`` at ``revision``.
        self._roots: tuple[int, dict[Any, tuple[bytes, dict[int, list[Record]]]]] = (
            -1,
            {},
        )
        self._state_cache: tuple[int, bytes, bytes] | None = None

    def root(
        self, horizon: float, limits: Mapping[str, float] | None
    ) -> tuple[bytes, dict[int, list[Record]]]:
        """The root fingerprint and the records by bucket: every source up
        to its clock, or up to ``limits`` (only the sources it names)."""
        revision, roots = self._roots
        if revision != self.replica.revision:
            roots = {}
            self._roots = (self.replica.revision, roots)
        # Limits by value: each link has its own mapping, often equal.
        key = (horizon, None if limits is None else tuple(sorted(limits.items())))
        hit = roots.get(key)
        if hit is not None:
            return hit
        buckets = self.buckets(horizon, limits)
        root = fingerprint(
            b"".join(
                bytes((b,)) + fingerprint(bucket_bytes(records))
                for b, records in sorted(buckets.items())
            )
        )
        if len(roots) >= _ROOTS_KEPT:
            del roots[next(iter(roots))]
        roots[key] = root, buckets
        return root, buckets

    def buckets(
        self, horizon: float, limits: Mapping[str, float] | None
    ) -> dict[int, list[Record]]:
        out: dict[int, list[Record]] = {}
        clock = self.replica.clock if limits is None else limits
        for source, upto in clock.items():
            out.setdefault(bucket_of(source), []).append(
                self.record(source, horizon, upto)
            )
        for records in out.values():
            records.sort()
        return out

    def record(self, source: str, horizon: float, upto: float) -> Record:
        log = log_of(self.replica, source)
        if log is None or horizon > upto:
            return source, upto, None, 0, b""
        node, count, fp = log.tree().summary(log.view(), horizon, upto)
        return source, upto, node, count, fp

    def node(
        self, source: str, node: Node, horizon: float, upto: float
    ) -> tuple[int, bytes]:
        log = log_of(self.replica, source)
        if log is None or horizon > upto:
            return 0, b""
        return log.tree().node(log.view(), node, horizon, upto)

    def children(
        self, source: str, node: Node, horizon: float, upto: float
    ) -> list[tuple[int, int, bytes]]:
        log = log_of(self.replica, source)
        if log is None or horizon > upto:
            return []
        return log.tree().children(log.view(), node, horizon, upto)

    def items(
        self, source: str, node: Node, horizon: float, upto: float
    ) -> list[tuple[float, bytes]]:
        """``(ts, entry hash)`` of the entries of ``node`` in ``[horizon, upto]``."""
        log = log_of(self.replica, source)
        if log is None:
            return []
        view = log.view()
        stamps, changes = view.stamps, view.changes
        i, j = bounds(stamps, node, horizon, upto)
        return [
            (ts, entry_hash(ts, change))
            for ts, change in zip(stamps[i:j], changes[i:j], strict=True)
            if change is not view.gone
        ]

    def stamps(self, source: str, low: float, high: float) -> list[float]:
        """The stamps held of ``source`` in ``[low, high]`` (a dropped one
        may be among them: it is skipped when sent)."""
        log = log_of(self.replica, source)
        if log is None or low > high:
            return []
        stamps = log.view().stamps
        return list(stamps[bisect_left(stamps, low) : bisect_right(stamps, high)])

    def state(self) -> tuple[bytes, bytes]:
        """The fingerprints of the whole state (as the type's snapshot
        function gives it) and of the clock, cached by revision."""
        replica = self.replica
        hit = self._state_cache
        if hit is not None and hit[0] == replica.revision:
            return hit[1], hit[2]
        state = fingerprint(orjson.dumps(replica.snapshot_of_state(), option=_OPT))
        clock = fingerprint(orjson.dumps(sorted(replica.clock.items())))
        self._state_cache = (replica.revision, state, clock)
        return state, clock


def bucket_bytes(records: Iterable[Record]) -> bytes:
    """What a bucket's fingerprint covers: each source's entries, not its
    clock (two clocks may differ for good where a newest entry was dropped
    as dominated before it reached one of them)."""
    rows = [wire_record(r) for r in records]
    return orjson.dumps([row[:1] + row[2:] for row in rows])


def wire_record(record: Record) -> list[Any]:
    source, clock, node, count, fp = record
    if node is None:
        return [source, clock, -1, -1, 0, ""]
    return [source, clock, node[0], node[1], count, fp.hex()]
