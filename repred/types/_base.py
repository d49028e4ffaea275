"""What the built-in types share: the options every factory accepts."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson

from .._replica import Replica
from .._wire import check_value

R = TypeVar("R", bound=Replica)

__all__ = ["MAX_COUNT", "build", "check_value", "owned", "scalar"]


def build(
    cls: type[R], reducer: Any, initial: Any, type_name: str, **options: Any
) -> R:
    """Make a replica of a built-in type, with the options it was given.

    Every built-in reducer checks a change before it mutates anything.
    """
    return cls(reducer, initial, checks_first=True, type_name=type_name, **options)


_SCALARS = (str, int, float, bool, type(None))

#: The largest total a counter keeps: the largest integer JSON holds exactly.
MAX_COUNT = 2**53 - 1


def owned(value: Any, what: str = "value") -> Any:
    """Check that ``value`` is an exact JSON value; return a private copy.

    The replica keeps the copy, so a caller who changes the object it passed
    afterwards cannot change what this replica holds behind its peers' backs.
    """
    check_value(value, what)
    if type(value) is list or type(value) is dict:
        return orjson.loads(orjson.dumps(value))
    return value


def scalar(item: Any) -> Any:
    """Check that ``item`` is a JSON scalar (so it can be a set member)."""
    if type(item) not in _SCALARS:
        raise TypeError(f"set members are JSON scalars, not {type(item).__name__}")
    check_value(item, "the member")
    return item
