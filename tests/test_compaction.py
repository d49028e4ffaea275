"""Folding history into snapshots: sending, relaying, persisting, cutting."""

import logging

import pytest

from repred import RemoteProtocolError, SqliteStore
from repred.protocol import Session
from repred.types import gset, two_phase_set

from .helpers import LinePump, SessionPair, assert_complete, sync


def _filled(name, n=100, sources=3):
    r = gset(id=name)
    for i in range(n):
        r.apply([([f"{name}{i}"], i + 1, f"{name}-src{i % sources}")])
    r.update(["own"])
    return r


def test_compact_empties_the_history_and_a_new_peer_gets_the_snapshot():
    a, b = _filled("a"), gset(id="b")
    state = set(a.state)
    a.compact()
    assert list(a.history()) == []
    assert a.compacted is not None
    assert a.state == state
    pair = SessionPair(a, b)
    pair.pump()
    assert b.state == state
    assert pair.a.statistics().updates_out == 1  # the snapshot, one line
    assert dict(b.clock) == dict(a.clock)


def test_a_peer_behind_the_snapshot_gets_it_then_the_tail():
    a, b = _filled("a"), gset(id="b")
    sync(a, b)
    a.apply([(["missed"], 1000, "a-src0")])
    a.compact()
    a.update(["tail1"])
    a.update(["tail2"])
    pair = SessionPair(a, b)
    pair.pump()
    assert b.state == a.state
    text = b"".join(pair.a_to_b)
    assert text.index(b'"snapshot"') < text.index(b"tail1")


def test_a_peer_ahead_of_the_snapshot_gets_only_the_tail():
    a, b = _filled("a"), gset(id="b")
    a.compact()
    sync(a, b)
    a.update(["tail"])
    pair = SessionPair(a, b)
    pair.pump()
    assert b"snapshot" not in b"".join(pair.a_to_b)
    assert "tail" in b.state


def test_snapshots_relay_and_combine():
    a, b, c = _filled("a"), _filled("b"), gset(id="c")
    a.compact()
    b.compact()
    sync(a, b)  # each receives the other's snapshot and combines it
    assert a.state == b.state
    sync(b, c)
    assert c.state == a.state
    assert_complete(a, b, c)


def test_removed_members_stay_removed_through_compaction():
    a, b = two_phase_set(id="a"), two_phase_set(id="b")
    a.add("x", "y")
    a.remove("x")
    a.compact()
    sync(a, b)
    assert b.members() == {"y"}
    b.add("x")
    assert "x" not in b


def test_a_js_peer_is_not_sent_a_snapshot(caplog):
    a = _filled("a")
    a.compact()
    a.update(["tail"])
    s = Session(a)
    s.data_to_send()
    with caplog.at_level(logging.WARNING, logger="repred"):
        s.receive_data(b'{"id":"js","clock":{}}\n')
    out = s.data_to_send()
    assert b"snapshot" not in out
    assert b"tail" in out
    assert "cannot receive" in caplog.text


def test_compaction_persists(tmp_path):
    path = tmp_path / "g.db"
    a = gset(store=SqliteStore(path))
    for i in range(500):
        a.add(i)
    a.compact()
    a.add("after")
    state, clock = set(a.state), dict(a.clock)
    assert a.store.entry_count() == 1
    a.close()
    b = gset(store=SqliteStore(path))
    assert (b.state, dict(b.clock)) == (state, clock)
    assert [e.change for e in b.history()] == [("after",)]
    fresh = gset()
    sync(b, fresh)
    assert fresh.state == state
    b.close()


def test_a_received_snapshot_is_persisted_before_it_counts(tmp_path):
    a = _filled("a")
    a.compact()
    b = gset(store=SqliteStore(tmp_path / "b.db"))
    sync(a, b)
    b.close()
    reopened = gset(store=SqliteStore(tmp_path / "b.db"))
    assert reopened.state == a.state
    assert dict(reopened.clock) == dict(a.clock)


def test_cut_at_every_line_with_a_snapshot_converges():
    def world():
        a, b, c = _filled("a", 12), _filled("b", 12), gset(id="c")
        a.compact()
        a.update(["a-tail"])
        b.update(["b-tail"])
        return a, b, c

    a, b, _ = world()
    pump = LinePump(a, b)
    pump.run(None)
    total = pump.moved
    for k in range(total + 1):
        a, b, c = world()
        pump = LinePump(a, b)
        pump.run(k)
        pump.cut()
        for x, y in [(b, c), (c, a), (a, b), (b, c)]:
            sync(x, y)
        assert a.state == b.state == c.state, k


def test_a_snapshot_stamped_far_ahead_is_not_applied():
    r = gset(id="a")
    r.add("mine")
    before = (set(r.state), dict(r.clock))
    s = Session(r)
    s.data_to_send()
    s.receive_data(b'{"id":"B","clock":{}}\n{"snapshot":["x"],"clock":{"Z":9e15}}\n')
    assert (set(r.state), dict(r.clock)) == before
    assert s.statistics().deferred == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"snapshot":["x"],"clock":{"Z":1}}\n', "no-digest"),
        (b'{"id":"B","clock":{}}\n{"snapshot":["x"]}\n', "bad-snapshot"),
        (b'{"id":"B","clock":{}}\n{"snapshot":["x"],"clock":{"Z":"1"}}\n', "bad-stamp"),
        (
            b'{"id":"B","clock":{}}\n{"snapshot":["x"],"clock":{"Z":1e300}}\n',
            "bad-stamp",
        ),
        (
            b'{"id":"B","clock":{}}\n{"snapshot":[[1]],"clock":{"Z":1}}\n',
            "reducer-error",
        ),
    ],
)
def test_bad_snapshots_are_refused(line, reason):
    r = gset(id="a")
    r.add("mine")
    before = (set(r.state), dict(r.clock))
    s = Session(r)
    s.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(line)
    assert info.value.reason == reason
    assert (set(r.state), dict(r.clock)) == before


def test_a_replica_without_snapshots_refuses_one():
    from .helpers import gset as plain_gset

    r = plain_gset("a")
    s = Session(r)
    s.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(b'{"id":"B","clock":{}}\n{"snapshot":["x"],"clock":{"Z":1}}\n')
    assert info.value.reason == "reducer-error"
    with pytest.raises(ValueError, match="no snapshot"):
        r.compact()
