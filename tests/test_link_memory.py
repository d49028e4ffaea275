"""What an idle link holds: about what it was sent of an unfinished line,
given back the moment the link is cut (no collector pass needed)."""

from __future__ import annotations

import base64
import functools
import gc
import mmap
import os
import tracemalloc

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import repred
from repred._wire import SPILL_BYTES, LineDecoder, mapped_bytes
from repred.types import model

from .helpers import examples

#: Links, and the bytes of an unfinished line each holds.
LINKS = 100
PARTIAL = 100_000
#: Generous bounds: what a link may cost beyond its partial line while
#: open (its tasks, session and buffers), and what may stay once it is cut
#: (sets and dicts that grew keep their size).
OVERHEAD = 48 * 1024
LEFT = 16 * 1024

_LINE = b'[["k","'


def _memory() -> int:
    """What the process holds: what Python allocated, and the pages
    mapped for long unfinished lines (which tracemalloc does not see)."""
    return tracemalloc.get_traced_memory()[0] + mapped_bytes()


def _opening(kind: str, i: int) -> bytes:
    if kind == "tcp":
        return b'{"id":"idle","clock":{}}\n' + _LINE
    if kind == "peer":
        return (
            b'{"repred-peer":3,"node":"127.0.0.1:%d","replicas":{"data":"model"}}\n'
            b'1\tdata\t{"id":"idle","clock":{}}\n2\tdata\t' % (20000 + i) + _LINE
        )
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /replicas/data HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def _frame(payload: bytes) -> bytes:
    """A client's binary WebSocket message (masked with zeros)."""
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return b"\x82" + size + b"\0\0\0\0" + payload


async def _serve(nursery, kind: str) -> int:
    data = model(id="server")
    for i in range(100):
        data.set(f"k{i}", i)
    if kind == "tcp":
        listeners = await nursery.start(repred.serve_tcp, data, 0)
        return int(listeners[0].socket.getsockname()[1])

    async def run(task_status):
        web = 0 if kind == "web" else None
        async with repred.open_peer(replicas={"data": data}, web_port=web) as peer:
            port = peer.port if web is None else peer.web_address.split(":")[1]
            task_status.started(int(port))
            await trio.sleep_forever()

    return int(await nursery.start(run))


async def _hold(port: int, kind: str, i: int) -> trio.SocketStream:
    """A link that sent its opening and part of a line, then went quiet."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(_opening(kind, i))
    if kind == "web":
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += await stream.receive_some(4096)
        assert reply.startswith(b"HTTP/1.1 101"), reply
        await stream.send_all(_frame(b'{"id":"idle","clock":{}}\n' + _LINE))
        await stream.send_all(_frame(b"x" * PARTIAL))
    else:
        await stream.send_all(b"x" * PARTIAL)
    return stream


@pytest.mark.parametrize("kind", ["tcp", "peer", "web"])
async def test_idle_links_hold_what_they_were_sent_and_give_it_back_when_cut(
    nursery, kind
):
    port = await _serve(nursery, kind)
    await trio.testing.wait_all_tasks_blocked()
    # The collector stays out of it: what a cut link held must go back by
    # itself (with the collector on, it would too, some time later).
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        base = _memory()
        links = [await _hold(port, kind, i) for i in range(LINKS)]
        await trio.testing.wait_all_tasks_blocked()
        held = _memory() - base
        for stream in links:
            await stream.aclose()
        del links, stream
        await trio.testing.wait_all_tasks_blocked()
        left = _memory() - base
    finally:
        tracemalloc.stop()
        gc.enable()
    # (Both ends are counted: the client ends are sockets, a few hundred
    # bytes each.)
    assert held <= LINKS * (PARTIAL + OVERHEAD), held / LINKS
    assert left <= LINKS * LEFT, left / LINKS


@pytest.mark.parametrize("kind", ["tcp", "peer"])
async def test_links_dropped_for_newer_ones_give_back_what_they_held(kind):
    # Cut by the server this time: past max_links, the quietest link goes.
    async with trio.open_nursery() as nursery:
        data = model(id="server")
        if kind == "tcp":
            serve = functools.partial(repred.serve_tcp, data, 0, max_links=10)
            port = (await nursery.start(serve))[0].socket.getsockname()[1]
        else:

            async def run(task_status):
                async with repred.open_peer(replicas={"data": data}, max_links=10) as p:
                    task_status.started(p.port)
                    await trio.sleep_forever()

            port = await nursery.start(run)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            first = [await _hold(port, kind, i) for i in range(10)]
            await trio.testing.wait_all_tasks_blocked()
            base = _memory()
            # Ten more push the first ten out, one each.
            later = [await _hold(port, kind, 10 + i) for i in range(10)]
            await trio.testing.wait_all_tasks_blocked()
            grown = _memory() - base
        finally:
            tracemalloc.stop()
            gc.enable()
        # The ten that came replaced the ten that went: the total is what
        # it was, give or take.
        assert grown <= 10 * OVERHEAD, grown / 10
        for stream in first + later:
            await stream.aclose()
        nursery.cancel_scope.cancel()


# -- the decoder's own pages -------------------------------------------------


def _pages(size: int) -> int:
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


def test_a_long_unfinished_line_takes_pages_that_go_back_with_it():
    base = mapped_bytes()
    ends = {
        "completed": lambda d: d.feed(b"\n") == [b"x" * 200_000],
        "stream ended": lambda d: d.eof() == b"x" * 200_000,
        "too long": lambda d: d.feed(b"x" * (1 << 20)) == [] and d.error is not None,
    }
    for name, end in ends.items():
        decoder = LineDecoder(1 << 20)
        for _ in range(200):
            assert decoder.feed(b"x" * 1000) == []
        assert decoder.buffered == 200_000
        # Only what is written takes memory, to the page.
        assert mapped_bytes() - base == _pages(200_000), name
        assert end(decoder), name
        assert mapped_bytes() == base, name
        assert decoder.buffered == 0, name
    # A decoder dropped with its link takes its pages with it.
    decoder = LineDecoder(1 << 20)
    decoder.feed(b"x" * 200_000)
    assert mapped_bytes() - base == _pages(200_000)
    del decoder
    assert mapped_bytes() == base


@given(
    sizes=st.lists(st.integers(0, 3 * SPILL_BYTES), min_size=1, max_size=4),
    cuts=st.lists(st.integers(1, 2 * SPILL_BYTES), min_size=1, max_size=30),
)
@settings(max_examples=examples(50))
def test_lines_come_out_whole_however_long_and_however_cut(sizes, cuts):
    data = b"\n".join(bytes([65 + i % 26]) * n for i, n in enumerate(sizes))
    decoder = LineDecoder(4 * SPILL_BYTES)
    base = mapped_bytes()
    got, at, i = [], 0, 0
    while at < len(data):
        step = cuts[i % len(cuts)]
        got += decoder.feed(data[at : at + step])
        at, i = at + step, i + 1
        assert decoder.error is None
    *complete, last = data.split(b"\n")
    assert got == complete
    assert decoder.eof() == (last or None)
    assert mapped_bytes() == base
