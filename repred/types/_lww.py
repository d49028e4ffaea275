"""Last-write-wins types: a register, heartbeats, and a counter.

Each declares ``last_write_wins=``: of the writes with the same key, the one with the
greatest stamp ``(ts, source)`` wins, a dominated write never reaches the
reducer, and the history keeps one entry per key.
"""

from __future__ import annotations

from typing import Any, Unpack

from .._replica import Replica, ReplicaOptions, Stamp
from ._base import MAX_COUNT, build, owned

__all__ = ["Counter", "Heartbeats", "Register", "counter", "heartbeats", "register"]


def _first(change: Any) -> Any:
    if not isinstance(change, list | tuple) or not change:
        raise ValueError(f"expected a non-empty list, not {change!r}")
    if not isinstance(change[0], str):
        raise ValueError(f"the key is a string, not {change[0]!r}")
    return change[0]


def _value_key(change: Any) -> str:
    if not isinstance(change, list | tuple) or len(change) != 1:
        raise ValueError(f"a register change is [value], not {change!r}")
    return "value"


def overwrite(state: list[Any], change: list[Any]) -> list[Any]:
    """Keep the value written last.

    Converges because the primitive (``last_write_wins=``) only hands the reducer a
    write newer, by stamp ``(ts, source)``, than every write it has seen: a
    total order all replicas agree on.
    """
    state[0] = change[0]
    return change


class Register(Replica):
    """One last-write-wins value (JS ``r-value``): ``set(value)``, ``value``."""

    __slots__ = ()

    def set(self, value: Any) -> Any:
        return self._write([owned(value)], checked=True)

    @property
    def value(self) -> Any:
        return self.state[0]


def register(initial: Any = None, **options: Unpack[ReplicaOptions]) -> Register:
    """A last-write-wins register holding ``initial`` until the first write."""
    return build(
        Register,
        overwrite,
        [initial],
        "register",
        last_write_wins=_value_key,
        **options,
    )


def beat(state: dict[str, float], change: list[Any], stamp: Stamp) -> list[Any]:
    """Record that ``name`` was heard from at the write's own stamp.

    Converges because the time recorded is the stamp (a hybrid logical
    clock close to wall time) and the primitive keeps the write with the
    greatest stamp per name: the newest heartbeat wins everywhere.
    """
    if len(change) != 1:
        raise ValueError(f"a heartbeat change is [name], not {change!r}")
    state[change[0]] = stamp[0]
    return change


class Heartbeats(Replica):
    """The newest time (ms) per name (the talk's "on the wagon")."""

    __slots__ = ()

    def beat(self, name: str) -> Any:
        """Record that ``name`` is alive now."""
        if type(name) is not str:
            raise TypeError(f"names are strings, not {type(name).__name__}")
        return self.update([name])

    def alive(self, within: float) -> list[str]:
        """The names heard from in the last ``within`` seconds.

        >>> h = heartbeats(); _ = h.beat("ann"); h.alive(within=5)
        ['ann']
        """
        now = self._wall()
        horizon = within * 1000
        return sorted(n for n, t in self.state.items() if now - t <= horizon)


def heartbeats(**options: Unpack[ReplicaOptions]) -> Heartbeats:
    """The newest heartbeat per name."""
    return build(
        Heartbeats,
        beat,
        {},
        "heartbeats",
        last_write_wins=_first,
        stamped=True,
        **options,
    )


def totals(state: dict[str, list[int]], change: list[Any]) -> list[Any]:
    """Record one replica's running totals of increments and decrements.

    A change is ``[source, increments, decrements]``, and only ``source``
    writes its own totals, which only grow. Converges because the primitive
    keeps the newest write per source (its largest totals) and the value,
    the sum over sources, does not depend on the order they arrived in.
    """
    if len(change) != 3 or not all(
        type(n) is int and 0 <= n <= MAX_COUNT for n in change[1:]
    ):
        raise ValueError(f"a counter change is [source, inc, dec], not {change!r}")
    state[change[0]] = [change[1], change[2]]
    return change


class Counter(Replica):
    """A counter that converges: ``inc(n=1)``, ``dec(n=1)``, ``value``."""

    __slots__ = ()

    def _add(self, inc: int, dec: int) -> Any:
        if type(inc) is not int or type(dec) is not int or inc < 0 or dec < 0:
            raise ValueError("counts are non-negative integers")
        p, n = self.state.get(self.id, [0, 0])
        if p + inc > MAX_COUNT or n + dec > MAX_COUNT:
            raise ValueError(
                f"a counter's totals stay within {MAX_COUNT} (2**53-1), so that"
                " every peer holds them exactly"
            )
        return self.update([self.id, p + inc, n + dec])

    def inc(self, n: int = 1) -> Any:
        return self._add(n, 0)

    def dec(self, n: int = 1) -> Any:
        return self._add(0, n)

    @property
    def value(self) -> int:
        return sum(p - n for p, n in self.state.values())


def counter(**options: Unpack[ReplicaOptions]) -> Counter:
    """A PN-counter: increments and decrements from any replica."""
    return build(Counter, totals, {}, "counter", last_write_wins=_first, **options)
