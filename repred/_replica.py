"""The replica: a reducer, its state, a hybrid logical clock and a history.

Nothing here blocks or does I/O. The trio edge (``_trio.py``) and the
protocol session (``_session.py``) drive a replica through three entry
points: :meth:`Replica.update` for local writes, :meth:`Replica.apply` for
entries that arrived from a peer, and the listener hooks through which
sessions learn that there is something new to send.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
import time
import types
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import FutureStampError
from ._history import Entry, History
from ._wire import (
    DEFAULT_MAX_LINE_BYTES,
    MAX_SOURCE_LENGTH,
    MAX_STAMP,
    check_value,
    encode_entry,
)

if TYPE_CHECKING:
    from ._store import SqliteStore

__all__ = [
    "DEFAULT_MAX_DRIFT_MS",
    "Listener",
    "Replica",
    "Stamp",
    "repred",
    "wall_ms",
]

log = logging.getLogger("repred")

#: How far ahead of local wall time a remote stamp may be: five minutes.
#: Further ahead, the stamp is refused with :class:`FutureStampError`, so one
#: peer with a wild clock (or a hostile one sending ``1e300``) can never freeze
#: this replica's own writes, as it can in JS scuttlebutt.
DEFAULT_MAX_DRIFT_MS = 5 * 60 * 1000

#: A stamp: ``(ts, source)``. Tuples compare ``ts`` first and break ties by
#: source id, which is the order last-write-wins types use.
Stamp = tuple[float, str]

#: ``listener(effect, ts, source, origin)``: called after every entry the
#: replica applies, local (``origin is None``) or remote (``origin`` is what
#: the caller of :meth:`Replica.apply` passed, usually a session).
Listener = Callable[[Any, float, str, object], None]


def is_empty(change: Any) -> bool:
    """``None``, ``[]`` or ``{}``: the update changed nothing.

    The one definition of "nothing changed", for replicas, links and types.
    """
    return change is None or (type(change) in _EMPTY_TYPES and not change)


_EMPTY_TYPES = (list, dict)


def wall_ms() -> float:
    """The wall clock in whole milliseconds (the default ``wall=``)."""
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A fresh random source id: 16 URL-safe characters."""
    return secrets.token_urlsafe(12)


def check_id(id: Any) -> str:
    """A source id as the wire accepts it, or ``ValueError``."""
    if (
        not isinstance(id, str)
        or not id
        or len(id) > MAX_SOURCE_LENGTH
        or id == "__proto__"
    ):
        raise ValueError(
            f"id must be a non-empty string of at most {MAX_SOURCE_LENGTH}"
            f" characters, not {id!r}"
        )
    return id


class Replica:
    """A replicated reducer. Build one with :func:`repred`.

    Attributes:
        state: the reducer's state. Read it freely; change it only through
            :meth:`update`.
        id: this replica's source id, the third element of its stamps.
        type_name: what kind of replica this is; peers of another type are
            refused at the handshake.
    """

    __slots__ = (
        "_checks_first",
        "_clock",
        "_clock_view",
        "_history",
        "_initial",
        "_key",
        "_last",
        "_listeners",
        "_map",
        "_reducer",
        "_snapshot_fn",
        "_stamped",
        "_wall",
        "id",
        "max_drift_ms",
        "snapshot",
        "snapshot_version",
        "state",
        "store",
        "type_name",
    )

    def __init__(
        self,
        reducer: Callable[..., Any],
        initial: Any,
        *,
        map: Callable[..., Any] | None = None,
        id: str | None = None,
        stamped: bool = False,
        key: Callable[[Any], Hashable] | None = None,
        type_name: str | None = None,
        max_drift_ms: float = DEFAULT_MAX_DRIFT_MS,
        wall: Callable[[], float] = wall_ms,
        store: SqliteStore | None = None,
        snapshot: Callable[[Any], Any] | None = None,
        checks_first: bool = False,
    ) -> None:
        if not callable(reducer):
            raise TypeError(f"reducer must be callable, not {reducer!r}")
        if map is not None and not callable(map):
            raise TypeError(f"map must be callable, not {map!r}")
        if id is not None:
            check_id(id)
        if not max_drift_ms > 0:
            raise ValueError("max_drift_ms must be positive")
        if snapshot is not None and (stamped or key is not None):
            raise ValueError("snapshot= is for reducers without key= or stamped=")
        self._reducer = reducer
        self._map = map
        self._stamped = stamped
        self._checks_first = checks_first
        self.state = initial
        # The state before any entry: what the state is rebuilt from when a
        # reducer fails halfway, and what snapshots are joined into.
        self._initial = copy.deepcopy(initial)
        self.id = new_id() if id is None else id
        self.type_name: str = type_name or str(getattr(reducer, "__name__", "repred"))
        self.max_drift_ms = max_drift_ms
        self._wall = wall
        self._clock: dict[str, float] = {}
        self._clock_view = types.MappingProxyType(self._clock)
        self._key = key
        self._history = History()
        self._last: float = 0
        self._listeners: list[Listener] = []
        self._snapshot_fn = snapshot
        #: ``(update, clock)``: the folded history, if compacted.
        self.snapshot: tuple[Any, dict[str, float]] | None = None
        self.snapshot_version = 0
        self.store = store
        if store is not None:
            self._open(store, id)

    def __repr__(self) -> str:
        return (
            f"<Replica {self.type_name} id={self.id!r} sources={len(self._clock)}"
            f" entries={len(self._history)}>"
        )

    # -- reading ---------------------------------------------------------

    @property
    def clock(self) -> Mapping[str, float]:
        """``{source: newest ts applied from it}``: a read-only live view."""
        return self._clock_view

    def history(self, since: Mapping[str, float] | None = None) -> Iterator[Entry]:
        """Every entry a peer with clock ``since`` lacks, in per-source order.

        Costs time proportional to what is missing, not to the history's size.
        """
        return self._history.entries(since)

    # -- local writes ----------------------------------------------------

    def update(self, *args: Any) -> Any:
        """Apply a local update; return the change, or ``None`` if nothing changed.

        With ``map``, the arguments go through it first and ``None`` from it
        drops the update. The change is stamped, recorded, made durable (with
        a store) and replicated.

        A write is all or nothing: if it is refused, the state, clock,
        history and store are exactly as they were, and no listener heard
        of it.

        Raises:
            TypeError: the change is not a JSON value that every peer will
                read back exactly (see :func:`repred.protocol.check_value`):
                the message names the offending part.
            ValueError: the entry's line would be longer than
                :data:`DEFAULT_MAX_LINE_BYTES`, the limit every peer applies
                by default, so peers would refuse it.
            StoreError: the store could not make the write durable.
            Exception: whatever the reducer raised.
        """
        if self._map is not None:
            upd = self._map(*args)
            if upd is None:
                return None
        elif len(args) == 1:
            upd = args[0]
        else:
            raise TypeError(
                f"update() takes one update (or a map), got {len(args)} arguments"
            )
        store = self.store
        if store is not None:
            store.check()  # earlier writes that failed refuse this one
        now = self._wall()
        last = self._last
        ts = now if now > last else _after(last)
        if ts > MAX_STAMP:
            raise ValueError(f"stamp {ts!r} would be out of range")
        try:
            if self._stamped:
                change = self._reducer(self.state, upd, (ts, self.id))
            else:
                change = self._reducer(self.state, upd)
        except BaseException:
            if not self._checks_first:
                self._rebuild()
            raise
        if is_empty(change):
            return None
        try:
            check_value(change, "the change")
            size = len(encode_entry(change, ts, self.id))
            if size > DEFAULT_MAX_LINE_BYTES:
                raise ValueError(
                    f"the entry would be {size} bytes, over the"
                    f" {DEFAULT_MAX_LINE_BYTES} byte line limit every peer"
                    " applies; split the value"
                )
            k = old = None
            if self._key is not None:
                k = self._key(change)
                old = self._history.newest(k)
            if store is not None:
                if old is not None:
                    store.drop(*old)
                store.add(change, ts, self.id)
                store.advance(self.id, ts)
                store.commit(discard_on_error=True)
        except BaseException:
            self._rebuild()
            raise
        self._last = ts
        self._clock[self.id] = ts
        self._history.record(change, ts, self.id, k, old)
        if self._listeners:
            self._notify(change, ts, self.id, None)
        return change

    # -- remote entries --------------------------------------------------

    def check_stamp(self, ts: float) -> None:
        """Refuse a remote stamp too far in the future.

        Raises:
            FutureStampError: ``ts`` is more than ``max_drift_ms`` ahead.
        """
        if ts > self._wall() + self.max_drift_ms:
            raise FutureStampError(
                f"stamp {ts!r} is more than {self.max_drift_ms} ms in the future",
                reason="future-stamp",
            )

    def apply(self, change: Any, ts: float, source: str, origin: object = None) -> bool:
        """Apply an entry from a peer; ``False`` if it was already known.

        The entry is recorded exactly as given, whatever its local effect,
        unless the type declares it dominated. ``origin`` is passed on to
        listeners (a session uses it to avoid echoing an entry back).

        Raises:
            FutureStampError: the stamp is too far in the future.
            StoreError: the store could not write the entry; it stays queued
                for the next commit, which retries it.
            Exception: whatever the reducer raised; the replica's state,
                clock and history are then exactly as they were.
        """
        return self.apply_many(((change, ts, source),), origin) == 1

    def apply_many(
        self,
        entries: Iterable[tuple[Any, float, str]],
        origin: object = None,
        *,
        check: bool = True,
    ) -> int:
        """Apply entries from a peer in order; return how many were new.

        The same as :meth:`apply` for each entry, for a fraction of the cost.
        If one raises, every entry before it stays applied and it, and every
        entry after it, changes nothing.
        """
        clock = self._clock
        state = self.state
        reducer = self._reducer
        stamped = self._stamped
        record = self._history.record
        key = self._key
        newest = self._history.newest
        # The origin's own listener never needs its entries back.
        listeners = (
            self._listeners
            if origin is None
            else [
                f for f in self._listeners if getattr(f, "__self__", None) is not origin
            ]
        )
        notify = self._notify
        limit = self._wall() + self.max_drift_ms if check else math.inf
        last = self._last
        store = self.store
        applied = 0
        try:
            for change, ts, source in entries:
                known = clock.get(source)
                if known is not None and ts <= known:
                    continue
                if ts > limit:
                    self.check_stamp(ts)  # raises FutureStampError
                if key is None:
                    k = old = None
                else:
                    k = key(change)
                    old = newest(k)
                    if old is not None and old >= (ts, source):
                        # Dominated by what is kept: known, with no effect.
                        clock[source] = ts
                        if store is not None:
                            store.advance(source, ts)
                        if ts > last:
                            last = ts
                        applied += 1
                        continue
                try:
                    if stamped:
                        effect = reducer(state, change, (ts, source))
                    else:
                        effect = reducer(state, change)
                except BaseException:
                    if not self._checks_first:
                        self._rebuild()
                    raise
                clock[source] = ts
                if ts > last:
                    last = ts
                record(change, ts, source, k, old)
                if store is not None:
                    if old is not None:
                        store.drop(*old)
                    store.add(change, ts, source)
                    store.advance(source, ts)
                applied += 1
                if listeners:
                    notify(effect, ts, source, origin, listeners)
        finally:
            self._last = last
            if store is not None and applied:
                # Recorded before anyone hears of it: the peer's clock for
                # us only moves on what we send after this returns. If the
                # commit fails, the rows stay queued and every later commit
                # retries them, so the clock on disk never covers an entry
                # the disk lacks.
                store.commit()
        return applied

    # -- keeping the state true ----------------------------------------

    def _rebuild(self) -> None:
        """Rebuild the state from the snapshot and the history.

        Called when a reducer raised halfway or a write was refused after the
        reducer ran: what the history holds is the truth, and a convergent
        reducer gives the same state from it in any order.
        """
        state = copy.deepcopy(self._initial)
        reducer = self._reducer
        if self.snapshot is not None:
            reducer(state, self.snapshot[0])
        stamped = self._stamped
        for change, ts, source in self._history.entries():
            if type(change) is tuple:
                change = list(change)
            if stamped:
                reducer(state, change, (ts, source))
            else:
                reducer(state, change)
        old = self.state
        kind = type(old)
        if kind is type(state) and kind in (dict, set):
            old.clear()
            old.update(state)
        elif kind is type(state) and kind is list:
            old[:] = state
        else:
            self.state = state

    def _forget(self, old: Callable[[float, str], bool]) -> None:
        """Drop the entries for which ``old(ts, source)`` holds (see History)."""
        dropped = self._history.forget(old)
        if self.store is not None and dropped:
            for ts, source in dropped:
                self.store.drop(ts, source)
            self.store.commit()

    # -- durability ------------------------------------------------------

    def _open(self, store: SqliteStore, wanted_id: str | None) -> None:
        """Restore id, clock, history and state from ``store``."""
        loaded = store.open(self.type_name, wanted_id, self.id)
        self.id = loaded.id
        if loaded.snapshot is not None:
            update, clock = loaded.snapshot
            self._reduce(update)
            self.snapshot = (update, clock)
            self._clock.update(clock)
        # Replay with the store detached: these entries are on disk already.
        # Stored stamps are not checked against the wall clock, which may
        # have moved back since they were written.
        self.store = None
        self.apply_many(loaded.entries, check=False)
        for source, ts in loaded.clock.items():
            if ts > self._clock.get(source, -1):
                self._clock[source] = ts
        self._last = max(self._clock.values(), default=0)
        self.store = store

    # -- compaction ------------------------------------------------------

    def _reduce(self, update: Any) -> Any:
        return self._reducer(self.state, update)

    def compact(self) -> None:
        """Fold the whole history into a snapshot (needs ``snapshot=``).

        The history is then empty; a peer whose clock predates the snapshot
        receives the snapshot and then the tail. Memory (and the store)
        then follow the state, not the number of updates.
        """
        if self._snapshot_fn is None:
            raise ValueError(f"{self.type_name!r} declares no snapshot= function")
        update = self._snapshot_fn(self.state)
        check_value(update, "the snapshot")
        clock = dict(self._clock)
        self._set_snapshot(update, clock)
        self._history.cover(clock)

    def apply_snapshot(
        self, update: Any, clock: Mapping[str, float], origin: object = None
    ) -> bool:
        """Apply a peer's snapshot; ``False`` if it held nothing new.

        Raises:
            FutureStampError: a clock value is too far in the future.
            ValueError: this replica takes no snapshots.
            Exception: whatever the reducer raised (nothing is changed).
        """
        if self._snapshot_fn is None:
            raise ValueError(f"{self.type_name!r} takes no snapshots")
        if all(self._clock.get(s, -1) >= ts for s, ts in clock.items()):
            return False
        for ts in clock.values():
            self.check_stamp(ts)
        effect = self._reduce(update)
        for source, ts in clock.items():
            if ts > self._clock.get(source, -1):
                self._clock[source] = ts  # made durable with the snapshot
        self._last = max(self._last, *clock.values())
        if self.snapshot is None:
            self._set_snapshot(update, dict(clock))
        else:
            joined = copy.deepcopy(self._initial)
            self._reducer(joined, self.snapshot[0])
            self._reducer(joined, update)
            merged = dict(self.snapshot[1])
            for source, ts in clock.items():
                merged[source] = max(ts, merged.get(source, -1))
            self._set_snapshot(self._snapshot_fn(joined), merged)
        self._history.cover(clock)
        if self._listeners:
            # A snapshot has no single source: listeners see source "".
            self._notify(effect, max(clock.values()), "", origin)
        return True

    def _set_snapshot(self, update: Any, clock: dict[str, float]) -> None:
        if self.store is not None:
            self.store.save_snapshot(update, clock)
        self.snapshot = (update, clock)
        self.snapshot_version += 1

    def close(self) -> None:
        """Write anything pending to the store and close it (if any)."""
        if self.store is not None:
            self.store.close()

    # -- listeners -------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(effect, ts, source, origin)`` after every entry.

        Every applied entry reaches every listener, local and remote, except
        that a bound method of the ``origin`` an entry was applied with does
        not hear of its own entries. Returns a function that removes the
        listener. A listener that raises is logged and otherwise ignored: it
        cannot undo an applied entry.
        """
        self._listeners.append(listener)

        def remove() -> None:
            try:
                self._listeners.remove(listener)
            except ValueError:
                pass

        return remove

    def _notify(
        self,
        effect: Any,
        ts: float,
        source: str,
        origin: object,
        listeners: list[Listener] | None = None,
    ) -> None:
        for listener in tuple(self._listeners if listeners is None else listeners):
            try:
                listener(effect, ts, source, origin)
            except Exception:
                log.exception("repred listener %r raised", listener)

    # -- used by sessions ------------------------------------------------

    def _after(self, source: str, ts: float, limit: int) -> list[tuple[float, Any]]:
        return self._history.after(source, ts, limit)

    def _count_after(self, source: str, ts: float) -> int:
        return self._history.count_after(source, ts)


def _after(ts: float) -> float:
    """The next stamp above ``ts``: a thousandth of a millisecond later."""
    nxt = ts + 0.001
    if nxt <= ts:
        nxt = math.nextafter(ts, math.inf)
    return nxt


def repred(
    reducer: Callable[..., Any],
    initial: Any,
    *,
    map: Callable[..., Any] | None = None,
    id: str | None = None,
    stamped: bool = False,
    key: Callable[[Any], Hashable] | None = None,
    type_name: str | None = None,
    max_drift_ms: float = DEFAULT_MAX_DRIFT_MS,
    wall: Callable[[], float] = wall_ms,
    store: SqliteStore | None = None,
    snapshot: Callable[[Any], Any] | None = None,
    checks_first: bool = False,
) -> Replica:
    """Make a replicated reducer.

    Args:
        reducer: ``reducer(state, update) -> change``. It merges ``update``
            into ``state`` (mutating it) and returns the part that changed
            it; ``None``, ``[]`` or ``{}`` means the update was already
            known. It must be commutative and idempotent in effect. The
            change must be a JSON value (see :meth:`Replica.update`). With
            ``stamped=True`` it is called as ``reducer(state, update, stamp)``
            where ``stamp`` is ``(ts, source)``: the one way a type sees
            stamps, for types that need more than ``key`` gives.
        initial: the initial state.
        map: turns what is passed to :meth:`Replica.update` into an update;
            ``None`` from it drops the update.
        id: this replica's source id; a random one by default.
        stamped: pass the entry's stamp to the reducer.
        key: makes the type last-write-wins per key. ``key(change)`` names
            what a change writes (it may raise ``ValueError`` to refuse a
            malformed change). Of the entries with the same key, the one with
            the greatest stamp ``(ts, source)`` wins: an older one reaching
            the replica later is dominated, so the reducer never sees it and
            the history never keeps it. The history holds only the newest
            entry per key, so memory follows live keys, not writes.
        type_name: the name peers must share to replicate with this one;
            the reducer's name by default.
        max_drift_ms: how far in the future a remote stamp may be.
        wall: the wall clock in milliseconds (tests pass a fake one).
        store: keep the history, clock and id durable (see
            :class:`SqliteStore`); reopening the same store restores them
            and rebuilds the state. In memory only by default.
        snapshot: ``snapshot(state) -> update``, an update that gives the
            whole state when applied to ``initial``. It lets
            :meth:`Replica.compact` fold the history into a snapshot.
        checks_first: the reducer raises before it changes anything when an
            update is malformed. Without it (the default), a reducer that
            raises makes the replica rebuild its state from the history (a
            cost proportional to the history, paid only on errors), so that
            a refused update or entry never leaves a trace.
    """
    return Replica(
        reducer,
        initial,
        map=map,
        id=id,
        stamped=stamped,
        key=key,
        type_name=type_name,
        max_drift_ms=max_drift_ms,
        wall=wall,
        store=store,
        snapshot=snapshot,
        checks_first=checks_first,
    )
