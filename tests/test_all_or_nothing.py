"""A write is all or nothing, and what the writer holds is what peers get.

Every refused write must leave state, clock, history and store exactly as
they were; every accepted one must reach a peer as the writer holds it.
"""

import copy
import dataclasses
import datetime
import enum
import math
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repred
from repred import types

from .helpers import FakeWall, SessionPair, examples, sync


class Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int


NOT_JSON = [
    {1, 2},
    frozenset({1}),
    (1, 2),
    datetime.datetime(2026, 1, 1),
    datetime.date(2026, 1, 1),
    uuid.UUID(int=1),
    Colour.RED,
    Point(1),
    math.nan,
    math.inf,
    -math.inf,
    2**53,
    -(2**60),
    2**70,
    {1: "int key"},
    b"bytes",
    "\ud800",
    object(),
]


def snapshot_of(r):
    """Everything a refused write must leave as it was."""
    return (
        copy.deepcopy(r.state),
        dict(r.clock),
        list(r.history()),
        r.compacted,
    )


def _types_and_writes():
    """(factory, write) pairs: a write puts a value into a built-in type."""
    return [
        ("model", types.model, lambda r, v: r.set("k", v)),
        ("model-nested", types.model, lambda r, v: r.set("k", {"a": [1, v]})),
        ("register", types.register, lambda r, v: r.set(v)),
        ("gset", types.gset, lambda r, v: r.add(v)),
        ("twophase", types.two_phase_set, lambda r, v: r.add(v)),
        ("orset", types.orset, lambda r, v: r.add(v)),
        ("counter", types.counter, lambda r, v: r.inc(v)),
        ("events", types.events, lambda r, v: r.emit("e", v)),
        ("seq", types.seq, lambda r, v: r.push(v)),
        ("doc", types.doc, lambda r, v: r.set("row", {"a": 1, "b": v})),
        ("heartbeats", types.heartbeats, lambda r, v: r.beat(v)),
    ]


WRITES = _types_and_writes()


@pytest.mark.parametrize(
    ("name", "factory", "write"), WRITES, ids=[w[0] for w in WRITES]
)
@pytest.mark.parametrize("value", NOT_JSON, ids=lambda v: type(v).__name__)
def test_a_refused_value_changes_nothing(name, factory, write, value):
    r = factory(id="w", wall=FakeWall())
    if name != "counter":
        write(r, "before")
    before = snapshot_of(r)
    with pytest.raises((TypeError, ValueError)):
        write(r, value)
    assert snapshot_of(r) == before


def test_the_error_names_the_offending_path():
    m = types.model()
    with pytest.raises(TypeError, match=r"\['when'\].*datetime"):
        m.set("k", {"list": [1, 2], "when": datetime.datetime(2026, 1, 1)})
    with pytest.raises(TypeError, match=r"\[1\].*tuple"):
        m.set("k", [1, (2, 3)])
    with pytest.raises(TypeError, match="nan"):
        m.set("k", [math.nan])
    with pytest.raises(TypeError, match="2\\*\\*53"):
        m.set("k", 2**53)
    deep = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(TypeError, match="deeper than 128"):
        m.set("k", deep)
    assert m.to_dict() == {}
    # The largest exact integer and finite floats are fine.
    m.set("big", 2**53 - 1)
    m.set("f", 1e308)
    assert m.to_dict() == {"big": 2**53 - 1, "f": 1e308}


def test_the_writer_keeps_its_own_copy():
    m = types.model()
    value = {"a": [1]}
    m.set("k", value)
    value["a"].append(2)
    assert m.get("k") == {"a": [1]}
    peer = types.model()
    sync(m, peer)
    assert peer.get("k") == m.get("k")


def test_counter_and_gset_refuse_out_of_range_numbers():
    c = types.counter()
    with pytest.raises(ValueError):
        c.inc(2**70)
    with pytest.raises(ValueError):
        c.inc(-1)
    c.inc(2**53 - 1)
    with pytest.raises(ValueError):
        c.inc(1)
    assert c.value == 2**53 - 1
    g = types.gset()
    with pytest.raises(TypeError):
        g.add(2**80)
    assert len(g) == 0


# -- user reducers ---------------------------------------------------------


def careless_union(state, update):
    """Mutates first and returns whatever it was given: the worst case."""
    state.update(update)
    for x in update:
        if x == "boom":
            raise ValueError("boom")
    return update


def test_a_user_reducer_that_raises_halfway_leaves_no_trace():
    r = repred.repred(careless_union, set())
    r.update(["a"])
    before = snapshot_of(r)
    with pytest.raises(ValueError, match="boom"):
        r.update({"x", "boom"})
    assert snapshot_of(r) == before


def test_a_user_reducer_that_returns_a_set_is_refused_and_leaves_no_trace():
    r = repred.repred(careless_union, set())
    r.update(["a"])
    before = snapshot_of(r)
    with pytest.raises(TypeError, match="set"):
        r.update({"b"})
    assert snapshot_of(r) == before
    assert r.state == {"a"}


def test_an_empty_string_change_is_a_change():
    def last(state, update):
        state["v"] = update
        return update

    r = repred.repred(last, {})
    assert r.update("") == ""
    assert len(list(r.history())) == 1
    peer = repred.repred(last, {})
    sync(r, peer)
    assert peer.state == r.state == {"v": ""}


def test_a_reducer_that_raises_on_a_peer_entry_leaves_the_state_as_it_was():
    r = repred.repred(careless_union, set(), id="r")
    r.update(["a"])
    before = snapshot_of(r)
    s = repred.protocol.Session(r)
    s.data_to_send()
    with pytest.raises(repred.RemoteProtocolError):
        s.receive_data(b'{"id":"B","clock":{}}\n[["y","boom"],1,"B"]\n')
    assert snapshot_of(r) == before


# -- the line limit ----------------------------------------------------------


def test_an_entry_over_the_line_limit_is_refused_at_update():
    m = types.model()
    with pytest.raises(ValueError, match="line limit"):
        m.set("huge", "x" * (2 << 20))
    assert m.to_dict() == {}
    assert dict(m.clock) == {}
    # Just under the limit is fine, and a peer with default settings takes it.
    room = repred.protocol.DEFAULT_MAX_LINE_BYTES - 64
    m.set("big", "x" * room)
    peer = types.model()
    sync(m, peer)
    assert peer.get("big") == m.get("big")


def test_every_line_a_replica_writes_is_within_the_limit():
    g = types.gset()
    with pytest.raises(ValueError, match="line limit"):
        g.add(*[f"item-{i}" for i in range(200_000)])
    assert len(g) == 0


def test_a_member_longer_than_a_line_once_escaped_is_refused():
    # Under the limit in characters, over it once encoded (each control
    # character is six bytes in JSON): a set's add measures the worst case.
    g = types.gset()
    limit = repred.protocol.DEFAULT_MAX_LINE_BYTES
    with pytest.raises(ValueError, match="line limit"):
        g.add("\x01" * (limit // 6 + 1_000))
    assert len(g) == 0
    g.add("\x01" * (limit // 6 - 1_000))
    assert len(g) == 1


# -- listeners ---------------------------------------------------------------


def test_plain_function_listeners_hear_remote_entries():
    r = types.model(id="r")
    heard = []
    r.add_listener(lambda effect, ts, source, origin: heard.append(source))
    peer = types.model(id="p")
    peer.set("a", 1)
    r.apply([(["b", 2], 1, "q")])  # the default origin
    sync(peer, r)
    r.set("c", 3)
    assert heard == ["q", "p", "r"]


def test_a_listener_hears_entries_from_a_session():
    a, b = types.model(id="a"), types.model(id="b")
    heard = []

    def listener(effect, ts, source, origin):
        heard.append(effect)

    b.add_listener(listener)
    pair = SessionPair(a, b)
    a.set("x", 1)
    pair.pump()
    assert heard == [["x", 1]]


# -- the property: refused and unchanged, or recorded and replicated ------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
anything = st.recursive(
    st.one_of(
        json_scalars,
        st.sampled_from([(1,), datetime.date(2026, 1, 1), {1}, b"x", Colour.RED]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.text(max_size=3), st.integers()), inner, max_size=3
        ),
    ),
    max_leaves=6,
)


@settings(max_examples=examples(60))
@given(
    which=st.sampled_from(range(len(WRITES))),
    values=st.lists(anything, min_size=1, max_size=4),
)
def test_every_write_is_refused_cleanly_or_reaches_a_peer(which, values):
    name, factory, write = WRITES[which]
    wall = FakeWall()
    r = factory(id="w", wall=wall)
    for value in values:
        before = snapshot_of(r)
        wall.now += 1
        try:
            write(r, value)
        except (TypeError, ValueError):
            assert snapshot_of(r) == before
    peer = factory(id="p", wall=wall)
    sync(r, peer)
    if name == "events":
        assert peer.recent() == r.recent()
    else:
        assert peer.state == r.state


@settings(max_examples=examples(60))
@given(st.lists(anything, min_size=1, max_size=5))
def test_a_user_reducer_is_all_or_nothing_too(updates):
    def careless(state, update):
        items = update if type(update) is list else [update]
        state.extend(items)  # mutate first, whatever it is
        if any(isinstance(x, bytes) for x in items):
            raise ValueError("no bytes")
        return items

    r = repred.repred(careless, [], id="w")
    for update in updates:
        before = snapshot_of(r)
        try:
            r.update(update)
        except (TypeError, ValueError):
            assert snapshot_of(r) == before
    peer = repred.repred(careless, [], id="p")
    sync(r, peer)
    assert sorted(map(repr, peer.state)) == sorted(map(repr, r.state))


def test_a_peer_with_a_smaller_line_limit_refuses_only_that_link(caplog):
    big, small, normal = (types.model(id=n) for n in ("big", "small", "normal"))
    big.set("large", "x" * 5000)
    big.set("after", 1)
    pair = SessionPair(big, small)
    pair.b = repred.protocol.Session(small, max_line_bytes=1000)
    pair.a.close()
    pair.a = repred.protocol.Session(big)
    with caplog.at_level("WARNING", logger="repred"):
        with pytest.raises(repred.LocalProtocolError, match="line limit"):
            pair.pump()
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning
    assert "'large'" in warning[0].getMessage()
    assert "5" in warning[0].getMessage()
    assert small.to_dict() == {}
    # A peer with default settings still gets everything.
    sync(big, normal)
    assert normal.to_dict() == big.to_dict()


def test_an_entry_too_deep_to_relay_is_refused_on_the_way_in():
    r = types.model(id="r")
    s = repred.protocol.Session(r)
    s.data_to_send()
    deep = b"[" * 200 + b"]" * 200
    with pytest.raises(repred.RemoteProtocolError) as info:
        s.receive_data(b'{"id":"B","clock":{}}\n[["k",' + deep + b'],1,"B"]\n')
    assert info.value.reason == "too-deep"
    assert r.to_dict() == {}
