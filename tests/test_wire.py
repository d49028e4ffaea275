import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from repred import IncompatiblePeerError, RemoteProtocolError
from repred._wire import (
    MAX_SAFE_INTEGER,
    MAX_STAMP,
    SYNC,
    Digest,
    LineDecoder,
    decode,
    encode_digest,
    encode_entry,
)
from repred.types import model


def test_entry_round_trip_matches_js_bytes():
    line = encode_entry(["name", "héllo ✓"], 1795692308381, "A")
    assert line == '[["name","héllo ✓"],1795692308381,"A"]\n'.encode()
    assert decode(line[:-1], batches=False) == (["name", "héllo ✓"], 1795692308381, "A")


def test_fractional_and_integral_float_stamps():
    assert decode(b'[1,1795692308381.001,"A"]', batches=False)[1] == 1795692308381.001
    ts = decode(b'[1,1795692308381.0,"A"]', batches=False)[1]
    assert ts == 1795692308381
    assert type(ts) is int
    assert b"1795692308381.002" in encode_entry(1, 1795692308381.002, "A")


def test_digest_round_trip():
    line = encode_digest("A", {"A": 5, "B": 6.5}, "model")
    digest = decode(line, batches=False)
    assert digest == Digest(
        id="A",
        clock={"A": 5, "B": 6.5},
        version=1,
        type_name="model",
        max_line=1 << 20,
        batch=1,
        progress=True,
    )


def test_js_digest_without_extensions():
    digest = decode(b'{"id":"B","clock":{}}', batches=False)
    assert digest.id == "B"
    assert digest.clock == {}
    assert digest.type_name is None


def test_sync_and_crlf():
    assert decode(b'"SYNC"', batches=False) is SYNC
    assert decode(b'"SYNC"\r', batches=False) is SYNC


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "malformed-json"),
        (b"\r", "malformed-json"),
        (b"not json", "malformed-json"),
        (b"GET / HTTP/1.1", "malformed-json"),
        (b"\xff\xfe[1,2,3]", "malformed-json"),
        (b"NaN", "malformed-json"),
        (b'[1,NaN,"A"]', "malformed-json"),
        (b'[1,Infinity,"A"]', "malformed-json"),
        (b'[1,1e400,"A"]', "malformed-json"),
        (b"[" * 5000 + b"]" * 5000, "malformed-json"),
        (b"42", "unexpected-message"),
        (b'"hi"', "unexpected-message"),
        (b"null", "unexpected-message"),
        (b"true", "unexpected-message"),
        (b"[]", "bad-entry"),
        (b'[1,2,"A",4,5]', "bad-entry"),
        (b'[1,"5","A"]', "bad-stamp"),
        (b'[1,true,"A"]', "bad-stamp"),
        (b'[1,-1,"A"]', "bad-stamp"),
        (b'[1,null,"A"]', "bad-stamp"),
        (b"[1,1,2]", "bad-source"),
        (b'[1,1,""]', "bad-source"),
        (b'[1,1,"__proto__"]', "bad-source"),
        (b'[1,1,"' + b"x" * 300 + b'"]', "bad-source"),
        (b"{}", "bad-digest"),
        (b'{"clock":null}', "bad-digest"),
        (b'{"clock":[]}', "bad-digest"),
        (b'{"id":5,"clock":{}}', "bad-digest"),
        (b'{"clock":{"A":"5"}}', "bad-stamp"),
        (b'{"clock":{"A":5},"repred":"1"}', "bad-digest"),
        (b'{"clock":{},"type":5}', "bad-digest"),
    ],
)
def test_bad_lines_are_typed_errors(line, reason):
    with pytest.raises(RemoteProtocolError) as info:
        decode(line, batches=False)
    assert info.value.reason == reason
    assert info.value.line is not None
    assert len(info.value.line) <= 200


def test_future_protocol_version_is_refused():
    with pytest.raises(IncompatiblePeerError):
        decode(b'{"clock":{},"repred":2}', batches=False)


def test_decoder_splits_and_keeps_partial_line():
    d = LineDecoder(100)
    assert d.feed(b'"SY') == []
    assert d.feed(b'NC"\n[1,') == [b'"SYNC"']
    assert d.feed(b'2,"A"]\n\n') == [b'[1,2,"A"]', b""]
    assert d.eof() is None


def test_decoder_parses_trailing_line_at_eof():
    d = LineDecoder(100)
    assert d.feed(b'"SYNC"') == []
    assert d.eof() == b'"SYNC"'


def test_decoder_refuses_long_lines_after_returning_good_ones():
    d = LineDecoder(10)
    assert d.feed(b"12345\n" + b"x" * 11 + b"\n") == [b"12345"]
    assert d.error is not None
    assert d.error.reason == "line-too-long"


def test_decoder_refuses_endless_line_without_buffering_it():
    d = LineDecoder(1000)
    for _ in range(3):
        d.feed(b"x" * 400)
        if d.error:
            break
    assert d.error is not None
    assert d.error.reason == "line-too-long"
    assert d.feed(b"x" * 400) == []


def test_a_model_write_near_the_line_limit_is_measured_exactly():
    # A line of exactly the limit is taken and one a byte longer refused.
    limit, now = 20_000, 1795692308381
    m = model(id="A", max_entry_bytes=limit, wall=lambda: now)
    fits = limit - len(encode_entry(["k", ""], now, "A"))
    m.set("k", "x" * fits)  # stamped now
    over = limit + 1 - len(encode_entry(["k", ""], now + 0.001, "A"))
    with pytest.raises(ValueError, match="line limit"):
        m.set("k", "x" * over)  # stamped a thousandth of a ms later
    assert m.get("k") == "x" * fits
    m.set("k", "x" * (over - 1))
    assert m.get("k") == "x" * (over - 1)


# Any character a value may hold: control characters (six bytes each in
# JSON), quotes, and characters of up to four bytes in UTF-8.
_chars = st.characters(exclude_categories=["Cs"])
_scalars = st.one_of(
    st.text(_chars, max_size=40),
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


@given(
    key=st.text(_chars, max_size=40),
    filler=_chars,
    value=_scalars,
    source=st.text(_chars, min_size=1, max_size=40),
    now=st.one_of(st.integers(1, MAX_STAMP), st.floats(1, MAX_STAMP)),
    slack=st.sampled_from([-1, 0, 1, 1000]),
)
@example(key="", filler="\x00", value="", source="\x1f", now=MAX_STAMP, slack=-1)
@example(
    key="", filler="a", value=-1.7976931348623157e308, source="A", now=0.5, slack=-1
)
def test_a_model_write_is_taken_exactly_when_its_line_fits(
    key, filler, value, source, now, slack
):
    # A writer that knows its entry is small need not encode it to measure
    # it: it must still take a write exactly when the line fits, whatever
    # the characters (control characters take six bytes), the value or
    # the stamp. The key is filled out to about the least line limit.
    if source == "__proto__":
        return
    key += filler * 16_384
    stamp = int(now) if float(now).is_integer() else now
    size = len(encode_entry([key, value], stamp, source))
    limit = size + slack
    m = model(id=source, max_entry_bytes=limit, wall=lambda: now)
    if slack >= 0:
        assert m.set(key, value) == [key, value]
        assert next(m.history()).ts == stamp
    else:
        with pytest.raises(ValueError, match="line limit"):
            m.set(key, value)
        assert key not in m
