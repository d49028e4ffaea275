"""Whatever bytes a peer sends, the only error is RemoteProtocolError."""

from hypothesis import given, settings
from hypothesis import strategies as st

from repred import RemoteProtocolError
from repred._session import SessionState
from repred.protocol import Session
from repred.types import model

from .helpers import examples, gset

FRAGMENTS = [
    b'{"id":"B","clock":{}}\n',
    b'{"id":"B","clock":{"A":5}}\n',
    b'{"id":"B","clock":{},"type":"model"}\n',
    b'[["x"],1,"B"]\n',
    b'[["k",1],2,"B"]\n',
    b'[["y"],2.5,"C"]\n',
    b'[null,3,"B"]\n',
    b'[["z"],1e300,"B"]\n',
    b'"SYNC"\n',
    b"\n",
    b"\r\n",
    b"[",
    b"]",
    b"{",
    b'"',
    b"\xff",
    b"NaN",
    b"[[[[[[[[",
]

messages = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=20)), max_size=30
)


@settings(max_examples=examples(400))
@given(messages, st.integers(1, 7), st.booleans())
def test_any_input_is_accepted_or_a_remote_protocol_error(parts, chunk, use_model):
    replica = model(id="A") if use_model else gset("A")
    session = Session(replica, max_line_bytes=64)
    session.data_to_send()
    data = b"".join(parts)
    error = None
    try:
        for i in range(0, len(data), chunk):
            session.receive_data(data[i : i + chunk])
            session.data_to_send()
        session.receive_data(b"")
    except RemoteProtocolError as exc:
        error = exc
    if error is not None:
        assert error.reason
        assert session.their_state is SessionState.ERROR
        assert replica.statistics().watchers == 0
    # Whatever happened, the replica still works and its history is sound.
    if use_model:
        replica.set("after", True)
    else:
        replica.update(["after"])
    for entry in replica.history():
        assert entry.ts <= replica.clock[entry.source]
