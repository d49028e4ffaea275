"""What the built-in types share: the options every factory accepts."""

from __future__ import annotations

from typing import Any, TypeVar

from .._replica import DEFAULT_MAX_DRIFT_MS, Replica, wall_ms

R = TypeVar("R", bound=Replica)

__all__ = ["build", "scalar"]


def build(
    cls: type[R],
    reducer: Any,
    initial: Any,
    type_name: str,
    *,
    id: str | None = None,
    max_drift_ms: float = DEFAULT_MAX_DRIFT_MS,
    wall: Any = wall_ms,
    store: Any = None,
    **options: Any,
) -> R:
    """Make a replica of a built-in type, with the common options."""
    return cls(
        reducer,
        initial,
        id=id,
        type_name=type_name,
        max_drift_ms=max_drift_ms,
        wall=wall,
        store=store,
        **options,
    )


_SCALARS = (str, int, float, bool, type(None))


def scalar(item: Any) -> Any:
    """Check that ``item`` is a JSON scalar (so it can be a set member)."""
    if not isinstance(item, _SCALARS):
        raise TypeError(f"set members are JSON scalars, not {type(item).__name__}")
    return item
