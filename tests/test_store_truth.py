"""The store tells the truth: it never claims what it lost, and says what broke.

A replica's clock, in memory and on disk, must never cover an entry the
store does not hold; a write that could not be made durable is refused (or
kept and retried) and never silently dropped; a damaged file is refused.
"""

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
from repred.types import model

from .helpers import sync


@contextlib.contextmanager
def write_locked(path):
    """Another connection holds the database's write lock meanwhile."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def held(path, type_factory=model):
    """What a store holds, read through a fresh replica."""
    r = type_factory(store=SqliteStore(path))
    try:
        return r.id, dict(r.clock), sorted(r.history(), key=lambda e: (e.source, e.ts))
    finally:
        r.close()


# -- commits that fail ---------------------------------------------------------


def test_a_local_write_that_cannot_commit_is_refused_and_leaves_no_trace(tmp_path):
    path = tmp_path / "m.db"
    m = model(store=SqliteStore(path, busy_timeout=0))
    m.set("a", 1)
    before = (dict(m.state), dict(m.clock), list(m.history()))
    with write_locked(path):
        with pytest.raises(StoreError, match="cannot write"):
            m.set("b", 2)
        assert (dict(m.state), dict(m.clock), list(m.history())) == before
    m.set("c", 3)
    m.close()
    _, clock, entries = held(path)
    assert [list(e.change) for e in entries] == [["a", 1], ["c", 3]]
    assert clock == dict(m.clock)


def test_remote_entries_that_cannot_commit_close_the_link_and_stay_queued(tmp_path):
    path = tmp_path / "m.db"
    m = model(store=SqliteStore(path, busy_timeout=0))
    s = Session(m)
    s.data_to_send()
    with write_locked(path):
        with pytest.raises(StoreError):
            s.receive_data(b'{"id":"B","clock":{}}\n[["x",1],1,"B"]\n')
        assert s.their_state is repred.protocol.SessionState.ERROR
        # Meanwhile a local write is refused: the queued rows come first.
        with pytest.raises(StoreError):
            m.set("mine", 1)
        assert "mine" not in m
    m.set("mine", 2)  # the queued rows are written first, then this one
    m.close()
    _, clock, entries = held(path)
    assert {(e.source, tuple(e.change)) for e in entries} == {
        ("B", ("x", 1)),
        (m.id, ("mine", 2)),
    }
    assert clock["B"] == 1


def test_a_crash_while_rows_are_queued_loses_them_and_the_clock_with_them(tmp_path):
    path = tmp_path / "m.db"
    origin = model(id="B")
    origin.set("x", 1)
    m = model(store=SqliteStore(path, busy_timeout=0))
    with write_locked(path):
        with pytest.raises(StoreError):
            sync(origin, m)
        # "Crash": the queued rows never reach the disk.
        m.store._db.close()
        m.store._db = None
        m.store._release()
    _, clock, entries = held(path)
    assert entries == []
    assert "B" not in clock  # the disk does not claim what it lacks
    again = model(store=SqliteStore(path))
    sync(origin, again)
    assert again.to_dict() == {"x": 1}
    again.close()


def _flusher_until(store, condition):
    """Wait for the store's flusher thread to make ``condition()`` true."""
    for _ in range(2000):
        if condition():
            return
        store._closed.wait(0.005)
    raise AssertionError("the flusher never got there")


def test_batch_mode_retries_a_failed_flush_and_refuses_writes_meanwhile(tmp_path):
    path = tmp_path / "m.db"
    store = SqliteStore(path, durability="batch", batch_interval=0.001, busy_timeout=0)
    m = model(store=store)
    m.set("early", 1)
    # Written before the lock is taken: otherwise the flusher fails on it,
    # and the next write is refused at once.
    _flusher_until(store, lambda: not store._adds)
    with write_locked(path):
        m.set("during", 2)  # queued; the flusher fails on it
        _flusher_until(store, lambda: store._error is not None)
        with pytest.raises(StoreError):
            m.set("refused", 3)
        assert "refused" not in m
    _flusher_until(store, lambda: store._error is None and not store._adds)
    m.set("after", 4)
    m.close()
    _, _, entries = held(path)
    assert sorted(e.change[0] for e in entries) == ["after", "during", "early"]


# -- opening ----------------------------------------------------------------


def test_a_store_is_locked_by_the_process_that_opened_it(tmp_path):
    path = tmp_path / "m.db"
    first = model(store=SqliteStore(path))
    with pytest.raises(StoreError, match="in use"):
        model(store=SqliteStore(path))
    code = textwrap.dedent(
        f"""
        from repred import SqliteStore, StoreError
        from repred.types import model
        try:
            model(store=SqliteStore({str(path)!r}))
        except StoreError as exc:
            print(exc)
        """
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=True
    )
    assert b"in use" in other.stdout
    first.close()
    model(store=SqliteStore(path)).close()  # free again


def test_an_empty_file_is_not_a_new_store(tmp_path):
    path = tmp_path / "m.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="empty"):
        model(store=SqliteStore(path))
    assert path.read_bytes() == b""


def test_creating_a_store_is_atomic(tmp_path):
    path = tmp_path / "m.db"
    m = model(store=SqliteStore(path))
    m.close()
    assert sorted(os.listdir(tmp_path)) == ["m.db", "m.db.lock"]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        assert {r[0] for r in db.execute("SELECT k FROM meta")} == {
            "format",
            "type",
            "id",
        }


def _tamper(path, sql, *args):
    # Closed at once: an open connection keeps a write in the WAL, and the
    # last one to close moves it into the file, whenever it is collected.
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(sql, args)


def test_a_clock_row_that_fails_its_checksum_is_refused(tmp_path):
    path = tmp_path / "m.db"
    m = model(store=SqliteStore(path))
    m.set("a", 1)
    m.close()
    _tamper(path, "UPDATE clock SET ts = 1e307")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"damaged.*clock"):
        model(store=SqliteStore(path))
    assert path.read_bytes() == before


def test_a_stamp_beyond_the_wire_bound_is_refused_even_with_a_good_checksum(
    tmp_path,
):
    from repred._store import _clock_crc

    path = tmp_path / "m.db"
    m = model(store=SqliteStore(path))
    m.set("a", 1)
    m.close()
    _tamper(path, "UPDATE clock SET ts = 1e307, crc = ?", _clock_crc(m.id, 1e307))
    with pytest.raises(StoreError, match="out of range"):
        model(store=SqliteStore(path))


def test_an_entry_that_fails_its_checksum_is_refused(tmp_path):
    path = tmp_path / "m.db"
    m = model(store=SqliteStore(path))
    m.set("a", 1)
    m.close()
    _tamper(path, "UPDATE entries SET change = ?", b'["a",2]')
    with pytest.raises(StoreError, match="checksum"):
        model(store=SqliteStore(path))


def test_an_entry_beyond_its_clock_is_refused(tmp_path):
    from repred._store import _clock_crc

    path = tmp_path / "m.db"
    m = model(store=SqliteStore(path))
    m.set("a", 1)
    m.close()
    _tamper(path, "UPDATE clock SET ts = 5, crc = ?", _clock_crc(m.id, 5.0))
    with pytest.raises(StoreError, match="beyond its clock"):
        model(store=SqliteStore(path))


def _original(tmp_path):
    path = tmp_path / "orig.db"
    # Written without an fsync per write: what matters is the file.
    m = model(store=SqliteStore(path, durability="batch"))
    for i in range(150):
        m.set(f"key-{i}", {"n": i, "text": "v" * (i % 17)})
    for i in range(60):
        m.apply([([f"remote-{i}", i], 1000 + i, f"src-{i % 3}")])
    m.close()
    return path, held(path)


def _prefix_closed(original, loaded):
    """Everything ``loaded`` holds is in ``original``, and its clock covers
    nothing it lacks."""
    oid, _, oentries = original
    lid, lclock, lentries = loaded
    assert lid == oid
    orig = {(e.source, e.ts): e.change for e in oentries}
    mine = {(e.source, e.ts): e.change for e in lentries}
    for k, change in mine.items():
        assert orig.get(k) == change
    for (source, ts), _ in orig.items():
        if ts <= lclock.get(source, -1):
            assert (source, ts) in mine


# Each case is a store opened (and closed, with an fsync): a sample by
# default, the full count in the slow run.
@pytest.mark.parametrize(
    ("flips", "cuts"), [(40, 8), pytest.param(300, 40, marks=pytest.mark.slow)]
)
def test_bit_flips_and_truncations_give_a_clean_error_or_a_sound_store(
    tmp_path, flips, cuts
):
    path, original = _original(tmp_path)
    data = path.read_bytes()
    rng = random.Random(8)
    outcomes = {"refused": 0, "sound": 0}
    cases = [("flip", rng.randrange(len(data) * 8)) for _ in range(flips)]
    cases += [("cut", rng.randrange(len(data))) for _ in range(cuts)]
    for n, (kind, where) in enumerate(cases):
        damaged = bytearray(data)
        if kind == "flip":
            damaged[where // 8] ^= 1 << (where % 8)
        else:
            del damaged[where:]
        target = tmp_path / f"d{n}.db"
        target.write_bytes(bytes(damaged))
        try:
            loaded = held(target)
        except StoreError:
            outcomes["refused"] += 1
            assert target.read_bytes() == bytes(damaged)
            continue
        outcomes["sound"] += 1
        _prefix_closed(original, loaded)
    assert outcomes["refused"] > 0
    assert outcomes["sound"] > 0


# -- kill -9 -------------------------------------------------------------------

WRITER = """
import sys
from repred import SqliteStore
from repred.types import model
m = model(store=SqliteStore(sys.argv[1]))
i = 0
while True:
    m.set(f"k{i}", i)
    print(i, flush=True)
    i += 1
"""


def test_sigkill_during_writes_keeps_every_acknowledged_write(tmp_path):
    path = tmp_path / "m.db"
    acked = -1
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE
    ) as proc:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 300:
                break
        proc.send_signal(signal.SIGKILL)
    m = model(store=SqliteStore(path))
    for i in range(acked + 1):
        assert m.get(f"k{i}") == i
    own = [e.ts for e in m.history() if e.source == m.id]
    assert m.clock[m.id] == max(own)
    m.close()


RECEIVER = """
import sys
from repred import SqliteStore
from repred.protocol import Session
from repred.types import model
m = model(store=SqliteStore(sys.argv[1]))
s = Session(m)
s.data_to_send()
with open(sys.argv[2], "rb") as f:
    data = f.read()
for i in range(0, len(data), 4096):
    s.receive_data(data[i : i + 4096])
    print(i, flush=True)
"""


def test_sigkill_during_a_large_incoming_sync_leaves_a_sound_store(tmp_path):
    origin = model(id="origin")
    others = [model(id=f"o{i}") for i in range(3)]
    for i in range(3000):
        others[i % 3].set(f"k{i}", i)
    for o in others:
        sync(o, origin)
    peer = Session(origin)
    stream = bytearray(peer.data_to_send())  # its digest
    peer.receive_data(Session(model(id="fake")).data_to_send())
    while chunk := peer.data_to_send():
        stream += chunk
    (tmp_path / "stream").write_bytes(bytes(stream))
    path = tmp_path / "m.db"
    with subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(path), str(tmp_path / "stream")],
        stdout=subprocess.PIPE,
    ) as proc:
        for line in proc.stdout:
            if int(line) > len(stream) // 2:
                break
        proc.send_signal(signal.SIGKILL)
    m = model(store=SqliteStore(path))
    got = {(e.source, e.ts) for e in m.history()}
    assert got  # something arrived
    for e in origin.history():
        if e.ts <= m.clock.get(e.source, -1):
            assert (e.source, e.ts) in got
    sync(origin, m)
    assert m.to_dict() == origin.to_dict()
    m.close()
