"""The built-in types: behaviour, replication, and check_reducer on each."""

import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import repred
from repred import types
from repred.testing import ReducerCheckFailed, check_reducer
from repred.types import _doc, _events, _lww, _model, _seq, _sets, model
from repred.types._position import DIGITS

from .helpers import FakeWall, examples, sync

items = st.one_of(st.integers(0, 5), st.sampled_from(["a", "b", "c"]))
tags = st.sampled_from(["t1", "t2", "t3"])
names = st.sampled_from(["x", "y"])
positions = st.text(alphabet=DIGITS[1:], min_size=1, max_size=2)


def _converge(factory, ops, n=3):
    """Run ops(i, replica) on n replicas, sync them all, return them."""
    wall = FakeWall()
    rs = [factory(id=f"r{i}", wall=wall) for i in range(n)]
    for i, r in enumerate(rs):
        ops(i, r)
        wall.now += 1
    chain = list(itertools.pairwise(rs))
    for a, b in chain + chain[::-1]:
        sync(a, b)
    return rs


# -- check_reducer on every built-in type ------------------------------------


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_gset():
    check_reducer(
        _sets.union,
        set(),
        st.lists(items, max_size=3),
        snapshot=_sets._gset_snapshot,
        max_examples=examples(200),
    )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_twophase_set():
    update = st.fixed_dictionaries(
        {},
        optional={
            "add": st.lists(items, max_size=3),
            "remove": st.lists(items, max_size=3),
        },
    )
    check_reducer(
        _sets.two_phase,
        {"add": set(), "remove": set()},
        update,
        snapshot=_sets._two_phase_snapshot,
        max_examples=examples(200),
    )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_orset():
    pairs = st.lists(st.tuples(items, tags).map(list), max_size=3)
    update = st.fixed_dictionaries({}, optional={"add": pairs, "remove": pairs})
    check_reducer(
        _sets.observed_remove,
        {"live": {}, "dead": set()},
        update,
        snapshot=_sets._orset_snapshot,
        max_examples=examples(200),
    )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_counter():
    update = st.tuples(names, st.integers(0, 9), st.integers(0, 9)).map(list)
    check_reducer(
        _lww.totals, {}, update, last_write_wins=_lww._first, max_examples=examples(200)
    )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_register():
    check_reducer(
        _lww.overwrite,
        [None],
        st.tuples(items).map(list),
        last_write_wins=_lww._value_key,
        max_examples=examples(200),
    )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_heartbeats():
    check_reducer(
        _lww.beat,
        {},
        st.tuples(names).map(list),
        last_write_wins=_lww._first,
        stamped=True,
        max_examples=examples(200),
    )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_model():
    update = st.tuples(names, st.one_of(st.none(), items)).map(list)
    check_reducer(
        _model.lww_set,
        {},
        update,
        last_write_wins=_model.model_key,
        max_examples=examples(200),
    )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_events():
    update = st.tuples(names, items).map(list)
    check_reducer(
        _events.occurred, {}, update, stamped=True, max_examples=examples(200)
    )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_seq():
    update = st.tuples(names, st.one_of(st.none(), positions), items).map(list)
    check_reducer(
        _seq.place,
        {},
        update,
        last_write_wins=_seq._item_key,
        max_examples=examples(200),
    )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_doc():
    update = st.one_of(
        st.tuples(names, st.sampled_from(["f", "g"]), st.one_of(st.none(), items)),
        st.tuples(names, st.just(_doc.DELETED), st.just(True)),
    ).map(list)
    check_reducer(
        _doc.write_field,
        {},
        update,
        last_write_wins=_doc._field_key,
        max_examples=examples(200),
    )


# -- check_reducer catches classic mistakes ----------------------------------


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_catches_a_list_append():
    def append(state, update):
        state.append(update)
        return update

    with pytest.raises(ReducerCheckFailed, match="different states"):
        check_reducer(append, [], st.integers(0, 3), max_examples=examples(200))


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_catches_last_write_wins_without_a_tie_break():
    def lww_no_tiebreak(state, change, stamp):
        if stamp[0] > state.get("ts", -1):
            state["ts"], state["value"] = stamp[0], change
            return change
        return None

    with pytest.raises(ReducerCheckFailed, match="different states"):
        check_reducer(
            lww_no_tiebreak,
            {},
            st.integers(0, 3),
            stamped=True,
            max_examples=examples(200),
        )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_catches_a_dishonest_delta():
    def dishonest(state, update):
        state.update(update)
        return update[:1]  # reports less than it did

    with pytest.raises(ReducerCheckFailed, match="not honest"):
        check_reducer(
            dishonest,
            set(),
            st.lists(st.integers(0, 3), max_size=3),
            max_examples=examples(200),
        )


# -- behaviour ----------------------------------------------------------------


def test_gset():
    a, b, c = _converge(types.gset, lambda i, r: r.add(i, "shared"))
    assert set(a) == set(b) == set(c) == {0, 1, 2, "shared"}
    assert 1 in a
    assert len(a) == 4
    with pytest.raises(TypeError):
        a.add([1])


def test_twophase_set_removal_is_final_and_never_resurrects():
    def ops(i, r):
        r.add("x", f"only{i}")
        if i == 1:
            r.remove("x")

    rs = _converge(types.two_phase_set, ops)
    assert all(r.members() == {"only0", "only1", "only2"} for r in rs)
    rs[0].add("x")
    assert "x" not in rs[0]
    late = types.two_phase_set(id="late")
    sync(rs[2], late)
    assert late.members() == rs[2].members()


def test_orset_concurrent_add_wins_and_removes_stay_removed():
    a, b = types.orset(id="a"), types.orset(id="b")
    a.add("x")
    sync(a, b)
    a.remove("x")  # a removes the x it saw...
    b.add("x")  # ...while b adds it again
    sync(a, b)
    assert "x" in a
    assert "x" in b
    a.remove("x")
    sync(a, b)
    late = types.orset(id="late")
    sync(b, late)
    assert a.members() == b.members() == late.members() == set()


def test_counter():
    def ops(i, r):
        r.inc(10)
        r.dec(i)

    rs = _converge(types.counter, ops)
    assert [r.value for r in rs] == [27, 27, 27]
    assert all(len(list(r.history())) == 3 for r in rs)


def test_register_and_heartbeats():
    rs = _converge(types.register, lambda i, r: r.set(f"v{i}"))
    assert {r.value for r in rs} == {"v2"}
    wall = FakeWall()
    h = types.heartbeats(id="h", wall=wall)
    h.beat("ann")
    wall.now += 5000
    h.beat("ben")
    assert h.alive(within=1) == ["ben"]
    assert h.alive(within=10) == ["ann", "ben"]
    for _ in range(100):
        h.beat("ben")
    assert len(list(h.history())) == 2


def test_events_are_delivered_once_and_late_joiners_catch_up():
    a, b = types.events(id="a"), types.events(id="b")
    seen_a, seen_b = [], []
    a.on("chat", seen_a.append)
    b.on("chat", seen_b.append)
    a.emit("chat", "hi")
    a.emit("chat", "hi")  # same payload, a second event
    sync(a, b)
    sync(a, b)
    b.emit("chat", "yo")
    sync(a, b)
    assert seen_a == ["hi", "hi", "yo"]
    assert seen_b == ["hi", "hi", "yo"]
    late, seen_late = types.events(id="late"), []
    late.on("chat", seen_late.append)
    sync(b, late)
    assert sorted(seen_late) == ["hi", "hi", "yo"]


def test_events_history_is_bounded():
    wall = FakeWall()
    e = types.events(id="e", max_events=10, wall=wall)
    for i in range(100):
        e.emit("n", i)
    assert 10 <= len(list(e.history())) <= 13
    aged = types.events(id="g", max_age_ms=1000, wall=wall)
    aged.emit("n", "old")
    wall.now += 5000
    aged.emit("n", "new")
    assert aged.recent() == [("n", "new")]


def test_seq_orders_concurrent_inserts_the_same_everywhere():
    def ops(i, r):
        first = r.push(f"a{i}")
        r.unshift(f"b{i}")
        r.insert(f"c{i}", after=first)

    rs = _converge(types.seq, ops)
    assert rs[0].to_list() == rs[1].to_list() == rs[2].to_list()
    assert len(rs[0]) == 9
    s = rs[0]
    ids = s.ids()
    s.move(ids[0], after=ids[-1])
    s.remove(ids[1])
    sync(rs[0], rs[1])
    assert rs[1].to_list() == s.to_list()
    assert s.to_list()[-1] == rs[2].to_list()[0]


def test_doc_todo_lists_move_rows_between_sets():
    a, b = types.doc(id="a"), types.doc(id="b")
    todo, done = a.create_seq("list", "todo"), a.create_seq("list", "done")
    drnk = todo.push({"id": "drnk", "text": "beer"})
    meet = todo.push({"id": "meet", "text": "reject.js"})
    todo.before(meet, drnk)
    assert [r["text"] for r in todo.to_list()] == ["reject.js", "beer"]
    done.push({"id": meet})
    sync(a, b)
    b_todo, b_done = b.create_seq("list", "todo"), b.create_seq("list", "done")
    assert b_todo.ids() == ["drnk"]
    assert b_done.ids() == ["meet"]
    b.remove("drnk")
    b.set("drnk", {"text": "too late"})
    sync(a, b)
    assert a.get("drnk") is None
    assert todo.ids() == []
    late = types.doc(id="late")
    sync(b, late)
    assert late.get("drnk") is None
    assert late.get("meet")["text"] == "reject.js"
    assert b.create_set("list", "done").ids() == ["meet"]


def test_types_refuse_peers_of_another_type():
    with pytest.raises(repred.IncompatiblePeerError):
        sync(types.gset(id="a"), types.orset(id="b"))


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_a_maximum_passes_the_check():
    def highest(state, update):
        if update > state[0]:
            state[0] = update
            return update
        return None

    best = repred.repred(highest, [0])
    assert best.update(7) == 7
    check_reducer(highest, [0], st.integers(0, 10**6), max_examples=examples(200))


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_catches_a_lossy_snapshot():
    with pytest.raises(ReducerCheckFailed, match="snapshot"):
        check_reducer(
            _sets.union,
            set(),
            st.lists(items, max_size=3),
            snapshot=lambda state: sorted(state, key=repr)[:1],
            max_examples=examples(200),
        )


@pytest.mark.hypothesis  # check_reducer runs Hypothesis
def test_check_catches_a_snapshot_that_depends_on_arrival_order():
    # A state kept in arrival order, compared as a set: the reducer
    # converges, but its snapshot does not name equal states alike.
    def arrival_set(state, update):
        change = list(dict.fromkeys(x for x in update if x not in state))
        state.extend(change)
        return change

    class Bag(list):
        def __eq__(self, other):
            return sorted(map(repr, self)) == sorted(map(repr, other))

        def __ne__(self, other):
            return not self == other

        __hash__ = None

    with pytest.raises(ReducerCheckFailed, match="equal states give two snapshots"):
        check_reducer(
            arrival_set,
            Bag(),
            st.lists(st.text(max_size=2), max_size=3),
            snapshot=list,
            max_examples=examples(200),
        )


BAD_CHANGES = [
    b"null",
    b"42",
    b'"text"',
    b"[]",
    b"{}",
    b"[[1,2]]",
    b'["a","b","c","d"]',
    b'{"add":[[1]]}',
    b'{"add":"x"}',
    b'{"add":[["a",5]],"remove":[1]}',
    b'["r","__deleted",false]',
    b'["r","f"]',
    b'["s",-1,2]',
    b'["id","BAD POSITION",1]',
    b'[["nested"]]',
]


#: Which of BAD_CHANGES each type takes as a valid change: everything else
#: must be refused, and leave the replica exactly as it was.
ACCEPTED = {
    types.gset: {
        b"[]",
        b'["a","b","c","d"]',
        b'["r","__deleted",false]',
        b'["r","f"]',
        b'["s",-1,2]',
        b'["id","BAD POSITION",1]',
    },
    types.two_phase_set: {b"{}"},
    types.orset: {b"{}"},
    types.counter: set(),
    types.heartbeats: set(),
    types.register: {b"[[1,2]]", b'[["nested"]]'},
    types.events: {b'["r","f"]'},
    types.seq: set(),
    types.doc: {b'["id","BAD POSITION",1]'},
    types.model: {b'["r","f"]'},
}


@pytest.mark.parametrize("factory", list(ACCEPTED), ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", BAD_CHANGES, ids=lambda b: b.decode())
def test_malformed_changes_from_a_peer_leave_every_type_untouched(factory, bad):
    import copy

    from repred import RemoteProtocolError
    from repred.protocol import Session

    r = factory(id="local")
    before = (copy.deepcopy(r.state), dict(r.clock), list(r.history()))
    s = Session(r)
    s.data_to_send()
    s.receive_data(b'{"id":"B","clock":{}}\n')
    if bad in ACCEPTED[factory]:
        s.receive_data(b"[" + bad + b',1,"B"]\n')
        assert r.clock["B"] == 1
    else:
        with pytest.raises(RemoteProtocolError) as info:
            s.receive_data(b"[" + bad + b',1,"B"]\n')
        assert info.value.reason == "reducer-error"
        assert (r.state, dict(r.clock), list(r.history())) == before


position_keys = st.text(alphabet=DIGITS, min_size=1, max_size=6).filter(
    lambda k: not k.endswith("0")
)


@given(position_keys, position_keys, st.randoms(use_true_random=False))
@example("1z", "2", None)  # neighbouring digits: the carry branch
@example("az", "b1", None)
def test_a_position_key_fits_between_any_two(a, b, rnd):
    from repred.types._position import between, valid

    if a == b:
        return
    lo, hi = min(a, b), max(a, b)
    key = between(lo, hi, rnd)
    assert lo < key < hi
    assert valid(key)
    assert lo < between(lo, None, rnd)
    assert between(None, hi, rnd) < hi


def test_model_is_a_mutable_mapping():
    from collections.abc import MutableMapping

    m = model(id="m")
    assert isinstance(m, MutableMapping)
    assert not m
    m["a"] = 1
    m["b"] = [1, 2]
    assert m["a"] == 1
    assert len(m) == 2
    assert sorted(m) == ["a", "b"]
    assert m == {"a": 1, "b": [1, 2]}
    assert dict(m.items()) == m.to_dict()
    del m["a"]
    assert "a" not in m
    assert len(m) == 1
    with pytest.raises(KeyError):
        m["a"]
    with pytest.raises(KeyError):
        del m["a"]
    with pytest.raises(ValueError, match="deletes"):
        m["b"] = None
    assert m.pop("b") == [1, 2]
    assert m.setdefault("c", 3) == 3
    m.update({"d": 4}, e=5)
    m.update([("f", 6)])
    assert m.to_dict() == {"c": 3, "d": 4, "e": 5, "f": 6}
    # update() is the mapping's, exactly as dict.update (pairs of two
    # characters are pairs); the replica's own write is Replica.update.
    m.update(["gh"])
    assert m["g"] == "h"
    assert repred.Replica.update(m, ["i", 7]) == ["i", 7]
    assert m["i"] == 7
    del m["g"], m["i"]
    with pytest.raises(TypeError):
        m[1] = 2  # type: ignore[index]
    # Iteration is over a snapshot of the live keys.
    for key in m:
        del m[key]
    assert m.to_dict() == {}


def test_model_writes_through_the_mapping_replicate():
    a, b = model(id="A"), model(id="B")
    a["x"] = {"deep": [1]}
    a.update(y=2)
    del a["y"]
    sync(a, b)
    assert b == {"x": {"deep": [1]}}


_bulk_runs = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2", "s3"]),  # source
        st.lists(
            st.tuples(
                st.sampled_from([f"k{i}" for i in range(30)]),  # key
                st.one_of(
                    st.integers(-5, 5), st.none(), st.lists(st.integers(), max_size=2)
                ),
                # Malformed now and then: 1, a key that is not a string;
                # 2, three elements; 3, a key that cannot be hashed.
                st.integers(0, 29).map(lambda n: n if n < 4 else 0),
            ),
            min_size=1,
            max_size=16,
            unique_by=lambda entry: entry[0],  # often a run of distinct keys
        ),
    ),
    max_size=6,
)


@given(_bulk_runs, st.integers(0, 3))
def test_a_model_applies_a_run_in_bulk_exactly_as_entry_by_entry(runs, held):
    """Runs of tuples (as a link decodes them) may take the model's bulk
    path; the result must be what one entry at a time gives, refusals
    included."""
    bulk, single = model(id="me"), model(id="me")
    for r in (bulk, single):  # some keys already held
        for i in range(held):
            r.apply([([f"k{i}", "held"], 10 + i, "s0")])
    ts = 1000
    outcomes = []
    for source, entries in runs:
        stamps = list(range(ts, ts + len(entries)))
        ts += len(entries)
        shapes = {
            0: lambda key, value: (key, value),
            1: lambda key, value: (1, value),
            2: lambda key, value: (key, value, 0),
            3: lambda key, value: ([key], value),
        }
        changes = [shapes[bad](key, value) for key, value, bad in entries]
        try:
            bulk.apply_runs([(source, stamps, changes, None)])
            got = None
        except ValueError as exc:
            got = str(exc)
        try:
            single.apply(
                [(list(c), t, source) for c, t in zip(changes, stamps, strict=True)]
            )
            want = None
        except ValueError as exc:
            want = str(exc)
        outcomes.append((got, want))
    assert all(got == want for got, want in outcomes)
    assert bulk.to_dict() == single.to_dict()
    assert dict(bulk.clock) == dict(single.clock)

    def by_stamp(e):
        return (e.source, e.ts)

    assert sorted(bulk.history(), key=by_stamp) == sorted(
        single.history(), key=by_stamp
    )
    assert bulk._history._index == single._history._index


@pytest.mark.parametrize(
    "bad", [(1, "v"), ("k5", "v", 0), (["k5"], "v"), ("k5",), "ab", None]
)
def test_a_malformed_change_in_a_long_run_is_refused_as_alone(bad):
    # A run long enough for the bulk path, every key new, one change
    # malformed: the entries before it are applied, it and those after
    # it are not, and the error is the one a lone entry gets.
    changes = [(f"k{i}", i) for i in range(10)]
    changes[5] = bad
    m = model(id="me")
    with pytest.raises(ValueError, match="a model change is") as refused:
        m.apply_runs([("s", list(range(1, 11)), changes, None)])
    alone = model(id="me")
    with pytest.raises(ValueError) as expected:
        alone.apply([(bad, 1, "s")])
    assert str(refused.value) == str(expected.value)
    assert m.to_dict() == {f"k{i}": i for i in range(5)}
    assert dict(m.clock) == {"s": 5}


def test_a_long_run_of_lists_is_kept_as_tuples():
    # As one entry per line decodes them: lists, reduced a run at a time,
    # kept immutable.
    changes = [[f"k{i}", i] for i in range(10)]
    m = model(id="me")
    m.apply_runs([("s", list(range(1, 11)), changes, None)])
    assert m.to_dict() == {f"k{i}": i for i in range(10)}
    assert [e.change for e in m.history()] == [(f"k{i}", i) for i in range(10)]


def test_a_long_run_that_writes_a_key_twice_keeps_the_later_write():
    changes = [(f"k{i}", i) for i in range(10)]
    changes[7] = ("k3", "later")
    m = model(id="me")
    m.apply_runs([("s", list(range(1, 11)), changes, None)])
    alone = model(id="me")
    alone.apply([(list(c), ts, "s") for ts, c in enumerate(changes, 1)])
    assert m.to_dict() == alone.to_dict()
    assert m.get("k3") == "later"
    assert list(m.history()) == list(alone.history())
    assert m._history._index == alone._history._index


def test_a_run_of_new_keys_goes_through_the_bulk_path():
    m = model(id="me")
    changes = [(f"k{i}", i) for i in range(20)]
    m.apply_runs([("s", list(range(1, 21)), changes, None)])
    assert m.to_dict() == {f"k{i}": i for i in range(20)}
    assert [e.change for e in m.history()] == changes  # the tuples themselves
    assert m._history.newest("k7") == (8, "s")
