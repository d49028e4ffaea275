"""Shared test helpers: reducers, replicas and a fake network for sessions."""

from __future__ import annotations

from typing import Any

from hypothesis import settings

from repred import Replica, repred
from repred.protocol import Session


def examples(full: int) -> int:
    """How many cases a property test tries: ``full`` under the "full"
    Hypothesis profile (the slow run), at most the profile's own count in
    the default run (see conftest.py)."""
    if settings.get_current_profile_name() == "full":
        return full
    return min(full, settings().max_examples)


def union(state: set[Any], update: list[Any]) -> list[Any]:
    change = [x for x in update if x not in state]
    state.update(change)
    return change


def heartbeat(state: dict[str, float], update: dict[str, float]) -> dict[str, float]:
    change = {k: v for k, v in update.items() if v > state.get(k, float("-inf"))}
    state.update(change)
    return change


class FakeWall:
    """A wall clock in ms that tests move by hand."""

    def __init__(self, now: float = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gset(id: str, **kw: Any) -> Replica:
    return repred(union, set(), id=id, **kw)


class SessionPair:
    """Two sessions joined by a fake network that the test pumps by hand."""

    def __init__(self, a: Replica, b: Replica, **options: Any) -> None:
        self.a = Session(a, **options)
        self.b = Session(b, **options)
        self.a_to_b: list[bytes] = []
        self.b_to_a: list[bytes] = []

    def pump(self, rounds: int = 100_000) -> None:
        """Exchange bytes until both sides are quiet."""
        for _ in range(rounds):
            ab = self.a.data_to_send()
            ba = self.b.data_to_send()
            if not ab and not ba:
                return
            if ab:
                self.a_to_b.append(ab)
                self.b.receive_data(ab)
            if ba:
                self.b_to_a.append(ba)
                self.a.receive_data(ba)
        raise AssertionError("sessions never went quiet")

    def close(self) -> None:
        self.a.close()
        self.b.close()


def sync(a: Replica, b: Replica, **options: Any) -> None:
    """Sync two replicas completely over a fresh pair of sessions."""
    pair = SessionPair(a, b, **options)
    pair.pump()
    assert pair.a.synced
    assert pair.b.synced
    pair.close()


def lines(data: bytes) -> list[bytes]:
    return [line + b"\n" for line in data.split(b"\n") if line]


def feed_modes(data: bytes) -> dict[str, list[bytes]]:
    """The same bytes whole, a byte at a time, and cut at every line end."""
    return {
        "whole": [data],
        "bytewise": [data[i : i + 1] for i in range(len(data))],
        "lines": lines(data),
    }


class LinePump:
    """Moves one line at a time between two sessions, in a chosen order.

    ``pick(step)`` returns True to move a line from ``a`` to ``b`` (when both
    have one waiting). Used to cut a sync after any line, in either direction.
    """

    def __init__(self, a: Replica, b: Replica, **options: Any) -> None:
        self.pair = SessionPair(a, b, **options)
        self._ab: list[bytes] = []
        self._ba: list[bytes] = []
        self.moved = 0

    def _refill(self) -> None:
        if not self._ab:
            self._ab = lines(self.pair.a.data_to_send())
        if not self._ba:
            self._ba = lines(self.pair.b.data_to_send())

    def run(self, limit: int | None, pick: Any = lambda step: step % 2 == 0) -> bool:
        """Move up to ``limit`` lines; True when the sync finished first."""
        while limit is None or self.moved < limit:
            self._refill()
            if not self._ab and not self._ba:
                return True
            to_b = bool(self._ab) and (not self._ba or pick(self.moved))
            if to_b:
                self.pair.b.receive_data(self._ab.pop(0))
            else:
                self.pair.a.receive_data(self._ba.pop(0))
            self.moved += 1
        return False

    def cut(self) -> None:
        self.pair.close()


def assert_complete(*replicas: Replica) -> None:
    """Per-source completeness: each clock entry covers every entry held anywhere."""
    everything: dict[str, set[float]] = {}
    for r in replicas:
        for e in r.history():
            everything.setdefault(e.source, set()).add(e.ts)
    for r in replicas:
        held: dict[str, set[float]] = {}
        for e in r.history():
            held.setdefault(e.source, set()).add(e.ts)
        covered = r.compacted[1] if r.compacted else {}
        for source, ts in r.clock.items():
            floor = covered.get(source, -1)
            need = {t for t in everything.get(source, ()) if floor < t <= ts}
            assert need <= held.get(source, set()), (r.id, source, need - held[source])


async def wait_until(replica: Replica, predicate: Any) -> None:
    """Wait, without polling, until ``predicate()`` holds for ``replica``."""
    import repred as _repred

    with _repred.subscribe(replica) as changes:
        while not predicate():
            await changes.receive()


class PeerProcess:
    """A ``python -m repred.peer --json`` process, read event by event."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.buf = b""
        self.events: list[dict[str, Any]] = []

    async def send(self, line: str) -> None:
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def until(self, predicate: Any) -> dict[str, Any]:
        """Read events until one satisfies ``predicate``; return it."""
        import json

        for event in self.events:
            if predicate(event):
                return event
        while True:
            while b"\n" not in self.buf:
                data = await self.process.stdout.receive_some(65536)
                assert data, "the peer exited"
                self.buf += data
            line, self.buf = self.buf.split(b"\n", 1)
            event = json.loads(line)
            self.events.append(event)
            if predicate(event):
                return event


async def read_until_closed(stream: Any) -> None:
    """Read a stream until the other side closes it (or breaks it)."""
    import trio

    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
