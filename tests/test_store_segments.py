"""Packed segments, their gaps, and the state checkpoint of a store.

A store packs its rows into segments when it closes, and a type with a
snapshot function leaves its state there too: reopening then reads a few
rows and replays nothing. None of it may change what a reopened replica
holds.
"""

import contextlib
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repred
from repred import SigningKey, SqliteStore, StoreError, _store
from repred.types import events, gset, model

from .helpers import FakeWall, examples, sync, union

KEY = SigningKey.generate()


@contextlib.contextmanager
def small_segments(pack_min=3, entries=4):
    """Pack a source from ``pack_min`` rows, ``entries`` to a segment."""
    saved = _store.PACK_MIN_ROWS, _store.SEGMENT_ENTRIES
    _store.PACK_MIN_ROWS, _store.SEGMENT_ENTRIES = pack_min, entries
    try:
        yield
    finally:
        _store.PACK_MIN_ROWS, _store.SEGMENT_ENTRIES = saved


@pytest.fixture
def small():
    with small_segments():
        yield


def _rows(path, table):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _view(r):
    return (
        r.id,
        dict(r.clock),
        sorted((e.source, e.ts, repr(e.change)) for e in r.history()),
    )


def _tamper(path, sql, *args):
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(sql, args)
        db.commit()


def test_a_store_packs_its_rows_at_close_and_reopens_the_same(tmp_path, small):
    path = tmp_path / "m.db"
    m = model(store=SqliteStore(path))
    for i in range(30):
        m.set(f"k{i}", {"n": i})
    m.apply([([f"r{i}", i], 1000 + i, "B") for i in range(2)])  # too few to pack
    before, state = _view(m), m.to_dict()
    m.close()
    assert _rows(path, "segments") == 8  # 30 entries, 4 to a segment
    assert _rows(path, "entries") == 2
    again = model(store=SqliteStore(path))
    assert (_view(again), again.to_dict()) == (before, state)
    assert again.store.entry_count() == 32
    # Writes after packing land as rows, after the segments.
    again.set("late", 1)
    assert again.get("late") == 1
    again.close()
    third = model(store=SqliteStore(path))
    assert third.get("late") == 1
    assert third.get("k3") == {"n": 3}
    third.close()


def test_overwrites_of_packed_entries_leave_gaps_that_the_next_close_fills(
    tmp_path, small
):
    path = tmp_path / "m.db"
    m = model(store=SqliteStore(path))
    for i in range(12):
        m.set(f"k{i}", i)
    m.close()
    m = model(store=SqliteStore(path))
    for i in range(0, 12, 3):
        m.set(f"k{i}", -i)  # drops a packed entry: a gap
    assert _rows(path, "gaps") == 4
    before, state = _view(m), m.to_dict()
    m.store._db.close()  # as if killed: the gaps stay
    m.store._release()
    again = model(store=SqliteStore(path))
    assert (_view(again), again.to_dict()) == (before, state)
    again.close()
    assert _rows(path, "gaps") == 0
    # Three rewritten without what was dropped, one of the overwrites.
    assert _rows(path, "segments") == 4
    third = model(store=SqliteStore(path))
    assert (_view(third), third.to_dict()) == (before, state)
    assert third.store.entry_count() == 12
    third.close()


def test_signatures_survive_packing_and_a_verifier_checks_them(tmp_path, small):
    signed = model(signing_key=KEY)
    for i in range(10):
        signed.set(f"k{i}", i)
    path = tmp_path / "v.db"
    v = model(verify=True, store=SqliteStore(path))
    sync(signed, v)
    v.close()
    assert _rows(path, "segments") == 3
    again = model(verify=True, store=SqliteStore(path))
    assert again.to_dict() == signed.to_dict()
    for e in signed.history():
        assert again.signature(e.source, e.ts) == signed.signature(e.source, e.ts)
    again.close()


def test_a_clean_close_saves_the_state_and_reopening_replays_nothing(tmp_path):
    calls = []

    def counted(state, update):
        calls.append(update)
        return union(state, update)

    def make(path):
        return repred.repred(
            counted, set(), snapshot=list, store=SqliteStore(path), type_name="u"
        )

    path = tmp_path / "s.db"
    a = make(path)
    for i in range(300):
        a.update([i])
    a.apply([([f"r{i}"], 1000 + i, "B") for i in range(5)])
    before = _view(a), set(a.state)
    a.close()
    calls.clear()
    b = make(path)
    assert (_view(b), b.state) == before
    assert len(calls) == 1  # the checkpoint, not 305 entries
    # The first write deletes the checkpoint: after a crash the history is
    # replayed.
    b.update(["after"])
    assert _rows(path, "checkpoint") == 0
    before = _view(b), set(b.state)
    b.store._db.close()
    b.store._release()
    calls.clear()
    c = make(path)
    assert (_view(c), c.state) == before
    assert len(calls) == 306
    c.close()


def test_a_checkpoint_that_does_not_match_the_clock_is_not_used(tmp_path):
    path = tmp_path / "g.db"
    g = gset(store=SqliteStore(path))
    g.add("a")
    g.close()
    # A checkpoint (with a good checksum) claiming a state the clock does
    # not cover is ignored: the history is replayed.
    payload, clock = b'["a","forged"]', b'{"x":1}'
    _tamper(
        path,
        "UPDATE checkpoint SET payload = ?, clock = ?, crc = ?",
        payload,
        clock,
        _store._checkpoint_crc(payload, clock),
    )
    again = gset(store=SqliteStore(path))
    assert set(again) == {"a"}
    again.close()


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE segments SET changes = '[1,2,3,4]'", "segment.*checksum"),
        ("UPDATE gaps SET ts = ts + 1", "gap.*checksum"),
        ("UPDATE checkpoint SET payload = '[]'", "checkpoint fails"),
    ],
)
def test_a_damaged_segment_gap_or_checkpoint_is_refused(tmp_path, small, sql, match):
    path = tmp_path / "g.db"
    g = gset(store=SqliteStore(path))
    for i in range(8):
        g.add(i)
    g.close()
    # A gap, as a crash after a drop leaves one.
    with contextlib.closing(sqlite3.connect(path)) as db:
        (ts,) = db.execute("SELECT first FROM segments LIMIT 1").fetchone()
        db.execute(
            "INSERT INTO gaps VALUES (?, ?, ?)", (g.id, ts, _store._gap_crc(g.id, ts))
        )
        db.commit()
    _tamper(path, sql)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match):
        gset(store=SqliteStore(path))
    assert path.read_bytes() == before


def test_overlapping_segments_are_refused_even_with_good_checksums(tmp_path, small):
    path = tmp_path / "g.db"
    g = gset(store=SqliteStore(path))
    for i in range(8):
        g.add(i)
    source = g.id
    g.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        _, last = db.execute(
            "SELECT first, last FROM segments ORDER BY first LIMIT 1"
        ).fetchone()
        row = _store._segment_row(source, [last], [b"[99]"], None)
        db.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        db.commit()
    with pytest.raises(StoreError, match="overlap"):
        gset(store=SqliteStore(path))


def test_compaction_drops_the_segments_it_covers(tmp_path, small):
    path = tmp_path / "g.db"
    g = gset(store=SqliteStore(path))
    for i in range(10):
        g.add(i)
    g.close()
    g = gset(store=SqliteStore(path))
    g.compact()
    assert g.store.entry_count() == 0
    g.add("tail")
    state = set(g)
    g.close()
    again = gset(store=SqliteStore(path))
    assert set(again) == state
    assert [e.change for e in again.history()] == [("tail",)]
    again.close()


def test_a_store_of_another_format_is_refused_untouched(tmp_path):
    path = tmp_path / "old.db"
    m = model(store=SqliteStore(path))
    m.set("a", 1)
    m.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "UPDATE meta SET v = '3', crc = ? WHERE k = 'format'",
            (_store._meta_crc("format", "3"),),
        )
        db.commit()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="format"):
        model(store=SqliteStore(path))
    assert path.read_bytes() == before


steps = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 6), st.integers(0, 99)),
        st.tuples(st.just("remote"), st.integers(0, 6), st.integers(0, 2)),
        st.tuples(st.just("close"), st.just(0), st.just(0)),
        st.tuples(st.just("crash"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=examples(60))
@given(steps, st.sampled_from(["model", "gset"]))
def test_any_schedule_of_writes_closes_and_crashes_reopens_the_same(
    tmp_path_factory, schedule, kind
):
    """Whatever was packed, gapped or checkpointed, a reopened replica holds
    exactly what it held, and the same as one that never touched a disk."""
    path = tmp_path_factory.mktemp("s") / "r.db"
    wall = FakeWall()
    make = model if kind == "model" else gset

    def seen(r):
        state = sorted(r.state.items()) if kind == "model" else sorted(r.state)
        return _view(r), repr(state)

    mirror = make(id="me", wall=wall)
    ts = iter(range(1, 10**6))
    with small_segments(pack_min=2, entries=3):
        r = make(id="me", wall=wall, store=SqliteStore(path))
        try:
            for op, a, b in schedule:
                wall.now += 1
                if op == "set":
                    for x in (r, mirror):
                        x.set(f"k{a}", b) if kind == "model" else x.add(f"k{a}-{b}")
                elif op == "remote":
                    change = [f"k{a}", b] if kind == "model" else [f"r{a}"]
                    entry = [(change, next(ts), f"src{b}")]
                    r.apply(entry)
                    mirror.apply(entry)
                else:
                    before = seen(r)
                    if op == "close":
                        r.close()
                    else:
                        r.store._db.close()
                        r.store._release()
                    r = make(wall=wall, store=SqliteStore(path))
                    after = seen(r)
                    assert after == before
            assert _view(r)[1:] == _view(mirror)[1:]
        finally:
            r.close()


def test_entries_forgotten_from_segments_stay_forgotten_after_a_crash(tmp_path, small):
    """An events log forgets old events; those already packed leave gaps,
    which must keep them forgotten when the store reopens (an events log
    has no last-write-wins to hide a resurrected entry)."""
    wall = FakeWall()
    path = tmp_path / "e.db"
    e = events(id="e", wall=wall, max_events=4, store=SqliteStore(path))
    for i in range(6):
        wall.now += 1
        e.emit("tick", i)
    e.close()  # packs what is kept
    e = events(wall=wall, max_events=4, store=SqliteStore(path))
    for i in range(6, 12):
        wall.now += 1
        e.emit("tick", i)  # forgets packed ones: gaps
    kept = e.recent()
    assert _rows(path, "gaps") > 0
    e.store._db.close()  # as if killed: the gaps stay
    e.store._release()
    again = events(wall=wall, max_events=4, store=SqliteStore(path))
    assert again.recent() == kept
    assert again.store.entry_count() == len(kept)
    again.close()  # rewrites the segments with gaps
    assert _rows(path, "gaps") == 0
    third = events(wall=wall, max_events=4, store=SqliteStore(path))
    assert third.recent() == kept
    third.close()
