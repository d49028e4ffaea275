"""Durable histories: an SQLite store (stdlib ``sqlite3``, WAL mode).

A replica with a store writes every entry it records, every clock advance,
and every entry it drops as dominated, through to SQLite; reading stays in
memory. Reopening the file restores the replica's id, clock and history,
and the state is rebuilt by replaying the history through the reducer.

Reopening fast
--------------

A store packs its entries when it closes: each source with many rows has
them moved into segments (thousands of entries as two JSON arrays in one
row), and an entry dropped from a segment later is written down as a gap
until the next close rewrites that segment. A type that declares a snapshot
function (``gset``, ``two_phase_set``, ``orset``, or ``repred(...,
snapshot=)``) also leaves its state there, with the clock it covers; the
next open takes that state instead of replaying the history, and the first
write after it deletes it. A store that was not closed (a crash, ``kill
-9``) opens from its rows and replays: slower, never different.

The store tells the truth
-------------------------

* The clock on disk never covers an entry the disk lacks: a source's clock
  row is written in the same transaction as its entries, and rows that
  failed to commit stay queued, so every later transaction retries them
  before anything newer can land.
* ``durability="full"`` (the default) commits before :meth:`Replica.update`
  returns; if the commit fails the write is refused (``StoreError``) and
  leaves no trace. ``durability="batch"`` commits from a background thread
  every ``batch_interval`` seconds; if a flush fails it is retried, and until one
  succeeds every ``update()`` raises the error instead of pretending.
* Creating a store is atomic (built in a temporary file, then renamed).
* Opening checks everything: SQLite's ``quick_check``, a CRC-32 written with
  every row, stamps and ids within the wire's bounds, every entry covered
  by its source's clock. A damaged store is refused with ``StoreError``
  naming the damage, and its bytes are left untouched.
* A store is locked by the process that opened it (``fcntl.flock`` on
  ``PATH.lock``): a second :class:`SqliteStore` on the same file, in this
  process or another, gets ``StoreError`` "in use".

Blocking: a commit runs in the calling thread (the event loop, for a replica
updated from trio code) and takes one SQLite transaction with an fsync
(typically a millisecond or a few on an SSD). If another process holds the
database's write lock, a commit waits up to ``busy_timeout`` seconds and then
fails. Use ``durability="batch"`` to take commits off the calling thread.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import operator
import os
import struct
import threading
import zlib
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from ._errors import StoreError
from ._log import log
from ._wire import MAX_STAMP, canonical_stamp, is_source, is_stamp

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterator

    from ._history import Run

try:
    import fcntl
except ImportError:  # pragma: no cover  (not POSIX)
    fcntl = None  # type: ignore[assignment]

__all__ = ["SqliteStore", "StoreContents", "StoreError"]


#: The on-disk format this version writes and reads: a signed entry's change
#: blob is its JSON, a newline, and its signature (JSON never holds a raw
#: newline); rows are packed into segments, with their gaps and the state
#: checkpoint (below).
STORE_FORMAT = 4

#: A segment packs up to this many entries of one source...
SEGMENT_ENTRIES = 4096
#: ...or this many bytes of their changes, whichever comes first.
SEGMENT_BYTES = 1 << 20
#: A source's rows are packed into segments when it has at least this many.
PACK_MIN_ROWS = 256

_TABLES = (
    "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE clock (source TEXT PRIMARY KEY, ts REAL NOT NULL,"
    " crc INTEGER NOT NULL)",
    "CREATE TABLE entries (source TEXT NOT NULL, ts REAL NOT NULL,"
    " change BLOB NOT NULL, crc INTEGER NOT NULL, PRIMARY KEY (source, ts))"
    " WITHOUT ROWID",
    "CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " payload BLOB NOT NULL, clock BLOB NOT NULL, crc INTEGER NOT NULL)",
)

# Format 4: segments (a segment's signatures, if any came signed, are a
# third JSON array), their gaps and the checkpoint; see "Reopening fast".
_TABLES_4 = (
    "CREATE TABLE IF NOT EXISTS segments (source TEXT NOT NULL,"
    " first REAL NOT NULL, last REAL NOT NULL, stamps BLOB NOT NULL,"
    " changes BLOB NOT NULL, sigs BLOB, crc INTEGER NOT NULL,"
    " PRIMARY KEY (source, first)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS gaps (source TEXT NOT NULL, ts REAL NOT NULL,"
    " crc INTEGER NOT NULL, PRIMARY KEY (source, ts)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY"
    " CHECK (id = 1), payload BLOB NOT NULL, clock BLOB NOT NULL,"
    " crc INTEGER NOT NULL)",
)

#: The tables a store of this format holds.
_ALL_TABLES = frozenset(
    ("meta", "clock", "entries", "snapshot", "segments", "gaps", "checkpoint")
)

_pack = struct.Struct("<d").pack
_crc32 = zlib.crc32


def _entry_crc(source: str, ts: float, change: bytes) -> int:
    return _crc32(change, _crc32(_pack(ts), _crc32(source.encode())))


def _clock_crc(source: str, ts: float) -> int:
    return _crc32(_pack(ts), _crc32(source.encode()) ^ 0x5A5A5A5A)


def _meta_crc(k: str, v: str) -> int:
    return _crc32(f"{k}\0{v}".encode())


def _snapshot_crc(payload: bytes, clock: bytes) -> int:
    return _crc32(clock, _crc32(payload))


def _checkpoint_crc(payload: bytes, clock: bytes) -> int:
    return _crc32(clock, _crc32(payload) ^ 0x3C3C3C3C)


def _segment_crc(source: str, stamps: bytes, changes: bytes, sigs: bytes | None) -> int:
    crc = _crc32(changes, _crc32(stamps, _crc32(source.encode()) ^ 0x0F0F0F0F))
    return crc if sigs is None else _crc32(sigs, crc)


def _gap_crc(source: str, ts: float) -> int:
    return _crc32(_pack(ts), _crc32(source.encode()) ^ 0x69696969)


@attrs.frozen(kw_only=True)
class StoreContents:
    """What a store held when it was opened (:meth:`SqliteStore.open` gives
    it to the replica that opens the store, which takes it in)."""

    id: str
    clock: dict[str, float]
    #: Runs ``(source, stamps, changes, signatures)``, each source's in
    #: stamp order.
    entries: list[Run]
    snapshot: tuple[Any, dict[str, float]] | None
    #: The state saved at the last clean close, if nothing was written
    #: since: ``(payload, clock)``, the clock being the store's.
    checkpoint: tuple[Any, dict[str, float]] | None = None
    #: Proofs of equivocation kept (see :meth:`SqliteStore.save_proof`).
    proofs: list[tuple[Any, Any]] = attrs.Factory(list)


class SqliteStore:
    """Keep a replica's history, clock and id in an SQLite database.

    Args:
        path: the database file. It is created (atomically) if it does not
            exist; an existing file must be a sound repred store.
        durability: ``"full"`` (the default) commits before every update
            returns; ``"batch"`` commits every ``batch_interval`` from a
            thread.
        batch_interval: seconds between the commits of ``"batch"`` mode.
        busy_timeout: seconds a commit waits for another process that holds
            the database's write lock before it fails.

    Raises:
        StoreError: at open, if the file is in use, is not a repred store,
            holds another type of replica, or is damaged (the message names
            the damage). Nothing is overwritten.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "full",
        batch_interval: float = 0.02,
        busy_timeout: float = 1.0,
    ) -> None:
        if durability not in ("full", "batch"):
            raise ValueError('durability is "full" or "batch"')
        if not batch_interval > 0:
            raise ValueError("batch_interval must be positive seconds")
        if not busy_timeout >= 0:
            raise ValueError("busy_timeout must not be negative")
        self.path = os.fspath(path)
        self.durability = durability
        self.batch_interval = batch_interval
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._adds: list[tuple[str, float, bytes, int]] = []
        self._drops: list[tuple[str, float]] = []
        #: Entries that take the place of one dropped at the same stamp (a
        #: second version kept instead of the first): written after drops.
        self._replaces: list[tuple[str, float, bytes, int]] = []
        self._clock: dict[str, float] = {}
        self._error: StoreError | None = None
        #: A checkpoint row is on disk (deleted by the next write).
        self._checkpointed = False
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r} durability={self.durability}>"

    # -- opening -------------------------------------------------------

    def open(
        self, type_name: str, replica_id: str | None, new_id: str
    ) -> StoreContents:
        """Open (or create) the store for a replica; return what it held.

        ``replica_id`` is the id the caller insists on (``None``: whatever
        the store holds); ``new_id`` is the id a new store gets otherwise.
        """
        if self._db is not None:
            raise StoreError(f"{self.path} is already open")
        self._acquire()
        try:
            if not os.path.exists(self.path):
                self._create(type_name, replica_id or new_id)
            elif os.path.getsize(self.path) == 0:
                raise StoreError(
                    f"{self.path} is an empty file, not a repred store (a new"
                    " store is never made over an existing file: remove it to"
                    " start afresh)"
                )
            db, loaded = self._checked_open(type_name, replica_id)
        except BaseException:
            self._release()
            raise
        self._db = db
        if self.durability == "batch":
            self._closed.clear()
            self._flusher = threading.Thread(
                target=self._flush_loop, name="repred-store-flush", daemon=True
            )
            self._flusher.start()
        return loaded

    def _checked_open(
        self, type_name: str, replica_id: str | None
    ) -> tuple[sqlite3.Connection, StoreContents]:
        """The database and what it holds, checked before anything is
        written, even a pragma; the database is closed if it is refused."""
        import sqlite3

        try:
            db = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout,
            )
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path} is not a usable repred store: {exc}"
            ) from None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        try:
            loaded = _load(db, self.path, type_name, replica_id)
            db.execute("PRAGMA journal_mode=WAL")
            self._checkpointed = (
                db.execute("SELECT count(*) FROM checkpoint").fetchone()[0] > 0
            )
            db.execute(
                "PRAGMA synchronous="
                + ("FULL" if self.durability == "full" else "NORMAL")
            )
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(
                f"{self.path} is not a usable repred store: {exc}"
            ) from None
        except BaseException:
            db.close()
            raise
        return db, loaded

    @staticmethod
    def delete(path: str | os.PathLike[str]) -> None:
        """Remove the files of the store at ``path``: the database, its
        write-ahead log and shared memory, and its lock (a placed peer's
        ``discard``, say). Files already gone are passed over.

        Raises:
            StoreError: a store has it open (in this process or another).
        """
        path = os.fspath(path)
        fd = None
        if fcntl is not None and os.path.exists(path + ".lock"):
            # Held while the files go, so that no store opens them meanwhile.
            fd = os.open(path + ".lock", os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise StoreError(f"{path} is in use by a store") from None
        try:
            for suffix in ("", "-wal", "-shm", ".lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path + suffix)
        finally:
            if fd is not None:
                os.close(fd)

    def _acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"{self.path} is in use by another store (in this process or another)"
            ) from None
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _create(self, type_name: str, replica_id: str) -> None:
        """Build a new store in a temporary file and rename it into place."""
        import sqlite3

        meta = {"format": str(STORE_FORMAT), "type": type_name, "id": replica_id}
        rows = [(k, v, _meta_crc(k, v)) for k, v in meta.items()]
        tmp = f"{self.path}.new-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute("BEGIN")
                for table in _TABLES + _TABLES_4:
                    db.execute(table)
                db.executemany("INSERT INTO meta VALUES (?, ?, ?)", rows)
                db.execute("COMMIT")
            finally:
                db.close()
            _fsync(tmp)
            os.rename(tmp, self.path)
            _fsync(os.path.dirname(os.path.abspath(self.path)))
        except (OSError, sqlite3.Error) as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(f"cannot create {self.path}: {exc}") from None

    # -- writing (called by the replica) ---------------------------------

    # The lock matters only in "batch" mode, where the flusher thread writes
    # these lists; uncontended, it costs next to nothing.

    def add(
        self, change: Any, ts: float, source: str, signature: str | None = None
    ) -> None:
        """Queue an entry (and its signature, if it came signed) for the
        next commit."""
        row = _entry_row(change, ts, source, signature)
        with self._lock:
            self._adds.append(row)

    def drop(self, ts: float, source: str) -> None:
        """Queue the removal of a dominated or forgotten entry."""
        with self._lock:
            self._drops.append((source, ts))

    def replace(
        self, change: Any, ts: float, source: str, signature: str | None = None
    ) -> None:
        """Queue an entry that takes the place of the one held at its stamp
        (dropped first, in the same transaction)."""
        row = _entry_row(change, ts, source, signature)
        with self._lock:
            self._drops.append((source, ts))
            self._replaces.append(row)

    def save_proof(self, first: Any, second: Any) -> None:
        """Keep a proof that a source equivocates (two signed entries for
        one stamp), so that it is refused after a restart too."""
        k = "proof:" + str(first[2])
        v = orjson.dumps([list(first), list(second)]).decode()
        with self._lock:
            self._write()
            with self._transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?, ?)",
                    (k, v, _meta_crc(k, v)),
                )

    def set_id(self, replica_id: str) -> None:
        """Give the replica a new id (its old entries keep theirs)."""
        with self._lock:
            self._write()
            with self._transaction() as db:
                db.execute(
                    "UPDATE meta SET v = ?, crc = ? WHERE k = 'id'",
                    (replica_id, _meta_crc("id", replica_id)),
                )

    def advance(self, source: str, ts: float) -> None:
        """Queue a clock advance, written with the entries before it."""
        with self._lock:
            if ts > self._clock.get(source, -1):
                self._clock[source] = ts

    def check(self) -> None:
        """Raise the error that keeps queued writes off the disk, if any.

        In ``"full"`` mode, queued rows (left by a commit that failed) are
        retried first.

        Raises:
            StoreError: what was queued still cannot be made durable.
        """
        self.commit()  # (in "batch" mode, it raises the error kept)

    def commit(self, *, discard_on_error: bool = False) -> None:
        """Make what was queued durable (in ``"full"`` mode, now).

        Raises:
            StoreError: the transaction failed. The queued rows stay queued
                for the next commit, unless ``discard_on_error`` (the caller
                refuses the write they belong to).
        """
        if self.durability != "full":
            if self._error is not None:
                raise self._error
            return
        with self._lock:
            try:
                self._write()
            except StoreError:
                if discard_on_error:
                    self._adds, self._drops, self._clock = [], [], {}
                    self._replaces = []
                raise

    def save_snapshot(
        self, payload: Any, clock: dict[str, float], *, drop_covered: bool
    ) -> None:
        """Keep a snapshot, atomically with what is queued.

        With ``drop_covered`` (the replica's own compaction), the entries
        it covers are dropped in the same transaction.
        """
        blob = orjson.dumps(payload)
        clock_blob = orjson.dumps(clock)
        with self._lock:
            self._write()
            with self._transaction() as db:
                if self._checkpointed:
                    db.execute("DELETE FROM checkpoint")  # no longer the state
                if drop_covered:
                    db.executemany(
                        "DELETE FROM entries WHERE source = ? AND ts <= ?",
                        list(clock.items()),
                    )
                    _cover_segments(db, clock)
                db.execute("DELETE FROM snapshot")
                db.execute(
                    "INSERT INTO snapshot VALUES (1, ?, ?, ?)",
                    (blob, clock_blob, _snapshot_crc(blob, clock_blob)),
                )
                _advance_clock(db, clock)
            self._checkpointed = False

    def _write(self) -> None:
        """Write every queued row in one transaction; keep them if it fails."""
        adds, drops, clock = self._adds, self._drops, self._clock
        replaces = self._replaces
        if not (adds or drops or clock or replaces):
            return
        with self._transaction() as db:
            if self._checkpointed:
                db.execute("DELETE FROM checkpoint")  # no longer the state
            # Adds first: an entry added and dominated within one batch is
            # dropped by the same transaction.
            if adds:
                db.executemany(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)", adds
                )
            if drops:
                db.executemany("DELETE FROM entries WHERE source = ? AND ts = ?", drops)
                # An entry packed in a segment leaves a gap.
                db.executemany(
                    "INSERT OR IGNORE INTO gaps SELECT ?1, ?2, ?3 WHERE (SELECT"
                    " last FROM segments WHERE source = ?1 AND first <= ?2"
                    " ORDER BY first DESC LIMIT 1) >= ?2",
                    [(s, ts, _gap_crc(s, float(ts))) for s, ts in drops],
                )
            if replaces:
                db.executemany(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)", replaces
                )
            if clock:
                _advance_clock(db, clock)
        self._adds, self._drops, self._clock = [], [], {}
        self._replaces = []
        self._checkpointed = False
        if self._error is not None:
            log.info("repred: %s: queued writes are written again", self.path)
            self._error = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: committed whole, or rolled back whole."""
        import sqlite3

        db = self._require()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._failed(exc) from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._failed(exc) from None
            raise

    def _failed(self, exc: sqlite3.Error) -> StoreError:
        error = StoreError(f"cannot write to {self.path}: {exc}")
        # Said once per failure spell (the batch flusher retries every
        # batch_interval); the spell's end is said too.
        if self._error is None:
            log.error("repred: %s (queued writes kept for the next commit)", error)
        else:
            log.debug("repred: still %s", error)
        self._error = error
        return error

    def _flush_loop(self) -> None:
        while not self._closed.wait(self.batch_interval):
            with self._lock:
                try:
                    self._write()
                except StoreError:
                    pass  # kept, logged, and raised to the next update()
                except Exception as exc:  # pragma: no cover  (a bug of ours)
                    self._error = StoreError(f"store flush failed: {exc!r}")
                    log.exception("repred: store flush failed")

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    def entry_count(self) -> int:
        """How many entries the store holds (rows and packed)."""
        with self._lock:
            db = self._require()
            (rows,) = db.execute("SELECT count(*) FROM entries").fetchone()
            (gaps,) = db.execute("SELECT count(*) FROM gaps").fetchone()
            packed = sum(
                len(orjson.loads(blob))
                for (blob,) in db.execute("SELECT stamps FROM segments")
            )
            return int(rows) + packed - int(gaps)

    def close(self, checkpoint: tuple[Any, dict[str, float]] | None = None) -> None:
        """Write what is queued, pack the entries, and close the database.
        Idempotent.

        Packing moves the rows of every source with at least
        :data:`PACK_MIN_ROWS` of them into segments, and rewrites the
        segments that lost entries since they were packed; it is what makes
        a large store reopen in a fraction of a second. ``checkpoint``, the
        replica's state as its type's snapshot function saved it and the
        clock it covers, is kept for the next open (the first write after
        that deletes it). Packing is an optimisation: if it fails, it is
        logged and the store opens as it is.

        Raises:
            StoreError: what was queued could not be written (it is lost:
                the clock on disk does not cover it).
        """
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        if self._db is None:
            return
        try:
            with self._lock:
                self._write()
                self._pack(checkpoint)
        finally:
            self._db.close()
            self._db = None
            self._release()

    def _pack(self, checkpoint: tuple[Any, dict[str, float]] | None) -> None:
        import sqlite3

        db = self._require()
        try:
            state = None
            if checkpoint is not None:
                payload = orjson.dumps(checkpoint[0])
                clock = orjson.dumps(checkpoint[1])
                state = (payload, clock, _checkpoint_crc(payload, clock))
            db.execute("BEGIN IMMEDIATE")
            try:
                _pack_rows(db)
                _fill_gaps(db)
                if state is not None:
                    db.execute("DELETE FROM checkpoint")
                    db.execute("INSERT INTO checkpoint VALUES (1, ?, ?, ?)", state)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, orjson.JSONEncodeError) as exc:
            log.warning("repred: %s not packed at close: %s", self.path, exc)


def _fsync(path: str) -> None:
    """Make what ``path`` (a file or a folder) holds durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entry_row(
    change: Any, ts: float, source: str, signature: str | None
) -> tuple[str, float, bytes, int]:
    """An entries row (a signed entry's blob: see STORE_FORMAT)."""
    blob = orjson.dumps(change)
    if signature is not None:
        blob += b"\n" + signature.encode()
    return (source, ts, blob, _entry_crc(source, float(ts), blob))


# -- segments --------------------------------------------------------------


def _segment_row(
    source: str, stamps: list[Any], blobs: list[bytes], sigs: list[str | None] | None
) -> tuple[Any, ...]:
    """A segments row for entries whose changes are already JSON (``blobs``)."""
    stamps_blob = orjson.dumps(stamps)
    changes_blob = b"[" + b",".join(blobs) + b"]"
    sigs_blob = None if sigs is None else orjson.dumps(sigs)
    crc = _segment_crc(source, stamps_blob, changes_blob, sigs_blob)
    first, last = float(stamps[0]), float(stamps[-1])
    return source, first, last, stamps_blob, changes_blob, sigs_blob, crc


def _segments_of(
    source: str, stamps: list[Any], blobs: list[bytes], sigs: list[str | None] | None
) -> Iterator[tuple[Any, ...]]:
    """Cut entries into segments of at most SEGMENT_ENTRIES and (unless
    one entry is larger) SEGMENT_BYTES."""
    start, size = 0, 0
    for i, blob in enumerate(blobs):
        if i > start and (
            i - start >= SEGMENT_ENTRIES or size + len(blob) > SEGMENT_BYTES
        ):
            yield _segment_row(
                source, stamps[start:i], blobs[start:i], sigs and sigs[start:i]
            )
            start, size = i, 0
        size += len(blob)
    if start < len(blobs):
        yield _segment_row(source, stamps[start:], blobs[start:], sigs and sigs[start:])


def _pack_rows(db: sqlite3.Connection) -> None:
    """Move the rows of each source that has many into segments, reading
    them a segment's worth at a time."""
    sources = [
        source
        for (source,) in db.execute(
            "SELECT source FROM entries GROUP BY source HAVING count(*) >= ?",
            (PACK_MIN_ROWS,),
        )
    ]
    for source in sources:
        (packed_to,) = db.execute(
            "SELECT max(last) FROM segments WHERE source = ?", (source,)
        ).fetchone()
        rows = db.execute(
            "SELECT ts, change FROM entries WHERE source = ? ORDER BY ts", (source,)
        )
        chunk = rows.fetchmany(SEGMENT_ENTRIES)
        if packed_to is not None and chunk[0][0] <= packed_to:
            # Rows below packed segments (entries a peer found this
            # replica lacked): left as rows, which open merged in order.
            continue
        while chunk:
            stamps = [canonical_stamp(ts) for ts, _ in chunk]
            blobs, sigs = _split_signatures([blob for _, blob in chunk])
            db.executemany(
                "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, ?)",
                _segments_of(source, stamps, blobs, sigs),
            )
            chunk = rows.fetchmany(SEGMENT_ENTRIES)
        db.execute("DELETE FROM entries WHERE source = ?", (source,))


def _rewrite_segments(
    db: sqlite3.Connection, source: str, low: float, high: float, keep: Any
) -> None:
    """Rewrite the segments of ``source`` that overlap ``[low, high]``,
    keeping the entries for which ``keep(ts)`` holds."""
    found = db.execute(
        "SELECT first, stamps, changes, sigs FROM segments WHERE source = ?"
        " AND last >= ? AND first <= ?",
        (source, low, high),
    ).fetchall()
    for first, stamps_blob, changes_blob, sigs_blob in found:
        stamps = orjson.loads(stamps_blob)
        changes = orjson.loads(changes_blob)
        sigs = None if sigs_blob is None else orjson.loads(sigs_blob)
        kept = [i for i, ts in enumerate(stamps) if keep(ts)]
        if len(kept) == len(stamps):
            continue
        db.execute(
            "DELETE FROM segments WHERE source = ? AND first = ?", (source, first)
        )
        if kept:
            db.execute(
                "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, ?)",
                _segment_row(
                    source,
                    [stamps[i] for i in kept],
                    [orjson.dumps(changes[i]) for i in kept],
                    None if sigs is None else [sigs[i] for i in kept],
                ),
            )


def _fill_gaps(db: sqlite3.Connection) -> None:
    """Rewrite the segments that lost entries, and forget their gaps."""
    gaps: dict[str, set[float]] = {}
    for source, ts in db.execute("SELECT source, ts FROM gaps"):
        gaps.setdefault(source, set()).add(ts)
    for source, stamps in gaps.items():
        _rewrite_segments(
            db, source, min(stamps), max(stamps), lambda ts, s=stamps: ts not in s
        )
    db.execute("DELETE FROM gaps")


def _cover_segments(db: sqlite3.Connection, clock: dict[str, float]) -> None:
    """Drop what a snapshot covering ``clock`` holds from the segments."""
    for source, upto in clock.items():
        db.execute(
            "DELETE FROM segments WHERE source = ? AND last <= ?", (source, upto)
        )
        _rewrite_segments(db, source, -1.0, upto, lambda ts, u=upto: ts > u)
        db.execute("DELETE FROM gaps WHERE source = ? AND ts <= ?", (source, upto))


def _advance_clock(db: sqlite3.Connection, clock: dict[str, float]) -> None:
    db.executemany(
        "INSERT INTO clock VALUES (?, ?, ?) ON CONFLICT(source) DO UPDATE"
        " SET ts = excluded.ts, crc = excluded.crc WHERE excluded.ts > ts",
        [(s, ts, _clock_crc(s, float(ts))) for s, ts in clock.items()],
    )


# -- checking a store at open --------------------------------------------


def _damaged(path: str, what: str) -> StoreError:
    return StoreError(f"{path} is damaged: {what}; refused, the file is untouched")


def _check_source(path: str, source: Any) -> str:
    if not is_source(source):
        raise _damaged(path, f"bad source id {source!r:.80}")
    return source  # type: ignore[no-any-return]


def _check_ts(path: str, ts: Any) -> float:
    if not is_stamp(ts):
        raise _damaged(path, f"stamp {ts!r} out of range")
    return canonical_stamp(ts)


def _load(
    db: sqlite3.Connection, path: str, type_name: str, replica_id: str | None
) -> StoreContents:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    if not _ALL_TABLES <= tables:
        raise StoreError(f"{path} is an SQLite database, but not a repred store")
    meta = {}
    for k, v, crc in db.execute("SELECT k, v, crc FROM meta"):
        if type(k) is not str or type(v) is not str or _meta_crc(k, v) != crc:
            raise _damaged(path, f"meta row {k!r:.40} fails its checksum")
        meta[k] = v
    if meta.get("format") != str(STORE_FORMAT):
        raise StoreError(f"{path}: unknown store format {meta.get('format')!r}")
    if meta.get("type") != type_name:
        raise StoreError(
            f"{path} holds a {meta.get('type')!r} replica, not {type_name!r}"
        )
    stored_id = _check_source(path, meta.get("id"))
    if replica_id is not None and replica_id != stored_id:
        raise StoreError(f"{path} belongs to replica {stored_id!r}, not {replica_id!r}")
    problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise _damaged(path, "; ".join(map(str, problems[:3])))
    clock: dict[str, float] = {}
    for source, ts, crc in db.execute("SELECT source, ts, crc FROM clock"):
        _check_source(path, source)
        if type(ts) is not float or _clock_crc(source, ts) != crc:
            raise _damaged(path, f"clock row of {source!r:.80} fails its checksum")
        clock[source] = _check_ts(path, ts)
    entries = _load_entries(db, path, clock)
    snapshot = _state_row(db, path, "snapshot", _snapshot_crc)
    if snapshot is not None:
        for source, ts in snapshot[1].items():
            if clock.get(source, -1) < ts:
                raise _damaged(
                    path, f"the snapshot goes beyond the clock of {source!r}"
                )
    checkpoint = _state_row(db, path, "checkpoint", _checkpoint_crc)
    if checkpoint is not None and checkpoint[1] != clock:
        checkpoint = None  # only a checkpoint of exactly what the store holds
    return StoreContents(
        id=stored_id,
        clock=clock,
        entries=entries,
        snapshot=snapshot,
        checkpoint=checkpoint,
        proofs=[_proof(path, v) for k, v in meta.items() if k.startswith("proof:")],
    )


def _proof(path: str, text: str) -> tuple[Any, Any]:
    """A kept proof: two entries ``[change, ts, source, signature]``."""
    try:
        first, second = orjson.loads(text)
        return tuple(first), tuple(second)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise _damaged(path, "a kept proof of equivocation is malformed") from None


def _state_row(
    db: sqlite3.Connection, path: str, table: str, crc_of: Any
) -> tuple[Any, dict[str, float]] | None:
    """The ``(payload, clock)`` row of ``table`` (the snapshot or the
    checkpoint), checked, or ``None``."""
    row = db.execute(f"SELECT payload, clock, crc FROM {table}").fetchone()
    if row is None:
        return None
    payload, clock_blob, crc = row
    if (
        type(payload) is not bytes
        or type(clock_blob) is not bytes
        or crc_of(payload, clock_blob) != crc
    ):
        raise _damaged(path, f"the {table} fails its checksum")
    covered = orjson.loads(clock_blob)
    return (
        orjson.loads(payload),
        {_check_source(path, s): _check_ts(path, t) for s, t in covered.items()},
    )


def _split_signatures(blobs: Any) -> tuple[Any, list[str | None] | None]:
    """Stored change blobs, and their signatures: a signed entry's blob is
    its JSON, a newline and its signature (format 3)."""
    if not any(map(bytes.__contains__, blobs, itertools.repeat(b"\n"))):
        return blobs, None
    parts = [blob.partition(b"\n") for blob in blobs]
    return (
        [part[0] for part in parts],
        [part[2].decode("ascii", "replace") or None for part in parts],
    )


#: The entries read at open, per source: ``(stamps, changes, signatures)``.
_Held = dict[str, tuple[list[Any], list[Any], list[str | None] | None]]


def _held_run(
    held: _Held,
    path: str,
    source: str,
    run: tuple[list[Any], list[Any], list[str | None] | None],
) -> None:
    """Add a source's next entries (a segment, or its rows) to ``held``."""
    mine = held.get(source)
    if mine is None:
        held[source] = run
        return
    stamps, changes, sigs = run
    if mine[0] and stamps[0] <= mine[0][-1]:
        held[source] = _merged(path, source, mine, run)
        return
    if sigs is not None or mine[2] is not None:
        merged = (mine[2] or [None] * len(mine[0])) + (sigs or [None] * len(stamps))
        held[source] = (mine[0], mine[1], merged)
    mine[0].extend(stamps)
    mine[1].extend(changes)


def _merged(
    path: str,
    source: str,
    mine: tuple[list[Any], list[Any], list[str | None] | None],
    run: tuple[list[Any], list[Any], list[str | None] | None],
) -> tuple[list[Any], list[Any], list[str | None] | None]:
    """Two runs of one source whose stamps interleave (rows written below
    packed segments: entries a peer found this replica lacked), in order."""
    rows = sorted(
        itertools.chain(
            zip(mine[0], mine[1], mine[2] or itertools.repeat(None), strict=False),
            zip(run[0], run[1], run[2] or itertools.repeat(None), strict=False),
        ),
        key=operator.itemgetter(0),
    )
    stamps = [r[0] for r in rows]
    if any(map(operator.eq, stamps, itertools.islice(stamps, 1, None))):
        raise _damaged(path, f"two entries of {source!r:.80} have one stamp")
    sigs = [r[2] for r in rows]
    return stamps, [r[1] for r in rows], sigs if any(sigs) else None


def _load_entries(
    db: sqlite3.Connection, path: str, clock: dict[str, float]
) -> list[Run]:
    """Every entry, as runs ``(source, stamps, changes, signatures)`` in
    stamp order: the packed segments (less their gaps), then the rows
    written since they were packed.

    The cyclic collector is paused while this allocates (and restored as it
    was): a million new containers would otherwise cost dozens of full
    collections. No user code runs meanwhile.
    """
    running = gc.isenabled()
    gc.disable()
    try:
        held: _Held = {}
        _load_segments(db, path, clock, held)
        _drop_gaps(db, path, held)  # gaps are entries dropped from segments
        _load_rows(db, path, clock, held)
        out: list[Run] = []
        for source, (stamps, changes, sigs) in held.items():
            if stamps:
                # Kept immutable: a list becomes a tuple (the same JSON array).
                changes = [tuple(c) if type(c) is list else c for c in changes]
                out.append((source, stamps, changes, sigs))
        return out
    finally:
        if running:
            gc.enable()


def _load_segments(
    db: sqlite3.Connection, path: str, clock: dict[str, float], held: _Held
) -> None:
    for source, first, last, stamps_blob, changes_blob, sigs_blob, crc in db.execute(
        "SELECT source, first, last, stamps, changes, sigs, crc FROM segments"
        " ORDER BY source, first"
    ):
        _check_source(path, source)
        if (
            type(first) is not float
            or type(last) is not float
            or type(stamps_blob) is not bytes
            or type(changes_blob) is not bytes
            or (sigs_blob is not None and type(sigs_blob) is not bytes)
            or _segment_crc(source, stamps_blob, changes_blob, sigs_blob) != crc
        ):
            raise _damaged(path, f"a segment of {source!r:.80} fails its checksum")
        try:
            stamps = orjson.loads(stamps_blob)
            changes = orjson.loads(changes_blob)
            sigs = None if sigs_blob is None else orjson.loads(sigs_blob)
        except orjson.JSONDecodeError:
            raise _damaged(path, f"a segment of {source!r:.80} is not JSON") from None
        n = len(stamps) if type(stamps) is list else 0
        if (
            not n
            or type(changes) is not list
            or len(changes) != n
            or (sigs is not None and (type(sigs) is not list or len(sigs) != n))
            or not set(map(type, stamps)) <= {int, float}
            or stamps[0] != first
            or stamps[-1] != last
            or not all(map(operator.lt, stamps, itertools.islice(stamps, 1, None)))
            or (sigs is not None and not set(map(type, sigs)) <= {str, type(None)})
        ):
            raise _damaged(path, f"a segment of {source!r:.80} is malformed")
        if not 0 <= first or last > MAX_STAMP:
            raise _damaged(path, f"stamp of {source!r:.80} out of range")
        if last > clock.get(source, -1.0):
            raise _damaged(path, f"an entry of {source!r:.80} lies beyond its clock")
        _held_run(held, path, source, (stamps, changes, sigs))


def _load_rows(
    db: sqlite3.Connection, path: str, clock: dict[str, float], held: _Held
) -> None:
    """The rows of entries not packed into segments.

    Read in bulk and checked a column at a time (types, checksums, bounds).
    """
    rows = db.execute(
        "SELECT source, ts, change, crc FROM entries ORDER BY source, ts"
    ).fetchall()
    for source, group in itertools.groupby(rows, key=operator.itemgetter(0)):
        _check_source(path, source)
        _, raw, blobs, crcs = zip(*group, strict=True)
        if set(map(type, raw)) != {float} or set(map(type, blobs)) != {bytes}:
            raise _damaged(path, f"an entry of {source!r:.80} fails its checksum")
        # _entry_crc, a column at a time.
        seed = _crc32(source.encode())
        expected = map(
            _crc32, blobs, map(_crc32, map(_pack, raw), itertools.repeat(seed))
        )
        if list(expected) != list(crcs):
            raise _damaged(path, f"an entry of {source!r:.80} fails its checksum")
        if not 0 <= raw[0] <= raw[-1] <= MAX_STAMP:
            raise _damaged(path, f"stamp of {source!r:.80} out of range")
        if raw[-1] > clock.get(source, -1.0):
            raise _damaged(path, f"an entry of {source!r:.80} lies beyond its clock")
        blobs, sigs = _split_signatures(blobs)
        try:
            values = list(map(orjson.loads, blobs))
        except orjson.JSONDecodeError:  # pragma: no cover  (the CRC matched)
            raise _damaged(path, f"an entry of {source!r:.80} is not JSON") from None
        # Stamps are canonical: a whole number as an int.
        stamps = list(map(canonical_stamp, raw))
        _held_run(held, path, source, (stamps, values, sigs))


def _drop_gaps(db: sqlite3.Connection, path: str, held: _Held) -> None:
    """Leave out the entries dropped from segments since they were packed."""
    gone: dict[str, set[float]] = {}
    for source, ts, crc in db.execute("SELECT source, ts, crc FROM gaps"):
        _check_source(path, source)
        if type(ts) is not float or _gap_crc(source, ts) != crc:
            raise _damaged(path, f"a gap of {source!r:.80} fails its checksum")
        gone.setdefault(source, set()).add(ts)
    for source, stamps in gone.items():
        mine = held.get(source)
        if mine is None:
            continue
        keep = [i for i, t in enumerate(mine[0]) if t not in stamps]
        sigs = mine[2]
        held[source] = (
            [mine[0][i] for i in keep],
            [mine[1][i] for i in keep],
            None if sigs is None else [sigs[i] for i in keep],
        )
