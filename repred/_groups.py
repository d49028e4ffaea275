"""Exception groups, as repred's callers see them: the one error that
happened.

trio's nurseries wrap every error in an ``ExceptionGroup``; every function
of repred that runs tasks raises the single exception that happened
instead, so that ``except ValueError:`` works as it reads.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["single_errors"]


@asynccontextmanager
async def single_errors() -> AsyncIterator[None]:
    """Turn an exception group with one exception in it into that exception.

    trio's nurseries wrap every error in an ``ExceptionGroup``; callers of
    repred's functions get the single exception that happened instead, so
    that ``except ValueError:`` works as it reads.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        # A cancellation stays in its group, which trio's cancel scopes
        # take as they take the leaf: raised here, the leaf would get the
        # group as its context while the group holds it, a cycle that keeps
        # every frame of the ended task (and what they hold) until a full
        # collection. Every link ends with one.
        if len(leaves) != 1 or isinstance(leaves[0], trio.Cancelled):
            raise
        leaf = leaves[0]
        try:
            raise leaf from leaf.__cause__
        finally:
            del leaf, leaves  # (this frame is in the traceback: no cycle)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
