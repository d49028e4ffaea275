"""Tools for testing code that uses repred, and for simulating networks."""

from __future__ import annotations

import errno
import itertools
from typing import TYPE_CHECKING, final

import trio
import trio.testing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["MemoryNetwork"]


@final
class MemoryNetwork:
    """An in-memory network for peers: pass it as ``open_peer(transport=...)``.

    Every peer on the same ``MemoryNetwork`` can reach the others by
    address; links are in-memory streams, so hundreds of peers run in one
    process, and under ``autojump_clock`` their timers take no real time.
    :meth:`cut` and :meth:`heal` partition the network.

    Args:
        latency: seconds each chunk of bytes takes to cross a link.
    """

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self._listeners: dict[
            str, tuple[Callable[..., Awaitable[None]], trio.Nursery]
        ] = {}
        self._ports = itertools.count(1)
        self._blocked: set[str] = set()
        self.connects = 0

    async def listen(
        self,
        host: str,
        port: int,
        handler: Callable[[trio.abc.Stream], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> str:
        address = f"{host}:{port or next(self._ports)}"
        if address in self._listeners:
            raise OSError(errno.EADDRINUSE, f"{address} is in use")
        self._listeners[address] = (handler, nursery)
        nursery.start_soon(self._hold, address)
        return address

    async def _hold(self, address: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._listeners.pop(address, None)

    async def connect(self, address: str, *, source: str) -> trio.abc.Stream:
        """An in-memory stream to ``address``, dialled from ``source``."""
        await trio.lowlevel.checkpoint()
        entry = self._listeners.get(address)
        if entry is None or self._blocked & {address, source}:
            raise OSError(errno.ECONNREFUSED, f"nothing answers at {address}")
        self.connects += 1
        handler, nursery = entry
        if self.latency:
            out_send, out_recv = self._one_way(nursery)
            in_send, in_recv = self._one_way(nursery)
            ours: trio.abc.Stream = trio.StapledStream(out_send, in_recv)
            theirs: trio.abc.Stream = trio.StapledStream(in_send, out_recv)
        else:
            ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(handler, theirs)
        return ours

    def _one_way(
        self, nursery: trio.Nursery
    ) -> tuple[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]:
        send = trio.testing.MemorySendStream()
        receive = trio.testing.MemoryReceiveStream()

        async def carry() -> None:
            try:
                while data := await send.get_data():
                    await trio.sleep(self.latency)
                    receive.put_data(data)
                receive.put_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        nursery.start_soon(carry)
        return send, receive

    def cut(self, address: str) -> None:
        """Cut ``address`` off: it can neither dial nor be dialled.

        Links already open stay open; close them to complete the partition.
        """
        self._blocked.add(address)

    def heal(self) -> None:
        """Make every address reachable again."""
        self._blocked.clear()
