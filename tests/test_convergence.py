"""Random schedules of updates and syncs among 3-6 replicas always converge.

Delivery is reordered (syncs in any order, lines of the two directions
interleaved at random), duplicated (old transcripts replayed into new
sessions) and cut (syncs stopped after any line). At the end, a few rounds
of full syncs must bring every replica to the join of all updates.
"""

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

import repred
from repred.protocol import Session
from repred.types import model

from .helpers import (
    FakeWall,
    LinePump,
    assert_complete,
    examples,
    heartbeat,
    sync,
    union,
)
from .strategies import schedules

SETTINGS = settings(max_examples=examples(150))


#: The framings links take in turn: one entry per line (as with JS peers),
#: and batches of one, three and the default (1024) entries of a source.
FRAMINGS = [{"batches": False}, {"batch_entries": 1}, {"batch_entries": 3}, {}]


def _record_sync(a, b, framing):
    pump = LinePump(a, b, **framing)
    got: list[bytes] = []
    orig = pump.pair.b.receive_data

    def spy(data):
        got.append(data)
        return orig(data)

    pump.pair.b.receive_data = spy
    pump.run(None)
    pump.cut()
    return got


@SETTINGS
@given(schedules())
def test_grow_only_sets_converge_to_the_union(schedule):
    n, ops = schedule
    wall = FakeWall()
    rs = [
        repred.repred(union, set(), id=f"r{i}", wall=wall, snapshot=sorted)
        for i in range(n)
    ]
    written: set[int] = set()

    def write(i, x):
        rs[i].update([x % 50, (x // 50) % 50])
        written.update([x % 50, (x // 50) % 50])

    _run_with_replays(rs, ops, wall, write)
    for r in rs:
        assert r.state == written
    assert_complete(*rs)
    assert all(dict(r.clock) == dict(rs[0].clock) for r in rs)


@SETTINGS
@given(schedules())
def test_heartbeat_maps_converge_to_the_max(schedule):
    n, ops = schedule
    wall = FakeWall()
    rs = [repred.repred(heartbeat, {}, id=f"r{i}", wall=wall) for i in range(n)]
    best: dict[str, float] = {}

    def write(i, x):
        name, t = "abc"[x % 3], x % 1000
        rs[i].update({name: t})
        best[name] = max(best.get(name, -1), t)

    _run_with_replays(rs, ops, wall, write)
    for r in rs:
        assert r.state == best


@SETTINGS
@given(schedules())
def test_models_converge_to_the_last_write_per_key(schedule):
    n, ops = schedule
    wall = FakeWall()
    rs = [model(id=f"r{i}", wall=wall) for i in range(n)]
    last: dict[str, tuple[tuple[float, str], object]] = {}

    def write(i, x):
        key, value = "abcd"[x % 4], (x // 4) % 5 or None
        r = rs[i]
        r.set(key, value)
        stamp = (r.clock[r.id], r.id)
        if key not in last or last[key][0] < stamp:
            last[key] = (stamp, value)

    _run_with_replays(rs, ops, wall, write)
    expected = {k: v for k, (_, v) in last.items() if v is not None}
    for r in rs:
        assert r.to_dict() == expected
        assert len(list(r.history())) == len(last)


def _run_with_replays(replicas, ops, wall, write):
    transcripts: dict[tuple[int, int], list[bytes]] = {}
    for step, op in enumerate(ops):
        framing = FRAMINGS[step % len(FRAMINGS)]
        kind = op[0]
        if kind == "update":
            write(op[1], op[2])
        elif kind == "tick":
            wall.now += op[1]
        elif kind == "compact":
            if replicas[op[1]]._snapshot_fn is not None:
                replicas[op[1]].compact()
        elif op[1] == op[2]:
            continue
        elif kind == "sync":
            transcripts[(op[1], op[2])] = _record_sync(
                replicas[op[1]], replicas[op[2]], framing
            )
        elif kind == "cut":
            _, i, j, k, seed = op
            rng = random.Random(seed)
            pump = LinePump(replicas[i], replicas[j], **framing)
            pump.run(k, lambda step, rng=rng: rng.random() < 0.5)
            pump.cut()
        elif kind == "replay":
            old = transcripts.get((op[1], op[2]))
            if old:
                s = Session(replicas[op[2]])
                for chunk in old:
                    s.receive_data(chunk)
                s.close()
    # Heal: full syncs along the chain and back reach everyone.
    chain = list(itertools.pairwise(replicas))
    for x, y in chain + chain[::-1]:
        sync(x, y)


@settings(max_examples=examples(100))
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30)), max_size=30),
    st.randoms(),
)
def test_concurrent_updates_commute_and_duplicates_do_nothing(updates, rnd):
    entries = []
    wall = FakeWall()
    origin = [repred.repred(union, set(), id=f"s{i}", wall=wall) for i in range(3)]
    for i, x in updates:
        if origin[i].update([x]):
            entries.append(next(e for e in origin[i].history() if e.change == (x,)))
    # Deliver to two fresh replicas: per-source order kept, sources interleaved
    # differently, every entry delivered twice.
    one = repred.repred(union, set(), id="one")
    two = repred.repred(union, set(), id="two")
    for target in (one, two):
        queues = {s: [e for e in entries if e.source == s] for s in ("s0", "s1", "s2")}
        while any(queues.values()):
            s = rnd.choice([s for s in queues if queues[s]])
            e = queues[s].pop(0)
            for _ in range(2):
                target.apply([e])
    assert one.state == two.state == {x for _, x in updates}
