"""One spelling per message: signatures and protocol objects that could be
read two ways are refused, and a link to the wrong kind of port says so."""

from __future__ import annotations

import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import repred
from repred import IncompatiblePeerError, RemoteProtocolError, SigningKey
from repred._wire import decode, loads_batch
from repred.protocol import Session
from repred.types import model

KEY = SigningKey(b"k" * 32)
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _respelled(signature: str) -> str:
    """The same 64 bytes, with a spare bit of the last character set: 86
    characters carry 516 bits, so the last one's low four bits are spare."""
    last = _B64.index(signature[-1])
    assert last & 0b1111 == 0  # the one spelling has them clear
    return signature[:-1] + _B64[last | 0b0001]


def _session(**options) -> tuple[repred.Replica, Session]:
    replica = model(id="V", **options)
    s = Session(replica)
    s.data_to_send()
    s.receive_data(b'{"id":"X","clock":{},"repred":1,"batches":1}\n')
    return replica, s


def _signed_entry() -> tuple[list, float, str, str]:
    writer = model(signing_key=KEY)
    writer.set("k", 1)
    (e,) = list(writer.history())
    return list(e.change), e.ts, e.source, writer.signature(e.source, e.ts)


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("framing", ["entry", "batch"])
def test_a_second_spelling_of_a_signature_is_refused(verify, framing):
    change, ts, source, signature = _signed_entry()
    other = _respelled(signature)
    if framing == "entry":
        line = orjson.dumps([change, ts, source, other])
    else:
        line = orjson.dumps(
            {
                "batch": source,
                "stamps": [ts],
                "changes": [change],
                "signatures": [other],
            }
        )
    replica, s = _session(verify=verify)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(line + b"\n")
    assert info.value.reason == "bad-signature"
    assert replica.to_dict() == {}
    assert replica.clock == {}
    # The one spelling is taken, and kept as it came.
    replica, s = _session(verify=verify)
    s.receive_data(orjson.dumps([change, ts, source, signature]) + b"\n")
    assert replica.to_dict() == {"k": 1}
    assert replica.signature(source, ts) == signature


@pytest.mark.parametrize(
    "slot", ["", "x" * 86, "A" * 85, "A" * 87, "A" * 85 + "=", "A" * 84 + "+A"]
)
def test_a_signature_slot_is_one_spelling_of_64_bytes(slot):
    with pytest.raises(RemoteProtocolError) as info:
        decode(orjson.dumps([["k", 1], 1, "src", slot]), batches=False)
    assert info.value.reason == "bad-signature"


# -- duplicate keys -----------------------------------------------------------

_DUPLICATES = {
    "batch (repred's spelling)": b'{"batch":"a","stamps":[1],"changes":[1],'
    b'"batch":"b"}',
    "batch (other spelling)": b'{"stamps":[1],"batch":"a","changes":[1],"batch":"b"}',
    "batch, key escaped": b'{"batch":"a","stamps":[1],"changes":[1],"b\\u0061tch":"b"}',
    "batch, stamps twice": b'{"batch":"a","stamps":[5],"changes":[1],"stamps":[1]}',
    "digest": b'{"id":"X","clock":{},"id":"Y"}',
    "digest clock": b'{"id":"X","clock":{"a":1,"a":2}}',
    "snapshot": b'{"snapshot":[1],"clock":{"a":1},"snapshot":[2]}',
    "snapshot clock": b'{"snapshot":[1],"clock":{"a":1,"a":2}}',
    "expect": b'{"expect":1,"expect":2}',
}


@pytest.mark.parametrize("line", _DUPLICATES.values(), ids=_DUPLICATES.keys())
def test_a_protocol_object_with_a_key_twice_is_refused(line):
    with pytest.raises(RemoteProtocolError) as info:
        decode(line, batches=False)
    assert info.value.reason == "duplicate-key"


_SIG = "A" * 86  # a signature slot in its one spelling (of zero bytes)

_BATCHES_TWICE = {
    "batch": b'{"batch":"a","stamps":[1],"changes":[["k",1]],"batch":"b"}',
    "batch, same value": b'{"batch":"a","stamps":[1],"changes":[["k",1]],"batch":"a"}',
    "stamps before changes": b'{"batch":"a","stamps":[2],"stamps":[1],'
    b'"changes":[["k",1]]}',
    "stamps after changes": b'{"batch":"a","stamps":[1],"changes":[["k",1]],'
    b'"stamps":[1]}',
    "changes": b'{"batch":"a","stamps":[1],"changes":[["k",1]],"changes":[["k",2]]}',
    "signatures": (
        b'{"batch":"a","stamps":[1],"signatures":[null],"changes":[["k",1]],'
        b'"signatures":["' + _SIG.encode() + b'"]}'
    ),
}


@pytest.mark.parametrize("line", _BATCHES_TWICE.values(), ids=_BATCHES_TWICE.keys())
def test_a_batch_with_a_key_twice_is_refused_on_the_link(line):
    replica, s = _session()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(line + b"\n")
    assert info.value.reason == "duplicate-key"
    assert replica.clock == {}


def test_signed_batches_are_read_in_either_order_of_keys():
    # Signatures go before the changes; a batch with them after (as
    # earlier versions wrote it) is read the slower way, the same.
    change, ts, source, signature = _signed_entry()
    for batch in (
        {
            "batch": source,
            "stamps": [ts],
            "signatures": [signature],
            "changes": [change],
        },
        {
            "batch": source,
            "stamps": [ts],
            "changes": [change],
            "signatures": [signature],
        },
    ):
        replica, s = _session(verify=True)
        s.receive_data(orjson.dumps(batch) + b"\n")
        assert replica.signature(source, ts) == signature


@pytest.mark.parametrize(
    "change",
    [
        # Keys of protocol objects inside a change are the change's own.
        {"batch": 1, "stamps": 2, "changes": 3},
        ["batch", "stamps", "changes", "signatures"],
        {"nested": {"batch": [1, 2], "x": "b\\u0061tch"}},
    ],
)
def test_a_change_may_hold_any_keys(change):
    replica, s = _session()
    # A change with a key twice is the user's value, kept as JSON reads it.
    twice = b'["j",{"k":1,"k":2}]'
    line = (
        b'{"batch":"a","stamps":[1,2],"changes":['
        + orjson.dumps(["k", change])
        + b","
        + twice
        + b"]}\n"
    )
    s.receive_data(line)
    assert replica.to_dict() == {"k": change, "j": {"k": 2}}


def test_an_object_too_deep_to_check_is_refused_on_its_link():
    # orjson reads 1,024 levels; the check for keys given twice reads fewer.
    deep = b"[" * 1000 + b"]" * 1000
    _, s = _session()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(b'{"expect":1,"x":' + deep + b"}\n")
    assert info.value.reason == "too-deep"


def test_a_digest_with_a_key_twice_inside_an_extension_value_is_taken():
    # Only the digest's own keys and its clock's sources are the protocol's.
    msg = decode(b'{"id":"X","clock":{"a":1},"x":{"y":1,"y":2}}', batches=False)
    assert msg.clock == {"a": 1}


# -- the wrong kind of port ---------------------------------------------------


async def test_a_plain_link_to_a_gossip_port_says_what_the_port_is():
    async with repred.open_peer(replicas={"data": model(id="p")}) as peer:
        with pytest.raises(IncompatiblePeerError) as info, trio.fail_after(10):
            await repred.connect_tcp(model(id="c"), "127.0.0.1", peer.port)
    assert "gossip peer" in str(info.value)
    assert "open_peer" in str(info.value)
    assert "/replicas/NAME" in str(info.value)
    assert info.value.reason == "gossip-peer"


def test_a_gossip_hello_read_as_a_digest_is_an_incompatible_peer():
    hello = b'{"repred-peer":3,"node":"127.0.0.1:8001","replicas":{"data":"model"}}'
    with pytest.raises(IncompatiblePeerError, match="gossip peer"):
        decode(hello, batches=False)


_KEYS = ["batch", "stamps", "signatures", "changes"]
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.sampled_from(["a", "]", "[", '",', ',"stamps":[', ',"changes":', "}"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*_KEYS, "k"]), inner, max_size=2)
    ),
    max_leaves=8,
)
_members = {
    "batch": st.sampled_from(["a", "b"]) | _values,
    "stamps": st.lists(st.integers(0, 5), min_size=1, max_size=3) | _values,
    "signatures": st.lists(st.none() | st.just(_SIG), max_size=3) | _values,
    "changes": st.lists(_values, min_size=1, max_size=3) | _values,
}


@given(
    keys=st.lists(st.sampled_from(list(_members)), min_size=1, max_size=5),
    data=st.data(),
)
def test_the_fast_reading_of_a_batch_is_the_general_one(keys, data):
    # Whatever a line holds (keys in any order, some twice, values that
    # look like the keys a fast reading cuts at), reading it as a batch
    # gives what reading it as any message does.
    pairs = [(key, data.draw(_members[key])) for key in ["batch", *keys]]
    line = b"{" + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in pairs)
    line += b"}"

    def outcome(read):
        try:
            batch = read(line)
        except RemoteProtocolError as exc:
            return exc.reason
        return (batch.source, batch.stamps, batch.changes, batch.signatures)

    assert outcome(loads_batch) == outcome(lambda line: decode(line, batches=False))


_HELLOS_TWICE = {
    "node": b'{"repred-peer":3,"node":"h:1","replicas":{},"node":"h:2"}',
    "replicas": b'{"repred-peer":3,"node":"h:1","replicas":{"data":"model"},'
    b'"replicas":{}}',
    "a replica's name": b'{"repred-peer":3,"node":"h:1",'
    b'"replicas":{"data":"model","data":"x"}}',
}


@pytest.mark.parametrize("hello", _HELLOS_TWICE.values(), ids=_HELLOS_TWICE.keys())
def test_a_gossip_hello_with_a_key_twice_is_refused(hello):
    from repred import LinkOptions
    from repred._mux import Mux

    mux = Mux({"data": model(id="p")}, "127.0.0.1:9", LinkOptions())
    with pytest.raises(RemoteProtocolError) as info:
        mux.feed(hello + b"\n")
    assert info.value.reason == "duplicate-key"
    assert not mux.handshake_done
