"""Replicas through Redis, against a real redis-server on a free port."""

from __future__ import annotations

import functools
import logging
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import repred
from repred._wire import (
    encode_ae,
    encode_digest,
    encode_entry,
    encode_proof,
    encode_repair,
    encode_repair_snapshot,
)
from repred.types import gset, model

from .helpers import FakeWall, PeerProcess, wait_until

coredis = pytest.importorskip("coredis", reason="pip install 'repred[redis]'")

REDIS_SERVER = shutil.which("redis-server") or shutil.which(
    "redis-server", path="/usr/bin:/usr/sbin"
)
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (Debian: apt-get install redis-server)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server with persistence off, in a temporary directory, that
    a test stops, starts again (empty) and flushes."""

    def __init__(self, directory) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, extra: tuple[str, ...] | list[str] = ()) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        # Its log (standard output) says when it accepts connections; the
        # few lines it writes after that fit in the pipe.
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if b"Ready to accept connections" in line:
                return
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def raw_client(server):
    async with coredis.Redis.from_url(server.url) as client:
        yield client


#: The longest a test runs. Every wait in this file is on an event (a
#: replica's changes, a link's statistics, a log record, a peer's printed
#: events); the bound only ends a test that would otherwise hang.
BOUND = 30


def bounded(test):
    """Fail ``test`` with TooSlowError past BOUND seconds."""

    @functools.wraps(test)
    async def run(*args, **kwargs):
        with trio.fail_after(BOUND):
            await test(*args, **kwargs)

    return run


@asynccontextmanager
async def logged(text):
    """An event set when the "repred" logger passes on a record that says
    ``text`` (the logger's level is the test's to set)."""
    event = trio.Event()

    class Handler(logging.Handler):
        def emit(self, record):
            if text in record.getMessage():
                event.set()

    handler = Handler()
    logger = logging.getLogger("repred")
    logger.addHandler(handler)
    try:
        yield event
    finally:
        logger.removeHandler(handler)


async def first(*waits):
    """Wait until the first of ``waits`` (async functions) returns."""
    async with trio.open_nursery() as nursery:

        async def run(wait):
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)


def link(replica, server, **options):
    options.setdefault("name", "data")
    options.setdefault("retry_seconds", 0.05)
    return functools.partial(repred.connect_redis, replica, server.url, **options)


@bounded
async def test_two_replicas_converge_and_nothing_is_echoed(redis_server, caplog):
    caplog.set_level(logging.INFO, logger="repred")
    a, b = model(), model()
    a.set("colour", "blue")
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server))
        lb = await nursery.start(link(b, redis_server))
        await la.wait_synced()
        await lb.wait_synced()
        await wait_until(b, lambda: b.get("colour") == "blue")
        b.set("size", 3)
        a.set("shape", "round")
        await wait_until(a, lambda: a.get("size") == 3)
        await wait_until(b, lambda: b.get("shape") == "round")
        sa, sb = la.statistics(), lb.statistics()
        # Each side wrote its own entries once and read only the other's.
        assert (sa.updates_out, sa.updates_in) == (2, 1)
        assert (sb.updates_out, sb.updates_in) == (1, 2)
        assert sa.bytes_out > 0
        assert sb.bytes_in >= sa.bytes_out
        assert sa.connected
        assert sa.synced
        assert sa.refused == 0
        async with raw_client(redis_server) as client:
            records = await client.xrange("repred:{data}:log")
        assert len(records) == 3  # one record per write, none echoed
        linked = [r for r in caplog.records if "linked to redis://" in r.message]
        assert len(linked) == 2  # once per link
        nursery.cancel_scope.cancel()


@bounded
async def test_a_joiner_starts_from_the_image_then_the_tail(redis_server):
    a = model()
    for i in range(3000):
        a.set(f"k{i}", i)
    options = {"compact_bytes": 1, "tail_seconds": 0, "batch_bytes": 4096}
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server, **options))
        await la.wait_synced()
        await la.wait_statistics(lambda s: s.images_written >= 1)
        for i in range(10):
            a.set(f"late{i}", i)  # the tail after the image
        async with raw_client(redis_server) as client:
            meta = await client.hgetall("repred:{data}:meta")
            records = await client.xrange("repred:{data}:log")
        # The stream was trimmed behind the image: it starts at the last
        # record the image covers.
        assert meta[b"trimmed"] == meta[b"image_id"] == records[0].identifier
        c = model()
        lc = await nursery.start(link(c, redis_server))
        await lc.wait_synced()
        await wait_until(c, lambda: c.get("late9") == 9)
        assert c.to_dict() == a.to_dict()
        assert lc.statistics().images_loaded == 1
        nursery.cancel_scope.cancel()


@bounded
async def test_a_first_image_covers_the_whole_first_fill(redis_server):
    a = model()
    for i in range(3000):
        a.set(f"k{i}", i)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(
            link(a, redis_server, compact_bytes=1, batch_bytes=4096)
        )
        await la.wait_statistics(lambda s: s.images_written == 1)
        async with raw_client(redis_server) as client:
            meta = await client.hgetall("repred:{data}:meta")
        c = model()
        lc = await nursery.start(link(c, redis_server))
        await lc.wait_synced()
        assert c.to_dict() == a.to_dict()
        # The image and nothing after it: its id is the last record the
        # first fill wrote.
        assert lc.statistics().bytes_in <= int(meta[b"image_bytes"])
        nursery.cancel_scope.cancel()


@bounded
async def test_a_replica_holding_the_image_already_reads_only_the_tail(
    redis_server,
):
    a = model()
    for i in range(500):
        a.set(f"k{i}", i)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server, compact_bytes=1))
        await la.wait_synced()
        await la.wait_statistics(lambda s: s.images_written >= 1)
        b = model()
        lb = await nursery.start(link(b, redis_server))
        await lb.wait_synced()
        first = lb.statistics()
        assert first.images_loaded == 1
        lb.close()
        await lb.wait_closed()
        a.set("while-away", 1)
        lb = await nursery.start(link(b, redis_server))
        await lb.wait_synced()
        await wait_until(b, lambda: b.get("while-away") == 1)
        # Its clock covered the image: only the stream was read.
        assert lb.statistics().images_loaded == 0
        assert b.to_dict() == a.to_dict()
        nursery.cancel_scope.cancel()


@bounded
async def test_signed_entries_travel_whole_and_forgeries_are_refused(
    redis_server, caplog
):
    key = repred.SigningKey.generate()
    a = model(signing_key=key)
    b = model(verify=True)
    a.set("signed", 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(link(a, redis_server))
        lb = await nursery.start(link(b, redis_server))
        await lb.wait_synced()
        await wait_until(b, lambda: b.get("signed") == 1)
        assert b.signature(key.id, a.clock[key.id]) == a.signature(
            key.id, a.clock[key.id]
        )
        now = a.clock[key.id]
        forged = b'[["signed", 666], %d, "%s"]\n' % (now + 1, key.id.encode())
        bad = [
            forged,  # unsigned, in the key's name
            b"[1, 2\n",  # malformed
            b'{"id": "x", "clock": {}}\n',  # a digest
            b'"SYNC"\n',  # out of place
            b"x" * 2_000_000,  # too long for a record
            b'{"batch": "s", "stamps": [2, 1], "changes": [1, 2]}\n',
        ]
        async with raw_client(redis_server) as client:
            for payload in bad:
                await client.xadd("repred:{data}:log", {"d": payload, "w": "x"})
            await client.xadd("repred:{data}:log", {"other": "field"})
        a.set("after", 2)
        await wait_until(b, lambda: b.get("after") == 2)
        assert b.get("signed") == 1
        assert lb.statistics().refused == 7
        assert lb.statistics().connected
        assert "refused" in caplog.text
        nursery.cancel_scope.cancel()


@bounded
async def test_the_stream_carries_no_anti_entropy(redis_server):
    """Anti-entropy is a conversation between two peers: what a record
    holds of it is refused, a sound proof of equivocation too (a verifying
    replica bans no source on a stream record's word)."""
    key = repred.SigningKey.generate()
    now = int(time.time() * 1000)
    first = (["k", 1], now, key.id, key.sign(["k", 1], now, key.id))
    second = (["k", 2], now, key.id, key.sign(["k", 2], now, key.id))
    proof = encode_proof(first, second)
    records = [
        proof,
        b'{"snapshot":0,' + proof[1:],  # spelt to pass as a snapshot
        encode_ae("end", 0, True),
        encode_repair(key.id, [now], [["k", 1]], [first[3]]),
        encode_repair_snapshot({"k": 1}, {key.id: now}),
    ]
    a = model(signing_key=repred.SigningKey.generate())
    b = model(verify=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(link(a, redis_server))
        lb = await nursery.start(link(b, redis_server))
        await lb.wait_synced()
        async with raw_client(redis_server) as client:
            for payload in records:
                await client.xadd("repred:{data}:log", {"d": payload, "w": "x"})
        a.set("after", 1)  # read after every record above
        await wait_until(b, lambda: b.get("after") == 1)
        assert b.proofs() == []
        assert b.get("k") is None
        assert lb.statistics().refused == len(records)
        nursery.cancel_scope.cancel()


@bounded
async def test_a_link_that_does_not_receive_applies_nothing_from_redis(
    redis_server, caplog
):
    caplog.set_level(logging.INFO, logger="repred")
    a, b = model(), model()
    a.set("theirs", 1)
    async with (
        logged("writes no image") as no_image,
        trio.open_nursery() as nursery,
    ):
        la = await nursery.start(link(a, redis_server))
        await la.wait_synced()  # "theirs" is in Redis
        lb = await nursery.start(
            link(b, redis_server, receive=False, compact_bytes=1, tail_seconds=0)
        )
        await lb.wait_synced()  # read it, and refused it
        assert b.get("theirs") is None
        assert (lb.statistics().refused, lb.statistics().updates_in) == (1, 0)
        b.set("mine", 2)  # what it writes still goes out
        await wait_until(a, lambda: a.get("mine") == 2)
        a.set("live", 3)
        await lb.wait_statistics(lambda s: s.refused == 2)
        assert b.get("live") is None
        # No image of b: it would lack what the others wrote, and the stream
        # would be trimmed behind it.
        await first(
            no_image.wait,
            functools.partial(lb.wait_statistics, lambda s: s.images_written),
        )
        assert lb.statistics().images_written == 0
        c = model()
        lc = await nursery.start(link(c, redis_server))
        await lc.wait_synced()
        assert c.to_dict() == a.to_dict() == {"theirs": 1, "mine": 2, "live": 3}
        nursery.cancel_scope.cancel()


@bounded
async def test_a_link_that_does_not_receive_applies_nothing_of_an_image(
    redis_server,
):
    a, b = model(), model()
    a.set("theirs", 1)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server, compact_bytes=1))
        await la.wait_statistics(lambda s: s.images_written == 1)
        lb = await nursery.start(link(b, redis_server, receive=False))
        await lb.wait_synced()
        assert b.get("theirs") is None
        stats = lb.statistics()
        assert (stats.images_loaded, stats.refused, stats.updates_in) == (1, 1, 0)
        nursery.cancel_scope.cancel()


@bounded
async def test_a_link_that_does_not_send_writes_nothing_to_redis(redis_server, caplog):
    caplog.set_level(logging.INFO, logger="repred")
    a, b = model(), model()
    b.set("local", 1)
    async with (
        logged("writes no image") as no_image,
        trio.open_nursery() as nursery,
    ):
        lb = await nursery.start(link(b, redis_server, send=False, compact_bytes=1))
        await lb.wait_synced()
        la = await nursery.start(link(a, redis_server))
        await la.wait_synced()
        a.set("theirs", 2)
        await wait_until(b, lambda: b.get("theirs") == 2)  # it still receives
        await first(
            no_image.wait,
            functools.partial(lb.wait_statistics, lambda s: s.images_written),
        )
        stats = lb.statistics()
        assert (stats.updates_out, stats.bytes_out, stats.images_written) == (0, 0, 0)
        async with raw_client(redis_server) as client:
            records = await client.xrange("repred:{data}:log")
        assert [r.field_values[b"d"] for r in records] == [
            encode_entry(["theirs", 2], a.clock[a.id], a.id)
        ]
        assert a.get("local") is None
        nursery.cancel_scope.cancel()


@bounded
async def test_anti_entropy_on_a_peer_link_beside_a_redis_link(redis_server):
    """b has a peer link to a, which runs anti-entropy, and a Redis link to
    c: entries cross both, and only entry lines reach the stream."""
    a, b, c = model(), model(), model()
    a.set("from-a", 1)
    async with trio.open_nursery() as nursery:
        lb = await nursery.start(link(b, redis_server))
        lc = await nursery.start(link(c, redis_server))
        left, right = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as pair:
            pair.start_soon(functools.partial(repred.replicate, b, right, live=False))
            # Returns once the round that follows the sync has ended.
            stats = await repred.replicate(a, left, live=False)
        assert stats.antientropy_rounds == 1  # a sent more: a started it
        await wait_until(c, lambda: c.get("from-a") == 1)
        c.set("from-c", 2)
        await wait_until(b, lambda: b.get("from-c") == 2)
        assert lb.statistics().refused == lc.statistics().refused == 0
        async with raw_client(redis_server) as client:
            records = await client.xrange("repred:{data}:log")
        lines = [ln for r in records for ln in r.field_values[b"d"].splitlines()]
        assert lines
        assert all(ln.startswith((b"[", b'{"batch":')) for ln in lines)
        nursery.cancel_scope.cancel()


@bounded
async def test_a_replica_named_redis_is_not_its_own_twin(redis_server):
    """What a link tells its session of Redis names no replica: one whose
    id is "redis" links, and writes an image, without a twin reported."""
    a, b = model(id="redis"), model()
    a.set("mine", 1)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server, compact_bytes=1))
        await la.wait_statistics(lambda s: s.images_written)
        await nursery.start(link(b, redis_server))
        b.set("theirs", 2)
        await wait_until(a, lambda: a.get("theirs") == 2)
        assert a.statistics().twin_ids == 0
        nursery.cancel_scope.cancel()


@bounded
async def test_waiting_on_statistics_ends_with_the_link(redis_server):
    a = model()
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server))
        stats = await la.wait_statistics(lambda s: s.synced)
        assert stats.synced
        assert (await la.wait_statistics(lambda s: s.connected)).connected
        la.close()
        with pytest.raises(trio.ClosedResourceError):
            await la.wait_statistics(lambda s: s.images_written)
        assert la.closed
        assert a.statistics().watchers == 0  # the link no longer watches it


@bounded
async def test_entries_stamped_too_far_ahead_are_read_again_later(redis_server):
    wall = FakeWall(time.time() * 1000 - 10 * 60 * 1000)  # ten minutes behind
    b = model(wall=wall)
    async with trio.open_nursery() as nursery:
        lb = await nursery.start(link(b, redis_server))
        await lb.wait_synced()
        line = encode_entry(["ahead", 1], int(time.time() * 1000), "elsewhere")
        async with raw_client(redis_server) as client:
            await client.xadd("repred:{data}:log", {"d": line})
            await lb.wait_statistics(lambda s: s.deferred == 1)
            assert b.get("ahead") is None
            wall.now += 10 * 60 * 1000  # b's clock is right again
            await client.client_kill(type_=coredis.tokens.PureToken.NORMAL, skipme=True)
        await wait_until(b, lambda: b.get("ahead") == 1)
        nursery.cancel_scope.cancel()


@bounded
async def test_a_record_the_store_could_not_keep_is_read_again(redis_server, tmp_path):
    b = model(store=repred.SqliteStore(tmp_path / "b.db", busy_timeout=0))
    try:
        async with trio.open_nursery() as nursery:
            lb = await nursery.start(link(b, redis_server))
            await lb.wait_synced()
            other = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # b's commits fail meanwhile
            now = int(time.time() * 1000)
            two_lines = encode_entry(["one", 1], now, "s1") + encode_entry(
                ["two", 2], now, "s2"
            )
            async with raw_client(redis_server) as client:
                await client.xadd("repred:{data}:log", {"d": two_lines})
                await lb.wait_statistics(lambda s: s.attempts_failed >= 1)
            other.execute("ROLLBACK")
            other.close()
            # The line after the one whose commit failed is read again.
            await wait_until(b, lambda: b.get("two") == 2)
            assert b.get("one") == 1
            nursery.cancel_scope.cancel()
    finally:
        b.close()


@bounded
async def test_writes_made_just_before_a_shutdown_reach_redis(redis_server):
    a, b = model(), model()
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server))
        await la.wait_synced()
        a.set("last-words", 1)
        nursery.cancel_scope.cancel()  # before the link's writer has run
    assert la.closed
    async with trio.open_nursery() as nursery:
        lb = await nursery.start(link(b, redis_server))
        await lb.wait_synced()
        assert b.get("last-words") == 1
        lb.close()
    assert lb.closed


@pytest.mark.parametrize(
    "head",
    [b"x" * 2_000_000, b"[1, 2]\n", b"{not json\n"],
    ids=["long", "entry", "bad"],
)
@bounded
async def test_an_image_that_does_not_start_with_a_clock_is_lost(redis_server, head):
    a, b = model(), model()
    a.set("x", 1)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server, poll_seconds=0.05))
        await la.wait_synced()
        async with raw_client(redis_server) as client:
            await client.rpush("repred:{data}:image:bad", [head])
            await client.hset(
                "repred:{data}:meta",
                {"image": "bad", "image_id": "1-0", "image_len": 1},
            )
        lb = await nursery.start(link(b, redis_server))
        # Taken as lost: a new epoch, which a fills again.
        await wait_until(b, lambda: b.get("x") == 1)
        assert lb.statistics().refused >= 1
        nursery.cancel_scope.cancel()


@bounded
async def test_a_type_mismatch_on_a_name_is_an_error(redis_server):
    a, b = model(), gset()
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server))
        await la.wait_synced()
        with pytest.raises(repred.IncompatiblePeerError, match="'model'"):
            await repred.connect_redis(b, redis_server.url, name="data")
        nursery.cancel_scope.cancel()


@bounded
async def test_it_starts_without_redis_and_says_so_once(redis_server, caplog):
    redis_server.stop()
    caplog.set_level(logging.INFO, logger="repred")
    a, b = model(), model()
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server))
        a.set("early", 1)  # works locally meanwhile
        await la.wait_statistics(lambda s: s.attempts_failed >= 3)
        waiting = [r for r in caplog.records if "waiting for Redis" in r.message]
        assert len(waiting) == 1
        assert not la.statistics().connected
        redis_server.start()
        lb = await nursery.start(link(b, redis_server))
        await wait_until(b, lambda: b.get("early") == 1)
        back = [r for r in caplog.records if "reached Redis" in r.message]
        assert len(back) == 1
        assert la.statistics().connected
        nursery.cancel_scope.cancel()
    del lb


@bounded
async def test_the_password_is_never_logged(caplog):
    url = f"redis://user:sekrit@127.0.0.1:{free_port()}"
    a = model()
    async with trio.open_nursery() as nursery:
        la = await nursery.start(
            functools.partial(
                repred.connect_redis, a, url, name="data", retry_seconds=0.05
            )
        )
        await la.wait_statistics(lambda s: s.attempts_failed >= 1)
        nursery.cancel_scope.cancel()
    assert "sekrit" not in caplog.text
    assert "user:***@127.0.0.1" in caplog.text
    assert "sekrit" not in repr(la)


@bounded
async def test_a_restarted_empty_redis_is_filled_again(redis_server, caplog):
    a, b = model(), model()
    a.set("before", 1)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server))
        lb = await nursery.start(link(b, redis_server))
        await la.wait_synced()
        await wait_until(b, lambda: b.get("before") == 1)
        redis_server.stop()
        a.set("while-down-a", 2)  # both keep working locally
        b.set("while-down-b", 3)
        await la.wait_statistics(lambda s: not s.connected)
        await lb.wait_statistics(lambda s: not s.connected)
        redis_server.start()  # empty: persistence is off
        await wait_until(a, lambda: a.get("while-down-b") == 3)
        await wait_until(b, lambda: b.get("while-down-a") == 2)
        c = model()
        lc = await nursery.start(link(c, redis_server))
        await lc.wait_synced()
        await wait_until(c, lambda: c.to_dict() == a.to_dict())
        assert a.to_dict() == b.to_dict()
        assert c.get("before") == 1
        lost = [r for r in caplog.records if "lost Redis" in r.message]
        assert len(lost) == 2  # once per link for the spell
        nursery.cancel_scope.cancel()


@bounded
async def test_a_flushed_redis_is_filled_again(redis_server, caplog):
    a, b = model(), model()
    a.set("x", 1)
    b.set("y", 2)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server, poll_seconds=0.05))
        lb = await nursery.start(link(b, redis_server, poll_seconds=0.05))
        await la.wait_synced()
        await lb.wait_synced()
        await wait_until(a, lambda: a.to_dict() == {"x": 1, "y": 2})
        await wait_until(b, lambda: b.to_dict() == {"x": 1, "y": 2})
        async with raw_client(redis_server) as client:
            await client.flushall()
            # Refilled by both links: a joiner finds everything.
            c = model()
            lc = await nursery.start(link(c, redis_server))
            await lc.wait_synced()
            await wait_until(c, lambda: c.to_dict() == {"x": 1, "y": 2})
        assert "lost its data" in caplog.text
        nursery.cancel_scope.cancel()


@bounded
async def test_a_dropped_connection_reads_on_from_where_it_was(redis_server):
    a, b = model(), model()
    for i in range(50):
        a.set(f"k{i}", i)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server))
        lb = await nursery.start(link(b, redis_server))
        await la.wait_synced()
        await wait_until(b, lambda: b.to_dict() == a.to_dict())
        async with raw_client(redis_server) as client:
            before = await client.xlen("repred:{data}:log")
            await client.client_kill(type_=coredis.tokens.PureToken.NORMAL, skipme=True)
            await la.wait_statistics(lambda s: s.reconnects == 1)
            await lb.wait_statistics(lambda s: s.reconnects == 1)
            a.set("after", 1)
            await wait_until(b, lambda: b.get("after") == 1)
            # Nothing was written again: the links knew what Redis held.
            assert await client.xlen("repred:{data}:log") == before + 1
        assert la.statistics().updates_out == 51
        nursery.cancel_scope.cancel()


@bounded
async def test_a_stream_that_lost_records_is_filled_again(redis_server):
    a, b = model(), model()
    a.set("x", 1)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server))
        await la.wait_synced()
        async with raw_client(redis_server) as client:
            await client.delete(["repred:{data}:log"])  # as if restored older
            await client.client_kill(type_=coredis.tokens.PureToken.NORMAL, skipme=True)
            await la.wait_statistics(lambda s: s.reconnects == 1)
            lb = await nursery.start(link(b, redis_server))
            await lb.wait_synced()
            await wait_until(b, lambda: b.get("x") == 1)
        nursery.cancel_scope.cancel()


@bounded
async def test_a_reader_behind_a_trim_starts_again_from_the_image(redis_server):
    b = model()
    async with trio.open_nursery() as nursery:
        lb = await nursery.start(link(b, redis_server))
        await lb.wait_synced()  # at the start of an empty stream
        now = int(time.time() * 1000)
        head = encode_digest("image", {"hand": now}, "model")
        async with raw_client(redis_server) as client:
            # Another writer, as one step: an image covering a record, and
            # the stream trimmed up to it, past where the reader is.
            async with client.pipeline(transaction=True) as multi:
                multi.rpush(
                    "repred:{data}:image:hand",
                    [head, encode_entry(["in-image", 1], now, "hand")],
                )
                multi.xadd(
                    "repred:{data}:log",
                    {"d": encode_entry(["in-stream", 1], now - 1, "hand2")},
                    identifier="1-1",
                )
                multi.hset(
                    "repred:{data}:meta",
                    {
                        "image": "hand",
                        "image_id": "1-1",
                        "image_len": 2,
                        "trimmed": "1-1",
                    },
                )
        # Counted once every element of the image is applied.
        await lb.wait_statistics(lambda s: s.images_loaded == 1)
        assert b.get("in-image") == 1
        nursery.cancel_scope.cancel()


@bounded
async def test_a_trim_hidden_behind_a_links_own_records_is_seen(redis_server):
    a, b = model(), model()
    async with trio.open_nursery() as nursery:
        await nursery.start(link(a, redis_server))
        lb = await nursery.start(link(b, redis_server))
        await lb.wait_synced()
        b.set("mine", 1)
        async with raw_client(redis_server) as client:
            await lb.wait_statistics(lambda s: s.bytes_out > 0)
            (own,) = await client.xrange("repred:{data}:log")
            writer = own.field_values[b"w"]
            now = int(time.time() * 1000)
            head = encode_digest("image", {"hand": now}, "model")
            ms = int(own.identifier.split(b"-")[0]) + 1
            other, mine = f"{ms}-0", f"{ms}-1"
            # Another writer's record, then one in b's name, and the first
            # trimmed away behind an image that holds it, all at once: b
            # reads only its own record, which it need not check at once.
            async with client.pipeline(transaction=True) as multi:
                multi.rpush(
                    "repred:{data}:image:hand",
                    [head, encode_entry(["in-image", 1], now, "hand")],
                )
                line = encode_entry(["in-image", 1], now, "hand")
                multi.xadd("repred:{data}:log", {"d": line}, identifier=other)
                multi.xadd(
                    "repred:{data}:log", {"d": b"[]\n", "w": writer}, identifier=mine
                )
                multi.xtrim("repred:{data}:log", "MINID", mine)
                multi.hset(
                    "repred:{data}:meta",
                    {
                        "image": "hand",
                        "image_id": mine,
                        "image_len": 2,
                        "trimmed": mine,
                    },
                )
        a.set("after", 1)  # a record to apply: b checks from before its own
        await wait_until(b, lambda: b.get("in-image") == 1)
        nursery.cancel_scope.cancel()


@bounded
async def test_a_stream_trimmed_past_its_image_starts_a_new_epoch(redis_server):
    a, b = model(), model()
    for i in range(100):
        a.set(f"k{i}", i)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(link(a, redis_server, compact_bytes=1))
        await la.wait_statistics(lambda s: s.images_written >= 1)
        async with raw_client(redis_server) as client:
            a.set("last", 1)
            await la.wait_statistics(lambda s: s.updates_out == 101)
            newest = (await client.xrevrange("repred:{data}:log", count=1))[0]
            # By hand: the stream emptied past what the image covers.
            await client.xtrim("repred:{data}:log", "MAXLEN", 0)
            await client.hset(
                "repred:{data}:meta", {"trimmed": newest.identifier + b"1"}
            )
        await nursery.start(link(b, redis_server))
        await wait_until(b, lambda: b.to_dict() == a.to_dict())
        nursery.cancel_scope.cancel()


@bounded
async def test_an_image_over_its_bound_is_not_written(redis_server):
    a, b = model(), model()
    for i in range(200):
        a.set(f"k{i}", i)
    async with (
        logged("max_image_bytes") as too_large,
        trio.open_nursery() as nursery,
    ):
        la = await nursery.start(
            link(a, redis_server, compact_bytes=1, max_image_bytes=1000)
        )
        await la.wait_synced()
        a.set("more", 1)  # a second look at the tail
        await too_large.wait()
        assert la.statistics().images_written == 0
        lb = await nursery.start(link(b, redis_server))
        await lb.wait_synced()
        await wait_until(b, lambda: b.to_dict() == a.to_dict())
        nursery.cancel_scope.cancel()


@pytest.fixture
def redis_cluster(tmp_path):
    """Three redis-servers made one Redis Cluster (with redis-cli)."""
    cli = shutil.which("redis-cli") or shutil.which("redis-cli", path="/usr/bin")
    if cli is None:
        pytest.skip("redis-cli is not installed (Debian: apt-get install redis-tools)")
    nodes = []
    try:
        for i in range(3):
            (tmp_path / str(i)).mkdir()
            node = RedisServer(tmp_path / str(i))
            # The cluster bus listens on a port of its own (by default the
            # node's plus 10000, which may be taken or out of range).
            bus = str(free_port())
            node.start(["--cluster-enabled", "yes", "--cluster-port", bus])
            nodes.append(node)
        subprocess.run(
            [cli, "--cluster", "create", "--cluster-replicas", "0", "--cluster-yes"]
            + [f"127.0.0.1:{node.port}" for node in nodes],
            check=True,
            capture_output=True,
        )
        # Whether every node agrees on the slots can only be asked of a
        # node: a query loop, bounded, not a sleep standing in for an event.
        deadline = time.monotonic() + 20
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                [cli, "-p", str(nodes[0].port), "cluster", "info"], capture_output=True
            ).stdout
        ):
            assert time.monotonic() < deadline, "the cluster never came up"
            time.sleep(0.05)
        yield nodes[0]
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.slow
@bounded
async def test_replicas_converge_through_a_redis_cluster(redis_cluster):
    a, b = model(), model()
    for i in range(2000):
        a.set(f"k{i}", i)
    async with trio.open_nursery() as nursery:
        la = await nursery.start(
            link(a, redis_cluster, cluster=True, compact_bytes=1, tail_seconds=0)
        )
        await la.wait_statistics(lambda s: s.images_written == 1)
        lb = await nursery.start(link(b, redis_cluster, cluster=True))
        await lb.wait_synced()
        b.set("back", 1)
        await wait_until(a, lambda: a.get("back") == 1)
        assert b.to_dict() == a.to_dict()
        assert lb.statistics().images_loaded == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "a{b}"}, "braces"),
        ({"name": ""}, "name"),
        ({"name": "ok", "read_count": 0}, "read_count"),
        ({"name": "ok", "poll_seconds": 0}, "poll_seconds"),
        ({"name": "ok", "tail_seconds": -1}, "tail_seconds"),
        ({"name": "ok", "send": False, "receive": False}, "send=False"),
    ],
)
@bounded
async def test_bad_options_are_refused_at_the_call(options, message):
    with pytest.raises(ValueError, match=message):
        await repred.connect_redis(model(), "redis://127.0.0.1:1", **options)


@pytest.mark.parametrize("option", ["send", "receive"])
@bounded
async def test_send_and_receive_are_bools(option):
    with pytest.raises(TypeError, match=option):
        await repred.connect_redis(
            model(), "redis://127.0.0.1:1", name="ok", **{option: 1}
        )


# -- the peer command ---------------------------------------------------------

PEER_ARGS = ["--json", "--heartbeat", "0.1", "--down-after", "1.0", "--gossip", "0.4"]


async def _peer(nursery, *extra):
    cmd = [sys.executable, "-m", "repred.peer", "0", *extra, *PEER_ARGS]
    process = await nursery.start(
        functools.partial(
            trio.run_process,
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
        )
    )
    node = PeerProcess(process)
    node.id = (await node.until(lambda e: e["event"] == "listening"))["id"]
    return node


def _has(key, value):
    return lambda e: e["event"] == "update" and e["key"] == key and e["value"] == value


def _redis(state):
    return lambda e: e["event"] == "redis" and e["state"] == state


async def _stop(node):
    await node.process.stdin.aclose()  # end of input: the peer stops
    await node.process.wait()


@pytest.mark.slow
@bounded
async def test_peers_sharing_only_a_redis_url_converge_and_catch_up(
    redis_server, tmp_path
):
    url = redis_server.url
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            one = await _peer(nursery, "--redis", url)
            two = await _peer(nursery, "--redis", url, "--data", str(tmp_path / "two"))
            for node in (one, two):
                await node.until(_redis("linked"))
            await one.send("set left 1")
            await two.send("set right 2")
            await one.until(_has("right", 2))
            await two.until(_has("left", 1))
            # The membership travels through Redis too: each sees the other.
            await one.until(lambda e: e["event"] == "up" and e["id"] == two.id)
            # Two goes down; one writes; one goes down too. Only Redis holds
            # the write when two comes back, and all of it for a newcomer.
            await _stop(two)
            await one.send("set while-down 3")
            await one.until(_has("while-down", 3))
            await _stop(one)  # at once: its link writes it before it exits
            two = await _peer(nursery, "--redis", url, "--data", str(tmp_path / "two"))
            await two.until(_has("while-down", 3))
            three = await _peer(nursery, "--redis", url)
            for key, value in (("left", 1), ("right", 2), ("while-down", 3)):
                await three.until(_has(key, value))
            await _stop(two)
            await _stop(three)


@pytest.mark.slow
@bounded
async def test_a_peer_says_it_waits_for_redis_and_works_meanwhile(redis_server):
    redis_server.stop()
    url = redis_server.url
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            one = await _peer(nursery, "--redis", url)
            waiting = await one.until(lambda e: e["event"] == "redis")
            assert waiting == {"event": "redis", "state": "waiting", "url": url}
            await one.send("set early 1")
            await one.until(_has("early", 1))
            redis_server.start()
            await one.until(_redis("linked"))
            two = await _peer(nursery, "--redis", url)
            await two.until(_has("early", 1))
            await _stop(one)
            await _stop(two)


@pytest.mark.slow
@bounded
async def test_a_read_only_peer_applies_nothing_from_redis(redis_server):
    url = redis_server.url
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            one = await _peer(nursery, "--redis", url)
            await one.until(_redis("linked"))
            await one.send("set theirs 1")
            await one.until(_has("theirs", 1))
            await _stop(one)  # its link writes "theirs" before it exits
            ro = await _peer(nursery, "--redis", url, "--read-only")
            await ro.until(_redis("linked"))  # read what Redis holds
            await ro.send("get theirs")
            value = await ro.until(lambda e: e["event"] == "value")
            assert value["value"] is None
            # Membership still flows, and so does what it writes itself.
            two = await _peer(nursery, "--redis", url)
            await ro.until(lambda e: e["event"] == "up" and e["id"] == two.id)
            await ro.send("set mine 2")
            await two.until(_has("mine", 2))
            await two.until(_has("theirs", 1))
            assert not [e for e in ro.events if e.get("key") == "theirs"][1:]
            await _stop(ro)
            await _stop(two)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--redis", "http://127.0.0.1:6379"], "redis://"),
        (["--redis-cluster"], "--redis-cluster needs --redis"),
    ],
)
def test_the_peers_redis_options_are_checked_before_anything_starts(args, says):
    done = subprocess.run(
        [sys.executable, "-m", "repred.peer", "0", *args],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1
    assert says in done.stderr.decode()
    assert done.stdout == b""
