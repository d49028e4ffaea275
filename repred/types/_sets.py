"""Sets: grow-only, two-phase, and observed-remove."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Unpack

from .._replica import Replica, ReplicaOptions
from .._wire import CHAR_BYTES, SCALAR_BYTES
from ._base import build, scalar

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["GSet", "ORSet", "TwoPhaseSet", "gset", "orset", "two_phase_set"]


def union(state: set[Any], update: list[Any]) -> list[Any]:
    """Add the items not yet in the set; the change is what was new.

    Converges because set union is commutative, associative and idempotent:
    any order and any repetition of adds gives the same set.
    """
    if not isinstance(update, list | tuple):
        raise ValueError(f"a gset update is a list of items, not {update!r}")
    change = [x for x in dict.fromkeys(map(scalar, update)) if x not in state]
    state.update(change)
    return change


def _part(update: Any, part: str) -> list[Any]:
    if type(update) is not dict or not set(update) <= {"add", "remove"}:
        raise ValueError(f"expected {{'add': [...], 'remove': [...]}}, not {update!r}")
    items = update.get(part, [])
    if not isinstance(items, list | tuple):
        raise ValueError(f"{part!r} must be a list, not {items!r}")
    return list(items)


def _tagged(update: Any, part: str) -> list[tuple[Any, str]]:
    pairs = []
    for pair in _part(update, part):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError(f"expected [item, tag], not {pair!r}")
        if type(pair[1]) is not str:
            raise ValueError(f"a tag is a string, not {pair[1]!r}")
        pairs.append((scalar(pair[0]), pair[1]))
    return pairs


class GSet(Replica):
    """A grow-only set: ``add(*items)``, ``in``, iteration, ``len``."""

    __slots__ = ()

    def add(self, *items: Any) -> list[Any] | None:
        # Each item is checked and measured (see CHAR_BYTES): the change,
        # the new ones, need not be checked or encoded again.
        size = 2
        for item in items:
            scalar(item)
            size += (
                3 + CHAR_BYTES * len(item) if type(item) is str else SCALAR_BYTES + 1
            )
        return self._write(list(items), checked=True, size=size)  # type: ignore[no-any-return]

    def __contains__(self, item: object) -> bool:
        return item in self.state

    def __iter__(self) -> Iterator[Any]:
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)


def _gset_snapshot(state: set[Any]) -> list[Any]:
    return sorted(state, key=repr)


def gset(**options: Unpack[ReplicaOptions]) -> GSet:
    """A grow-only set (the talk's set of non-virgins); compacts to its items."""
    return build(GSet, union, set(), "gset", snapshot=_gset_snapshot, **options)


def two_phase(
    state: dict[str, set[Any]], update: dict[str, list[Any]]
) -> dict[str, Any]:
    """Record adds and removes, each a grow-only set; members are adds - removes.

    Converges because both halves are grow-only sets (union commutes and is
    idempotent) and membership is derived from them. A removal is final:
    it is itself an add, to the set of the removed, so it never un-happens
    and a replica joining later receives it as any other entry.
    """
    parts = {p: [scalar(x) for x in _part(update, p)] for p in ("add", "remove")}
    change = {}
    for part, items in parts.items():
        new = [x for x in dict.fromkeys(items) if x not in state[part]]
        state[part].update(new)
        if new:
            change[part] = new
    return change


class TwoPhaseSet(Replica):
    """Add and remove; a removed item never comes back."""

    __slots__ = ()

    def add(self, *items: Any) -> Any:
        return self.update({"add": list(items)})

    def remove(self, *items: Any) -> Any:
        return self.update({"remove": list(items)})

    def members(self) -> set[Any]:
        return self.state["add"] - self.state["remove"]  # type: ignore[no-any-return]

    def __contains__(self, item: object) -> bool:
        return item in self.state["add"] and item not in self.state["remove"]


def _two_phase_snapshot(state: dict[str, set[Any]]) -> dict[str, list[Any]]:
    return {part: sorted(items, key=repr) for part, items in state.items()}


def two_phase_set(**options: Unpack[ReplicaOptions]) -> TwoPhaseSet:
    """A two-phase set: born minus non-virgins (a delete is an update)."""
    return build(
        TwoPhaseSet,
        two_phase,
        {"add": set(), "remove": set()},
        "two_phase_set",
        snapshot=_two_phase_snapshot,
        **options,
    )


def observed_remove(
    state: dict[str, Any], update: dict[str, list[Any]]
) -> dict[str, Any]:
    """Adds carry unique tags; a remove kills only the tags its author saw.

    ``state["live"]`` maps item -> live tags, ``state["dead"]`` holds removed
    (item, tag) pairs. Converges because both are built from grow-only sets
    (a tag, once dead, stays dead) and membership is "has a live tag": a remove
    concurrent with an add cannot have seen the add's new tag, so the add
    wins.
    """
    adds, removes = _tagged(update, "add"), _tagged(update, "remove")
    live, dead = state["live"], state["dead"]
    added, removed = [], []
    for item, tag in adds:
        if (item, tag) not in dead and tag not in live.get(item, ()):
            live.setdefault(item, set()).add(tag)
            added.append([item, tag])
    for item, tag in removes:
        if (item, tag) not in dead:
            dead.add((item, tag))
            tags = live.get(item)
            if tags is not None:
                tags.discard(tag)
                if not tags:
                    del live[item]
            removed.append([item, tag])
    return {k: v for k, v in (("add", added), ("remove", removed)) if v}


class ORSet(Replica):
    """An observed-remove set: a concurrent add wins over a remove."""

    __slots__ = ("_tags",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tags = itertools.count()

    def add(self, *items: Any) -> Any:
        tags = [
            [scalar(x), f"{self.id}.{self._last}.{next(self._tags)}"] for x in items
        ]
        return self.update({"add": tags})

    def remove(self, *items: Any) -> Any:
        live = self.state["live"]
        seen = [[x, t] for x in items for t in sorted(live.get(x, ()))]
        return self.update({"remove": seen})

    def members(self) -> set[Any]:
        return {item for item, tags in self.state["live"].items() if tags}

    def __contains__(self, item: object) -> bool:
        return bool(self.state["live"].get(item))


def _orset_snapshot(state: dict[str, Any]) -> dict[str, list[list[Any]]]:
    live = [[item, tag] for item, tags in state["live"].items() for tag in tags]
    dead = [list(pair) for pair in state["dead"]]
    return {"add": sorted(live, key=repr), "remove": sorted(dead, key=repr)}


def orset(**options: Unpack[ReplicaOptions]) -> ORSet:
    """An observed-remove set (add wins over a concurrent remove)."""
    return build(
        ORSet,
        observed_remove,
        {"live": {}, "dead": set()},
        "orset",
        snapshot=_orset_snapshot,
        **options,
    )
