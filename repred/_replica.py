"""The replica: a reducer, its state, a hybrid logical clock and a history.

Nothing here blocks or does I/O. The trio edge (``_links.py``) and the
protocol session (``_session.py``) drive a replica through three entry
points: :meth:`Replica.update` for local writes, :meth:`Replica.apply` for
entries that arrived from a peer, and the listener hooks through which
sessions learn that there is something new to send.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import math
import secrets
import time
import types
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import orjson

from ._divergence import Divergence, ReplicaStatistics
from ._errors import RemoteProtocolError, StoreError
from ._hashtree import entry_hash
from ._history import Entry, History, Run, SourceLog, runs
from ._log import limited, log
from ._trust import SigningKey, Writers, is_key_id, verifier
from ._wire import (
    CHAR_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    ENTRY_FRAME_BYTES,
    MAX_SOURCE_LENGTH,
    MAX_STAMP,
    check_value,
    encode_entry,
    entry_snippet,
    is_source,
)

if TYPE_CHECKING:
    from ._store import SqliteStore

__all__ = [
    "DEFAULT_MAX_AHEAD_MS",
    "DEFAULT_MAX_DRIFT_MS",
    "DEFAULT_MAX_SOURCES",
    "Listener",
    "ReducerOptions",
    "Replica",
    "ReplicaOptions",
    "Stamp",
    "Watcher",
    "repred",
    "wall_ms",
]


#: How far ahead of local wall time a remote stamp may be: five minutes.
#: An entry stamped further ahead is not applied (it ends no link: the
#: entries of its source on that link wait for a later link, by when the
#: local clock may have caught up), so one peer with a wild clock, or a
#: hostile one sending ``1e300``, can never freeze this replica's writes.
DEFAULT_MAX_DRIFT_MS = 5 * 60 * 1000

#: How far ahead of local wall time remote stamps may push this replica's
#: own clock: one minute. Its own stamps therefore never run more than this
#: ahead of its wall clock, so an honest peer whose clock is up to
#: ``max_drift_ms - max_ahead_ms`` (four minutes, by default) behind never
#: refuses them, whatever stamps this replica accepted from others. Within
#: the minute, a causally later write still gets a later stamp.
DEFAULT_MAX_AHEAD_MS = 60 * 1000

#: How many sources a replica accepts by default. Entries from a new source
#: beyond it (or beyond what keeps the digest within the line limit) are
#: refused on their link with reason ``too-many-sources``: the bound fits
#: the membership of a 10,000-node network with room to spare.
DEFAULT_MAX_SOURCES = 16_384

#: Room a digest keeps, beside its clock, for the id, the type and the other
#: keys: the clock may take the line limit less this.
DIGEST_OVERHEAD_BYTES = 8192


def clock_cost(source: str) -> int:
    """Bytes one source takes in a digest's clock, at most: ``"id":ts,``."""
    return len(orjson.dumps(source)) + 26


#: A stamp: ``(ts, source)``. Tuples compare ``ts`` first and break ties by
#: source id, which is the order last-write-wins types use.
Stamp = tuple[float, str]

#: ``listener(effect, ts, source, origin)``: called after every entry the
#: replica applies, local (``origin is None``) or remote (``origin`` is what
#: the caller of :meth:`Replica.apply` passed, usually a session).
Listener = Callable[[Any, float, str, object], None]

#: ``watcher(source, ts, origin)``: called once per run of entries of one
#: source the replica applies (``ts`` the newest), and after every local
#: update; the links use it to learn that there is something to send.
Watcher = Callable[[str, float, object], None]


#: The most proofs of equivocation a replica keeps (one per source banned).
MAX_PROOFS = 1024


class ReplicaOptions(TypedDict, total=False):
    """The options of a replica that every factory takes (see
    :class:`Replica` for each): what a program chooses about a replica of
    any type."""

    id: str | None
    max_drift_ms: float
    max_ahead_ms: float
    max_sources: int
    max_entry_bytes: int
    wall: Callable[[], float]
    store: SqliteStore | None
    signing_key: SigningKey | None
    verify: bool
    writers: Writers | None


class ReducerOptions(ReplicaOptions, total=False):
    """The options of :func:`repred`: a replica's, and what its type is."""

    map: Callable[..., Any] | None
    stamped: bool
    last_write_wins: Callable[[Any], Hashable] | None
    type_name: str | None
    snapshot: Callable[[Any], Any] | None
    checks_first: bool


#: A signed entry, as a proof of equivocation holds it:
#: ``(change, ts, source, signature)``.
Entry4 = tuple[Any, float, str, str]


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
    if not is_source(id):
        raise ValueError(
            f"id must be a non-empty string of at most {MAX_SOURCE_LENGTH}"
            f" characters, not {id!r}"
        )
    return id  # type: ignore[no-any-return]


class _Progress:
    """What a call of :meth:`Replica.apply_runs` has done so far."""

    __slots__ = ("applied", "cursor", "last", "repaired", "skipped")

    def __init__(self, last: float, skipped: set[str]) -> None:
        #: Entries applied; entries repaired (below the clock).
        self.applied = 0
        self.repaired = 0
        #: The replica's clock reading (its own stamps resume above it).
        self.last = last
        #: Sources whose entries are passed over on this link.
        self.skipped = skipped
        #: How far the run being applied got.
        self.cursor = 0


class Replica:
    """A replicated reducer. Build one with :func:`repred` (or a type's
    factory, such as :func:`repred.types.model`).

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
        last_write_wins: makes the type last-write-wins per key.
            ``last_write_wins(change)`` names
            what a change writes (it may raise ``ValueError`` to refuse a
            malformed change). Of the entries with the same key, the one with
            the greatest stamp ``(ts, source)`` wins: an older one reaching
            the replica later is dominated, so the reducer never sees it and
            the history never keeps it. The history holds only the newest
            entry per key, so memory follows live keys, not writes.
        type_name: the name peers must share to replicate with this one;
            the reducer's name by default.
        max_drift_ms: how far ahead of the wall clock a remote stamp may be
            for its entry to be applied (see :data:`DEFAULT_MAX_DRIFT_MS`).
        max_ahead_ms: how far ahead of the wall clock remote stamps may push
            this replica's own (see :data:`DEFAULT_MAX_AHEAD_MS`).
        max_sources: how many sources the replica takes (see
            :data:`DEFAULT_MAX_SOURCES`); fewer, if their digest would not
            fit in ``max_entry_bytes``.
        max_entry_bytes: the longest line this replica writes (its entries
            and its digest); its peers must accept lines this long. The
            default is the limit every link applies by default.
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
        signing_key: sign every entry this replica writes with this
            :class:`~repred.SigningKey`; the replica's id is the key's id.
        verify: refuse any entry that its source did not sign (reason
            ``bad-signature``), from peers and from the store; also refuse
            snapshots, which carry no signatures.
        writers: with ``verify``, the only sources that may write: a set of
            ids, or a function ``writers(id) -> bool`` (reason
            ``not-a-writer`` for the others).

    Attributes:
        state: the reducer's state. Read it freely; change it only through
            :meth:`update`.
        id: this replica's source id, the third element of its stamps.
        type_name: what kind of replica this is; peers of another type are
            refused at the handshake.
        antientropy: compare hash trees with repred peers after each sync
            and every ``antientropy_interval`` on live links (see
            :mod:`repred._antientropy`); ``True`` by default. Set it to
            ``False`` before linking to take no part (the gossip peer does
            so for its membership map).
    """

    #: The reducer (and last-write-wins key) read an array change without
    #: keeping or changing it, so a remote one may be handed over as the
    #: tuple the history keeps rather than as a new list (a built-in type
    #: says so; a reducer of the user's always gets a list).
    _reads_tuples = False
    #: A last-write-wins type's bulk path, ``(by_key, reduce_all)``:
    #: ``by_key(changes)`` is a dict keyed by their keys, in order (a key
    #: given twice is there once), if every change is a well-formed array,
    #: all tuples or all lists (else ``None``); ``reduce_all(state,
    #: by_key(changes))`` does what the reducer does to each change in
    #: turn, for changes whose keys are distinct and new to the replica.
    #: ``None``: every entry goes through the reducer.
    _bulk: (
        tuple[Callable[[Any], dict[Any, Any] | None], Callable[[Any, Any], None]] | None
    ) = None

    __slots__ = (
        "__weakref__",  # a replica's summary is kept beside it (repred._summary)
        "_banned",
        "_checks_first",
        "_clock",
        "_clock_bytes",
        "_clock_view",
        "_divergence",
        "_forgot",
        "_history",
        "_initial",
        "_key",
        "_last",
        "_listeners",
        "_map",
        "_on_divergence",
        "_own_at_open",
        "_reducer",
        "_signer",
        "_snapshot_fn",
        "_stamped",
        "_verify",
        "_wall",
        "_watchers",
        "_writers",
        "antientropy",
        "compacted",
        "deferred",
        "id",
        "instance",
        "max_ahead_ms",
        "max_drift_ms",
        "max_entry_bytes",
        "max_sources",
        "revision",
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
        last_write_wins: Callable[[Any], Hashable] | None = None,
        type_name: str | None = None,
        max_drift_ms: float = DEFAULT_MAX_DRIFT_MS,
        max_ahead_ms: float = DEFAULT_MAX_AHEAD_MS,
        max_sources: int = DEFAULT_MAX_SOURCES,
        max_entry_bytes: int = DEFAULT_MAX_LINE_BYTES,
        wall: Callable[[], float] = wall_ms,
        store: SqliteStore | None = None,
        snapshot: Callable[[Any], Any] | None = None,
        checks_first: bool = False,
        signing_key: SigningKey | None = None,
        verify: bool = False,
        writers: Writers | None = None,
    ) -> None:
        id = _signed_id(signing_key, id, verify, writers)
        self._reducer = reducer
        self._map = map
        self._stamped = stamped
        self._key = last_write_wins
        self._snapshot_fn = snapshot
        self.max_drift_ms = max_drift_ms
        self.max_ahead_ms = max_ahead_ms
        self.max_sources = max_sources
        self.max_entry_bytes = max_entry_bytes
        self._check_options(id)
        self._checks_first = checks_first
        self._signer = signing_key
        self._verify = verifier() if verify else None
        self._writers = _writers(writers)
        self.state = initial
        # What the state is rebuilt from, and what snapshots are joined into.
        self._initial = copy.deepcopy(initial)
        self.id = new_id() if id is None else id
        self.type_name: str = type_name or str(getattr(reducer, "__name__", "repred"))
        self._wall = wall
        self._init_state()
        self.store = store
        if store is not None:
            self._open(store, id)

    def _check_options(self, id: str | None) -> None:
        """Refuse a bad option, at the call (before anything is opened)."""
        if not callable(self._reducer):
            raise TypeError(f"reducer must be callable, not {self._reducer!r}")
        if self._map is not None and not callable(self._map):
            raise TypeError(f"map must be callable, not {self._map!r}")
        if id is not None:
            check_id(id)
        if not 0 < self.max_ahead_ms < self.max_drift_ms:
            raise ValueError("need 0 < max_ahead_ms < max_drift_ms")
        if type(self.max_sources) is not int or self.max_sources < 1:
            raise ValueError("max_sources must be a positive int")
        least = 2 * DIGEST_OVERHEAD_BYTES
        if type(self.max_entry_bytes) is not int or self.max_entry_bytes < least:
            raise ValueError(f"max_entry_bytes must be an int >= {least}")
        if self._snapshot_fn is not None and (self._stamped or self._key is not None):
            raise ValueError(
                "snapshot= is for reducers without last_write_wins= or stamped="
            )

    def _init_state(self) -> None:
        """What a new replica holds: nothing yet."""
        self.deferred = 0  # entries not applied: stamped too far ahead
        self._clock: dict[str, float] = {}
        self._clock_bytes = 0
        self._clock_view = types.MappingProxyType(self._clock)
        self._history = History()
        self._last: float = 0
        self._listeners: list[Listener] = []
        #: A tuple, replaced when one comes or goes: it is read on every
        #: write, and a watcher may remove itself while being called.
        self._watchers: tuple[Watcher, ...] = ()
        self.antientropy = True  # (see the class's docstring)
        #: The newest stamp this replica dropped by its type's own bound
        #: (an event log kept for a time): older entries are not compared.
        self._forgot: float = -1.0
        #: This replica's own stamp when it opened its store: an entry in
        #: its name stamped later that it does not hold was not its own.
        self._own_at_open: float = -1.0
        #: Counts changes to the history (anti-entropy caches its root by it).
        self.revision = 0
        #: This replica object, among any that share its id (a random token
        #: its digests carry: a node that reaches itself is not a twin).
        self.instance = secrets.token_urlsafe(9)
        #: Divergences seen: kind -> count (see :meth:`statistics`).
        self._divergence: collections.Counter[str] = collections.Counter()
        #: Sources proven to sign two entries for one stamp, with the proof.
        self._banned: dict[str, tuple[Entry4, Entry4]] = {}
        #: Called with each divergence seen (see :meth:`on_divergence`).
        self._on_divergence: tuple[Callable[[Divergence], None], ...] = ()
        #: ``(update, clock)``: the folded history, if compacted.
        self.compacted: tuple[Any, dict[str, float]] | None = None
        self.snapshot_version = 0

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

    @property
    def last_write_wins(self) -> Callable[[Any], Hashable] | None:
        """The key function of a last-write-wins type (``None`` otherwise)."""
        return self._key

    @property
    def wall(self) -> Callable[[], float]:
        """The wall clock in milliseconds this replica stamps by."""
        return self._wall

    def newest(self, key: Hashable) -> Stamp | None:
        """The stamp of the entry kept for ``key`` (last-write-wins types)."""
        return self._history.newest(key)

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

        With a store in ``"full"`` durability, this blocks the calling
        thread (the event loop, in trio code) for one SQLite commit with an
        fsync, typically a millisecond or a few, and up to the store's
        ``busy_timeout`` if another process holds the database's write
        lock; ``"batch"`` durability commits from a thread instead.

        Raises:
            TypeError: the change is not a JSON value that every peer will
                read back exactly (see :func:`repred.protocol.check_value`):
                the message names the offending part.
            ValueError: the entry's line would be longer than
                ``max_entry_bytes`` (:data:`DEFAULT_MAX_LINE_BYTES`, the
                limit every peer applies by default), so peers would refuse
                it.
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
        return self._write(upd, checked=False)

    def _write(
        self,
        upd: Any,
        *,
        checked: bool,
        key: Hashable = None,
        size: int = 0,
        again: bool = False,
    ) -> Any:
        """:meth:`update`, after ``map`` (see ``_WRITE_OPTIONS`` for the
        keywords): the hot path of every local write."""
        store, me, history = self.store, self.id, self._history
        if store is not None:
            store.check()  # earlier writes that failed refuse this one
        now, last = self._wall(), self._last
        ts = now if now > last else _next_stamp(last)
        old = None if key is None else history.newest(key)
        if old is not None and old >= (ts, me):  # (see "Written ahead", below)
            ts = _next_stamp(old[0])
        if type(ts) is float and ts.is_integer():
            ts = int(ts)  # canonical_stamp, inline: a whole number is an int
        if ts > MAX_STAMP:
            raise ValueError(f"stamp {ts!r} would be out of range")
        change = self._reduce_write(upd, ts, again)
        if change is None:
            return None
        try:
            signature = None
            if (
                not checked
                or not size
                or self._signer is not None
                or size + CHAR_BYTES * len(me) + ENTRY_FRAME_BYTES
                > self.max_entry_bytes
            ):
                signature = self._checked_write(change, ts, checked)
            k = key
            if self._key is not None and (key is None or change is not upd):
                k = self._key(change)
                old = history.newest(k)
                if old is not None and old >= (ts, me):  # ("Written ahead")
                    self._rebuild()
                    return self._write(upd, checked=checked, key=k, again=again)
            if store is not None:
                self._store_write(change, ts, old, signature)
        except BaseException:
            self._rebuild()
            raise
        self._last = ts
        if me not in self._clock:
            self._clock_bytes += clock_cost(me)
        self._clock[me] = ts
        self.revision += 1
        history.record(change, ts, me, k, old, signature)
        if self._listeners:
            self._notify(change, ts, me, None)
        for watcher in self._watchers:
            watcher(me, ts, None)
        return change

    def _reduce_write(self, upd: Any, ts: float, again: bool) -> Any:
        """The change a local update makes, or ``None`` if it makes none
        (``again``: ``upd`` itself, whatever its effect here)."""
        try:
            if self._stamped:
                change = self._reducer(self.state, upd, (ts, self.id))
            else:
                change = self._reducer(self.state, upd)
        except BaseException:
            if not self._checks_first:
                self._rebuild()
            raise
        if change is None or (type(change) in _EMPTY_TYPES and not change):
            return upd if again else None  # (is_empty, inline: every write)
        return change

    def _store_write(
        self, change: Any, ts: float, old: Stamp | None, signature: str | None
    ) -> None:
        """Commit a local write (and the drop of what it supersedes)."""
        store = self.store
        assert store is not None
        if old is not None:
            store.drop(*old)
        store.add(change, ts, self.id, signature)
        store.advance(self.id, ts)
        store.commit(discard_on_error=True)

    def _checked_write(self, change: Any, ts: float, checked: bool) -> str | None:
        """Refuse a change peers would not take back exactly (a value that
        is not JSON, an entry longer than a line); its signature, if any."""
        if not checked:
            check_value(change, "the change")
        signer, me = self._signer, self.id
        signature = None if signer is None else signer.sign(change, ts, me)
        measured = len(encode_entry(change, ts, me, signature))
        if measured > self.max_entry_bytes:
            raise ValueError(
                f"the entry would be {measured} bytes, over the"
                f" {self.max_entry_bytes} byte line limit peers apply;"
                " split the value"
            )
        return signature

    # -- remote entries --------------------------------------------------

    def apply(
        self,
        entries: Iterable[tuple[Any, float, str]],
        origin: object = None,
        *,
        check: bool = True,
        skipped: set[str] | None = None,
    ) -> int:
        """Apply entries ``(change, ts, source)`` from a peer, in order.

        Returns how many were new. Each is recorded exactly as given,
        whatever its local effect, unless the type declares it dominated.
        ``origin`` is passed on to listeners (a session uses it to avoid
        echoing an entry back). An entry stamped more than ``max_drift_ms``
        ahead is not applied (counted in :attr:`deferred`). If one entry
        raises, every entry before it stays applied and it, and every entry
        after it, changes nothing.

        ``skipped`` is the caller's set of sources whose entries are not
        being applied: an entry stamped too far ahead adds its source to it,
        and later entries of a source in it are passed over (applying them
        would make the clock claim the one passed over). A link keeps one
        such set; the entries arrive again on a later link.

        Raises:
            RemoteProtocolError: an entry is refused: a new source beyond
                the bound (``too-many-sources``), a second, different entry
                for a stamp already held (``equivocation``), or an entry in
                this replica's own name stamped later than it could have
                written (``forged``).
            StoreError: the store could not write the entries; they stay
                queued for the next commit, which retries them.
            Exception: whatever the reducer raised; the replica's state,
                clock and history are then as they were before that entry.
        """
        return self.apply_runs(runs(entries), origin, check=check, skipped=skipped)

    def apply_runs(
        self,
        entry_runs: Iterable[Run],
        origin: object = None,
        *,
        check: bool = True,
        skipped: set[str] | None = None,
    ) -> int:
        """:meth:`apply`, for entries grouped in runs (see :data:`Run`).

        Within a run the stamps strictly increase (see :func:`runs`). The
        work that does not depend on the entry (the clock, the bounds, the
        store's clock row, telling the links) is done once per run: this is
        the receive path of every link.
        """
        progress = _Progress(self._last, set() if skipped is None else skipped)
        try:
            for run in entry_runs:
                self._apply_run(run, origin, check, progress)
        finally:
            self._last = progress.last
            if self.store is not None and (progress.applied or progress.repaired):
                # Recorded before anyone hears of it: the peer's clock for
                # us only moves on what we send after this returns. If the
                # commit fails, the rows stay queued and every later commit
                # retries them, so the clock on disk never covers an entry
                # the disk lacks.
                self.store.commit()
        return progress.applied

    def _apply_run(
        self, run: Run, origin: object, check: bool, progress: _Progress
    ) -> None:
        """Apply one run (see :meth:`apply_runs`). If the reducer raises, the
        entries before the one that failed stay recorded, the clock moves
        over them, and the state is made whole again from the history."""
        source, stamps = run[0], run[1]
        known = self._clock.get(source)
        start = self._covered(run, known, origin, progress)
        if start == len(stamps):
            return
        end, cap = self._admissible(run, start, check, progress)
        if end == start:
            return
        if known is None:
            self._admit(source, run[2][start], stamps[start])
        log, fresh = self._history.log_for(source)
        progress.cursor = start
        try:
            if self._reduce_bulk(run, start, end, log, origin):
                progress.cursor = end
            else:
                self._reduce_run(run, start, end, log, origin, progress)
        finally:
            self._ran(run, start, known, fresh, cap, origin, progress)

    def _covered(
        self, run: Run, known: float | None, origin: object, progress: _Progress
    ) -> int:
        """Where the entries the clock does not cover start; those it covers
        are checked against what is held (an omission taken, a second
        version settled)."""
        stamps = run[1]
        if known is None or stamps[0] > known:
            return 0
        start = bisect_right(stamps, known)
        # (Committed with the entries.)
        progress.repaired += self._known(run, range(start), origin)
        return start

    def _admissible(
        self, run: Run, start: int, check: bool, progress: _Progress
    ) -> tuple[int, float]:
        """Where the run's admissible entries end, and the cap on the clock:
        entries stamped too far ahead, or later than this replica could have
        written in its own name, wait for a later link; a banned source's
        are refused; with ``verify``, every signature is checked."""
        source, stamps, changes, sigs = run
        skipped = progress.skipped
        end = n = len(stamps)
        if source in skipped:
            self.deferred += n - start
            return start, math.inf
        cap = math.inf
        if check or source == self.id:
            now = self._wall()
            if check:
                limit = now + self.max_drift_ms
                # Remote stamps move this replica's clock at most
                # max_ahead_ms ahead.
                cap = now + self.max_ahead_ms
                if stamps[-1] > limit:
                    end = bisect_right(stamps, limit, start)
                    skipped.add(source)
                    self.deferred += n - end
            if source == self.id and start < end:
                end = self._not_forged(
                    run, start, end, max(progress.last, now), skipped
                )
        if start < end and source in self._banned and self._verify is not None:
            self._divergence["refused"] += end - start
            return start, cap
        if start < end and self._verify is not None:
            self._check_signed(source, stamps, changes, sigs, start, end)
        return end, cap

    def _not_forged(
        self, run: Run, start: int, end: int, latest: float, skipped: set[str]
    ) -> int:
        """Entries in this replica's own name stamped later than it could
        have written are not applied on this link (like an entry too far
        ahead): someone else writes in its name."""
        stamps = run[1]
        if stamps[end - 1] <= latest:
            return end
        forged = bisect_right(stamps, latest, start, end)
        skipped.add(run[0])
        self.deferred += end - forged
        self._twin(
            f"an entry in its name stamped {stamps[forged]!r}, later than it"
            " has written"
        )
        return forged

    def _reduce_run(
        self,
        run: Run,
        start: int,
        end: int,
        log: SourceLog,
        origin: object,
        progress: _Progress,
    ) -> None:
        """Reduce and record entries ``start:end`` of a run (the hot path of
        every sync); ``progress.cursor`` ends past the last one recorded."""
        listeners = self._listeners_for(origin) if self._listeners else None
        reads_tuples = self._reads_tuples and not listeners
        source, stamps, changes, sigs = run
        state, fn, stamped = self.state, self._reducer, self._stamped
        key, store, history = self._key, self.store, self._history
        newest, i, in_reducer, kept_ts, kept = history.newest, start, False, [], []
        try:
            for i in range(start, end):
                change, ts = changes[i], stamps[i]
                # Kept as an immutable tuple; a reducer may want a list (JSON's).
                held = change
                if type(change) is list:
                    held = tuple(change)
                elif not reads_tuples and type(change) is tuple:
                    change = list(change)
                if key is not None:
                    stamp = (ts, source)
                    k = key(change)
                    old = newest(k)
                    if old is not None and old >= stamp:
                        continue  # dominated by what is kept: known, no effect
                in_reducer = True
                effect = (
                    fn(state, change, (ts, source)) if stamped else fn(state, change)
                )
                in_reducer = False
                signature = None if sigs is None else sigs[i]
                if key is not None:
                    history.keep(k, stamp, old, log, held, signature)
                    if old is not None and store is not None:
                        store.drop(*old)
                elif sigs is None:  # kept when the loop ends
                    kept_ts.append(ts)
                    kept.append(held)
                else:
                    log.append(ts, held, signature)
                if store is not None:
                    store.add(change, ts, source, signature)
                if listeners:
                    self._notify(effect, ts, source, origin, listeners)
            i = end
        except BaseException:
            log.extend(kept_ts, kept)
            if in_reducer and not self._checks_first:
                self._rebuild()  # the reducer may have changed part of it
            raise
        finally:
            progress.cursor = i
        log.extend(kept_ts, kept)

    def _reduce_bulk(
        self, run: Run, start: int, end: int, log: SourceLog, origin: object
    ) -> bool:
        """A last-write-wins type's run whose keys are all new here, none
        twice: no entry dominates another, so the run is reduced and
        recorded at once (``False`` if it is not such a run, or if a
        listener hears of each entry)."""
        if (
            self._bulk is None
            or end - start < _BULK_MIN
            or not self._reads_tuples
            or (self._listeners and self._listeners_for(origin))
        ):
            return False
        by_key, reduce_all = self._bulk
        source, stamps, changes, sigs = run
        whole = start == 0 and end == len(stamps)
        run_stamps = stamps if whole else stamps[start:end]
        run_changes = changes if whole else changes[start:end]
        keys = by_key(run_changes)
        if keys is None or len(keys) != end - start or not self._history.all_new(keys):
            return False
        try:
            reduce_all(self.state, keys)
        except BaseException:
            if not self._checks_first:
                self._rebuild()
            raise
        self._history.index_run(keys, run_stamps, source)
        run_sigs = None if sigs is None else sigs[start:end]
        if type(run_changes[0]) is list:  # all are (see _bulk): kept as tuples
            run_changes = list(map(tuple, run_changes))
        log.extend(run_stamps, run_changes, run_sigs)
        store = self.store
        if store is not None:
            for j, (ts, change) in enumerate(zip(run_stamps, run_changes, strict=True)):
                store.add(change, ts, source, None if run_sigs is None else run_sigs[j])
        return True

    def _ran(
        self,
        run: Run,
        start: int,
        known: float | None,
        fresh: bool,
        cap: float,
        origin: object,
        progress: _Progress,
    ) -> None:
        """After a run (whole, or up to an entry that raised): the clock,
        the store's clock row, and the links hear of it."""
        source, stamps = run[0], run[1]
        i = progress.cursor
        if fresh:
            self._history.drop_if_empty(source)  # nothing of it was kept
        if i > start:
            ts = stamps[i - 1]
            self._clock[source] = ts
            if self.store is not None:
                self.store.advance(source, ts)
            if ts > progress.last:
                progress.last = ts if ts <= cap else max(progress.last, cap)
            progress.applied += i - start
            self.revision += 1
            for watcher in self._watchers:
                watcher(source, ts, origin)
        elif known is None:
            self._clock_bytes -= clock_cost(source)  # admitted, not taken

    def _listeners_for(self, origin: object) -> list[Listener]:
        """The listeners to tell of entries from ``origin`` (never its own)."""
        if origin is None:
            return self._listeners
        return [
            f for f in self._listeners if getattr(f, "__self__", None) is not origin
        ]

    def _check_signed(
        self,
        source: str,
        stamps: list[float],
        changes: list[Any],
        sigs: list[str | None] | None,
        start: int,
        end: int,
    ) -> None:
        """Refuse the run unless every entry in it is signed by its source,
        and the source may write (``verify=True``)."""
        check = self._verify
        assert check is not None
        if self._writers is not None and not self._writers(source):
            raise RemoteProtocolError(
                f"source {source[:80]!r} is not among this replica's writers",
                reason="not-a-writer",
                line=entry_snippet(changes[start], stamps[start], source),
            )
        for i in range(start, end):
            signature = None if sigs is None else sigs[i]
            if not check(changes[i], stamps[i], source, signature):
                raise RemoteProtocolError(
                    f"an entry of source {source[:80]!r} at {stamps[i]!r} is"
                    " unsigned, or its signature does not match it"
                    + ("" if is_key_id(source) else " (the source is not a key)"),
                    reason="bad-signature",
                    line=entry_snippet(changes[i], stamps[i], source, signature),
                )

    def signature(self, source: str, ts: float) -> str | None:
        """The signature held with the entry ``(source, ts)``, if it came signed."""
        return self._history.signature(source, ts)

    def _admit(self, source: str, change: Any, ts: float) -> None:
        """Take a new source (its first entry ``change, ts``), within the
        bound on sources and digest size."""
        cost = clock_cost(source)
        if not self._room_for(1, cost):
            raise RemoteProtocolError(
                f"this replica holds {len(self._clock)} sources, the most it"
                f" takes (max_sources={self.max_sources}, and a digest within"
                " the line limit); refused a new one",
                reason="too-many-sources",
                line=entry_snippet(change, ts, source),
            )
        self._clock_bytes += cost

    def _room_for(self, sources: int, cost: int) -> bool:
        """Whether the clock takes ``sources`` new sources of ``cost`` bytes
        in all, within the bound on sources and on the digest's size."""
        return (
            len(self._clock) + sources <= self.max_sources
            and self._clock_bytes + cost <= self.max_entry_bytes - DIGEST_OVERHEAD_BYTES
        )

    def _take_clock(self, clock: Mapping[str, float]) -> None:
        """Move the clock forward to ``clock`` where it is behind."""
        for source, ts in clock.items():
            if ts > self._clock.get(source, -1):
                self._clock[source] = ts

    def _capped(self, stamps: Iterable[float]) -> float:
        """The newest of ``stamps``, at most ``max_ahead_ms`` ahead: as far
        as others' stamps move this replica's own clock."""
        return min(max(stamps, default=0), self._wall() + self.max_ahead_ms)

    # -- divergence: repairs, equivocation, twin ids ------------------------

    def on_divergence(
        self, handler: Callable[[Divergence], None]
    ) -> Callable[[], None]:
        """Call ``handler(divergence)`` for each :class:`~repred.Divergence`
        found: an entry repaired, an equivocation, a twin id, a banned
        source. Returns a function that removes the handler. A handler that
        raises is logged and otherwise ignored."""
        self._on_divergence += (handler,)

        def remove() -> None:
            self._on_divergence = tuple(
                h for h in self._on_divergence if h is not handler
            )

        return remove

    def statistics(self) -> ReplicaStatistics:
        """Counts of this replica: sources, entries, and divergences found
        since it was made (not kept across a restart, but for ``banned``,
        whose proofs its store keeps; ``twin_ids`` counts from the last
        :meth:`take_new_id`)."""
        seen = self._divergence
        return ReplicaStatistics(
            sources=len(self._clock),
            entries=len(self._history),
            repaired=seen["repaired"],
            equivocations=seen["equivocation"],
            twin_ids=seen["twin-id"],
            banned=len(self._banned),
            refused=seen["refused"],
            watchers=len(self._watchers),
            listeners=len(self._listeners),
        )

    def horizon(self) -> float:
        """The first stamp this replica keeps every entry from: it may have
        dropped older ones by its type's own bound (an event log kept for a
        time or a count, a membership map's reaping). Anti-entropy compares
        only entries from here on, and takes no older one back. ``0`` for
        types that keep everything."""
        if self._forgot < 0:
            return 0
        return math.nextafter(self._forgot, math.inf)

    def outstanding(self, sent: Mapping[str, float]) -> list[tuple[int, str]]:
        """``[(count, source)]`` for the sources holding entries newer than
        ``sent`` (a peer's clock): what a peer lacks, source by source."""
        clock = self._clock
        return [
            (log.outstanding(sent.get(source)), source)
            for source, log in self._history.logs.items()
            if source not in sent or clock[source] > sent[source]
        ]

    def repair(self, entry_runs: Iterable[Run], origin: object = None) -> int:
        """Take entries a peer found this replica lacks although its clock
        covers them (anti-entropy); return how many were taken.

        Each is checked as any entry from a peer. One this replica holds
        in another version is an equivocation, settled the same way on
        every replica (those first, so that a version that loses its stamp
        no longer hides what it dominated); one it holds already, one its
        type dominates or has dropped by declaration, one beyond its clock
        (which the protocol delivers in order), and, with ``verify=True``,
        one its source did not sign (counted as refused) change nothing.

        Raises:
            StoreError: the store could not write them (kept queued).
            Exception: whatever the reducer raised; nothing of that entry
                was applied.
        """
        taken = 0
        try:
            for run in entry_runs:
                source, stamps = run[0], run[1]
                known = self._clock.get(source, -1)
                held = self._history.get
                # Second versions first, then what this replica lacks.
                order = sorted(
                    (i for i, ts in enumerate(stamps) if ts <= known),
                    key=lambda i: held(source, stamps[i]) is None,
                )
                taken += self._known(run, order, origin)
        finally:
            if taken and self.store is not None:
                self.store.commit()
        return taken

    def _known(self, run: Run, order: Iterable[int], origin: object) -> int:
        """Entries ``order`` of a run, at or below the clock: each is taken
        if this replica lacks it, settles an equivocation, or does nothing.
        How many were taken, and reported as repaired."""
        source, stamps, changes, sigs = run
        taken = 0
        for i in order:
            change, ts = changes[i], stamps[i]
            signature = None if sigs is None else sigs[i]
            held = self._history.get(source, ts)
            if held is None:
                taken += self._take(change, ts, source, signature, origin)
            elif not _same(held, change):
                self._equivocation(source, ts, held, change, signature, origin)
        if taken:
            self._diverged(
                Divergence(
                    kind="repaired",
                    source=source,
                    entries=taken,
                    message=f"took {taken} {'entry' if taken == 1 else 'entries'}"
                    f" of source {source[:80]!r} that this replica lacked"
                    " although its clock covered them",
                ),
                logging.INFO,
            )
        return taken

    def _take(
        self, change: Any, ts: float, source: str, signature: str | None, origin: object
    ) -> bool:
        """Apply one entry below this source's clock (see :meth:`repair`)."""
        snapshot = self.compacted
        if ts < self.horizon() or (
            snapshot is not None and ts <= snapshot[1].get(source, -1)
        ):
            return False  # dropped by declaration, or folded into the snapshot
        if self._verify is not None and not self._verified(
            source, ts, change, signature
        ):
            return False
        k = old = None
        if self._key is not None:
            k = self._key(change)
            old = self._history.newest(k)
            if old is not None and old >= (ts, source):
                return False  # dominated: known in effect
        given = list(change) if type(change) is tuple else change
        try:
            if self._stamped:
                effect = self._reducer(self.state, given, (ts, source))
            else:
                effect = self._reducer(self.state, given)
        except BaseException:
            if not self._checks_first:
                self._rebuild()
            raise
        self._history.put(given, ts, source, k, old, signature)
        if self.store is not None:
            if old is not None:
                self.store.drop(*old)
            self.store.add(given, ts, source, signature)
        self.revision += 1
        if source == self.id and ts > self._own_at_open:
            # Written in our name since this replica opened, and not by it
            # (an older one may be a row its store lost).
            self._twin(f"an entry in its name at stamp {ts!r} that it never wrote")
        if self._listeners:
            self._notify(effect, ts, source, origin, self._listeners_for(origin))
        return True

    def _verified(
        self,
        source: str,
        ts: float,
        change: Any,
        signature: str | None,
        *,
        banned_too: bool = False,
    ) -> bool:
        """For a verifying replica: whether an entry that arrived below its
        source's clock may be taken (``banned_too``: even if its source is
        banned, to settle a stamp it holds). One that is not is refused
        quietly and counted: the peer that sent it (a relay that does not
        verify) may hold it in good faith, and its link stays up."""
        if banned_too or source not in self._banned:
            with contextlib.suppress(RemoteProtocolError):
                self._check_signed(source, [ts], [change], [signature], 0, 1)
                return True
        self._divergence["refused"] += 1
        return False

    def _equivocation(
        self,
        source: str,
        ts: float,
        held: Any,
        change: Any,
        signature: str | None,
        origin: object,
    ) -> None:
        """Two versions of one stamp. Every replica keeps the same one,
        whatever the order they arrive in: one validly signed by its source
        over one that is not, else the one whose entry hash is smaller. A
        replica never gives up an entry of its own (another writer under
        its id, or a forger, sent the other one)."""
        mine, theirs = entry_hash(ts, held), entry_hash(ts, change)
        if mine == theirs:
            return  # one JSON value, spelt two ways
        if self._verify is not None and not self._verified(
            source, ts, change, signature, banned_too=True
        ):
            return  # not the source's: a forgery, refused
        held_sig = self._history.signature(source, ts)
        check = self._verify or verifier()
        held_ok = held_sig is not None and check(held, ts, source, held_sig)
        theirs_ok = signature is not None and check(change, ts, source, signature)
        if held_ok and not theirs_ok:
            # The source signed what is held: the other is not its writing.
            self._divergence["refused"] += 1
            return
        self._diverged(
            Divergence(
                kind="equivocation",
                source=source,
                ts=ts,
                message=f"source {source[:80]!r} wrote two different entries"
                f" with stamp {ts!r} (hashes {mine.hex()} and {theirs.hex()});"
                " every replica keeps the same one (one its source signed, else"
                " the one with the smaller hash)",
            )
        )
        if held_sig is not None and signature is not None and held_ok and theirs_ok:
            self.prove((held, ts, source, held_sig), (change, ts, source, signature))
        if (theirs_ok, mine) > (held_ok, theirs):
            self._replace(source, ts, held, change, signature, origin)
            if source == self.id:
                # Ours loses the stamp everywhere: what we wrote is written
                # again, under a new one, so that it is never lost.
                self._write(
                    list(held) if type(held) is tuple else held,
                    checked=False,
                    again=True,
                )
        if source == self.id:
            self._twin(f"a second version of its own entry at stamp {ts!r}")

    def _replace(
        self,
        source: str,
        ts: float,
        held: Any,
        change: Any,
        signature: str | None,
        origin: object,
    ) -> None:
        """Keep ``change`` at ``(source, ts)`` instead of ``held``."""
        if self._verify is not None:
            self._check_signed(source, [ts], [change], [signature], 0, 1)
        given = list(change) if type(change) is tuple else change
        history = self._history
        k = old = None
        if self._key is not None:
            k = self._key(given)
            history.unindex(self._key(held), (ts, source))
            old = history.newest(k)
        history.logs[source].discard(ts)
        store = self.store
        if old is None or old < (ts, source):
            history.put(given, ts, source, k, old, signature)
            if store is not None:
                if old is not None:
                    store.drop(*old)
                store.replace(given, ts, source, signature)
        elif store is not None:
            store.drop(ts, source)  # the version kept is dominated here
        self._rebuild()
        self.revision += 1
        if self.store is not None:
            self.store.commit()
        if self._listeners:
            self._notify(given, ts, source, origin, self._listeners_for(origin))

    def _twin(self, evidence: str, *, count: int = 1) -> None:
        """Another writer uses this replica's id. ``count=0``: a claim, not
        yet evidence (a peer's handshake naming this id)."""
        remedy = (
            "give one of them a new key (repred.SigningKey.generate(); the"
            " peer command: a new --key file)"
            if self._signer is not None
            else "give one of them a new id (Replica.take_new_id(), or restart"
            " that node's peer command with --new-id)"
        )
        self._diverged(
            Divergence(
                kind="twin-id",
                source=self.id,
                entries=count,
                message=f"another live replica writes under this replica's id"
                f" {self.id[:80]!r}: it received {evidence}. Two nodes were"
                " probably started from one copied store (a restored backup,"
                f" a cloned machine). Their entries still converge: {remedy};"
                " it keeps the data it holds. The other goes on as it is.",
            )
        )

    def take_new_id(self, new: str | None = None) -> str:
        """Write under a new source id from now on (another live replica
        uses this one's); return it. Everything held stays, the entries
        written under the old id among them. Made durable in the store.

        Raises:
            ValueError: a signed replica's id is its key's: give it a new
                :class:`~repred.SigningKey` instead.
            StoreError: the store could not record it.
        """
        if self._signer is not None:
            raise ValueError(
                "a signed replica's id is its key's id: make it with a new"
                " SigningKey instead"
            )
        new = check_id(new_id() if new is None else new)
        if new == self.id or new in self._clock:
            raise ValueError(f"{new!r} is already a source this replica holds")
        if self.store is not None:
            self.store.set_id(new)
        self.id = new
        self._own_at_open = -1.0
        self._divergence.pop("twin-id", None)  # (a count for the id in use)
        return new

    def twin_seen(
        self,
        peer_id: str | None,
        instance: str | None = None,
        holds: float | None = None,
    ) -> None:
        """A peer's handshake named this replica's own id, from another
        replica object than this one (``instance`` tells a node that
        reached itself, through a forwarder, from a twin). ``holds``: the
        peer's clock for this id. Said always; counted (see
        :meth:`statistics`) only if the peer holds writes in this name that
        this replica never made, and only for an unsigned replica: a
        handshake proves nothing, and a signed one's twin shows in entries
        signed with its key."""
        if peer_id != self.id or instance == self.instance:
            return
        mine = self._clock.get(self.id, -1)
        counted = self._signer is None and holds is not None and holds > mine
        self._twin(
            "a link whose other end says it is this replica"
            + (" and holds writes in its name it never made" if counted else ""),
            count=int(counted),
        )

    def _diverged(self, event: Divergence, level: int = logging.WARNING) -> None:
        self._divergence[event.kind] += event.entries
        limited(level, event.kind, "repred: %s: %s", self.type_name, event.message)
        for handler in self._on_divergence:
            try:
                handler(event)
            except Exception:
                log.exception("repred divergence handler %r raised", handler)

    # -- proven equivocators ----------------------------------------------

    def proofs(self) -> list[tuple[Entry4, Entry4]]:
        """The proofs held: two signed entries of one source for one stamp."""
        return list(self._banned.values())

    def prove(self, first: Entry4, second: Entry4) -> bool:
        """Take a proof of equivocation from a peer (or found here); ``True``
        if it is new and sound (both signatures valid, one source and stamp,
        two different changes). A replica that verifies refuses the source's
        later entries."""
        source, ts = first[2], first[1]
        if (
            source in self._banned
            or source not in self._clock  # a source this replica never took
            or len(self._banned) >= MAX_PROOFS
            or (self._writers is not None and not self._writers(source))
            or second[2] != source
            or second[1] != ts
            or not is_key_id(source)
            or entry_hash(ts, first[0]) == entry_hash(ts, second[0])
        ):
            return False
        check = self._verify or verifier()
        if not (check(*first) and check(*second)):
            return False
        self._banned[source] = (first, second)
        if self.store is not None:
            self.store.save_proof(first, second)
        self._diverged(
            Divergence(
                kind="banned",
                source=source,
                ts=ts,
                message=f"source {source[:80]!r} signed two different entries"
                f" for stamp {ts!r}: proven to equivocate"
                + (", its later entries are refused" if self._verify else ""),
            )
        )
        return True

    # -- keeping the state true ----------------------------------------

    def _rebuild(self) -> None:
        """Rebuild the state from the snapshot and the history.

        Called when a reducer raised halfway or a write was refused after the
        reducer ran: what the history holds is the truth, and a convergent
        reducer gives the same state from it in any order.
        """
        state = copy.deepcopy(self._initial)
        reducer = self._reducer
        if self.compacted is not None:
            reducer(state, self.compacted[0])
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
        self._dropped(self._history.forget(old))

    def _forget_keys(self, keys: Iterable[Hashable]) -> None:
        """Drop the entries kept for ``keys`` (a last-write-wins type's own bound)."""
        self._dropped(self._history.forget_keys(keys))

    def _dropped(self, dropped: list[tuple[float, str]]) -> None:
        """What follows a drop by the type's own bound: the horizon moves,
        and the store forgets them too."""
        self._forgot = max(self._forgot, max((ts for ts, _ in dropped), default=-1.0))
        self.revision += 1
        if self.store is not None and dropped:
            for ts, source in dropped:
                self.store.drop(ts, source)
            self.store.commit()

    # -- durability ------------------------------------------------------

    def _open(self, store: SqliteStore, wanted_id: str | None) -> None:
        """Restore id, clock, history and state from ``store``."""
        loaded = store.open(self.type_name, wanted_id, self.id)
        self.id = loaded.id
        for first, second in loaded.proofs:
            self._banned[first[2]] = (first, second)
        # The state saved at a clean close stands for the replay of the
        # whole history, for a type that declares how to save it (its
        # snapshot function: what compaction relies on too). A verifying
        # replica replays, to check every signature.
        checkpoint = loaded.checkpoint if self.has_snapshot_fn else None
        if loaded.snapshot is not None:
            update, clock = loaded.snapshot
            if checkpoint is None:
                self._reducer(self.state, update)
            self.compacted = (update, clock)
            self._clock.update(clock)
        # Replay with the store detached: these entries are on disk already.
        # Stored stamps are not checked against the wall clock, which may
        # have moved back since they were written.
        self.store = None
        try:
            if checkpoint is not None:
                self._reducer(self.state, checkpoint[0])
                self._restore(loaded.entries)
            else:
                self.apply_runs(loaded.entries, check=False)
        except RemoteProtocolError as exc:
            # Only a verifying replica refuses what its own store holds.
            store.close()
            raise StoreError(
                f"{store.path} holds an entry this replica refuses: {exc}"
            ) from None
        self._take_clock(loaded.clock)
        self._clock_bytes = sum(map(clock_cost, self._clock))
        self._own_at_open = self._clock.get(self.id, -1.0)
        # The clock resumes above its own stamps, and above the others'.
        self._last = max(
            self._clock.get(self.id, 0), self._capped(self._clock.values())
        )
        self.store = store

    def _restore(self, entry_runs: list[Run]) -> None:
        """Take the history the store held without replaying it (the state
        came from its checkpoint)."""
        for source, stamps, changes, sigs in entry_runs:
            if source not in self._clock:
                self._admit(source, changes[0], stamps[0])
            self._history.restore(source, stamps, changes, sigs)
            self._clock[source] = stamps[-1]

    # -- compaction ------------------------------------------------------

    def compact(self) -> None:
        """Fold the whole history into a snapshot (needs ``snapshot=``).

        The history is then empty; a peer whose clock predates the snapshot
        receives the snapshot and then the tail. Memory (and the store)
        then follow the state, not the number of updates.
        """
        if self._snapshot_fn is None:
            raise ValueError(f"{self.type_name!r} declares no snapshot= function")
        if self._verify is not None:
            raise ValueError(
                "a verifying replica cannot compact: a snapshot carries no"
                " signatures, so its peers could not check what it folded"
            )
        update = self._snapshot_fn(self.state)
        check_value(update, "the snapshot")
        clock = dict(self._clock)
        if self.store is not None:
            self.store.save_snapshot(update, clock, drop_covered=True)
        self.compacted = (update, clock)
        self.snapshot_version += 1
        self.revision += 1
        self._history.cover(clock)

    @property
    def has_snapshot_fn(self) -> bool:
        """The type folds its history into snapshots (``snapshot=``), and
        this replica takes them (it does not verify signatures)."""
        return self._snapshot_fn is not None and self._verify is None

    def snapshot_of_state(self) -> Any:
        """The whole state as the type's snapshot function gives it."""
        if self._snapshot_fn is None:
            raise ValueError(f"{self.type_name!r} declares no snapshot= function")
        return self._snapshot_fn(self.state)

    def join_snapshot(
        self, update: Any, clock: Mapping[str, float], origin: object = None
    ) -> bool:
        """Join a peer's whole state into this one (anti-entropy found the
        two states differ although their clocks agree); as
        :meth:`apply_snapshot`, but taken even when the clock covers it."""
        return self.apply_snapshot(update, clock, origin, join=True)

    def apply_snapshot(
        self,
        update: Any,
        clock: Mapping[str, float],
        origin: object = None,
        *,
        join: bool = False,
    ) -> bool:
        """Merge a peer's snapshot; ``False`` if it held nothing new.

        A snapshot from a peer can only add: the reducer joins it into the
        state, the clock moves forward for the sources it covers, and no
        entry this replica holds is dropped (only :meth:`compact` does
        that). It never covers this replica's own source. One with a clock
        stamped more than ``max_drift_ms`` ahead is not applied.

        Raises:
            ValueError: this replica takes no snapshots.
            RemoteProtocolError: it would take the replica past its bound on
                sources (``too-many-sources``).
            Exception: whatever the reducer raised (nothing is changed).
        """
        clock = {s: ts for s, ts in clock.items() if s != self.id}
        cost = self._snapshot_cost(clock, join)
        if cost is None:
            return False
        before = copy.deepcopy(self.state) if not self._checks_first else None
        try:
            effect = self._reducer(self.state, update)
            merged_update, merged = self._merge_compacted(update, clock)
            check_value(merged_update, "the snapshot")
            if self.store is not None:
                self.store.save_snapshot(merged_update, merged, drop_covered=False)
        except BaseException:
            if before is not None:
                self.state = before
            else:
                self._rebuild()
            raise
        self._clock_bytes += cost
        self._take_clock(clock)
        self._last = max(self._last, self._capped(clock.values()))
        self.compacted = (merged_update, merged)
        self.snapshot_version += 1
        self.revision += 1
        if self._listeners and clock:
            # A snapshot has no single source: listeners see the source of
            # the newest stamp it covers.
            newest = max(clock.items(), key=lambda item: item[1])
            self._notify(effect, newest[1], newest[0], origin)
        return True

    def _snapshot_cost(self, clock: Mapping[str, float], join: bool) -> int | None:
        """What a snapshot's new sources add to the clock's bytes, or
        ``None`` if it holds nothing new or is stamped too far ahead to take
        now; raises if this replica cannot take it."""
        if self._snapshot_fn is None:
            raise ValueError(f"{self.type_name!r} takes no snapshots")
        if self._verify is not None:
            raise RemoteProtocolError(
                "a verifying replica takes no snapshots (a snapshot carries no"
                " signatures)",
                reason="bad-signature",
            )
        if not join and all(self._clock.get(s, -1) >= ts for s, ts in clock.items()):
            return None
        limit = self._wall() + self.max_drift_ms
        if any(ts > limit for ts in clock.values()):
            self.deferred += 1
            return None
        new = [s for s in clock if s not in self._clock]
        cost = sum(map(clock_cost, new))
        if not self._room_for(len(new), cost):
            raise RemoteProtocolError(
                "the snapshot would take this replica past its bound on sources",
                reason="too-many-sources",
            )
        return cost

    def _merge_compacted(
        self, update: Any, clock: Mapping[str, float]
    ) -> tuple[Any, dict[str, float]]:
        """The folded history once a peer's snapshot is joined into it."""
        if self.compacted is None:
            return update, dict(clock)
        assert self._snapshot_fn is not None
        joined = copy.deepcopy(self._initial)
        self._reducer(joined, self.compacted[0])
        self._reducer(joined, update)
        merged = dict(self.compacted[1])
        for source, ts in clock.items():
            merged[source] = max(ts, merged.get(source, -1))
        return self._snapshot_fn(joined), merged

    def close(self) -> None:
        """Write anything queued to the store and close it (if any).

        A type that declares a snapshot function leaves its state in the
        store as that function saves it, so that reopening does not replay
        the history (unless it was written to since).
        """
        if self.store is None:
            return
        checkpoint = None
        if self.has_snapshot_fn:
            try:
                checkpoint = (self.snapshot_of_state(), dict(self._clock))
            except Exception:
                log.exception("repred: %s: the state was not saved", self.type_name)
        self.store.close(checkpoint)

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
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(source, ts, origin)`` once per run of entries applied.

        Cheaper than a listener (no effect, one call per run); returns a
        function that removes it. The links use it; a watcher must not raise.
        """
        self._watchers += (watcher,)

        def remove() -> None:
            self._watchers = tuple(w for w in self._watchers if w is not watcher)

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


def _same(held: Any, change: Any) -> bool:
    """Whether two changes are one JSON value, spelt alike (``1`` and
    ``true``, ``1`` and ``1.0``, are equal in Python, not on the wire)."""
    if type(held) is tuple:
        held = list(held)
    if type(change) is tuple:
        change = list(change)
    if type(held) is type(change) and held != change:
        return False
    return bool(
        orjson.dumps(held, option=_SORTED) == orjson.dumps(change, option=_SORTED)
    )


_SORTED = orjson.OPT_SORT_KEYS


def _signed_id(
    signing_key: SigningKey | None, id: str | None, verify: bool, writers: Any
) -> str | None:
    """The id a replica takes, given its signing options (a signed
    replica's is its key's), or ``TypeError``/``ValueError``."""
    if writers is not None and not verify:
        raise ValueError("writers= needs verify=True")
    if signing_key is None:
        return id
    if not isinstance(signing_key, SigningKey):
        raise TypeError(f"signing_key must be a SigningKey, not {signing_key!r}")
    if id is not None and id != signing_key.id:
        raise ValueError(
            "id= and signing_key= disagree: a signed replica's id is its key's id"
        )
    return signing_key.id


def _writers(writers: Writers | None) -> Callable[[str], bool] | None:
    """``writers=`` as a predicate (a set is copied: later changes to the
    caller's set do not change who may write)."""
    if writers is None or callable(writers):
        return writers
    if isinstance(writers, str):
        raise TypeError("writers= is a set of ids, not one id")
    allowed = frozenset(writers)
    return allowed.__contains__


#: The keywords of Replica._write, for the types' methods that call it:
#: ``checked``: the reducer returns ``upd`` itself, or a part of it, and the
#: caller has checked it with check_value (with a message that names its
#: argument). ``key``: for a last-write-wins type, the change's key, if the
#: caller knows it (as ``last_write_wins`` would give it for ``upd``).
#: ``size``: with ``checked``, at least the encoded size of any change the
#: reducer returns, if the caller knows a bound (see ``CHAR_BYTES``): an
#: entry certainly within the line limit is not encoded to measure it.
#: ``again``: record ``upd`` as the change even if it changes nothing here
#: (an entry of ours that lost its stamp to a second version, written
#: again under a new one).
_WRITE_OPTIONS = ("checked", "key", "size", "again")

# Written ahead. A key may hold a write stamped ahead of this replica's
# clock (a peer's runs fast, within max_drift_ms): a later local write comes
# after it, so it must win everywhere, not only here; Replica._write stamps it
# just above it (and, when the key is known only once the update is reduced,
# reduces it again).

#: The shortest run a type's bulk path takes (below it, checking whether
#: it may costs more than the loop).
_BULK_MIN = 8


def log_of(replica: Replica, source: str) -> SourceLog | None:
    """The log of ``source`` in ``replica``, to read: how a link, its
    anti-entropy and their summary read what a replica holds (no public
    name of the replica's gives it)."""
    return replica._history.logs.get(source)


def _next_stamp(ts: float) -> float:
    """The next stamp above ``ts``: a thousandth of a millisecond later."""
    nxt = ts + 0.001
    if nxt <= ts:
        nxt = math.nextafter(ts, math.inf)
    return nxt


def repred(
    reducer: Callable[..., Any], initial: Any, **options: Unpack[ReducerOptions]
) -> Replica:
    """Make a replicated reducer: ``Replica(reducer, initial, **options)``.

    The options, each a keyword, are :class:`Replica`'s (a misspelt one is a
    ``TypeError`` at the call).

    >>> import repred
    >>> def highest(state, update):
    ...     if update > state[0]:
    ...         state[0] = update
    ...         return update
    ...     return None
    >>> best = repred.repred(highest, [0], id="me")
    >>> best.update(7)
    7
    >>> best.update(3) is None
    True
    """
    return Replica(reducer, initial, **options)
