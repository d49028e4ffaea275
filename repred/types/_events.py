"""``events()``: a reliable event emitter, as JS scuttlebutt/events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Unpack

from .._replica import Replica, ReplicaOptions, Stamp, is_empty
from ._base import build, owned

__all__ = ["Events", "events"]

Handler = Callable[[Any], None]


def occurred(state: dict[Stamp, list[Any]], change: list[Any], stamp: Stamp) -> Any:
    """Remember an event under its own stamp.

    Converges because each event is identified by its stamp, unique per
    emission: the state is a grow-only map from stamp to event, so order and
    repetition do not matter, and two emissions with the same payload stay
    two events.
    """
    if len(change) != 2 or type(change[0]) is not str:
        raise ValueError(f"an event is [name, data], not {change!r}")
    if stamp in state:
        return None
    state[stamp] = change
    return change


class Events(Replica):
    """Emit named events that every replica receives exactly once.

    A replica that connects later receives the events it missed (within the
    configured history bounds), each exactly once; handlers registered with
    :meth:`on` run for local and remote events alike.
    """

    __slots__ = ("_handlers", "_max_age_ms", "_max_events")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._max_events: int | None = kwargs.pop("max_events")
        self._max_age_ms: float | None = kwargs.pop("max_age_ms")
        super().__init__(*args, **kwargs)
        self._handlers: dict[str, list[Handler]] = {}
        self.add_listener(self._dispatch)

    def emit(self, event: str, data: Any = None) -> Any:
        if type(event) is not str:
            raise TypeError("event names are strings")
        return self.update([event, owned(data, "the event's data")])

    def on(self, event: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(data)`` for every ``event``; returns an unsubscriber."""
        handlers = self._handlers.setdefault(event, [])
        handlers.append(handler)
        return lambda: handlers.remove(handler) if handler in handlers else None

    def recent(self) -> list[tuple[str, Any]]:
        """The retained events, oldest first."""
        return [(e[0], e[1]) for _, e in sorted(self.state.items())]

    def horizon(self) -> float:
        """Events older than what this replica keeps by its bounds are not
        compared with peers (they may have been dropped, here or there)."""
        horizon = super().horizon()
        if self._max_age_ms is not None:
            horizon = max(horizon, self._wall() - self._max_age_ms)
        if self._max_events is not None and len(self.state) >= self._max_events:
            horizon = max(horizon, min(self.state)[0])
        return horizon

    def _dispatch(self, effect: Any, ts: float, source: str, origin: object) -> None:
        if not is_empty(effect):
            for handler in tuple(self._handlers.get(effect[0], ())):
                handler(effect[1])
        self._bound()

    def _bound(self) -> None:
        state = self.state
        cutoff = None
        if self._max_age_ms is not None:
            cutoff = (self._wall() - self._max_age_ms, "")
        if self._max_events is not None and len(state) > self._max_events * 1.25:
            newest_dropped = sorted(state)[len(state) - self._max_events - 1]
            cutoff = max(cutoff, newest_dropped) if cutoff else newest_dropped
        if cutoff is not None:
            for stamp in [s for s in state if s <= cutoff]:
                del state[stamp]
            self._forget(lambda ts, source: (ts, source) <= cutoff)


def events(
    *,
    max_events: int | None = None,
    max_age_ms: float | None = None,
    **options: Unpack[ReplicaOptions],
) -> Events:
    """A reliable event emitter; history bounded by count and/or age if given."""
    return build(
        Events,
        occurred,
        {},
        "events",
        stamped=True,
        max_events=max_events,
        max_age_ms=max_age_ms,
        **options,
    )
