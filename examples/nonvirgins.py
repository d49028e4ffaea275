"""The grow-only set from the talk: the set of non-virgins.

Losing your virginity is idempotent and commutative, so a set that only
grows needs no coordination: every peer ends up with the union. Two peers
here, each with its own replica, replicate over TCP on loopback.

    python examples/nonvirgins.py
"""

from __future__ import annotations

import trio

import repred


def union(state: set[str], update: list[str]) -> list[str]:
    """Add the names not yet in the set; the change is what was new."""
    change = [name for name in update if name not in state]
    state.update(change)
    return change


async def main() -> None:
    alice = repred.repred(union, set(), id="alice")
    bob = repred.repred(union, set(), id="bob")

    # Each peer learns something on its own, while they are apart.
    alice.update(["jim", "sue"])
    bob.update(["sue", "tom"])

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, alice, 0)
        port = listeners[0].socket.getsockname()[1]
        conn = await nursery.start(repred.connect_tcp, bob, "127.0.0.1", port)
        await conn.wait_synced()
        print("after sync:", sorted(alice.state), sorted(bob.state))

        # Live: a change at one peer shows up at the other.
        with repred.subscribe(bob) as changes:
            alice.update(["ann", "jim"])  # "jim" is already known
            change = await changes.receive()
            print(f"bob saw {change.change} from {change.source}")

        assert alice.state == bob.state == {"jim", "sue", "tom", "ann"}
        print("converged:", sorted(bob.state), conn.statistics())
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
