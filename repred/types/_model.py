"""``model()``: a last-write-wins map, wire-compatible with JS scuttlebutt/model."""

from __future__ import annotations

from typing import Any

from .._replica import DEFAULT_MAX_DRIFT_MS, Replica, Stamp, _wall_ms

__all__ = ["Model", "model"]


def lww_map(state: dict[str, tuple[Any, Stamp]], change: Any, stamp: Stamp) -> Any:
    """Set ``key`` to ``value`` unless the key holds a write with a later stamp.

    Converges because the winner of each key is the write with the greatest
    stamp ``(ts, source)``, a total order every replica agrees on; applying a
    write again or in another order picks the same winner. The change is
    ``[key, value]``, as JS scuttlebutt/model sends it; ``None`` deletes.
    """
    if type(change) is not list or len(change) != 2 or type(change[0]) is not str:
        raise ValueError(f"a model change is [key, value], not {change!r}")
    old = state.get(change[0])
    if old is not None and old[1] >= stamp:
        return None
    state[change[0]] = (change[1], stamp)
    return change


def _key(change: list[Any]) -> str:
    return change[0]  # type: ignore[no-any-return]


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
        return self.update([key, value])

    def delete(self, key: str) -> Any:
        return self.set(key, None)

    def get(self, key: str, default: Any = None) -> Any:
        entry = self.state.get(key)
        if entry is None or entry[0] is None:
            return default
        return entry[0]

    def __contains__(self, key: object) -> bool:
        entry = self.state.get(key)
        return entry is not None and entry[0] is not None

    def keys(self) -> list[str]:
        return [k for k, (v, _) in self.state.items() if v is not None]

    def to_dict(self) -> dict[str, Any]:
        """The live keys and values (deleted keys left out, as JS ``toJSON``)."""
        return {k: v for k, (v, _) in self.state.items() if v is not None}


def model(
    *,
    id: str | None = None,
    max_drift_ms: float = DEFAULT_MAX_DRIFT_MS,
    wall: Any = _wall_ms,
) -> Model:
    """A new, empty last-write-wins map replica (type name ``"model"``)."""
    return Model(
        lww_map,
        {},
        id=id,
        stamped=True,
        key=_key,
        type_name="model",
        max_drift_ms=max_drift_ms,
        wall=wall,
    )
