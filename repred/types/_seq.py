"""``seq()``: an ordered list where concurrent inserts land in one order."""

from __future__ import annotations

import itertools
from typing import Any, Unpack

from .._replica import Replica, ReplicaOptions
from ._base import build, owned
from ._position import slot, valid

__all__ = ["Seq", "seq"]


def _item_key(change: Any) -> str:
    if not isinstance(change, list | tuple) or len(change) != 3:
        raise ValueError(f"a seq change is [id, position, value], not {change!r}")
    if type(change[0]) is not str or not (change[1] is None or valid(change[1])):
        raise ValueError(f"bad seq id or position in {change!r}")
    return change[0]


def place(state: dict[str, tuple[str, Any]], change: list[Any]) -> list[Any]:
    """Put item ``id`` at ``position`` (``None``: remove it).

    Converges because each item's place is a last-write-wins register (the
    primitive keeps the write with the greatest stamp per id) and the list
    is the live items sorted by (position, id): the same set of winning
    writes gives the same list everywhere. Concurrent inserts at one spot
    get different random position tails, and ids break what ties remain.
    """
    item, position, value = change
    if position is None:
        state.pop(item, None)
    else:
        state[item] = (position, value)
    return change


class Seq(Replica):
    """An ordered list: ``push``, ``unshift``, ``insert``, ``move``, ``remove``.

    Items are addressed by the id each insert returns.
    """

    __slots__ = ("_ids",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ids = itertools.count()

    def _order(self) -> list[tuple[str, str]]:
        return sorted((pos, item) for item, (pos, _) in self.state.items())

    def insert(
        self, value: Any, *, before: str | None = None, after: str | None = None
    ) -> str:
        """Insert ``value`` before or after an item (``push`` appends).

        Raises:
            ValueError: neither ``before`` nor ``after`` given, or both, or
                an unknown item.
        """
        if (before is None) == (after is None):
            raise ValueError("give before= or after= (push() appends)")
        return self._place(value, before, after)

    def _place(self, value: Any, before: str | None, after: str | None) -> str:
        value = owned(value)
        item = f"{self.id}.{self._last}.{next(self._ids)}"
        self.update([item, slot(self._order(), before=before, after=after), value])
        return item

    def push(self, value: Any) -> str:
        """Append ``value``; return its item id."""
        return self._place(value, None, None)

    def unshift(self, value: Any) -> str:
        """Put ``value`` first; return its item id."""
        order = self._order()
        return self._place(value, order[0][1] if order else None, None)

    def move(
        self, item: str, *, before: str | None = None, after: str | None = None
    ) -> None:
        """Move an item before or after another (default: to the end)."""
        value = self.state[item][1]
        if item in (before, after):
            return
        position = slot(self._order(), before=before, after=after, moving=item)
        self.update([item, position, value])

    def remove(self, item: str) -> None:
        if item in self.state:
            self.update([item, None, None])

    def get(self, item: str) -> Any:
        return self.state[item][1]

    def ids(self) -> list[str]:
        return [item for _, item in self._order()]

    def to_list(self) -> list[Any]:
        return [self.state[item][1] for _, item in self._order()]

    def __len__(self) -> int:
        return len(self.state)


def seq(**options: Unpack[ReplicaOptions]) -> Seq:
    """An ordered list with deterministic order for concurrent inserts."""
    return build(Seq, place, {}, "seq", last_write_wins=_item_key, **options)
