"""Histories: per-source logs of stamped entries.

The history of a replica is every entry it holds, grouped by source and
ordered by stamp within a source. Two operations must stay cheap whatever the
history's size:

* appending an entry (every update, local or remote), and
* finding what a peer lacks: the entries of one source newer than a stamp,
  a bounded batch at a time. This is a binary search plus a slice, so a sync
  round against a history that has nothing new costs a lookup per source,
  not a scan.

Entries of a source arrive in stamp order (the protocol guarantees it and the
replica refuses anything else), so a log is an append-only sorted list of
stamps beside a dict from stamp to change. An entry the type declares
dominated (a newer write to the same key) is dropped from the dict at once and
from the stamp list lazily, in amortised O(1).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterator, Mapping

__all__ = ["Entry", "History", "SourceLog"]


class Entry(NamedTuple):
    """One stamped change, as its origin wrote it."""

    change: Any
    ts: float
    source: str


class SourceLog:
    """The entries of one source, in stamp order."""

    __slots__ = ("_changes", "_dropped", "_stamps")

    def __init__(self) -> None:
        self._stamps: list[float] = []
        self._changes: dict[float, Any] = {}
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._changes)

    def append(self, ts: float, change: Any) -> None:
        # Callers guarantee ts is above every stamp already in this log.
        self._stamps.append(ts)
        self._changes[ts] = change

    def discard(self, ts: float) -> None:
        del self._changes[ts]
        self._dropped += 1
        if self._dropped > 64 and self._dropped * 2 > len(self._stamps):
            changes = self._changes
            self._stamps = [t for t in self._stamps if t in changes]
            self._dropped = 0

    def after(self, ts: float, limit: int) -> list[tuple[float, Any]]:
        """Up to ``limit`` entries with a stamp above ``ts``, oldest first."""
        stamps = self._stamps
        i = bisect_right(stamps, ts)
        changes = self._changes
        if not self._dropped:
            return [(t, changes[t]) for t in stamps[i : i + limit]]
        out: list[tuple[float, Any]] = []
        n = len(stamps)
        while i < n and len(out) < limit:
            t = stamps[i]
            if t in changes:
                out.append((t, changes[t]))
            i += 1
        return out

    def count_after(self, ts: float) -> int:
        """How many entries lie above ``ts`` (an upper bound once some dropped)."""
        return len(self._stamps) - bisect_right(self._stamps, ts)

    def items(self) -> Iterator[tuple[float, Any]]:
        return iter(self._changes.items())


class History:
    """Every entry a replica holds, as per-source logs.

    Args:
        key: when given, the type's dominance rule: two entries whose changes
            have the same key supersede each other, and only the one with the
            greater stamp ``(ts, source)`` is kept (last-write-wins per key).
    """

    __slots__ = ("_index", "_key", "logs")

    def __init__(self, key: Callable[[Any], Hashable] | None = None) -> None:
        self.logs: dict[str, SourceLog] = {}
        self._key = key
        self._index: dict[Hashable, tuple[float, str]] = {}

    def __len__(self) -> int:
        return sum(len(log) for log in self.logs.values())

    def record(self, change: Any, ts: float, source: str) -> bool:
        """Keep an entry; ``False`` when the type declares it dominated."""
        log = self.logs.get(source)
        if log is None:
            log = self.logs[source] = SourceLog()
        key = self._key
        if key is not None:
            k = key(change)
            index = self._index
            old = index.get(k)
            if old is not None:
                if old >= (ts, source):
                    return False
                self.logs[old[1]].discard(old[0])
            index[k] = (ts, source)
        log.append(ts, change)
        return True

    def after(self, source: str, ts: float, limit: int) -> list[tuple[float, Any]]:
        log = self.logs.get(source)
        return [] if log is None else log.after(ts, limit)

    def count_after(self, source: str, ts: float) -> int:
        log = self.logs.get(source)
        return 0 if log is None else log.count_after(ts)

    def entries(self, since: Mapping[str, float] | None = None) -> Iterator[Entry]:
        """Every entry newer than ``since``, in per-source stamp order."""
        for source, log in self.logs.items():
            floor = -1.0 if since is None else since.get(source, -1.0)
            while True:
                batch = log.after(floor, 4096)
                for ts, change in batch:
                    yield Entry(change, ts, source)
                if len(batch) < 4096:
                    break
                floor = batch[-1][0]
