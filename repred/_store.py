"""Durable histories: an SQLite store (stdlib ``sqlite3``, WAL mode).

A replica with a store writes every entry it records, every clock advance,
and every entry it drops as dominated, through to SQLite; reading stays in
memory. Reopening the file restores the replica's id, clock and history,
and the state is rebuilt by replaying the history through the reducer.

Durability: by default every :meth:`Replica.update` and every batch of
remote entries is committed before the call returns, so what a caller or a
peer was told is on disk survives ``kill -9``. ``durability="batch"``
commits from a background thread every ``batch_ms`` instead: faster, at the
price of the last few milliseconds of writes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from ._errors import ReplicaError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["SqliteStore", "StoreError"]

#: The on-disk format this version writes and reads.
STORE_FORMAT = 1

_SCHEMA = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE clock (source TEXT PRIMARY KEY, ts REAL NOT NULL);
CREATE TABLE entries (
    source TEXT NOT NULL,
    ts REAL NOT NULL,
    change BLOB NOT NULL,
    PRIMARY KEY (source, ts)
) WITHOUT ROWID;
CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 1),
                       payload BLOB NOT NULL, clock BLOB NOT NULL);
"""


def _advance_clock(db: sqlite3.Connection, clock: dict[str, float]) -> None:
    db.executemany(
        "INSERT INTO clock VALUES (?, ?) ON CONFLICT(source)"
        " DO UPDATE SET ts = max(ts, excluded.ts)",
        list(clock.items()),
    )


class StoreError(ReplicaError):
    """The store cannot be used: not a repred store, another type, damaged."""


def _num(ts: float) -> float:
    return int(ts) if float(ts).is_integer() else ts


@attrs.frozen(kw_only=True)
class Loaded:
    """What a store held when it was opened."""

    id: str
    clock: dict[str, float]
    entries: list[tuple[Any, float, str]]
    snapshot: tuple[Any, dict[str, float]] | None


class SqliteStore:
    """Keep a replica's history, clock and id in an SQLite database.

    Args:
        path: the database file (created if it does not exist).
        durability: ``"full"`` (the default) commits before every update
            returns; ``"batch"`` commits every ``batch_ms`` from a thread.
        batch_ms: the commit interval of ``"batch"`` mode.

    Raises:
        StoreError: at open, if the file is not a repred store, holds
            another type of replica, or is damaged. Nothing is overwritten.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "full",
        batch_ms: float = 20.0,
    ) -> None:
        if durability not in ("full", "batch"):
            raise ValueError('durability is "full" or "batch"')
        self.path = os.fspath(path)
        self.durability = durability
        self.batch_ms = batch_ms
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._adds: list[tuple[str, float, bytes]] = []
        self._drops: list[tuple[str, float]] = []
        self._clock: dict[str, float] = {}
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r} durability={self.durability}>"

    # -- opening -------------------------------------------------------

    def open(self, type_name: str, replica_id: str | None) -> Loaded:
        """Open (or create) the store for a replica; return what it held."""
        if self._db is not None:
            raise StoreError(f"{self.path} is already open")
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        try:
            loaded = self._load_or_create(db, existed, type_name, replica_id)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(
                f"{self.path} is not a usable repred store: {exc}"
            ) from None
        except StoreError:
            db.close()
            raise
        self._db = db
        if self.durability == "batch":
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True)
            self._flusher.start()
        return loaded

    def _load_or_create(
        self,
        db: sqlite3.Connection,
        existed: bool,
        type_name: str,
        replica_id: str | None,
    ) -> Loaded:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if not tables:
            if existed:
                raise StoreError(
                    f"{self.path} is an SQLite file, but not a repred store"
                )
            return self._create(db, type_name, replica_id)
        if "meta" not in tables or "entries" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite database, but not a repred store"
            )
        meta = dict(db.execute("SELECT k, v FROM meta"))
        if meta.get("format") != str(STORE_FORMAT):
            raise StoreError(
                f"{self.path}: unknown store format {meta.get('format')!r}"
            )
        if meta.get("type") != type_name:
            raise StoreError(
                f"{self.path} holds a {meta.get('type')!r} replica, not {type_name!r}"
            )
        stored_id = meta["id"]
        if replica_id is not None and replica_id != stored_id:
            raise StoreError(
                f"{self.path} belongs to replica {stored_id!r}, not {replica_id!r}"
            )
        self._configure(db)
        db.execute("PRAGMA quick_check").fetchall()
        clock = {s: _num(ts) for s, ts in db.execute("SELECT source, ts FROM clock")}
        loads = orjson.loads
        entries = [
            (loads(change), _num(ts), source)
            for source, ts, change in db.execute(
                "SELECT source, ts, change FROM entries ORDER BY source, ts"
            )
        ]
        row = db.execute("SELECT payload, clock FROM snapshot").fetchone()
        snapshot = None
        if row is not None:
            snapshot = (loads(row[0]), {s: _num(t) for s, t in loads(row[1]).items()})
        return Loaded(id=stored_id, clock=clock, entries=entries, snapshot=snapshot)

    def _create(
        self, db: sqlite3.Connection, type_name: str, replica_id: str | None
    ) -> Loaded:
        from ._replica import _new_id

        self._configure(db)
        new_id = replica_id or _new_id()
        with db:
            db.execute("BEGIN")
            db.executescript(
                _SCHEMA.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS")
            )
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("format", str(STORE_FORMAT)), ("type", type_name), ("id", new_id)],
            )
        return Loaded(id=new_id, clock={}, entries=[], snapshot=None)

    def _configure(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "PRAGMA synchronous=FULL"
            if self.durability == "full"
            else "PRAGMA synchronous=NORMAL"
        )

    # -- writing (called by the replica) ---------------------------------

    # The lock matters only in "batch" mode, where the flusher thread swaps
    # these lists; uncontended, it costs next to nothing.

    def add(self, change: Any, ts: float, source: str) -> None:
        row = (source, ts, orjson.dumps(change))
        with self._lock:
            self._adds.append(row)

    def drop(self, ts: float, source: str) -> None:
        with self._lock:
            self._drops.append((source, ts))

    def advance(self, source: str, ts: float) -> None:
        with self._lock:
            self._clock[source] = ts

    def save_snapshot(self, payload: Any, clock: dict[str, float]) -> None:
        """Keep a snapshot and drop the entries it covers, atomically."""
        with self._lock:
            self._write()
            with self._transaction() as db:
                db.executemany(
                    "DELETE FROM entries WHERE source = ? AND ts <= ?",
                    list(clock.items()),
                )
                db.execute("DELETE FROM snapshot")
                db.execute(
                    "INSERT INTO snapshot VALUES (1, ?, ?)",
                    (orjson.dumps(payload), orjson.dumps(clock)),
                )
                _advance_clock(db, clock)

    def commit(self) -> None:
        """Make what was written so far durable (in ``"full"`` mode, now)."""
        if self.durability == "full" and (self._adds or self._drops or self._clock):
            with self._lock:
                self._write()

    def _write(self) -> None:
        adds, drops, clock = self._adds, self._drops, self._clock
        if not (adds or drops or clock):
            return
        self._adds, self._drops, self._clock = [], [], {}
        with self._transaction() as db:
            if adds:
                db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", adds)
            if drops:
                db.executemany("DELETE FROM entries WHERE source = ? AND ts = ?", drops)
            if clock:
                _advance_clock(db, clock)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: committed whole, or rolled back whole."""
        db = self._require()
        db.execute("BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _flush_loop(self) -> None:
        while not self._closed.wait(self.batch_ms / 1000):
            with self._lock:
                self._write()

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    def entry_count(self) -> int:
        with self._lock:
            return int(
                self._require().execute("SELECT count(*) FROM entries").fetchone()[0]
            )

    def close(self) -> None:
        """Write what is pending and close the database. Idempotent."""
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        if self._db is not None:
            with self._lock:
                self._write()
                self._db.close()
                self._db = None
