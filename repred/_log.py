"""Logging that suits a library: bounded, whatever peers do.

Records a peer can cause (a refused line, a dropped connection, a failed
dial, a replica a peer holds with another type) go through :data:`limited`,
the one bookkeeping of them all: at most ``burst`` records of one kind per
``window`` seconds, and the next record of that kind after a quiet spell
says how many were left out. The kinds are a fixed set of strings chosen in
the code, never anything a peer sent, so the bookkeeping is bounded too; a
record that is worth saying once per thing (``once=``) remembers at most
``MAX_ONCE`` things. Records go to the ``"repred"`` logger, those of the
gossip peer to ``"repred.peer"`` (``logger=peer_log``).

Levels: WARNING for what needs a person (refused data, a store that cannot
write, a type mismatch on a shared name); INFO for connection churn; DEBUG
for retries. Nothing is configured: an application that has not set up
logging sees only warnings, through Python's last-resort handler.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

__all__ = ["MAX_ONCE", "RateLimitedLog", "limited", "log", "peer_log"]

log = logging.getLogger("repred")
#: The gossip peer's records (a child of ``"repred"``).
peer_log = logging.getLogger("repred.peer")

#: The things a record said ``once=`` remembers; past it, such records are
#: no longer said at all (a peer cannot grow this memory).
MAX_ONCE = 10_000


class RateLimitedLog:
    """At most ``burst`` records of each kind per ``window`` seconds.

    ``logger`` is where records go unless a call names another.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        #: (logger, kind) -> [start of the window, records let through,
        #: records left out]
        self._kinds: dict[tuple[str, str], list[Any]] = {}
        #: What records said ``once=`` were said for.
        self._said: set[Hashable] = set()

    def reset(self) -> None:
        """Forget every window (tests start each case afresh)."""
        with self._lock:
            self._kinds.clear()
            self._said.clear()

    def __call__(
        self,
        level: int,
        kind: str,
        msg: str,
        *args: Any,
        logger: logging.Logger | None = None,
        once: Hashable = None,
    ) -> None:
        """Log ``msg % args`` at ``level`` on ``logger``, unless ``kind`` has
        had its ``burst`` on that logger in this window, or (with ``once``)
        the record was said for that thing already."""
        logger = logger or self._logger
        if not logger.isEnabledFor(level):
            return
        with self._lock:
            if once is not None and (once in self._said or len(self._said) >= MAX_ONCE):
                return
            now = self._clock()
            key = (logger.name, kind)
            state = self._kinds.get(key)
            left_out = 0
            if state is None or now - state[0] >= self._window:
                left_out = 0 if state is None else state[2]
                state = self._kinds[key] = [now, 0, 0]
            if state[1] >= self._burst:
                state[2] += 1
                return
            state[1] += 1
            if once is not None:
                self._said.add(once)
        if left_out:
            logger.log(
                level,
                "repred: %d more like the next were left out (%s, over %g s)",
                left_out,
                kind,
                self._window,
            )
        logger.log(level, msg, *args)


#: The library's limited log (see the module docstring).
limited = RateLimitedLog(log)
