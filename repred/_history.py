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

from bisect import bisect_left, bisect_right
from itertools import compress, islice, repeat
from operator import is_not, itemgetter, lt
from typing import TYPE_CHECKING, Any, NamedTuple

from ._hashtree import SourceTree, View

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping

_first, _second, _third = itemgetter(0), itemgetter(1), itemgetter(2)

__all__ = ["Entry", "History", "Run", "SourceLog", "runs"]

#: Marks a dropped entry in a log until the log is compacted.
_GONE: Any = object()


class Entry(NamedTuple):
    """One stamped change, as its origin wrote it."""

    change: Any
    ts: float
    source: str


class SourceLog:
    """The entries of one source, in stamp order.

    Two parallel lists, stamps and changes: appending is two list appends and
    finding a stamp is a binary search. (A dict keyed by stamp would be
    slower: stamps a thousandth of a millisecond apart hash badly.)
    """

    __slots__ = ("_changes", "_live", "_sigs", "_stamps", "_tree")

    def __init__(self) -> None:
        self._stamps: list[float] = []
        self._changes: list[Any] = []
        #: Signatures by stamp, for the entries that came signed (or None).
        self._sigs: dict[float, str] | None = None
        self._live = 0
        #: The fingerprints of these entries, once anti-entropy asked.
        self._tree: SourceTree | None = None

    def __len__(self) -> int:
        return self._live

    def discard(self, ts: float) -> None:
        stamps = self._stamps
        i = bisect_left(stamps, ts)
        if i == len(stamps) or stamps[i] != ts or self._changes[i] is _GONE:
            return
        self._changes[i] = _GONE
        self._live -= 1
        if self._sigs:
            self._sigs.pop(ts, None)
        if self._tree is not None:
            self._tree.changed(ts)
        if len(stamps) > 64 and self._live * 2 < len(stamps):
            self._compact()

    def _compact(self) -> None:
        """Leave out the dropped entries' slots."""
        # The selector is made twice, not kept in a list: a list of it
        # would add a pointer per entry to the peak memory.
        changes = self._changes
        self._stamps = list(compress(self._stamps, map(is_not, changes, repeat(_GONE))))
        self._changes = list(compress(changes, map(is_not, changes, repeat(_GONE))))

    def view(self) -> View:
        """The log as its tree reads it (see repred._hashtree.View): its
        lists as they are, dropped slots and all, unless those are many."""
        dropped = len(self._stamps) - self._live
        if dropped * 16 > len(self._stamps):
            self._compact()
            dropped = 0
        return View(self._stamps, self._changes, dropped, _GONE)

    def tree(self) -> SourceTree:
        """The fingerprints of this log's entries (see repred._hashtree)."""
        if self._tree is None:
            self._tree = SourceTree()
        return self._tree

    def put(self, ts: float, change: Any, signature: str | None = None) -> bool:
        """Keep an entry at ``ts`` anywhere in the log (a repair: below the
        newest stamp), replacing the one held there, if any; ``True`` if
        one was replaced."""
        stamps = self._stamps
        i = bisect_left(stamps, ts)
        replaced = i < len(stamps) and stamps[i] == ts
        if replaced:
            if self._changes[i] is _GONE:
                self._live += 1
                replaced = False
            self._changes[i] = change
        else:
            stamps.insert(i, ts)
            self._changes.insert(i, change)
            self._live += 1
        if self._sigs:
            self._sigs.pop(ts, None)
        if signature is not None:
            self.sign(ts, signature)
        if self._tree is not None:
            self._tree.changed(ts)
        return replaced

    def append(self, ts: float, change: Any, signature: str | None = None) -> None:
        """Keep an entry after every one held (its stamp is above theirs)."""
        self._stamps.append(ts)
        self._changes.append(change)
        self._live += 1
        if signature is not None:
            self.sign(ts, signature)

    def extend(
        self,
        stamps: list[float],
        changes: list[Any],
        signatures: list[str | None] | None = None,
    ) -> None:
        """Keep a run of entries after every one held."""
        self._stamps.extend(stamps)
        self._changes.extend(changes)
        self._live += len(stamps)
        if signatures is not None:
            for ts, signature in zip(stamps, signatures, strict=True):
                if signature is not None:
                    self.sign(ts, signature)

    def batch(
        self, after: float, limit: int
    ) -> tuple[list[float], list[Any], list[str | None] | None]:
        """Up to ``limit`` entries stamped above ``after``, oldest first, as
        ``(stamps, changes, signatures)`` (``None`` if none came signed).

        The lists may be the log's own (when they are all of it): read
        them, never change them.
        """
        stamps = self._stamps
        start = bisect_right(stamps, after)
        if self._live == len(stamps):  # no dropped entries: slice directly
            if start == 0 and len(stamps) <= limit:
                changes = self._changes  # all of it
            else:
                stamps = stamps[start : start + limit]
                changes = self._changes[start : start + limit]
        else:
            pairs = self.after(after, limit)
            stamps = [ts for ts, _ in pairs]
            changes = [change for _, change in pairs]
        held = self._sigs
        sigs = list(map(held.get, stamps)) if held else None
        if sigs is not None and not any(sigs):
            sigs = None
        return stamps, changes, sigs

    def outstanding(self, after: float | None) -> int:
        """How many entries lie above ``after`` (an upper bound once some
        were dropped): a peer's share still to send."""
        return len(self._stamps) if after is None else self.count_after(after)

    def signature(self, ts: float) -> str | None:
        """The signature the entry at ``ts`` came with, or ``None``."""
        return None if self._sigs is None else self._sigs.get(ts)

    def sign(self, ts: float, signature: str) -> None:
        """Keep the signature of the entry at ``ts`` (just recorded)."""
        if self._sigs is None:
            self._sigs = {}
        self._sigs[ts] = signature

    def get(self, ts: float) -> Any:
        """The change held at ``ts``, or ``None``."""
        stamps = self._stamps
        i = bisect_left(stamps, ts)
        if i == len(stamps) or stamps[i] != ts:
            return None
        change = self._changes[i]
        return None if change is _GONE else change

    def after(self, ts: float, limit: int) -> list[tuple[float, Any]]:
        """Up to ``limit`` entries with a stamp above ``ts``, oldest first."""
        stamps = self._stamps
        i = bisect_right(stamps, ts)
        changes = self._changes
        if self._live == len(stamps):
            return list(zip(stamps[i : i + limit], changes[i : i + limit], strict=True))
        out: list[tuple[float, Any]] = []
        n = len(stamps)
        while i < n and len(out) < limit:
            change = changes[i]
            if change is not _GONE:
                out.append((stamps[i], change))
            i += 1
        return out

    def count_after(self, ts: float) -> int:
        """How many entries lie above ``ts`` (an upper bound once some dropped)."""
        return len(self._stamps) - bisect_right(self._stamps, ts)

    def items(self) -> Iterator[tuple[float, Any]]:
        return (
            (t, c)
            for t, c in zip(self._stamps, self._changes, strict=True)
            if c is not _GONE
        )


#: A run: ``(source, stamps, changes, signatures)``, the entries of one
#: source with stamps strictly increasing; ``signatures`` is ``None`` when
#: none came, else a slot per entry (``None`` for an unsigned one).
Run = tuple[str, list[float], list[Any], list[str | None] | None]


def runs(entries: Iterable[tuple[Any, ...]], *, canonical: bool = False) -> list[Run]:
    """Group entries ``(change, ts, source[, signature])`` into runs (see
    :data:`Run`): consecutive entries of one source whose stamps strictly
    increase. Stamps come out canonical (a whole number as an ``int``);
    ``canonical`` says they went in so (as the decoder gives them).

    The one way entries become runs, for a link's lines and for
    :meth:`Replica.apply` alike.
    """
    if (
        canonical
        and isinstance(entries, list)
        and len(entries) > 1
        and set(map(len, entries)) == {3}
    ):
        # The common case, a link's lines from one source in order, is
        # recognised by passes that run at C speed.
        in_order = list(map(_second, entries))
        if len(set(map(_third, entries))) == 1 and all(
            map(lt, in_order, islice(in_order, 1, None))
        ):
            return [(entries[0][2], in_order, list(map(_first, entries)), None)]
    out: list[Run] = []
    source: str | None = None
    last: float = -1.0
    stamps: list[float] = []
    changes: list[Any] = []
    sigs: list[str | None] | None = None
    for entry in entries:
        change, ts, src = entry[0], entry[1], entry[2]
        signature = entry[3] if len(entry) > 3 else None
        if not canonical and type(ts) is float and ts.is_integer():
            ts = int(ts)
        if src != source or ts <= last:
            source, stamps, changes = src, [ts], [change]
            sigs = None if signature is None else [signature]
            out.append((src, stamps, changes, sigs))
        else:
            stamps.append(ts)
            changes.append(change)
            if sigs is None and signature is not None:
                sigs = [None] * (len(stamps) - 1)
                out[-1] = (src, stamps, changes, sigs)
            if sigs is not None:
                sigs.append(signature)
        last = ts
    return out


class History:
    """Every entry a replica holds, as per-source logs.

    For a type that declares a key (last-write-wins per key), the history
    keeps only the entry with the greatest stamp ``(ts, source)`` per key,
    so its size follows the live keys, not the number of writes.

    It holds entries in memory only: the replica writes them to its store.

    Attributes:
        newest: ``newest(key)`` is the stamp of the entry kept for ``key``,
            or ``None``.
    """

    __slots__ = ("_index", "logs", "newest")

    def __init__(self) -> None:
        self.logs: dict[str, SourceLog] = {}
        self._index: dict[Hashable, tuple[float, str]] = {}
        self.newest: Callable[[Hashable], tuple[float, str] | None] = self._index.get

    def __len__(self) -> int:
        return sum(len(log) for log in self.logs.values())

    def new_log(self, source: str) -> SourceLog:
        """An empty log for ``source``, which holds nothing yet."""
        log = self.logs[source] = SourceLog()
        return log

    def record(
        self,
        change: Any,
        ts: float,
        source: str,
        key: Hashable = None,
        old: tuple[float, str] | None = None,
        signature: str | None = None,
    ) -> None:
        """Keep an entry (at the end of its source's log).

        For a superseding history, ``key`` is the entry's key and ``old``
        what :attr:`newest` said of it: the caller has checked that the new
        entry is not dominated, and the old one is dropped.
        """
        logs = self.logs
        if key is not None:
            if old is not None:
                logs[old[1]].discard(old[0])
            self._index[key] = (ts, source)
        # An entry is immutable once recorded. A list is kept as a tuple (the
        # same JSON array on the wire): the caller's list can no longer alter
        # history, and the collector stops tracking tuples of plain values,
        # which keeps full collections cheap with millions of entries.
        if type(change) is list:
            change = tuple(change)
        log = logs.get(source)
        if log is None:
            # A new source (the hot path of a sync from many writers).
            log = logs[source] = SourceLog.__new__(SourceLog)  # (no __init__)
            log._stamps = [ts]
            log._changes = [change]
            log._live = 1
            log._sigs = None
            log._tree = None
        else:
            # Appended in place (the hot path of every sync): the caller has
            # checked that ts is above every stamp already in this log.
            log._stamps.append(ts)
            log._changes.append(change)
            log._live += 1
        if signature is not None:
            log.sign(ts, signature)

    def log_for(self, source: str) -> tuple[SourceLog, bool]:
        """The log of ``source``, and whether it was just made (then
        :meth:`drop_if_empty` forgets it if nothing went in)."""
        log = self.logs.get(source)
        if log is not None:
            return log, False
        return self.new_log(source), True

    def drop_if_empty(self, source: str) -> None:
        """Forget the log of ``source`` if it holds nothing at all."""
        log = self.logs.get(source)
        if log is not None and not log._stamps:
            del self.logs[source]

    def keep(
        self,
        key: Hashable,
        stamp: tuple[float, str],
        old: tuple[float, str] | None,
        log: SourceLog,
        change: Any,
        signature: str | None,
    ) -> None:
        """Keep an entry after every one ``log`` (its source's) holds, as
        the one now kept for ``key``; ``old`` (what :attr:`newest` said of
        it) is dropped. The hot path of a keyed type."""
        log._stamps.append(stamp[0])
        log._changes.append(change)
        log._live += 1
        if signature is not None:
            log.sign(stamp[0], signature)
        self._index[key] = stamp
        if old is not None:
            self.logs[old[1]].discard(old[0])

    def all_new(self, keys: Iterable[Hashable]) -> bool:
        """No entry is kept for any of ``keys``."""
        return self._index.keys().isdisjoint(keys)

    def index_run(
        self, keys: Iterable[Hashable], stamps: Iterable[float], source: str
    ) -> None:
        """A run of ``source``'s entries is kept for ``keys``, all new."""
        self._index.update(zip(keys, zip(stamps, repeat(source)), strict=False))

    def restore(
        self,
        source: str,
        stamps: list[float],
        changes: list[Any],
        signatures: list[str | None] | None,
    ) -> None:
        """Take a source's entries as a store held them (its lists become
        the log's own)."""
        log = self.new_log(source)
        log._stamps = stamps
        log._changes = changes
        log._live = len(stamps)
        if signatures is not None:
            log._sigs = {
                ts: sig for ts, sig in zip(stamps, signatures, strict=True) if sig
            }

    def put(
        self,
        change: Any,
        ts: float,
        source: str,
        key: Hashable = None,
        old: tuple[float, str] | None = None,
        signature: str | None = None,
    ) -> None:
        """Keep an entry anywhere in its source's log (a repair: below the
        newest stamp), as :meth:`record` does at the end."""
        if key is not None:
            if old is not None:
                self.logs[old[1]].discard(old[0])
            self._index[key] = (ts, source)
        if type(change) is list:
            change = tuple(change)
        self.log_for(source)[0].put(ts, change, signature)

    def unindex(self, key: Hashable, stamp: tuple[float, str]) -> None:
        """Forget that ``stamp`` is the entry kept for ``key`` (it is being
        replaced), if it is."""
        if self._index.get(key) == stamp:
            del self._index[key]

    def cover(self, clock: Mapping[str, float]) -> None:
        """Drop every entry a snapshot covering ``clock`` holds (the store's too)."""
        for source, upto in clock.items():
            log = self.logs.get(source)
            if log is None:
                continue
            for ts in [t for t, _ in log.items() if t <= upto]:
                log.discard(ts)
        self._index = {
            k: v for k, v in self._index.items() if v[0] > clock.get(v[1], -1)
        }
        self.newest = self._index.get

    def forget(self, old: Callable[[float, str], bool]) -> list[tuple[float, str]]:
        """Drop the entries for which ``old(ts, source)`` holds; return them.

        Only for types that bound their history by declaration (an event
        log kept for a time): a peer whose clock predates what was dropped
        receives what remains.
        """
        dropped = []
        for source, log in self.logs.items():
            for ts, _ in list(log.items()):
                if old(ts, source):
                    log.discard(ts)
                    dropped.append((ts, source))
        return dropped

    def forget_keys(self, keys: Iterable[Hashable]) -> list[tuple[float, str]]:
        """Drop the entries kept for ``keys``; return their stamps."""
        dropped = []
        for key in keys:
            stamp = self._index.pop(key, None)
            if stamp is not None:
                self.logs[stamp[1]].discard(stamp[0])
                dropped.append(stamp)
        return dropped

    def signature(self, source: str, ts: float) -> str | None:
        """The signature held with ``(source, ts)``, or ``None``."""
        log = self.logs.get(source)
        return None if log is None else log.signature(ts)

    def get(self, source: str, ts: float) -> Any:
        """The change held at ``(source, ts)``, or ``None``."""
        log = self.logs.get(source)
        return None if log is None else log.get(ts)

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
