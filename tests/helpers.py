"""Shared test helpers: reducers, replicas and a fake network for sessions."""

from __future__ import annotations

from typing import Any

from repred import Replica, SyncSession, repred


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
        self.a = SyncSession(a, **options)
        self.b = SyncSession(b, **options)
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


def sync(a: Replica, b: Replica) -> None:
    """Sync two replicas completely over a fresh pair of sessions."""
    pair = SessionPair(a, b)
    pair.pump()
    assert pair.a.synced and pair.b.synced
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
