"""Batched framing between repred peers: negotiated, checked, and equal in
effect to one entry per line."""

from __future__ import annotations

import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import repred
from repred import RemoteProtocolError
from repred._wire import _batch as checked_batch
from repred._wire import _loads_within_depth, loads_batch
from repred.protocol import MAX_DEPTH, Session
from repred.types import model

from .helpers import FakeWall, SessionPair, gset


def _lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line]


def _filled(n: int = 200, id: str = "A") -> repred.Replica:
    m = model(id=id)
    for i in range(n):
        m.set(f"k{i}", i)
    return m


def _victim() -> tuple[repred.Replica, Session]:
    """A fresh replica whose session has had a peer's digest."""
    victim = gset("V")
    s = Session(victim)
    s.data_to_send()
    s.receive_data(b'{"id":"X","clock":{},"repred":1,"batches":1}\n')
    return victim, s


def test_two_repred_sessions_send_batches_and_count_entries():
    a, b = _filled(), model(id="B")
    pair = SessionPair(a, b)
    pair.pump()
    sent = [line for chunk in pair.a_to_b for line in _lines(chunk)]
    batches = [line for line in sent if line.startswith(b'{"batch":')]
    assert len(batches) == 1  # 200 entries: one line
    assert b.to_dict() == a.to_dict()
    assert b.clock == a.clock
    assert pair.b.statistics().updates_in == 200
    assert pair.a.statistics().updates_out == 200


@pytest.mark.parametrize("side", ["sender", "receiver", "both"])
def test_either_side_without_batches_gets_one_entry_per_line(side):
    a, b = _filled(), model(id="B")
    pair = SessionPair(a, b)
    pair.a = Session(a, batches=side == "receiver")
    pair.b = Session(b, batches=side == "sender")
    pair.pump()
    sent = [line for chunk in pair.a_to_b for line in _lines(chunk)]
    assert not [line for line in sent if line.startswith(b"{") and b"batch" in line[:9]]
    assert len([line for line in sent if line.startswith(b"[")]) == 200
    assert b.to_dict() == a.to_dict()


def test_a_batch_too_long_for_the_peer_is_sent_as_shorter_batches():
    # 100 entries of about 300 bytes: one batch would be 30 KB, over the
    # receiver's 4 KB line limit. They go as batches that fit, not as 100
    # lines, and nothing is refused.
    a, b = model(id="A"), model(id="B")
    for i in range(100):
        a.set(f"k{i}", "x" * 300)
    pair = SessionPair(a, b)
    pair.b = Session(b, max_line_bytes=4096)
    pair.pump()
    sent = [line for chunk in pair.a_to_b for line in _lines(chunk)]
    batches = [line for line in sent if line.startswith(b'{"batch":')]
    assert batches
    assert all(len(line) < 4096 for line in sent)
    assert len(sent) < 100 // 4
    assert b.to_dict() == a.to_dict()
    assert b.clock == a.clock


@pytest.mark.parametrize("batches", [True, False])
def test_one_call_sends_about_batch_bytes(batches):
    # Entries of about 1 KB, batch_bytes 8 KB: however many entries one
    # read takes, a batch line holds at most 8 KB of them (or one entry),
    # and a call stops at the first line past the budget.
    a, b = model(id="A"), model(id="B")
    for i in range(200):
        a.set(f"k{i}", "x" * 1000)
    pair = SessionPair(a, b, batches=batches)
    pair.a = Session(a, batches=batches, batch_bytes=8192)
    chunks = []
    while True:
        x, y = pair.a.data_to_send(), pair.b.data_to_send()
        if not x and not y:
            break
        if x:
            chunks.append(x)
            pair.b.receive_data(x)
        if y:
            pair.a.receive_data(y)
    assert max(map(len, chunks)) < 2 * 8192 + 1100
    assert b.to_dict() == a.to_dict()


def test_a_batch_is_smaller_than_its_lines():
    per_line = SessionPair(_filled(), model(id="B"), batches=False)
    per_line.pump()
    batched = SessionPair(_filled(), model(id="B"))
    batched.pump()
    assert sum(map(len, batched.a_to_b)) < 0.9 * sum(map(len, per_line.a_to_b))


def test_live_entries_travel_in_batches_and_are_not_echoed():
    a, b = model(id="A"), model(id="B")
    pair = SessionPair(a, b)
    pair.pump()
    for i in range(5):
        a.set(f"k{i}", i)
    data = pair.a.data_to_send()
    assert _lines(data) == [
        orjson.dumps(
            {
                "batch": "A",
                "stamps": [e.ts for e in a.history()],
                "changes": [list(e.change) for e in a.history()],
            }
        )
    ]
    pair.b.receive_data(data)
    assert b.to_dict() == a.to_dict()
    assert pair.b.data_to_send() == b""  # nothing goes back


def _batch(**fields) -> bytes:
    line = {"batch": "X", "stamps": [1, 2], "changes": [["a"], ["b"]]}
    line.update(fields)
    return orjson.dumps(line) + b"\n"


HOSTILE = {
    "unknown key": _batch(extra=1),
    "missing changes": b'{"batch":"X","stamps":[1]}\n',
    "more stamps than changes": _batch(stamps=[1, 2, 3]),
    "empty": _batch(stamps=[], changes=[]),
    "stamps not a list": _batch(stamps=5, changes=5),
    "stamps that go back": _batch(stamps=[2, 1]),
    "a repeated stamp": _batch(stamps=[1, 1]),
    "a whole float stamp": _batch(stamps=[1, 2.0]),
    "a whole float among fractions": _batch(stamps=[1.5, 2.0]),
    "a whole float among both": _batch(
        stamps=[1, 1.5, 3.0], changes=[["a"], ["b"], ["c"]]
    ),
    "a bool stamp": _batch(stamps=[1, True]),
    "a string stamp": _batch(stamps=[1, "2"]),
    "a negative stamp": _batch(stamps=[-1, 2]),
    "a stamp past 2**53": _batch(stamps=[1, 2**53]),
    "a bad source": _batch(batch="__proto__"),
    "an empty source": _batch(batch=""),
    "a source that is a number": _batch(batch=5),
    "nested too deep": _batch(
        changes=[["a"], orjson.loads(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))]
    ),
    "nested too deep, spelled otherwise": b'{ "batch":"X","stamps":[1],"changes":['
    + b"[" * (MAX_DEPTH + 1)
    + b"]" * (MAX_DEPTH + 1)
    + b"]}\n",
    # Valid JSON only inside the padding the fast decoder puts around a
    # line with many brackets: it must still be refused.
    "two values on one line": b'{"batch":"X","stamps":[1],"changes":[["'
    + b"[" * 200
    + b'"]]}],[0\n',
    "not JSON": b'{"batch":"X","stamps":[1],"changes":[["a"]\n',
    "a list": b'{"batch":' + b"[" * 300 + b"]" * 300 + b"\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_bad_batch_is_refused_whole(case):
    victim, s = _victim()
    # A good entry first: it stays applied.
    good = b'[["before"],1,"Y"]\n'
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(good + HOSTILE[case])
    assert info.value.reason in {
        "bad-batch",
        "bad-stamp",
        "bad-source",
        "too-deep",
        "malformed-json",
    }, info.value.reason
    assert victim.state == {"before"}
    assert dict(victim.clock) == {"Y": 1}


def test_the_depth_limit_is_exact_in_batches():
    deep = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    line = b'{"batch":"X","stamps":[1],"changes":[' + deep + b"]}\n"
    victim = repred.repred(lambda state, change: change, None, id="V")
    s = Session(victim)
    s.data_to_send()
    s.receive_data(b'{"id":"X","clock":{},"repred":1,"batches":1}\n' + line)
    assert victim.clock == {"X": 1}


def _long_batch(last: object, strings: str = "") -> bytes:
    """A batch of 300 flat changes (more brackets than a short line may
    hold), then ``last``; ``strings`` goes into the first 150 strings."""
    changes: list[object] = [[f"k{strings}{i}", strings] for i in range(150)]
    changes += [[f"k{i}", i] for i in range(150)]
    changes.append(last)
    stamps = list(range(1, len(changes) + 1))
    line = orjson.dumps({"batch": "X", "stamps": stamps, "changes": changes})
    return line + b"\n"


def _nested(depth: int, inside: str) -> object:
    """A change nested ``depth`` levels: arrays, an object around arrays,
    or an array around objects."""
    if inside == "object around arrays":
        return {"k": _nested(depth - 1, "arrays")}
    if inside == "array around objects":
        value: object = 1
        for _ in range(depth - 1):
            value = {"k": value}
        return ["x", value]
    return orjson.loads(b"[" * depth + b"]" * depth)


@pytest.mark.parametrize(
    "inside", ["arrays", "object around arrays", "array around objects"]
)
@pytest.mark.parametrize(
    ("depth", "taken"),
    [(2, True), (3, True), (MAX_DEPTH, True), (MAX_DEPTH + 1, False)],
)
@pytest.mark.parametrize("strings", ["", "[", "{"])
def test_the_depth_limit_is_exact_in_long_batches(depth, taken, inside, strings):
    # A long batch is checked for depth without walking its changes:
    # counted when every change is flat, decoded again otherwise. Either
    # way, exactly MAX_DEPTH levels pass and one more is refused whole.
    victim = repred.repred(lambda state, change: change, None, id="V")
    s = Session(victim)
    s.data_to_send()
    s.receive_data(b'{"id":"X","clock":{},"repred":1,"batches":1}\n')
    line = _long_batch(_nested(depth, inside), strings)
    if taken:
        s.receive_data(line)
        assert victim.clock == {"X": 301}
    else:
        with pytest.raises(RemoteProtocolError) as info:
            s.receive_data(line)
        assert info.value.reason == "too-deep"
        assert victim.clock == {}


@given(
    depth=st.sampled_from([1, 2, 3, 4, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1]),
    # Which levels are objects: none, all (but the change itself), or some.
    shape=st.one_of(st.just(0), st.just(2**140 - 1), st.integers(0, 2**140)),
    at=st.integers(0, 300),
    strings=st.sampled_from(["", "[", "{", "]", "}"]),
)
def test_a_long_batch_is_checked_as_the_padded_decoding_would(
    depth, shape, at, strings
):
    # Whichever way a long line is checked for depth, the outcome is the
    # one the padded decoding gives: the same batch, or the same refusal.
    value: object = "v"
    for level in reversed(range(depth)):  # level 0: the change itself
        value = {"k": value} if shape >> level & 1 and level else [value]
    changes: list[object] = [[f"k{strings}{i}", i] for i in range(300)]
    changes.insert(at, value)
    stamps = list(range(1, len(changes) + 1))
    line = orjson.dumps({"batch": "X", "stamps": stamps, "changes": changes})

    def outcome(decode):
        try:
            batch = decode(line)
        except RemoteProtocolError as exc:
            return exc.reason
        return (batch.source, batch.stamps, batch.changes)

    def padded(line):
        return checked_batch(_loads_within_depth(line), line, depth_checked=True)

    assert outcome(loads_batch) == outcome(padded)


def test_a_long_batch_of_flat_changes_is_taken_whole():
    m = model(id="V")
    s = Session(m)
    s.data_to_send()
    s.receive_data(b'{"id":"X","clock":{},"repred":1,"batches":1}\n')
    s.receive_data(_long_batch(["last", [1]], "]["))
    assert m.get("k][0") == "]["
    assert m.get("k149") == 149
    assert m.get("last") == [1]
    assert len(m) == 301


def test_a_batch_before_the_digest_is_refused():
    s = Session(gset("V"))
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(_batch())
    assert info.value.reason in {"no-digest", "bad-digest"}


def test_a_batch_to_a_side_that_did_not_offer_is_refused():
    victim = gset("V")
    s = Session(victim, batches=False)
    s.data_to_send()
    s.receive_data(b'{"id":"X","clock":{},"repred":1,"batches":1}\n')
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(_batch())
    assert info.value.reason == "bad-batch"
    assert victim.state == set()


def test_a_second_version_inside_a_batch_is_settled_and_the_rest_applied():
    wall = FakeWall()
    a = gset("A", wall=wall)
    for x in "pqr":
        a.update([x])
    victim, s = _victim()
    stamps = [e.ts for e in a.history()]
    s.receive_data(
        orjson.dumps({"batch": "A", "stamps": stamps[:2], "changes": [["p"], ["q"]]})
        + b"\n"
    )
    # A different change for the second stamp, then the third entry: the
    # two versions settle on one (the smaller hash), the link stays up, and
    # the entry after it is applied.
    s.receive_data(
        orjson.dumps(
            {"batch": "A", "stamps": stamps[1:], "changes": [["forged"], ["r"]]}
        )
        + b"\n"
    )
    assert victim.statistics().equivocations == 1
    assert "r" in victim.state
    assert "p" in victim.state
    assert len(victim.state) == 3


def test_a_reducer_error_inside_a_batch_names_the_entry():
    def picky(state, change):
        if change == ["bad"]:
            raise ValueError("no")
        state.append(change[0])
        return change

    victim = repred.repred(picky, [], id="V", checks_first=True)
    s = Session(victim)
    s.data_to_send()
    s.receive_data(b'{"id":"X","clock":{},"repred":1,"batches":1}\n')
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(
            b'{"batch":"X","stamps":[1,2,3],"changes":[["ok"],["bad"],["late"]]}\n'
        )
    assert info.value.reason == "reducer-error"
    assert b'"bad"' in info.value.line
    assert victim.state == ["ok"]
    assert victim.clock == {"X": 1}


def test_far_future_entries_in_a_batch_wait_for_a_later_link():
    wall = FakeWall()
    victim = gset("V", wall=wall)
    s = Session(victim)
    s.data_to_send()
    s.receive_data(b'{"id":"X","clock":{},"repred":1,"batches":1}\n')
    soon, late = wall.now, wall.now + 10 * 60 * 1000
    s.receive_data(
        orjson.dumps({"batch": "X", "stamps": [soon, late], "changes": [["a"], ["b"]]})
        + b"\n"
    )
    assert victim.state == {"a"}
    assert victim.clock == {"X": soon}
    assert s.statistics().deferred == 1


async def test_batched_and_per_line_links_over_tcp():
    a = _filled(2000)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, a, 0)
        port = listeners[0].socket.getsockname()[1]
        figures = {}
        for batches in (True, False):
            b = model(id=f"B{batches}")
            stats = await repred.connect_tcp(
                b, "127.0.0.1", port, live=False, batches=batches
            )
            assert b.to_dict() == a.to_dict()
            assert stats.updates_in == 2000
            figures[batches] = stats.bytes_in
        nursery.cancel_scope.cancel()
    assert figures[True] < 0.9 * figures[False]


def test_a_repred_peer_announces_how_many_entries_its_history_holds():
    a, b = _filled(300), model(id="B")
    b.set("mine", 1)
    pair = SessionPair(a, b)
    pair.b.receive_data(pair.a.data_to_send())  # A's digest
    pair.a.receive_data(pair.b.data_to_send())  # B's digest and announcement
    announcement, *history = _lines(pair.a.data_to_send())
    assert announcement == b'{"expect":300}'
    pair.b.receive_data(announcement + b"\n")
    assert pair.b.statistics().entries_expected == 300
    assert pair.b.statistics().entries_received == 0
    pair.b.receive_data(b"\n".join(history) + b"\n")
    pair.pump()
    assert pair.b.statistics().entries_received == 300
    assert pair.a.statistics().entries_expected == 1
    # A peer that did not offer it (JS) is never sent one.
    js_like = Session(model(id="C"))
    out = js_like.data_to_send()
    js_like.receive_data(b'{"id":"J","clock":{}}\n')
    assert b"expect" not in out + js_like.data_to_send()


@pytest.mark.parametrize(
    "line",
    [
        b'{"expect":-1}\n',
        b'{"expect":"many"}\n',
        b'{"expect":1,"x":2}\n',
        b'{"expect":1}\n{"expect":1}\n',
    ],
)
def test_a_bad_announcement_is_refused(line):
    _victim_replica, s = _victim()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(line)
    assert info.value.reason == "bad-expect"


def test_a_batch_hands_reducers_and_listeners_lists_and_keeps_tuples():
    """A link decodes a batch's arrays into the tuples the history keeps;
    a reducer of the user's, and every listener, still gets lists."""
    seen = []

    def union(state, update):
        seen.append(type(update))
        change = [x for x in update if x not in state]
        state.update(change)
        return change

    a = repred.repred(union, set(), id="A")
    for i in range(50):
        a.update([i, f"x{i}"])
    b = repred.repred(union, set(), id="B")
    SessionPair(a, b).pump()
    assert seen
    assert set(seen) == {list}
    assert {type(e.change) for e in b.history()} == {tuple}
    # A model reads the tuples themselves, unless a listener is to hear
    # of the change.
    m, heard = model(id="M"), []
    m.add_listener(lambda effect, ts, source, origin: heard.append(effect))
    SessionPair(_filled(20), m).pump()
    assert heard
    assert {type(e) for e in heard} == {list}
    assert m.to_dict() == _filled(20).to_dict()


def test_a_batch_mixing_whole_and_fractional_stamps_is_taken():
    victim, s = _victim()
    s.receive_data(_batch(stamps=[1, 1.5, 2, 2.25], changes=[[1], [2], [3], [4]]))
    assert victim.state == {1, 2, 3, 4}
    assert victim.clock == {"X": 2.25}
