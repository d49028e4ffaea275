"""Subscriptions: the changes a replica applies, as an async iterator.

A subscriber reads from a bounded trio memory channel: one that falls too
far behind gets :class:`repred.SubscriptionOverflow` (after what was
buffered), never unbounded memory growth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._errors import SubscriptionOverflow
from ._replica import is_empty

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from ._replica import Replica

__all__ = ["DEFAULT_SUBSCRIPTION_BUFFER", "Change", "Subscription", "subscribe"]


@attrs.frozen
class Change:
    """A change a replica applied: its effect here, and its stamp."""

    change: Any
    ts: float
    source: str


#: Changes a subscriber may fall behind before :class:`SubscriptionOverflow`.
DEFAULT_SUBSCRIPTION_BUFFER = 100_000


@final
class Subscription:
    """The changes a replica applies, as an async iterator.

    Use as ``with repred.subscribe(replica) as changes: async for c in
    changes: ...``. Only changes with a local effect are delivered. It is a
    trio memory channel of ``max_buffer`` changes: a subscriber that falls
    further behind gets :class:`SubscriptionOverflow` (after the changes
    already buffered) rather than unbounded memory growth. Leaving the
    ``with`` block ends the iteration after what was buffered.
    """

    def __init__(
        self, replica: Replica, max_buffer: int, key: Hashable | None = None
    ) -> None:
        self._replica = replica
        self._key = key
        self._max = max_buffer
        self._send, self._receive = trio.open_memory_channel[Change](max_buffer)
        self._overflow = False
        self._remove: Callable[[], None] | None = None

    def __enter__(self) -> Subscription:
        self._remove = self._replica.add_listener(self._listener)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
            self._send.close()

    def _listener(self, effect: Any, ts: float, source: str, origin: object) -> None:
        if is_empty(effect) or self._overflow:
            return
        if self._key is not None and not self._matches(effect):
            return
        try:
            self._send.send_nowait(Change(effect, ts, source))
        except trio.WouldBlock:
            self._overflow = True
            self._send.close()  # the receiver drains, then hears of it

    def _matches(self, effect: Any) -> bool:
        """Whether a change is to the watched key (or the watched row)."""
        key_of = self._replica.last_write_wins
        assert key_of is not None
        try:
            key = key_of(effect)
        except ValueError:  # pragma: no cover  (applied changes have keys)
            return False
        return key == self._key or (type(key) is tuple and key[0] == self._key)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Change:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._overflow:
                raise SubscriptionOverflow(
                    f"more than {self._max} changes behind"
                ) from None
            raise StopAsyncIteration from None

    async def receive(self) -> Change:
        """The next change (waits for one)."""
        return await self.__anext__()


def subscribe(
    replica: Replica,
    *,
    key: Hashable | None = None,
    max_buffer: int = DEFAULT_SUBSCRIPTION_BUFFER,
) -> Subscription:
    """Subscribe to the changes ``replica`` applies, local and remote.

    With ``key``, only the changes to that key of a last-write-wins type:
    a key of ``model()`` (``subscribe(m, key="colour")``), or a row of
    ``doc()`` (``subscribe(d, key="row-id")``: every field of that row), as
    ``on('change:key')`` does in JS ``scuttlebutt/model``.

    Raises:
        ValueError: ``max_buffer`` is not positive, or ``key`` is given for
            a type that has no keys.
    """
    if type(max_buffer) is not int or max_buffer < 1:
        raise ValueError("max_buffer must be a positive int")
    if key is not None and replica.last_write_wins is None:
        raise ValueError(f"a {replica.type_name!r} replica has no keys")
    return Subscription(replica, max_buffer, key)
