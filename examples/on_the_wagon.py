"""Heartbeats from the talk ("on the wagon"): the newest time per name.

Each peer records when it last heard from someone; merging keeps the newest
time per name, which commutes and is idempotent. Two peers replicate over
TCP; each beats its own name, and both see who is alive.

    python examples/on_the_wagon.py
"""

from __future__ import annotations

import time

import trio

import repred


def newest(state: dict[str, float], update: dict[str, float]) -> dict[str, float]:
    """Keep the newest time per name; the change is the names that moved."""
    change = {n: t for n, t in update.items() if t > state.get(n, float("-inf"))}
    state.update(change)
    return change


def alive(state: dict[str, float], within_ms: float) -> list[str]:
    now = time.time() * 1000
    return sorted(name for name, t in state.items() if now - t <= within_ms)


async def beat(replica: repred.Replica, name: str, times: int) -> None:
    for _ in range(times):
        replica.update({name: time.time() * 1000})
        await trio.sleep(0.05)


async def _next_then_cancel(
    changes: repred.Subscription, nursery: trio.Nursery
) -> None:
    await changes.receive()
    nursery.cancel_scope.cancel()


async def main() -> None:
    ann = repred.repred(newest, {}, id="ann")
    ben = repred.repred(newest, {}, id="ben")
    ann.update({"carl": time.time() * 1000 - 60_000})  # last heard a minute ago

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, ann, 0)
        port = listeners[0].socket.getsockname()[1]
        conn = await nursery.start(repred.connect_tcp, ben, "127.0.0.1", port)
        await conn.wait_synced()
        async with trio.open_nursery() as beats:
            beats.start_soon(beat, ann, "ann", 5)
            beats.start_soon(beat, ben, "ben", 5)
        # The last beats may still be in flight: wait for the two to agree.
        with repred.subscribe(ann) as at_ann, repred.subscribe(ben) as at_ben:
            while ann.state != ben.state:
                async with trio.open_nursery() as either:
                    for changes in (at_ann, at_ben):
                        either.start_soon(_next_then_cancel, changes, either)
        print("alive within 10 s (ann's view):", alive(ann.state, 10_000))
        print("alive within 10 s (ben's view):", alive(ben.state, 10_000))
        print("everyone ever seen:", sorted(ben.state))
        assert alive(ann.state, 10_000) == alive(ben.state, 10_000) == ["ann", "ben"]
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
