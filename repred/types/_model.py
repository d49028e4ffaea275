"""``model()``: a last-write-wins map, wire-compatible with JS scuttlebutt/model."""

from __future__ import annotations

from typing import Any

from .._replica import Replica
from ._base import build, owned

__all__ = ["Model", "model"]


def model_key(change: Any) -> str:
    """A model change is ``[key, value]`` with a string key, as JS sends it."""
    kind = type(change)
    if (kind is list or kind is tuple) and len(change) == 2:
        key = change[0]
        if type(key) is str:
            return key
    raise ValueError(f"a model change is [key, value], not {change!r}")


def lww_set(state: dict[str, Any], change: list[Any]) -> list[Any]:
    """Write ``value`` at ``key``; ``None`` deletes (the key stays, as in JS).

    Converges because the primitive (``last_write_wins=model_key``) hands the reducer
    only the write with the greatest stamp ``(ts, source)`` per key, a total
    order every replica agrees on, and a dominated write never reaches it.
    """
    state[change[0]] = change[1]
    return change


class Model(Replica):
    """A last-write-wins map: ``set(key, value)``, ``get(key)``, ``to_dict()``.

    Its history keeps only the newest write per key, so memory follows the
    number of live keys, not the number of writes.
    """

    __slots__ = ()

    def set(self, key: str, value: Any) -> Any:
        """Set ``key`` (``None`` deletes it); returns the change."""
        if type(key) is not str:
            raise TypeError(f"model keys are strings, not {type(key).__name__}")
        return self.update([key, owned(value, f"the value of {key!r}")])

    def delete(self, key: str) -> Any:
        return self.set(key, None)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.state.get(key)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return self.state.get(key) is not None

    def to_dict(self) -> dict[str, Any]:
        """The live keys and values (deleted keys left out, as JS ``toJSON``)."""
        return {k: v for k, v in self.state.items() if v is not None}


def model(**options: Any) -> Model:
    """A new, empty last-write-wins map replica (type name ``"model"``).

    Takes the options every built-in type takes: ``id``, ``max_drift_ms``,
    ``wall`` and ``store``.
    """
    return build(Model, lww_set, {}, "model", last_write_wins=model_key, **options)
