"""Logging that suits a library: bounded, whatever peers do.

Records a peer can cause (a refused line, a dropped connection, a failed
dial) go through :data:`limited`: at most ``burst`` records of one kind per
``window`` seconds, and the next record of that kind after a quiet spell
says how many were left out. The kinds are a fixed set of strings chosen in
the code, never anything a peer sent, so the bookkeeping is bounded too.

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
    from collections.abc import Callable

__all__ = ["RateLimitedLog", "limited", "log"]

log = logging.getLogger("repred")


class RateLimitedLog:
    """At most ``burst`` records of each kind per ``window`` seconds."""

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
        #: kind -> [start of the window, records let through, records left out]
        self._kinds: dict[str, list[Any]] = {}

    def reset(self) -> None:
        """Forget every window (tests start each case afresh)."""
        with self._lock:
            self._kinds.clear()

    def __call__(self, level: int, kind: str, msg: str, *args: Any) -> None:
        if not self._logger.isEnabledFor(level):
            return
        with self._lock:
            now = self._clock()
            state = self._kinds.get(kind)
            left_out = 0
            if state is None or now - state[0] >= self._window:
                left_out = 0 if state is None else state[2]
                state = self._kinds[kind] = [now, 0, 0]
            if state[1] >= self._burst:
                state[2] += 1
                return
            state[1] += 1
        if left_out:
            self._logger.log(
                level,
                "repred: %d more like the next were left out (%s, over %g s)",
                left_out,
                kind,
                self._window,
            )
        self._logger.log(level, msg, *args)


#: The library's limited log (see the module docstring).
limited = RateLimitedLog(log)
