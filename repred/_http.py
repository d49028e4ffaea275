"""HTTP/1.1 for the WebSocket and web servers: request heads read with h11.

Nothing here parses HTTP by hand: h11 reads the request head (bounded in
size and time), and a WebSocket upgrade is handed to trio-websocket with the
bytes already read replayed in front of the stream.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import h11
import trio

from ._log import limited

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["HEAD_LIMIT", "Replay", "header", "read_request", "respond"]

HEAD_LIMIT = 16 * 1024


class Replay(trio.abc.Stream):
    """A stream whose first bytes were already read: they are read again."""

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        self._stream = stream
        self._head = head

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            await trio.lowlevel.checkpoint()
            return head
        return bytes(await self._stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self._stream.aclose()


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


async def respond(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("cache-control", "no-cache"),
        ("connection", "close"),
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def read_request(
    stream: trio.abc.Stream, seconds: float
) -> tuple[h11.Connection, h11.Request, bytes] | None:
    """A request's head, read with h11 (and the bytes read), or ``None``."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    head = bytearray()
    try:
        with trio.fail_after(seconds):
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    break
                data = await stream.receive_some(4096)
                if not data:
                    return None
                head += data
                conn.receive_data(bytes(data))
    except (trio.TooSlowError, h11.RemoteProtocolError, trio.BrokenResourceError):
        limited(logging.INFO, "web-request", "repred: a bad or slow HTTP request")
        return None
    if not isinstance(event, h11.Request):
        return None
    return conn, event, bytes(head)
