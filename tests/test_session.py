import pytest

from repred import (
    IncompatiblePeerError,
    LocalProtocolError,
    RemoteProtocolError,
    repred,
)
from repred.protocol import Digest, PeerEOF, Session, SessionState, SyncReceived
from repred.types import model

from .helpers import FakeWall, SessionPair, feed_modes, gset, sync


def test_digest_goes_out_first_and_alone():
    a = gset("A")
    a.update(["x"])
    s = Session(a)
    assert s.data_to_send() == (
        b'{"id":"A","clock":{"A":%d},"repred":1,"type":"union",'
        b'"max_line":1048576,"batches":1,"progress":1,"antientropy":1,'
        b'"instance":"%s"}\n' % (a.clock["A"], a.instance.encode())
    )
    assert s.data_to_send() == b""
    assert s.our_state is SessionState.HELLO


def test_history_then_sync_after_the_peer_digest():
    a = gset("A")
    a.apply([(["x"], 1, "A")])
    a.apply([(["y"], 2, "A")])
    s = Session(a)
    s.data_to_send()
    events = s.receive_data(b'{"id":"B","clock":{"A":1}}\n')
    assert isinstance(events[0], Digest)
    assert s.data_to_send() == b'[["y"],2,"A"]\n"SYNC"\n'
    assert s.sync_sent
    assert not s.synced


@pytest.mark.parametrize("mode", ["whole", "bytewise", "lines"])
def test_incoming_history_in_any_chunking(mode):
    data = b'{"id":"B","clock":{"B":2}}\n[["x"],1,"B"]\n[["y"],2,"B"]\n"SYNC"\n'
    a = gset("A")
    s = Session(a)
    events = []
    for chunk in feed_modes(data)[mode]:
        events += s.receive_data(chunk)
    assert a.state == {"x", "y"}
    assert a.clock == {"B": 2}
    assert [type(e) for e in events] == [Digest, SyncReceived]
    assert s.sync_received


def test_trailing_bytes_stay_buffered_until_their_line_ends():
    a = gset("A")
    s = Session(a)
    s.receive_data(b'{"id":"B","clock":{}}\n[["x"],1,"B"]\n[["y"],2,')
    assert a.state == {"x"}
    s.receive_data(b'"B"]\n')
    assert a.state == {"x", "y"}


def test_final_line_without_newline_is_read_at_eof():
    a = gset("A")
    s = Session(a)
    s.receive_data(b'{"id":"B","clock":{}}\n[["x"],1,"B"]\n"SYNC"')
    assert not s.sync_received
    events = s.receive_data(b"")
    assert [type(e) for e in events] == [SyncReceived, PeerEOF]
    with pytest.raises(LocalProtocolError):
        s.receive_data(b"more")


def test_pair_converges_both_ways():
    a, b = gset("A"), gset("B")
    a.update(["a"])
    b.update(["b"])
    pair = SessionPair(a, b)
    pair.pump()
    assert a.state == b.state == {"a", "b"}
    assert pair.a.synced
    assert pair.b.synced
    a.update(["live"])
    pair.pump()
    assert "live" in b.state


def test_no_echo_of_what_the_peer_sent():
    a, b = gset("A"), gset("B")
    pair = SessionPair(a, b)
    pair.pump()
    b.update(["from-b"])
    pair.pump()
    assert b"from-b" in b"".join(pair.b_to_a)
    assert b"from-b" not in b"".join(pair.a_to_b)


def test_relayed_entries_reach_a_third_peer_live():
    a, b, c = gset("A"), gset("B"), gset("C")
    ab, bc = SessionPair(a, b), SessionPair(b, c)
    ab.pump()
    bc.pump()
    a.update(["hop"])
    ab.pump()
    bc.pump()
    assert "hop" in c.state


def test_no_op_round_sends_only_digests_and_sync():
    a, b = gset("A"), gset("B")
    for i in range(1000):
        a.update([i])
    sync(a, b)
    pair = SessionPair(a, b)
    pair.pump()
    assert pair.a.statistics().updates_out == 0
    assert pair.b.statistics().updates_out == 0


def test_history_goes_out_in_bounded_batches_most_outstanding_first():
    a = gset("A")
    for i in range(10):
        a.apply([([f"b{i}"], i + 1, "B")])
    for i in range(3):
        a.apply([([f"c{i}"], i + 1, "C")])
    s = Session(a, batch_entries=4, batch_bytes=10)
    s.data_to_send()
    s.receive_data(b'{"id":"Z","clock":{}}\n')
    batches = []
    while data := s.data_to_send():
        batches.append(data)
    assert all(b.count(b"\n") <= 4 for b in batches)
    text = b"".join(batches)
    assert text.index(b'"B"') < text.index(b'"C"')
    assert text.endswith(b'"SYNC"\n')


def test_sessions_start_fresh_each_connection():
    a, b = gset("A"), gset("B")
    a.update(["x"])
    sync(a, b)
    b.update(["y"])
    sync(a, b)
    assert a.state == b.state == {"x", "y"}
    # Each sync's sessions were closed: none is left watching for writes.
    assert a.statistics().watchers == 0
    assert b.statistics().watchers == 0


def test_model_pairs_converge_with_lww():
    wall = FakeWall()
    a, b = model(id="A", wall=wall), model(id="B", wall=wall)
    a.set("k", "a")
    b.set("k", "b")  # same ms: tie broken by source id, B wins
    sync(a, b)
    assert a.to_dict() == b.to_dict() == {"k": "b"}


def test_different_types_are_refused():
    a, b = gset("A"), model(id="B")
    pair = SessionPair(a, b)
    with pytest.raises(IncompatiblePeerError) as info:
        pair.pump()
    assert info.value.reason == "incompatible-type"


def _primed(replica=None):
    replica = replica if replica is not None else gset("A")
    s = Session(replica)
    s.data_to_send()
    return replica, s


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'[["x"],1,"B"]\n', "no-digest"),
        (b'"SYNC"\n', "unexpected-sync"),
        (b'{"id":"B","clock":{}}\n{"id":"B","clock":{}}\n', "duplicate-digest"),
        (b'{"id":"B","clock":{}}\n"SYNC"\n"SYNC"\n', "unexpected-sync"),
        (b'{"id":"B","clock":{}}\nhello\n', "malformed-json"),
        (b'{"id":"B","clock":{}}\n\n', "malformed-json"),
        (b'{"id":"B","clock":{}}\n{"nope":1}\n', "bad-digest"),
        (b'{"id":"B","clock":{}}\n[["x"],"1","B"]\n', "bad-stamp"),
        (b'{"id":"B","clock":{}}\n[["x"],1e300,"B"]\n', "bad-stamp"),
        (b'{"id":"B","clock":{}}\n[null,1,"B"]\n', "reducer-error"),
        (b'{"id":"B","clock":{}}\n42\n', "unexpected-message"),
    ],
)
def test_hostile_input_is_a_typed_error_and_changes_nothing(data, reason):
    replica, s = _primed()
    replica.update(["mine"])
    before = (set(replica.state), dict(replica.clock), list(replica.history()))
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(data)
    assert info.value.reason == reason
    assert (set(replica.state), dict(replica.clock), list(replica.history())) == before
    assert s.their_state is SessionState.ERROR
    assert replica.statistics().watchers == 0
    assert s.data_to_send() == b""


def test_good_lines_before_a_bad_one_are_kept():
    replica, s = _primed()
    with pytest.raises(RemoteProtocolError):
        s.receive_data(b'{"id":"B","clock":{}}\n[["x"],1,"B"]\nbad\n[["y"],2,"B"]\n')
    assert replica.state == {"x"}
    assert replica.clock == {"B": 1}


def test_model_refuses_wrong_shaped_changes():
    _replica, _s = _primed(model(id="A"))
    for bad in (b'"str"', b"42", b"[1,2]", b'["k"]', b'["k",1,2]'):
        replica2, s2 = _primed(model(id="A"))
        with pytest.raises(RemoteProtocolError) as info:
            s2.receive_data(b'{"id":"B","clock":{}}\n[' + bad + b',1,"B"]\n')
        assert info.value.reason == "reducer-error"
        assert replica2.state == {}


def test_oversized_line_is_refused():
    replica, _s = _primed()
    with pytest.raises(RemoteProtocolError) as info:
        Session(replica, max_line_bytes=100).receive_data(b"[" + b" " * 200)
    assert info.value.reason == "line-too-long"


def test_deep_nesting_is_refused():
    replica, s = _primed()
    s.receive_data(b'{"id":"B","clock":{}}\n')
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(b"[" + b"[" * 10_000 + b"]" * 10_000 + b',1,"B"]\n')
    assert info.value.reason == "malformed-json"
    assert replica.state == set()


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        Session(gset("A"), max_line_bytes=1)


def test_a_generic_reducer_without_type_extension_accepts_js_digest():
    r = repred(lambda s, u: u, None, id="A")
    _, s = _primed(r)
    s.receive_data(b'{"id":"B","clock":{}}\n')
    assert s.peer is not None
    assert s.peer.id == "B"
