"""``model()``: a last-write-wins map, wire-compatible with JS scuttlebutt/model."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Unpack

from .._replica import Replica, ReplicaOptions
from .._wire import CHAR_BYTES, SCALAR_BYTES, check_value, plain_scalar
from ._base import build, owned

__all__ = ["Model", "model"]


def model_key(change: Any) -> str:
    """A model change is ``[key, value]`` with a string key, as JS sends it."""
    kind = type(change)
    if (kind is list or kind is tuple) and len(change) == 2:
        key = change[0]
        if type(key) is str:
            return key
    shown = list(change) if kind is tuple else change  # as it came: JSON
    raise ValueError(f"a model change is [key, value], not {shown!r}")


def lww_set(state: dict[str, Any], change: list[Any]) -> list[Any]:
    """Write ``value`` at ``key``; ``None`` deletes (the key stays, as in JS).

    Converges because the primitive (``last_write_wins=model_key``) hands the reducer
    only the write with the greatest stamp ``(ts, source)`` per key, a total
    order every replica agrees on, and a dominated write never reaches it.
    """
    state[change[0]] = change[1]
    return change


def model_pairs(changes: list[Any]) -> dict[str, Any] | None:
    """``{key: value}`` of ``changes`` if every one is a pair ``[key,
    value]`` with a string key, all tuples or all lists (as a link decodes
    them), checked a column at a time; ``None`` otherwise (each then goes
    through :func:`model_key`). A key written twice is there once."""
    kinds = set(map(type, changes))
    if kinds != {tuple} and kinds != {list}:
        return None
    try:
        pairs = dict(changes)
    except (TypeError, ValueError):  # not all pairs, or an unhashable key
        return None
    return pairs if set(map(type, pairs)) <= {str} else None


def lww_set_all(state: dict[str, Any], pairs: dict[str, Any]) -> None:
    """:func:`lww_set` of each of ``pairs`` (from :func:`model_pairs`)."""
    state.update(pairs)


class Model(Replica, MutableMapping[str, Any]):
    """A last-write-wins map, and a ``collections.abc.MutableMapping``.

    >>> m = model()
    >>> m["colour"] = "blue"
    >>> m["colour"], len(m), list(m), "colour" in m
    ('blue', 1, ['colour'], True)
    >>> del m["colour"]
    >>> m.get("colour", "none")
    'none'

    Every assignment or deletion is one replicated write; a deleted key
    reads as missing, as in JS ``scuttlebutt/model``. Its history keeps
    only the newest write per key, so memory follows the number of live
    keys, not the number of writes. Mappings compare by content
    (``m == {"colour": "blue"}``) and, like ``dict``, are not hashable.
    """

    __slots__ = ()
    _reads_tuples = True  # model_key and lww_set only read a change
    _bulk = (model_pairs, lww_set_all)

    def set(self, key: str, value: Any) -> Any:
        """Write ``value`` at ``key`` (``None`` deletes it); return the change,
        or ``None`` if it changed nothing.

        >>> m = model()
        >>> m.set("n", 3)
        ['n', 3]
        """
        if type(key) is not str:
            raise TypeError(f"model keys are strings, not {type(key).__name__}")
        if not key.isascii():
            check_value(key, "the key")
        if plain_scalar(value):
            # At least the encoded size of ["key",value] (see CHAR_BYTES):
            # the brackets, comma and quotes, and each part.
            size = 7 + CHAR_BYTES * len(key)
            size += CHAR_BYTES * len(value) if type(value) is str else SCALAR_BYTES
        else:
            value = owned(value, f"the value of {key!r}")
            size = 0  # measured by encoding
        # Key and value are checked: the change need not be checked again.
        return self._write([key, value], checked=True, key=key, size=size)

    def delete(self, key: str) -> Any:
        """Delete ``key`` (a write of ``None``); return the change.

        >>> m = model(); _ = m.set("n", 3)
        >>> m.delete("n")
        ['n', None]
        >>> "n" in m
        False
        """
        return self.set(key, None)

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` if it is missing or deleted.

        >>> model().get("nothing", 0)
        0
        """
        value = self.state.get(key)
        return default if value is None else value

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Write several keys, exactly as ``dict.update`` does (one write
        per key): ``m.update({"a": 1}, b=2)``, or pairs.

        (A model is a mapping, so its ``update`` is the mapping's. The
        replica's own write of one change is :meth:`set`, or
        ``repred.Replica.update(m, [key, value])``.)

        >>> m = model()
        >>> m.update({"a": 1}, b=2)
        >>> m.update([("c", 3)])
        >>> m.to_dict()
        {'a': 1, 'b': 2, 'c': 3}
        """
        MutableMapping.update(self, *args, **kwargs)

    def __getitem__(self, key: str) -> Any:
        value = self.state.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("None deletes a key: use del m[key] (or m.delete(key))")
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.set(key, None)

    def __contains__(self, key: object) -> bool:
        return self.state.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        """The live keys (a snapshot: writes while iterating are fine)."""
        return iter([k for k, v in self.state.items() if v is not None])

    def __len__(self) -> int:
        """How many keys are live (counted: linear in the keys ever written)."""
        return sum(1 for v in self.state.values() if v is not None)

    def to_dict(self) -> dict[str, Any]:
        """The live keys and values (deleted keys left out, as JS ``toJSON``).

        >>> m = model(); _ = m.set("a", 1); _ = m.set("b", None)
        >>> m.to_dict()
        {'a': 1}
        """
        return {k: v for k, v in self.state.items() if v is not None}


def model(**options: Unpack[ReplicaOptions]) -> Model:
    """A new, empty last-write-wins map replica (type name ``"model"``).

    Takes the options every built-in type takes: ``id``, ``max_drift_ms``,
    ``wall`` and ``store``.
    """
    return build(Model, lww_set, {}, "model", last_write_wins=model_key, **options)
