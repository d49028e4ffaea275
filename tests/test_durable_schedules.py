"""Durable replicas under random schedules: writes, cut syncs and reopens."""

import itertools
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from repred import SqliteStore
from repred.types import events, gset

from .helpers import FakeWall, LinePump, assert_complete, examples, sync

steps = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 2), st.integers(0, 4)),
        st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("cut"), st.integers(0, 2), st.integers(0, 8)),
        st.tuples(st.just("reopen"), st.integers(0, 2), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=examples(40))
@given(steps)
def test_replicas_that_reopen_mid_schedule_still_converge(schedule):
    wall = FakeWall()
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"r{i}.db" for i in range(3)]
        rs = [
            gset(id=f"r{i}", wall=wall, store=SqliteStore(p))
            for i, p in enumerate(paths)
        ]
        n = itertools.count()
        try:
            for op, i, j in schedule:
                wall.now += 1
                if op == "write":
                    rs[i].add(f"k{j}-{next(n)}")
                elif op == "sync" and i != j:
                    sync(rs[i], rs[j])
                elif op == "cut":
                    pump = LinePump(rs[i], rs[(i + 1) % 3])
                    pump.run(j)
                    pump.cut()
                elif op == "reopen":
                    before = (set(rs[i]), dict(rs[i].clock))
                    rs[i].close()
                    rs[i] = gset(wall=wall, store=SqliteStore(paths[i]))
                    assert (set(rs[i]), dict(rs[i].clock)) == before
            assert_complete(*rs)
            for a, b in [(0, 1), (1, 2), (0, 1)]:
                sync(rs[a], rs[b])
            assert set(rs[0]) == set(rs[1]) == set(rs[2])
        finally:
            for r in rs:
                r.close()


def test_events_are_durable_and_stay_bounded(tmp_path):
    wall = FakeWall()
    path = tmp_path / "e.db"
    e = events(id="e", wall=wall, max_events=4, store=SqliteStore(path))
    for i in range(10):
        wall.now += 1
        e.emit("tick", i)
    kept = e.recent()
    assert len(kept) <= 5
    e.close()
    reopened = events(wall=wall, max_events=4, store=SqliteStore(path))
    assert reopened.recent() == kept
    assert reopened.store.entry_count() == len(kept)
    late = events(id="late", wall=wall)
    sync(reopened, late)
    assert late.recent() == kept
    reopened.close()
