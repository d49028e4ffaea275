"""Signed sources: keys, signatures kept by relays and stores, and
verifying replicas that refuse whatever their sources did not sign."""

from __future__ import annotations

import os
import stat

import orjson
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import repred
from repred import RemoteProtocolError, SigningKey, StoreError
from repred.protocol import Session
from repred.types import gset, model

from .helpers import FakeWall, SessionPair, examples, sync

KEY = SigningKey(b"k" * 32)
OTHER = SigningKey(b"o" * 32)


def _signed(n: int = 5, key: SigningKey = KEY, **options) -> repred.Replica:
    m = model(signing_key=key, **options)
    for i in range(n):
        m.set(f"k{i}", i)
    return m


def _verifier(**options) -> tuple[repred.Replica, Session]:
    victim = model(id="V", verify=True, **options)
    s = Session(victim)
    s.data_to_send()
    s.receive_data(b'{"id":"X","clock":{},"repred":1,"batches":1}\n')
    return victim, s


def _line(change, ts, source, signature=None) -> bytes:
    entry = [change, ts, source] + ([] if signature is None else [signature])
    return orjson.dumps(entry) + b"\n"


# -- keys --------------------------------------------------------------------


def test_a_key_is_an_id_and_keeps_its_secret():
    key = SigningKey.generate()
    assert len(key.id) == 43
    assert repred.protocol.check_value(key.id) is None
    assert key.id not in (SigningKey.generate().id,)
    assert repr(key) == f"<SigningKey id={key.id!r}>"


def test_a_saved_key_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "me.key"
    KEY.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert SigningKey.load(path).id == KEY.id
    with pytest.raises(FileExistsError):
        OTHER.save(path)
    assert SigningKey.load(path).id == KEY.id
    (tmp_path / "junk").write_text("not a key\n")
    with pytest.raises(ValueError, match="does not hold"):
        SigningKey.load(tmp_path / "junk")


def test_factory_options_are_checked():
    assert model(signing_key=KEY).id == KEY.id
    assert gset(signing_key=KEY, id=KEY.id).id == KEY.id
    with pytest.raises(ValueError, match="disagree"):
        model(signing_key=KEY, id="someone")
    with pytest.raises(ValueError, match="verify"):
        model(writers={KEY.id})
    with pytest.raises(TypeError):
        model(signing_key="secret")
    with pytest.raises(TypeError):
        model(verify=True, writers=KEY.id)


# -- signing and relaying ----------------------------------------------------


@pytest.mark.parametrize("batches", [True, False])
def test_signed_entries_reach_a_verifier_through_a_relay_that_does_not_verify(
    batches,
):
    a, relay, end = _signed(), model(id="relay"), model(id="end", verify=True)
    sync(a, relay, batches=batches)
    sync(relay, end, batches=batches)
    assert end.to_dict() == a.to_dict()
    for e in a.history():
        assert end.signature(e.source, e.ts) == a.signature(e.source, e.ts)
        assert relay.signature(e.source, e.ts) is not None


def test_signed_batches_cut_to_fit_keep_each_signature_with_its_entry():
    # 200 signed entries of about 500 bytes: too many for one line under
    # an 8 KB line limit, so the batches are cut; every signature must stay
    # with its own entry for the verifier to take them all.
    a = model(signing_key=KEY)
    for i in range(200):
        a.set(f"k{i}", "x" * 500)
    end = model(id="end", verify=True)
    pair = SessionPair(a, end)
    pair.b = Session(end, max_line_bytes=16384)
    pair.a = Session(a, batch_bytes=8192)
    pair.pump()
    lines = [x for chunk in pair.a_to_b for x in chunk.split(b"\n") if x]
    assert sum(x.startswith(b'{"batch":') for x in lines) > 10
    assert end.to_dict() == a.to_dict()
    for e in a.history():
        assert end.signature(e.source, e.ts) == a.signature(e.source, e.ts)


def test_a_signed_entry_goes_on_the_wire_with_its_signature():
    a = _signed(1)
    e = next(a.history())
    pair = SessionPair(a, model(id="B"), batches=False)
    pair.pump()
    line = next(x for x in b"".join(pair.a_to_b).split(b"\n") if x.startswith(b"["))
    _change, ts, source, signature = orjson.loads(line)
    assert (ts, source, signature) == (e.ts, KEY.id, a.signature(KEY.id, e.ts))
    assert len(signature) == 86


def test_a_superseded_entry_takes_its_signature_with_it():
    wall = FakeWall()
    a = model(signing_key=KEY, wall=wall)
    a.set("x", 1)
    first = next(a.history()).ts
    wall.now += 1
    a.set("x", 2)
    assert a.signature(KEY.id, first) is None
    (kept,) = list(a.history())
    assert a.signature(KEY.id, kept.ts) is not None


# -- verifying ---------------------------------------------------------------


def _refused(s: Session, data: bytes) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(data)
    return info.value.reason


def test_a_verifier_refuses_what_its_source_did_not_sign():
    a = _signed(1)
    (e,) = list(a.history())
    good = a.signature(KEY.id, e.ts)
    change = list(e.change)
    cases = {
        "unsigned": _line(change, e.ts, KEY.id),
        "another change": _line(["k0", 99], e.ts, KEY.id, good),
        "another stamp": _line(change, e.ts + 1, KEY.id, good),
        "another source": _line(change, e.ts, OTHER.id, good),
        "signed by another key": _line(
            change, e.ts, KEY.id, OTHER.sign(change, e.ts, KEY.id)
        ),
        "not a key": _line(change, e.ts, "plain-id", good),
        "junk signature": _line(change, e.ts, KEY.id, "x" * 86),
    }
    for name, data in cases.items():
        victim, s = _verifier()
        assert _refused(s, data) == "bad-signature", name
        assert victim.to_dict() == {}, name
        assert victim.clock == {}, name
    victim, s = _verifier()
    s.receive_data(_line(change, e.ts, KEY.id, good))
    assert victim.to_dict() == {"k0": 0}


def test_a_bad_signature_in_a_batch_refuses_the_batch():
    a = _signed(3)
    entries = list(a.history())
    sigs = [a.signature(KEY.id, e.ts) for e in entries]
    sigs[1] = sigs[0]
    victim, s = _verifier()
    batch = {
        "batch": KEY.id,
        "stamps": [e.ts for e in entries],
        "changes": [list(e.change) for e in entries],
        "signatures": sigs,
    }
    assert _refused(s, orjson.dumps(batch) + b"\n") == "bad-signature"
    assert victim.to_dict() == {}


@pytest.mark.parametrize("writers", [{OTHER.id}, lambda source: source == OTHER.id])
def test_writers_limit_who_may_write(writers):
    a, o = _signed(1), _signed(1, key=OTHER)
    strict = model(id="strict", verify=True, writers=writers)
    sync(o, strict)
    assert strict.get("k0") == 0
    with pytest.raises(RemoteProtocolError) as info:
        sync(a, strict)
    assert info.value.reason == "not-a-writer"
    assert KEY.id not in strict.clock


def test_a_verifier_refuses_snapshots():
    wall = FakeWall()
    g = repred.repred(
        lambda s, u: [x for x in u if x not in s and not s.add(x)],
        set(),
        signing_key=KEY,
        snapshot=sorted,
        wall=wall,
    )
    g.update([1, 2])
    g.compact()
    victim = repred.repred(
        lambda s, u: [x for x in u if x not in s and not s.add(x)],
        set(),
        id="V",
        verify=True,
        snapshot=sorted,
        wall=wall,
    )
    with pytest.raises(RemoteProtocolError) as info:
        sync(g, victim)
    assert info.value.reason == "bad-signature"
    assert victim.state == set()


def test_a_forgery_through_a_relay_is_refused_and_the_genuine_stay():
    a = _signed(3)
    relay, end = model(id="relay"), model(id="end", verify=True)
    sync(a, relay)
    sync(relay, end)
    # Someone writes in A's name into the relay, which does not verify.
    forged_ts = a.clock[KEY.id] + 1
    s = Session(relay)
    s.data_to_send()
    forged = _line(["k0", "evil"], forged_ts, KEY.id)
    s.receive_data(b'{"id":"M","clock":{}}\n' + forged)
    assert relay.get("k0") == "evil"
    with pytest.raises(RemoteProtocolError) as info:
        sync(relay, end)
    assert info.value.reason == "bad-signature"
    assert end.to_dict() == a.to_dict()


@settings(max_examples=examples(60))
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["k0", "k1", "k2", "new"]),
            st.one_of(st.integers(-5, 5), st.text(max_size=4)),
            st.integers(0, 5),  # stamp offset
            st.sampled_from(["none", "other-key", "reused", "junk"]),
        ),
        max_size=8,
    )
)
def test_no_entry_without_the_key_changes_a_verifiers_view_of_a_source(attacks):
    wall = FakeWall()
    a = _signed(3, wall=wall)
    genuine = list(a.history())
    sigs = [a.signature(KEY.id, e.ts) for e in genuine]
    victim = model(id="V", verify=True, wall=wall)
    sync(a, victim)
    before = (victim.to_dict(), dict(victim.clock))
    for key, value, offset, how in attacks:
        ts = genuine[-1].ts + offset
        change = [key, value]
        signature = {
            "none": None,
            "other-key": OTHER.sign(change, ts, KEY.id),
            "reused": sigs[offset % len(sigs)],
            "junk": "A" * 86,
        }[how]
        s = Session(victim)
        s.data_to_send()
        s.receive_data(b'{"id":"M","clock":{}}\n')
        try:
            s.receive_data(_line(change, ts, KEY.id, signature))
        except RemoteProtocolError:
            pass
        s.close()
        assert (victim.to_dict(), dict(victim.clock)) == before


# -- stores ------------------------------------------------------------------


def test_signatures_survive_a_store_and_a_verifier_checks_its_own(tmp_path):
    a = _signed(3)
    path = str(tmp_path / "v.db")
    v = model(verify=True, store=repred.SqliteStore(path))
    sync(a, v)
    v.close()
    again = model(verify=True, store=repred.SqliteStore(path))
    assert again.to_dict() == a.to_dict()
    for e in a.history():
        assert again.signature(e.source, e.ts) == a.signature(e.source, e.ts)
    again.close()
    # A store whose signatures were swapped is refused by a verifier.
    import sqlite3

    db = sqlite3.connect(path)
    rows = db.execute("SELECT source, ts, change FROM entries").fetchall()
    blobs = [r[2] for r in rows]
    head = [b.partition(b"\n") for b in blobs]
    swapped = head[0][0] + b"\n" + head[1][2]
    from repred._store import _entry_crc

    db.execute(
        "UPDATE entries SET change = ?, crc = ? WHERE source = ? AND ts = ?",
        (swapped, _entry_crc(rows[0][0], rows[0][1], swapped), rows[0][0], rows[0][1]),
    )
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="refuses"):
        model(verify=True, store=repred.SqliteStore(path))
    # One that does not verify still opens it (and the file is not locked).
    plain = model(store=repred.SqliteStore(path))
    assert len(plain.to_dict()) == 3
    plain.close()


def test_a_signing_replica_keeps_its_key_id_in_its_store(tmp_path):
    path = str(tmp_path / "s.db")
    m = model(signing_key=KEY, store=repred.SqliteStore(path))
    m.set("x", 1)
    m.close()
    again = model(signing_key=KEY, store=repred.SqliteStore(path))
    assert again.id == KEY.id
    assert again.signature(KEY.id, next(again.history()).ts) is not None
    again.close()
    with pytest.raises(StoreError, match="belongs to"):
        model(signing_key=OTHER, store=repred.SqliteStore(path))


# -- over TCP ------------------------------------------------------------------


async def test_a_signed_sync_over_tcp():
    a = _signed(200)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, a, 0)
        port = listeners[0].socket.getsockname()[1]
        end = model(id="end", verify=True, writers={KEY.id})
        stats = await repred.connect_tcp(end, "127.0.0.1", port, live=False)
        assert stats.updates_in == 200
        assert end.to_dict() == a.to_dict()
        nursery.cancel_scope.cancel()


def test_a_verifier_keeps_a_bounded_number_of_keys(monkeypatch):
    from repred import _trust

    monkeypatch.setattr(_trust, "_MAX_KEYS", 3)
    check = _trust.verifier()
    for i in range(10):
        key = SigningKey(bytes([i]) * 32)
        assert check(["k", i], 1, key.id, key.sign(["k", i], 1, key.id))
    cache = check.__closure__
    held = [c.cell_contents for c in cache if isinstance(c.cell_contents, dict)]
    assert held
    assert all(len(d) <= 3 for d in held)
