"""Anti-entropy: divergence that the digests cannot see is found and healed.

A digest says how far a replica has each source, not what it holds. These
tests make replicas whose clocks agree but whose entries differ (a relay
that skipped an entry, a writer that wrote two versions of one stamp, two
replicas sharing one id, a store edited behind the replica's back) and
check that one sync brings them together, and that the finding is reported.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from functools import partial

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repred
from repred.types import gset, model

from .helpers import FakeWall, SessionPair, examples, sync

KEY = repred.SigningKey.generate()
OTHER = repred.SigningKey.generate()


def _entries(replica):
    """Every entry a replica holds, with its signature (as a peer sends it)."""
    return [
        (e.change, e.ts, e.source, replica.signature(e.source, e.ts))
        for e in replica.history()
    ]


def _skipping_relay(writer, target, skip):
    """Deliver the writer's entries to ``target`` as a relay that leaves out
    the ``skip``-th one would: in order, so the clock covers the gap."""
    entries = _entries(writer)
    target.apply([e if e[3] else e[:3] for i, e in enumerate(entries) if i != skip])
    assert dict(target.clock)[writer.id] == dict(writer.clock)[writer.id]


def _written(replica, n, prefix="k"):
    for i in range(n):
        replica.set(f"{prefix}{i}", i)


def _held(replica):
    return sorted((e.source, e.ts, orjson.dumps(e.change)) for e in replica.history())


# -- an entry a relay skipped ---------------------------------------------------


def test_an_entry_a_relay_skipped_is_repaired_by_its_author():
    w, b = model(id="W"), model(id="B")
    _written(w, 5)
    _skipping_relay(w, b, skip=2)
    assert "k2" not in b.to_dict()
    sync(w, b)
    assert b.to_dict() == w.to_dict()
    assert _held(b) == _held(w)
    assert b.statistics().repaired == 1
    # The next sync finds nothing to do.
    pair = SessionPair(w, b)
    pair.pump()
    assert pair.a.statistics().antientropy_differed == 0
    assert pair.b.statistics().repaired_in == pair.a.statistics().repaired_in == 0


def test_an_entry_a_relay_skipped_is_repaired_by_any_honest_replica():
    w, b, c = model(id="W"), model(id="B"), model(id="C")
    _written(w, 5)
    sync(w, c)
    _skipping_relay(w, b, skip=0)
    sync(b, c)  # never linked to the author
    assert b.to_dict() == w.to_dict()
    assert _held(b) == _held(c)


def test_a_signed_entry_a_relay_skipped_is_repaired_and_still_verified():
    w = model(signing_key=KEY)
    b, c = model(id="B", verify=True), model(id="C", verify=True)
    _written(w, 4)
    sync(w, c)
    _skipping_relay(w, b, skip=3 - 1)
    sync(b, c)
    assert b.to_dict() == w.to_dict()
    # It kept the author's signature, and passes it on.
    d = model(id="D", verify=True)
    sync(b, d)
    assert d.to_dict() == w.to_dict()
    assert all(d.signature(e.source, e.ts) for e in d.history())


def test_a_forged_repair_is_refused_by_a_verifying_replica():
    # Refused, and counted, without ending the link: a relay that does not
    # verify may hold such an entry in good faith.
    w = model(signing_key=KEY)
    _written(w, 3)
    b = model(id="B", verify=True)
    _skipping_relay(w, b, skip=1)
    _change, ts, source, _ = _entries(w)[1]
    assert b.repair([(source, [ts], [["k1", "evil"]], [None])]) == 0
    assert "k1" not in b.to_dict()
    assert b.statistics().refused == 1


def test_grow_only_and_stamped_types_are_repaired_too():
    w, b = gset(id="W"), gset(id="B")
    for i in range(40):
        w.add(i)
    _skipping_relay(w, b, skip=17)
    sync(b, w)
    assert set(b) == set(w)
    e, f = repred.types.events(id="E"), repred.types.events(id="F")
    for i in range(10):
        e.emit("tick", i)
    _skipping_relay(e, f, skip=4)
    sync(e, f)
    assert f.recent() == e.recent()


def test_many_omissions_among_many_entries_are_all_found():
    w, b = model(id="W"), model(id="B")
    _written(w, 5000)
    rng = random.Random(7)
    skipped = set(rng.sample(range(5000), 37))
    entries = _entries(w)
    b.apply([e[:3] for i, e in enumerate(entries) if i not in skipped])
    pair = SessionPair(w, b)
    pair.pump()
    assert b.to_dict() == w.to_dict()
    assert pair.b.statistics().repaired_in == 37
    # Only what differed was sent: far less than the history.
    sent = sum(map(len, pair.a_to_b))
    assert sent < 37 * 2000, sent


# -- two versions of one stamp --------------------------------------------------


def _two_versions(signed=False, **options):
    """Two replicas that each received another version of one stamp from
    a writer that equivocates."""
    wall = FakeWall()
    source = KEY.id if signed else "S"
    ts = wall.now - 1000
    versions = []
    for value in ("version-A", "version-B"):
        entry = (["k", value], ts, source)
        versions.append((*entry, KEY.sign(*entry)) if signed else entry)
    x = model(id="X", wall=wall, **options)
    y = model(id="Y", wall=wall, **options)
    x.apply([versions[0]])
    y.apply([versions[1]])
    return x, y, ts, source


def test_two_versions_of_one_stamp_settle_on_one_everywhere(caplog):
    x, y, ts, source = _two_versions()
    z = model(id="Z", wall=x._wall)
    sync(y, z)  # z holds y's version, two hops from x
    sync(x, y)
    sync(y, z)
    assert x.to_dict() == y.to_dict() == z.to_dict()
    assert _held(x) == _held(y) == _held(z)
    winner = min(
        ("version-A", "version-B"),
        key=lambda v: repred._hashtree.entry_hash(ts, ["k", v]),
    )
    assert x.to_dict() == {"k": winner}
    assert x.statistics().equivocations + y.statistics().equivocations >= 1
    assert "wrote two different entries" in caplog.text
    assert repr(source) in caplog.text


def test_the_version_kept_does_not_depend_on_the_order_of_arrival():
    held = []
    for first in range(2):
        x, y, _, _ = _two_versions()
        pair = (x, y) if first else (y, x)
        sync(*pair)
        held.append(x.to_dict())
    assert held[0] == held[1]


def test_a_proven_equivocator_is_refused_and_the_proof_spreads():
    x, y, ts, source = _two_versions(signed=True, verify=True)
    z = model(id="Z", verify=True, wall=x._wall)
    sync(y, z)
    seen = []
    z.on_divergence(seen.append)
    sync(x, y)  # x and y find two valid signatures on one stamp
    assert source in {p[0][2] for p in y.proofs()}
    sync(y, z)  # the proof travels with the next round
    assert [d.kind for d in seen if d.kind == "banned"] == ["banned"]
    assert z.statistics().banned == 1
    assert z.to_dict() == x.to_dict() == y.to_dict()  # the stamp settled
    # The source's later entries are refused everywhere the proof went.
    refused = z.statistics().refused
    late = (["late", 1], ts + 1, source)
    z.apply([(*late, KEY.sign(*late))])
    assert "late" not in z.to_dict()
    assert z.statistics().refused == refused + 1


def test_a_proof_that_does_not_hold_is_ignored():
    z = model(id="Z", verify=True)
    a = (["k", 1], 5, KEY.id, KEY.sign(["k", 1], 5, KEY.id))
    assert not z.prove(a, a)  # one entry twice
    forged = (["k", 2], 5, KEY.id, OTHER.sign(["k", 2], 5, KEY.id))
    assert not z.prove(a, forged)  # a signature that does not match
    assert z.statistics().banned == 0


# -- two replicas with one id ------------------------------------------------------


def test_two_replicas_with_one_id_are_told_and_still_converge(caplog):
    wall = FakeWall()
    a, b = model(id="T", wall=wall), model(id="T", wall=wall)
    a.set("from-a", 1)
    wall.now += 5
    b.set("from-b", 2)
    seen = []
    a.on_divergence(seen.append)
    sync(a, b)
    assert a.to_dict() == b.to_dict() == {"from-a": 1, "from-b": 2}
    assert a.statistics().twin_ids >= 1
    assert b.statistics().twin_ids >= 1
    assert any(d.kind == "twin-id" for d in seen)
    assert "another live replica writes under this replica's id" in caplog.text
    assert "new id" in caplog.text


def test_two_writes_of_twins_with_one_stamp_settle_and_neither_is_lost():
    # Two twins write at one stamp: an equivocation in effect. Every
    # replica keeps the same version at that stamp; the twin whose version
    # lost it writes its data again under a new stamp, so neither is lost.
    wall = FakeWall()
    a, b = model(id="T", wall=wall), model(id="T", wall=wall)
    a.set("x", "from-a")
    b.set("y", "from-b")
    sync(a, b)
    wall.now += 10  # (an entry in b's own name from its future waits)
    sync(a, b)
    assert a.to_dict() == b.to_dict() == {"x": "from-a", "y": "from-b"}
    assert _held(a) == _held(b)


def test_a_twin_seen_only_through_a_relay_is_told_too():
    wall = FakeWall()
    a, b, relay = (model(id=i, wall=wall) for i in ("T", "T", "R"))
    a.set("x", 1)
    wall.now += 10
    b.set("y", 2)
    sync(b, relay)
    sync(a, relay)
    sync(b, relay)
    assert a.to_dict() == b.to_dict() == relay.to_dict() == {"x": 1, "y": 2}
    assert a.statistics().twin_ids + b.statistics().twin_ids >= 1


# -- a store changed behind the replica's back -------------------------------------


def test_a_row_deleted_from_a_closed_store_is_repaired(tmp_path):
    path = tmp_path / "r.db"
    r = model(id="R", store=repred.SqliteStore(path))
    _written(r, 5)
    peer = model(id="P")
    sync(r, peer)
    r.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM entries WHERE CAST(change AS TEXT) LIKE '%k3%'")
    db.close()
    r = model(store=repred.SqliteStore(path))
    assert "k3" not in r.to_dict()
    sync(r, peer)
    assert r.to_dict() == peer.to_dict()
    r.close()
    # ...and the repair is durable.
    r = model(store=repred.SqliteStore(path))
    assert r.to_dict() == peer.to_dict()
    r.close()


# -- no false alarms ------------------------------------------------------------------


def test_agreeing_replicas_exchange_one_root_each_way():
    a, b = model(id="A"), model(id="B")
    _written(a, 1000)
    sync(a, b)
    pair = SessionPair(a, b)
    pair.pump()
    ae_lines = [
        line
        for chunk in pair.a_to_b + pair.b_to_a
        for line in chunk.split(b"\n")
        if line.startswith(b'{"ae"')
    ]
    assert len(ae_lines) == 2  # one side's root, and the other's end
    assert max(map(len, ae_lines)) < 120
    assert pair.a.statistics().antientropy_differed == 0


def test_links_opened_one_after_another_compute_the_root_once(monkeypatch):
    # A gossip peer opens a new link every few seconds: each must not pass
    # over every source again while the replica has not changed.
    from repred import _summary

    a, b = model(id="A"), model(id="B")
    _written(a, 200)
    sync(a, b)
    passes = []
    buckets = _summary.Summary.buckets

    def counted(self, horizon, limits):
        passes.append(self.replica.id)
        return buckets(self, horizon, limits)

    monkeypatch.setattr(_summary.Summary, "buckets", counted)
    for _ in range(3):
        SessionPair(a, b).pump()
    assert sorted(passes) == ["A", "B"]  # once each, for three links
    a.set("k0", "new")
    SessionPair(a, b).pump()
    assert passes.count("A") == 2  # a write is a new revision: a new root


def test_a_replica_is_not_kept_alive_by_its_summary():
    import gc
    import weakref

    from repred import _summary

    a, b = model(id="A"), model(id="B")
    _written(a, 10)
    SessionPair(a, b).pump()
    gone, key = weakref.ref(a), id(a)
    assert key in _summary._SUMMARIES
    del a
    gc.collect()
    assert gone() is None
    assert key not in _summary._SUMMARIES


def test_replicas_that_compacted_at_different_times_are_not_told_they_differ():
    a, b = gset(id="A"), gset(id="B")
    for i in range(50):
        a.add(i)
    sync(a, b)
    a.compact()
    b.add(99)
    sync(a, b)
    b.compact()
    pair = SessionPair(a, b)
    pair.pump()
    stats = [pair.a.statistics(), pair.b.statistics()]
    assert [s.antientropy_differed for s in stats] == [0, 0]
    assert [s.repaired_in for s in stats] == [0, 0]
    assert set(a) == set(b)


def test_a_compacted_replica_that_lacked_an_entry_is_joined():
    w, b = gset(id="W"), gset(id="B")
    for i in range(10):
        w.add(i)
    _skipping_relay(w, b, skip=4)
    b.compact()  # the gap is folded in
    sync(w, b)
    assert set(b) == set(w)
    pair = SessionPair(w, b)
    pair.pump()
    assert pair.a.statistics().antientropy_differed == 0


def test_a_write_superseded_in_flight_is_not_a_divergence():
    # a overwrites a key that b still holds at its older version: the two
    # differ only for as long as the newer write is on its way.
    wall = FakeWall()
    a, b = model(id="A", wall=wall), model(id="B", wall=wall)
    a.set("k", 1)
    sync(a, b)
    wall.now += 1
    a.set("k", 2)
    sync(a, b)
    assert b.statistics().repaired == a.statistics().repaired == 0
    assert b.to_dict() == {"k": 2}


# -- any subsets of any entries converge in one round --------------------------------


def _all_entries(draw_ops, kind):
    wall = FakeWall()
    writers = [kind(id=f"w{i}", wall=wall) for i in range(3)]
    for i, x in draw_ops:
        wall.now += 1
        w = writers[i]
        if kind is model:
            w.set("abcde"[x % 5], x)
        else:
            w.add(x % 12)
    return writers, [e for w in writers for e in _entries(w)]


@settings(max_examples=examples(200))
@given(
    kind=st.sampled_from([model, gset]),
    ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 100)), max_size=25),
    n=st.integers(2, 5),
    twice=st.sets(st.integers(0, 30), max_size=4),
    data=st.data(),
)
def test_replicas_given_any_subsets_converge_in_one_round(kind, ops, n, twice, data):
    """Each replica is given an arbitrary subset of a set of entries (with
    omissions, in any order, some twice, and some stamps in two versions);
    one round of syncs along a spanning tree (each edge towards the root,
    then back) makes them hold exactly the same entries and state."""
    writers, entries = _all_entries(ops, kind)
    # A writer that equivocates: a second version of some stamps.
    entries += [
        ((e[0][0], e[0][-1] + 1000), e[1], e[2], None)
        for i, e in enumerate(entries)
        if i in twice
    ]
    wall = FakeWall(writers[0]._wall() + 1000)
    replicas = [kind(id=f"r{i}", wall=wall) for i in range(n)]
    for r in replicas:
        subset = (
            data.draw(st.lists(st.sampled_from(entries), max_size=40))
            if entries
            else []
        )
        r.apply([e[:3] for e in subset])
    parent = [None] + [data.draw(st.integers(0, i - 1)) for i in range(1, n)]
    order = list(range(n - 1, 0, -1))
    for i in order:
        sync(replicas[i], replicas[parent[i]])
    for i in reversed(order):
        sync(replicas[parent[i]], replicas[i])
    reference = _held(replicas[0])
    for r in replicas:
        assert _held(r) == reference
        assert r.state == replicas[0].state


# -- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b'{"ae":"root","r":1,"mine":true,"h":0,"fp":"zz","snap":false}',
        b'{"ae":"step","r":1,"mine":true,"ranges":[]}',
        b'{"ae":"step","r":1,"mine":true,"ranges":[["Q"]]}',
        b'{"ae":"step","r":1,"mine":true,"ranges":[["N","s",1,99,0,[]]]}',
        b'{"ae":"step","r":1,"mine":true,"ranges":[["I","s",1,0,0,[[1,"x"]]]]}',
        b'{"ae":"wat","r":1,"mine":true}',
        b'{"repair":"s","stamps":[2,1],"changes":[1,2]}',
        b'{"proof":[[1,2,"s"],[1,2,"s"]]}',
    ],
)
def test_malformed_anti_entropy_ends_the_link_and_changes_nothing(line):
    a, b = model(id="A"), model(id="B")
    _written(a, 3)
    pair = SessionPair(a, b)
    pair.pump()
    before = _held(b)
    with pytest.raises(repred.RemoteProtocolError):
        pair.b.receive_data(line + b"\n")
    assert _held(b) == before


def test_anti_entropy_is_not_offered_to_js_peers_or_one_way_links():
    a = model(id="A")
    s = repred.protocol.Session(a)
    assert b'"antientropy":1' in s.data_to_send()
    for one_way in ({"send": False}, {"receive": False}):
        s = repred.protocol.Session(a, **one_way)
        assert b"antientropy" not in s.data_to_send()
    # A JS peer's digest offers nothing: no anti-entropy line ever goes out.
    s = repred.protocol.Session(a)
    s.data_to_send()
    s.receive_data(b'{"id":"js","clock":{}}\n"SYNC"\n')
    out = s.data_to_send()
    assert b'"ae"' not in out
    assert s.settled


def test_logs_name_the_source(caplog):
    caplog.set_level(logging.INFO, logger="repred")
    w, b = model(id="W"), model(id="B")
    _written(w, 3)
    _skipping_relay(w, b, skip=1)
    sync(w, b)
    assert "'W'" in caplog.text


# -- what anti-entropy changes is durable ------------------------------------------


def test_repairs_and_replacements_below_packed_segments_reopen_in_order(tmp_path):
    # A store packs its rows into segments at close; entries repaired (or
    # replaced) later are rows below those segments, and reopen merged.
    wall = FakeWall()
    w = model(id="W", wall=wall)
    _written(w, 600)
    path = tmp_path / "b.db"
    b = model(id="B", wall=wall, store=repred.SqliteStore(path))
    _skipping_relay(w, b, skip=100)
    change, ts, _, _ = _entries(w)[200]
    b.close()  # packed
    b = model(wall=wall, store=repred.SqliteStore(path))
    sync(w, b)  # repairs entry 100
    # Another version of entry 200 with a smaller hash: b keeps it.
    other = next(
        ["k200", v]
        for v in range(10**6)
        if repred._hashtree.entry_hash(ts, ["k200", v])
        < repred._hashtree.entry_hash(ts, list(change))
    )
    b.apply([(other, ts, "W")])
    expected = b.to_dict()
    assert expected["k100"] == 100
    assert expected["k200"] == other[1]
    held = _held(b)
    b.close()
    b = model(wall=wall, store=repred.SqliteStore(path))
    assert b.to_dict() == expected
    assert _held(b) == held
    b.close()


def test_a_proof_and_a_new_id_survive_a_restart(tmp_path):
    path = tmp_path / "z.db"
    x, y, ts, source = _two_versions(signed=True, verify=True)
    z = model(id="Z", verify=True, wall=x._wall, store=repred.SqliteStore(path))
    sync(x, y)
    sync(y, z)
    assert z.statistics().banned == 1
    new = z.take_new_id()
    z.close()
    z = model(verify=True, wall=x._wall, store=repred.SqliteStore(path))
    assert z.id == new
    assert z.statistics().banned == 1
    late = (["late", 1], ts + 1, source)
    z.apply([(*late, KEY.sign(*late))])
    assert "late" not in z.to_dict()
    z.close()


def test_a_new_id_keeps_the_data_and_writes_under_the_new_one():
    r = model(id="T")
    r.set("a", 1)
    old = r.id
    new = r.take_new_id()
    r.set("b", 2)
    assert r.to_dict() == {"a": 1, "b": 2}
    assert {e.source for e in r.history()} == {old, new}
    with pytest.raises(ValueError, match="key"):
        model(signing_key=KEY).take_new_id()
    with pytest.raises(ValueError, match="already"):
        r.take_new_id(old)


# -- the peer command ---------------------------------------------------------------


@pytest.mark.slow
async def test_two_peer_commands_on_copies_of_one_data_dir(tmp_path):
    """Two nodes started from one copied --data directory share an id: each
    is told, refuses to go on writing under it, and one restarted with
    --new-id writes again; everything both wrote converges."""
    import shutil

    import trio

    from .test_cli import _has, _start

    original = tmp_path / "a"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            a = await _start(nursery, 0, "--data", str(original))
            await a.send("set before 1")
            await a.until(_has("before", 1))
            a.process.terminate()
            await a.process.wait()
            shutil.copytree(original, tmp_path / "b")
            a = await _start(nursery, 0, "--data", str(original))
            await a.send("set only-a 1")
            await a.until(_has("only-a", 1))
            b = await _start(nursery, 0, str(a.port), "--data", str(tmp_path / "b"))
            assert a.id == b.id
            for node in (a, b):
                twin = await node.until(lambda e: e["event"] == "twin-id")
                assert "--new-id" in twin["message"]
            await b.until(_has("only-a", 1))  # b takes what a wrote
            await b.send("set only-b 2")
            refused = await b.until(lambda e: e["event"] == "error")
            assert "--new-id" in refused["message"]
            b.process.terminate()
            await b.process.wait()
            b = await _start(
                nursery, 0, str(a.port), "--data", str(tmp_path / "b"), "--new-id"
            )
            assert b.id != a.id
            await b.send("get only-a")  # kept
            value = await b.until(lambda e: e["event"] == "value")
            assert value["value"] == 1
            await b.send("set only-b 2")
            await a.until(_has("only-b", 2))
            nursery.cancel_scope.cancel()


# -- over real links ------------------------------------------------------------------


async def test_a_live_tcp_link_repairs_within_its_interval():
    import trio

    from .helpers import wait_until

    w, a, b = model(id="W"), model(id="A"), model(id="B")
    _written(w, 50)
    sync(w, a)
    _skipping_relay(w, b, skip=10)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(repred.serve_tcp, a, 0, antientropy_interval=0.2)
            )
            port = listeners[0].socket.getsockname()[1]
            conn = await nursery.start(
                partial(
                    repred.connect_tcp, b, "127.0.0.1", port, antientropy_interval=0.2
                )
            )
            await conn.wait_synced()
            await wait_until(b, lambda: b.get("k10") == 10)  # after the sync
            # A divergence that arises while linked: an entry of W that only
            # b holds, below both clocks. Only the next round can find it.
            ts = w.clock["W"] - 0.5
            b.apply([(["late", 1], ts, "W")])
            await wait_until(a, lambda: a.get("late") == 1)
            stats = conn.statistics()
            assert stats.repaired_in >= 1  # (both sides' rounds may find one)
            assert stats.repaired_out >= 1
            assert stats.antientropy_differed >= 2
            nursery.cancel_scope.cancel()


async def test_a_sync_that_is_not_live_returns_after_repairing():
    import trio

    w, b = model(id="W"), model(id="B")
    _written(w, 20)
    _skipping_relay(w, b, skip=3)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(repred.serve_tcp, w, 0)
            port = listeners[0].socket.getsockname()[1]
            stats = await repred.connect_tcp(
                b, "127.0.0.1", port, live=False, close_timeout=0
            )
            nursery.cancel_scope.cancel()
    assert b.to_dict() == w.to_dict()
    assert stats.repaired_in == 1


def test_a_replica_never_loses_what_it_wrote_to_a_second_version():
    # A peer (a forger, or a twin) sends another version of an entry this
    # replica wrote, with a smaller hash: the stamp goes to that version, as
    # on every replica, and what this one wrote is written again, under a
    # new stamp; it says someone writes in its name.
    w = gset(id="W")
    w.add("mine")
    (entry,) = _entries(w)
    _, ts, source, _ = entry
    forged = next(
        [v]
        for v in range(10**6)
        if repred._hashtree.entry_hash(ts, [v])
        < repred._hashtree.entry_hash(ts, ["mine"])
    )
    w.apply([(forged, ts, source)])
    assert "mine" in w
    assert forged[0] in w
    assert w.statistics().twin_ids >= 1
    peer = gset(id="P")
    peer.apply([(forged, ts, source)])
    sync(w, peer)
    assert set(peer) == set(w)
    assert _held(peer) == _held(w)


def test_a_signed_version_beats_an_unsigned_one_whatever_the_hashes():
    w = model(signing_key=KEY)
    w.set("k", "signed")
    (entry,) = _entries(w)
    _, ts, source, _ = entry
    for value in range(30):  # an unsigned second version, any hash
        r = model(id="R")
        r.apply([entry])
        r.apply([(["k", value], ts, source)])
        assert r.to_dict() == {"k": "signed"}
        other = model(id="O")
        other.apply([(["k", value], ts, source)])
        other.apply([entry])
        assert other.to_dict() == {"k": "signed"}
