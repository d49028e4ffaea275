"""Durable replicas: SQLite stores, reopening, bad files, crashes."""

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

import repred
from repred import SqliteStore, StoreError
from repred.protocol import Session
from repred.types import counter, doc, gset, model, orset, two_phase_set

from .helpers import SessionPair, sync, union


def test_reopen_restores_state_clock_and_id(tmp_path):
    path = tmp_path / "names.db"
    a = repred.repred(union, set(), store=SqliteStore(path))
    a.update(["jim"])
    a.apply([(["sue"], 5, "B")])
    rid, clock = a.id, dict(a.clock)
    a.close()
    b = repred.repred(union, set(), store=SqliteStore(path))
    assert (b.id, dict(b.clock), b.state) == (rid, clock, {"jim", "sue"})
    assert sorted(e.change for e in b.history()) == [("jim",), ("sue",)]
    assert b.update(["ann"]) == ["ann"]
    assert b.clock[b.id] > clock[rid]
    b.close()


def test_a_closed_store_is_deleted_whole_and_an_open_one_is_not(tmp_path):
    path = str(tmp_path / "doc.db")
    m = model(store=repred.SqliteStore(path))
    m.set("k", 1)
    with pytest.raises(repred.StoreError, match="in use"):
        repred.SqliteStore.delete(path)
    assert os.path.exists(path)
    m.store.close()
    repred.SqliteStore.delete(path)
    assert os.listdir(tmp_path) == []
    repred.SqliteStore.delete(path)  # gone already: nothing to do


def test_a_reconnecting_peer_receives_only_what_it_lacks(tmp_path):
    path = tmp_path / "m.db"
    server = model(id="server")
    for i in range(50):
        server.set(f"k{i}", i)
    durable = model(store=SqliteStore(path))
    sync(server, durable)
    durable.close()
    server.set("late", True)
    reopened = model(store=SqliteStore(path))
    pair = SessionPair(server, reopened)
    pair.pump()
    assert pair.a.statistics().updates_out == 1
    assert pair.b.statistics().updates_out == 0
    assert reopened.to_dict() == server.to_dict()
    reopened.close()


def test_every_type_takes_a_store(tmp_path):
    for n, factory in enumerate([gset, two_phase_set, orset, counter, doc, model]):
        store = SqliteStore(tmp_path / f"{n}.db")
        r = factory(store=store)
        assert r.store is store
        r.close()


def test_remote_entries_are_on_disk_before_apply_returns(tmp_path):
    path = tmp_path / "r.db"
    r = repred.repred(union, set(), store=SqliteStore(path))
    s = Session(r)
    s.receive_data(b'{"id":"B","clock":{}}\n[["x"],1,"B"]\n[["y"],2,"B"]\n')
    # A second connection sees them committed, before any reply was sent.
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 2
        assert db.execute("SELECT ts FROM clock WHERE source='B'").fetchone()[0] == 2
    r.close()


def test_history_stays_flat_on_disk_across_overwrites(tmp_path):
    m = model(store=SqliteStore(tmp_path / "m.db", durability="batch"))
    for i in range(100_000):
        m.set(f"k{i % 100}", i)
    m.close()
    reopened = model(store=SqliteStore(tmp_path / "m.db"))
    assert reopened.store.entry_count() == 100
    assert len(list(reopened.history())) == 100
    assert reopened.get("k7") == 99_907
    reopened.close()


def test_deletes_never_come_back_after_a_reopen_and_a_new_peer(tmp_path):
    path = tmp_path / "d.db"
    d = doc(store=SqliteStore(path))
    d.add({"id": "row", "text": "x"})
    d.remove("row")
    s = two_phase_set(store=SqliteStore(tmp_path / "s.db"))
    s.add("a")
    s.remove("a")
    d.close()
    s.close()
    d2 = doc(store=SqliteStore(path))
    s2 = two_phase_set(store=SqliteStore(tmp_path / "s.db"))
    fresh_d, fresh_s = doc(), two_phase_set()
    sync(d2, fresh_d)
    sync(s2, fresh_s)
    assert d2.get("row") is None
    assert fresh_d.get("row") is None
    assert "a" not in s2
    assert "a" not in fresh_s
    d2.close()
    s2.close()


def test_a_file_that_is_not_a_store_is_refused_and_left_alone(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    other = tmp_path / "other.db"
    # Closed at once: an open connection keeps a write in the WAL, and the
    # last one to close moves it into the file, whenever it is collected.
    with contextlib.closing(sqlite3.connect(other)) as db, db:
        db.execute("CREATE TABLE t (x)")
    for path in (junk, other):
        before = path.read_bytes()
        with pytest.raises(StoreError, match="not"):
            gset(store=SqliteStore(path))
        assert path.read_bytes() == before


def test_another_type_or_id_is_refused(tmp_path):
    path = tmp_path / "g.db"
    gset(id="me", store=SqliteStore(path)).close()
    with pytest.raises(StoreError, match="'gset' replica, not 'orset'"):
        orset(store=SqliteStore(path))
    with pytest.raises(StoreError, match="belongs to replica 'me'"):
        gset(id="someone-else", store=SqliteStore(path))
    assert gset(id="me", store=SqliteStore(path)).id == "me"


def test_a_truncated_store_is_refused(tmp_path):
    path = tmp_path / "t.db"
    # Filled without an fsync per write: what matters is the file, cut.
    m = model(store=SqliteStore(path, durability="batch"))
    for i in range(3000):
        m.set(f"key-{i}", "x" * 50)
    m.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError):
        model(store=SqliteStore(path))


def test_bad_durability_is_refused(tmp_path):
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "x.db", durability="sometimes")


WRITER = textwrap.dedent(
    """
    import sys
    from repred import SqliteStore
    from repred.types import gset
    s = gset(store=SqliteStore(sys.argv[1]))
    n = int(sys.argv[2])
    while True:
        s.add(n)
        sys.stdout.write(f"{n}\\n")
        sys.stdout.flush()
        n += 1
    """
)


@pytest.mark.slow  # twelve processes
def test_kill_minus_nine_loses_nothing_that_was_acknowledged(tmp_path):
    path = tmp_path / "crash.db"
    rng = random.Random(7)
    acknowledged: set[int] = set()
    start = 0
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(start)],
            stdout=subprocess.PIPE,
        )
        wanted = rng.randrange(1, 300)
        lines = []
        while len(lines) < wanted:
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            lines.append(int(line))
        # Killed at a random moment: it keeps writing while we wait.
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
        proc.stdout.close()
        proc.wait()
        # Only whole lines were acknowledged.
        complete = rest[: rest.rfind(b"\n") + 1].split()
        acknowledged.update(lines, map(int, complete))
        start = max(acknowledged) + 1
        reopened = gset(store=SqliteStore(path))
        missing = acknowledged - reopened.state
        assert not missing, f"lost acknowledged updates: {sorted(missing)[:10]}"
        reopened.close()
