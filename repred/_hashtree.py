"""Hash trees over what a replica holds: the summary anti-entropy compares.

A digest says how far a replica has each source, not what it holds. Two
replicas whose clocks agree may still hold different entries: an entry a
relay skipped, two versions of one stamp, two nodes writing under one id.
The fingerprints here say *what* a replica holds, so that two of them can
find such a difference by comparing a root, and descend only where the
hashes differ (as Dynamo and Riak do with Merkle trees).

Theory of operation
-------------------

The entries of one source are cut into nodes by their stamps alone: the
root covers the whole stamp space ``[0, 2**53)``, and each node splits into
:data:`FANOUT` children of equal width. A node that holds at most
:data:`LEAF` entries (or lies at :data:`MAX_LEVEL`) is a leaf: its
fingerprint is a hash of its entries, encoded in one go: the stamps as
little-endian float64s, then the changes' canonical JSON (object keys
sorted). Any other node's
fingerprint is a hash of its non-empty children's slots and fingerprints.

So a node's fingerprint is a function of the entries in its interval and
nothing else: not of arrival order, not of when a history dropped a
superseded entry, not of how its lists are laid out. Two replicas that hold
the same entries compute the same fingerprints; where they differ, the
differing entries lie under the differing children.

Every fingerprint is computed on demand and cached for nodes whose interval
is complete (below the source's newest stamp): appends invalidate only the
path of the previous newest stamp, and a dropped or inserted entry the path
of its own stamp, so keeping the tree up to date costs O(1) per write and
O(depth) per changed stamp at the next comparison.

Sources are gathered into 256 buckets by a hash of their id, and the root of
a replica is a hash over its buckets; a source's record in its bucket holds
its clock, so two replicas compare a source only where their clocks agree
(entries in flight are not a difference).

This module is pure: no I/O, no trio. The history keeps one
:class:`SourceTree` per source log and tells it of changes; the session
reads it (see :mod:`repred._antientropy`).
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from bisect import bisect_left, bisect_right
from itertools import compress
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "FANOUT",
    "ITEMS",
    "LEAF",
    "MAX_LEVEL",
    "Node",
    "SourceTree",
    "View",
    "bounds",
    "bucket_of",
    "entry_hash",
    "fingerprint",
    "node_of",
    "span",
]

#: Children per node.
FANOUT = 16
#: A node holding at most this many entries is a leaf (hashed whole: its
#: stamps as float64s, then its changes' canonical JSON, in one go).
LEAF = 512
#: When a differing node holds at most this many entries on one side, that
#: side lists them (stamp and hash) instead of descending further.
ITEMS = 32
#: The deepest level; its nodes (2**-11 ms wide) are leaves whatever they hold.
MAX_LEVEL = 16
#: Stamps lie in ``[0, 2**53)`` (see ``repred._wire.MAX_STAMP``).
_SPACE = 2.0**53
_WIDTHS = tuple(_SPACE / FANOUT**level for level in range(MAX_LEVEL + 1))
#: A cache that would need more invalidations than this is dropped whole.
_MAX_DIRTY = 4096
#: Bytes kept of each SHA-256 (hardware-accelerated on most machines).
DIGEST_BYTES = 16

_OPT = orjson.OPT_SORT_KEYS
_dumps = orjson.dumps
_sha256 = hashlib.sha256

#: A node of a source's tree: ``(level, index)``; it covers the stamps
#: ``[index * width, (index + 1) * width)`` of its level.
Node = tuple[int, int]


def fingerprint(data: bytes) -> bytes:
    """The hash every fingerprint is made of."""
    return _sha256(data).digest()[:DIGEST_BYTES]


def entry_hash(ts: float, change: Any) -> bytes:
    """One entry's hash, as listed at the bottom of a descent and used to
    choose between two versions of one stamp (the smaller wins)."""
    return fingerprint(_dumps([ts, change], option=_OPT))[:8]


def bucket_of(source: str) -> int:
    """The bucket (0-255) of a source, the same on every replica."""
    return fingerprint(source.encode())[0]


def _float64s(stamps: Sequence[float]) -> bytes:
    """Stamps as little-endian float64s (exact: they lie below 2**53)."""
    packed = array("d", stamps)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


_BIG_ENDIAN = sys.byteorder == "big"


def span(node: Node) -> tuple[float, float]:
    """The stamps ``[low, high)`` a node covers."""
    level, index = node
    width = _WIDTHS[level]
    return index * width, (index + 1) * width


def node_of(ts: float, level: int) -> Node:
    """The node of ``level`` that covers stamp ``ts``."""
    return level, int(ts // _WIDTHS[level])


def _split_level(first: float, last: float) -> int:
    """The deepest level whose one node covers both stamps."""
    level = 0
    while level < MAX_LEVEL:
        width = _WIDTHS[level + 1]
        if first // width != last // width:
            break
        level += 1
    return level


class SourceTree:
    """The fingerprints of one source's entries, cached by node.

    The owner (a history's log of the source) calls :meth:`changed` for
    every entry dropped, inserted or replaced; appends after the newest
    stamp seen are found without being told.
    """

    __slots__ = ("_cache", "_dirty", "_newest")

    def __init__(self) -> None:
        self._cache: dict[Node, tuple[int, bytes]] = {}
        self._dirty: list[float] = []
        self._newest: float = -1.0

    def changed(self, ts: float) -> None:
        """The entry at ``ts`` was dropped, inserted or replaced."""
        if self._cache:
            if len(self._dirty) < _MAX_DIRTY:
                self._dirty.append(ts)
            else:
                self._cache.clear()
                self._dirty.clear()

    def _settle(self, view: View) -> None:
        """Forget what changed since the last computation."""
        cache, stamps = self._cache, view.stamps
        if stamps and stamps[-1] > self._newest:
            if self._newest >= 0:
                self._dirty.append(self._newest)
            self._newest = stamps[-1]
        if not cache:
            self._dirty.clear()
            return
        for ts in self._dirty:
            for level in range(MAX_LEVEL + 1):
                cache.pop(node_of(ts, level), None)
        self._dirty.clear()

    # -- reading -----------------------------------------------------------

    def summary(
        self, view: View, low: float, upto: float
    ) -> tuple[Node | None, int, bytes]:
        """``(node, count, fingerprint)`` of the entries in ``[low, upto]``:
        the deepest node holding them all, or ``None`` (and ``b""``) when
        there are none. The count is exact where it is cheap to know, else
        an upper bound (it guides the descent; the fingerprint decides)."""
        self._settle(view)
        stamps = view.stamps
        i, j = bisect_left(stamps, low), bisect_right(stamps, upto)
        i, j = _trim(view, i, j)
        if i == j:
            return None, 0, b""
        level = _split_level(stamps[i], stamps[j - 1])
        node = node_of(stamps[i], level)
        count, fp = self._fp(view, i, j, node, low, upto)
        return node, count, fp

    def node(
        self, view: View, node: Node, low: float, upto: float
    ) -> tuple[int, bytes]:
        """``(count, fingerprint)`` of the entries of ``node`` in ``[low, upto]``."""
        self._settle(view)
        i, j = bounds(view.stamps, node, low, upto)
        return self._fp(view, i, j, node, low, upto)

    def children(
        self, view: View, node: Node, low: float, upto: float
    ) -> list[tuple[int, int, bytes]]:
        """``[(slot, count, fingerprint)]`` of the non-empty children of
        ``node``, restricted to ``[low, upto]`` (empty at the deepest level)."""
        self._settle(view)
        level, index = node
        if level >= MAX_LEVEL:
            return []
        i, j = bounds(view.stamps, node, low, upto)
        out = []
        for slot, start, end in _child_ranges(view.stamps, i, j, level, index):
            child = (level + 1, index * FANOUT + slot)
            count, fp = self._fp(view, start, end, child, low, upto)
            if fp:
                out.append((slot, count, fp))
        return out

    # -- computing ---------------------------------------------------------

    def _fp(
        self, view: View, i: int, j: int, node: Node, low: float, upto: float
    ) -> tuple[int, bytes]:
        """``(count, fingerprint)`` of the live entries among ``i:j``, which
        are those of ``node`` within ``[low, upto]`` (``(0, b"")`` if none)."""
        lo, hi = span(node)
        complete = lo >= low and hi <= upto
        if complete:
            hit = self._cache.get(node)
            if hit is not None:
                return hit
        level, _index = node
        count = _live_count(view, i, j)
        if count == 0:
            if complete:
                self._cache[node] = (0, b"")
            return 0, b""
        if count <= LEAF or level >= MAX_LEVEL:
            stamps, changes = _live(view, i, j)
            h = _sha256(b"L")
            h.update(_float64s(stamps))
            h.update(_dumps(changes, option=_OPT))
            fp = h.digest()[:DIGEST_BYTES]
        else:
            fp = self._internal(view, i, j, node, low, upto)
        if complete:
            self._cache[node] = (count, fp)
        return count, fp

    def _internal(
        self, view: View, i: int, j: int, node: Node, low: float, upto: float
    ) -> bytes:
        """The fingerprint of an internal node: of its children's. A child
        whose fingerprint is cached is not looked for in the lists, so that
        recomputing the path of one changed entry costs a few lookups per
        level."""
        level, index = node
        width = _WIDTHS[level + 1]
        base = index * FANOUT
        cache, stamps = self._cache, view.stamps
        parts = [b"N"]
        start = i
        for slot in range(FANOUT):
            child = (level + 1, base + slot)
            lo, hi = (base + slot) * width, (base + slot + 1) * width
            hit = cache.get(child) if lo >= low and hi <= upto else None
            if hit is None:
                begin = bisect_left(stamps, lo, start, j) if start < j else j
                end = bisect_left(stamps, hi, begin, j)
                start = end
                if end == begin:
                    continue
                hit = self._fp(view, begin, end, child, low, upto)
            if hit[1]:
                parts.append(bytes((slot,)))
                parts.append(hit[1])
        return fingerprint(b"".join(parts))


class View(NamedTuple):
    """A source's log as the tree reads it: stamps and changes in stamp
    order, where a dropped entry's change is ``gone`` (``dropped`` of them:
    the log leaves their slots until it next compacts)."""

    stamps: Sequence[float]
    changes: Sequence[Any]
    dropped: int = 0
    gone: Any = None


def _live_count(view: View, i: int, j: int) -> int:
    """How many live entries ``i:j`` holds: exact when it decides whether a
    node is a leaf, else a bound above :data:`LEAF` (never a scan of a big
    range: a log's dropped slots are few, or it compacts)."""
    raw = j - i
    if not view.dropped or raw - view.dropped > LEAF:
        return raw
    return raw - view.changes[i:j].count(view.gone)


def _live(view: View, i: int, j: int) -> tuple[Sequence[float], Sequence[Any]]:
    """The live entries among ``i:j``."""
    stamps, changes = view.stamps[i:j], view.changes[i:j]
    if view.dropped and view.gone in changes:
        keep = [c is not view.gone for c in changes]
        return list(compress(stamps, keep)), list(compress(changes, keep))
    return stamps, changes


def _trim(view: View, i: int, j: int) -> tuple[int, int]:
    """``i:j`` without the dropped entries at either end."""
    if view.dropped:
        changes, gone = view.changes, view.gone
        while i < j and changes[i] is gone:
            i += 1
        while j > i and changes[j - 1] is gone:
            j -= 1
    return i, j


def bounds(
    stamps: Sequence[float], node: Node, low: float, upto: float
) -> tuple[int, int]:
    """The positions ``i:j`` of the stamps of ``node`` within ``[low, upto]``."""
    lo, hi = span(node)
    i = bisect_left(stamps, max(lo, low))
    j = bisect_left(stamps, hi) if hi <= upto else bisect_right(stamps, upto)
    return i, max(i, j)


def _child_ranges(
    stamps: Sequence[float], i: int, j: int, level: int, index: int
) -> Iterable[tuple[int, int, int]]:
    """``(slot, start, end)`` of the non-empty children among entries ``i:j``
    of node ``(level, index)``."""
    if i >= j:
        return
    width = _WIDTHS[level + 1]
    base = index * FANOUT
    first = int(stamps[i] // width) - base
    last = int(stamps[j - 1] // width) - base
    start = i
    for slot in range(first, last + 1):
        end = (
            j
            if slot == last
            else bisect_left(stamps, (base + slot + 1) * width, start, j)
        )
        if end > start:
            yield slot, start, end
        start = end
