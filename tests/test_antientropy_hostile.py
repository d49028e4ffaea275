"""Anti-entropy against hostile peers and awkward honest ones.

Each test states what must hold when a peer sends small messages that would
cost a replica much (ranges that answer nothing asked, roots in a loop), a
forged or Python-equal second version of an entry, a proof for a source it
never took, or when honest setups meet (a node reaching itself, bounded
event logs, compacted sets beside verifying readers, a store that lost a
row, a joined snapshot and a crash). Every one failed before its fix.
"""

from __future__ import annotations

import sqlite3

import orjson
import pytest

import repred
from repred import _summary
from repred._hashtree import SourceTree, entry_hash, node_of
from repred._replica import log_of
from repred.protocol import Session
from repred.types import events, gset, model

from .helpers import FakeWall, SessionPair, sync

KEY = repred.SigningKey.generate()


def _json(replica):
    return orjson.dumps(replica.to_dict(), option=orjson.OPT_SORT_KEYS)


def _rounds(a, b):
    """One more sync; the anti-entropy statistics of both sides."""
    pair = SessionPair(a, b)
    pair.pump()
    stats = pair.a.statistics(), pair.b.statistics()
    pair.close()
    return stats


def _linked(victim):
    """A session of ``victim`` past the sync with a stranger whose digest
    claims what the victim holds, and a round of the stranger's open."""
    s = Session(victim)
    hello = orjson.loads(s.data_to_send().split(b"\n")[0])
    hello["id"] = "stranger"
    hello["clock"] = dict(victim.clock)
    s.receive_data(orjson.dumps(hello) + b"\n" + b'"SYNC"\n')
    s.data_to_send()
    s.receive_data(_root(1) + b"\n")
    s.data_to_send()
    return s


def _root(rnd, horizon=0):
    return orjson.dumps(
        {
            "ae": "root",
            "r": rnd,
            "mine": True,
            "h": horizon,
            "fp": "0" * 32,
            "snap": False,
            "sync": False,
        }
    )


def _step(*ranges, more=False):
    msg = {"ae": "step", "r": 1, "mine": True, "ranges": list(ranges)}
    if more:
        msg["more"] = True
    return orjson.dumps(msg) + b"\n"


# -- convergence ---------------------------------------------------------------


@pytest.mark.parametrize("values", [(1, True), (0, False), (1, 1.0)])
def test_versions_python_calls_equal_but_json_does_not_converge(values):
    # Two versions of one stamp: [k, 1] and [k, true]. Replica._known
    # compares them with Python's == (1 == True == 1.0), so the repair is
    # dropped as "already held", while the trees (canonical JSON) differ.
    wall = FakeWall()
    x, y = model(id="X", wall=wall), model(id="Y", wall=wall)
    x.apply([(["k", values[0]], wall.now - 1000, "S")])
    y.apply([(["k", values[1]], wall.now - 1000, "S")])
    sync(x, y)
    assert _json(x) == _json(y)
    a, b = _rounds(x, y)
    assert a.antientropy_differed + b.antientropy_differed == 0


def test_one_round_settles_an_equivocation_that_hid_a_dominated_entry():
    wall = FakeWall()
    t1, t2 = wall.now - 2000, wall.now - 1000
    v, u = next(
        (v, u)
        for v in range(100)
        for u in range(100)
        if entry_hash(t2, ["a", v]) < entry_hash(t2, ["c", u])
    )
    x, y = model(id="X", wall=wall), model(id="Y", wall=wall)
    x.apply([(["c", "old"], t1, "S"), (["a", v], t2, "S")])
    y.apply([(["c", "old"], t1, "S"), (["c", u], t2, "S")])
    sync(x, y)
    assert y.to_dict() == x.to_dict() == {"c": "old", "a": v}


def test_events_dropped_by_their_bound_are_not_repaired_back_every_round():
    wall = FakeWall()
    a = events(id="A", wall=wall)
    b = events(id="B", wall=wall, max_events=10)
    for i in range(30):
        wall.now += 1
        a.emit("tick", i)
    sync(a, b)
    again = []
    b.on("tick", again.append)
    _, stats = _rounds(a, b)
    assert stats.repaired_in == 0
    assert again == []  # each event reaches a handler once
    assert b.horizon() > 0  # "the stamp below which it may have dropped entries"


def test_signed_sets_compacted_on_one_side_do_not_resend_their_history():
    # Two verifying readers (neither takes snapshots, so their trees are
    # compared); one compacts.
    w = gset(signing_key=KEY)
    for i in range(50):
        w.add(i)
    b, c = gset(id="B", verify=True), gset(id="C", verify=True)
    sync(w, b)
    sync(w, c)
    # A verifying replica cannot compact (a snapshot carries no signatures),
    # so there is no folded history to resend.
    with pytest.raises(ValueError, match="verifying"):
        b.compact()
    x, y = _rounds(b, c)
    assert x.repaired_out + y.repaired_out == 0


def test_a_compacted_signer_and_a_verifying_reader_keep_their_link():
    w = gset(signing_key=repred.SigningKey.generate())
    for i in range(20):
        w.add(i)
    d = gset(id="D", verify=True)
    held = [
        (e.change, e.ts, e.source, w.signature(e.source, e.ts)) for e in w.history()
    ]
    d.apply([e for i, e in enumerate(held) if i != 5])
    w.compact()
    sync(d, w)  # RemoteProtocolError: a verifying replica takes no snapshots


# -- twin ids --------------------------------------------------------------------


def test_a_replica_linked_to_itself_is_not_a_twin():
    # A node that reaches itself through a forwarder, a load balancer or a
    # service name: both ends are the same replica, nobody else writes.
    r = model(id="R")
    r.set("k", 1)
    pair = SessionPair(r, r)
    pair.pump()
    assert r.statistics().twin_ids == 0


def test_a_digest_alone_does_not_make_a_replica_a_twin():
    r = model(id="R")
    s = Session(r)
    s.data_to_send()
    s.receive_data(b'{"id":"R","clock":{}}\n')  # anyone can say this
    assert r.statistics().twin_ids == 0


def test_a_store_that_lost_one_of_its_own_rows_is_not_a_twin(tmp_path):
    path = tmp_path / "r.db"
    r = model(id="R", store=repred.SqliteStore(path))
    for i in range(5):
        r.set(f"k{i}", i)
    peer = model(id="P")
    sync(r, peer)
    r.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM entries WHERE CAST(change AS TEXT) LIKE '%k3%'")
    db.close()
    r = model(store=repred.SqliteStore(path))
    sync(r, peer)
    assert r.get("k3") == 3
    assert r.statistics().twin_ids == 0
    r.close()


# -- hostile input on a verifying network -----------------------------------------


def _signed_victim():
    w = model(signing_key=KEY)
    w.set("k", 1)
    e = next(iter(w.history()))
    v = model(id="V", verify=True)
    v.apply([(e.change, e.ts, e.source, w.signature(e.source, e.ts))])
    return v, e


def test_an_unsigned_version_is_refused_before_it_is_reported():
    v, e = _signed_victim()
    real = entry_hash(e.ts, list(e.change))
    forged = next(n for n in range(10**6) if entry_hash(e.ts, ["k", n]) > real)
    v.apply([(["k", forged], e.ts, e.source, "A" * 86)])  # refused, counted
    assert v.statistics().equivocations == 0
    assert v.statistics().refused == 1


def test_a_forged_entry_in_its_own_name_does_not_make_a_signed_node_a_twin():
    me = model(signing_key=repred.SigningKey.generate(), verify=True)
    me.set("mine", 1)
    e = next(iter(me.history()))
    forged = next(
        n
        for n in range(10**6)
        if entry_hash(e.ts, ["mine", n]) > entry_hash(e.ts, ["mine", 1])
    )
    try:
        me.apply([(["mine", forged], e.ts, me.id, "A" * 86)])
    except repred.RemoteProtocolError:
        pass
    assert me.statistics().twin_ids == 0


def test_a_bad_entry_a_relay_holds_does_not_end_the_link_between_honest_peers():
    w = model(signing_key=KEY)
    for i in range(5):
        w.set(f"k{i}", i)
    held = [
        (e.change, e.ts, e.source, w.signature(e.source, e.ts)) for e in w.history()
    ]
    n, v = model(id="N"), model(id="V", verify=True)
    n.apply(held)
    v.apply(held)
    n.apply([(["injected", 1], (held[1][1] + held[2][1]) / 2, KEY.id)])
    sync(n, v)  # RemoteProtocolError (bad-signature), on every reconnection
    assert "injected" not in v.to_dict()


def test_proofs_are_kept_within_a_bound():
    z = model(id="Z", verify=True, max_sources=8)
    for _ in range(20):
        k = repred.SigningKey.generate()
        a, b = (["x", 1], 5, k.id), (["x", 2], 5, k.id)
        z.prove((*a, k.sign(*a)), (*b, k.sign(*b)))
    assert z.statistics().banned <= 8


# -- hostile ranges: work and memory per byte --------------------------------------


@pytest.mark.parametrize(
    "make_range",
    [
        lambda clock: ["W", "V", clock, 0, 0],
        lambda clock: ["R", "V", clock, -1, -1, 0, ""],
    ],
    ids=["W", "R"],
)
def test_a_small_step_cannot_queue_the_history_hundreds_of_times(make_range):
    victim = model(id="V")
    for i in range(1000):
        victim.set(f"k{i}", i)
    s = _linked(victim)
    # A range that answers nothing this side asked ends the link at once.
    with pytest.raises(repred.RemoteProtocolError, match="answers nothing"):
        s.receive_data(_step(*[make_range(victim.clock["V"])] * 512, more=True))
    queued = sum(len(stamps) for _, stamps in s._ae._repairs)
    assert queued <= 1000  # at most what it holds (512,000 here)


def test_a_small_step_cannot_make_the_victim_hash_its_history_hundreds_of_times(
    monkeypatch,
):
    victim = model(id="V")
    for i in range(1000):
        victim.set(f"k{i}", i)
    calls = [0]
    real = _summary.entry_hash

    def counting(ts, change):
        calls[0] += 1
        return real(ts, change)

    monkeypatch.setattr(_summary, "entry_hash", counting)
    s = _linked(victim)
    clock = victim.clock["V"]
    with pytest.raises(repred.RemoteProtocolError, match="answers nothing"):
        s.receive_data(_step(*[["I", "V", clock, 0, 0, []]] * 512, more=True))
    assert calls[0] <= 2 * 1000  # 512,000 here


def test_roots_in_a_loop_do_not_cost_a_pass_over_every_source_each(monkeypatch):
    wall = FakeWall()
    victim = model(id="V", wall=wall)
    victim.apply([([f"k{i}", i], wall.now - 10_000, f"s{i}") for i in range(500)])
    calls = [0]
    real = SourceTree.summary

    def counting(self, *args):
        calls[0] += 1
        return real(self, *args)

    monkeypatch.setattr(SourceTree, "summary", counting)
    s = _linked(victim)
    calls[0] = 0
    s.receive_data(b"".join(_root(r) + b"\n" for r in range(2, 102)))
    assert calls[0] <= 10 * 500  # 100 lines of 130 bytes: 100,000 here


# -- hostile ranges: typed errors -----------------------------------------------------


def _victim_and_stamp():
    victim = model(id="V")
    for i in range(10):
        victim.set(f"k{i}", i)
    return victim, next(iter(log_of(victim, "V").view().stamps))


def test_children_of_a_deepest_node_are_a_protocol_error():
    victim, ts = _victim_and_stamp()
    s = _linked(victim)
    rng = ["N", "V", victim.clock["V"], *node_of(ts, 16), [[0, 1, "0" * 32]]]
    with pytest.raises(repred.RemoteProtocolError):
        s.receive_data(_step(rng))  # IndexError


def test_a_horizon_above_a_source_clock_is_not_an_index_error():
    victim, first = _victim_and_stamp()
    s = _linked(victim)
    clock = victim.clock["V"]
    # Their record of V up to its first stamp; a horizon above every stamp.
    record = ["V", first, *node_of(first, 16), 1, "f" * 32]
    try:
        s.receive_data(_step(["H", clock + 10**9], ["S", [0], [record]]))
    except repred.RemoteProtocolError:
        pass  # IndexError in SourceTree.summary when low > upto


@pytest.mark.parametrize(
    "rng", [["T", "0" * 32, "0" * 32], ["X"]], ids=["state", "snapshot"]
)
def test_snapshot_ranges_to_a_type_without_snapshots_are_a_protocol_error(rng):
    victim, _ = _victim_and_stamp()
    s = _linked(victim)
    with pytest.raises(repred.RemoteProtocolError):  # (never a ValueError)
        s.receive_data(_step(rng))


# -- durability ------------------------------------------------------------------------


def test_a_joined_snapshot_survives_a_crash(tmp_path):
    path = tmp_path / "b.db"
    wall = FakeWall()
    w = gset(id="W", wall=wall)
    for i in range(10):
        wall.now += 1
        w.add(i)
    held = [(e.change, e.ts, e.source) for e in w.history()]
    w.compact()
    b = gset(id="B", wall=wall, store=repred.SqliteStore(path))
    b.apply([e for i, e in enumerate(held) if i != 4])
    b.close()  # a checkpoint of the state without 4
    b = gset(wall=wall, store=repred.SqliteStore(path))
    sync(w, b)  # the states differ: b joins w's snapshot
    assert 4 in b
    b.store._db.close()  # as if killed
    b.store._release()
    b = gset(wall=wall, store=repred.SqliteStore(path))
    assert 4 in b
    b.close()
