"""A chat room on ``events()``: a late joiner reads back what it missed.

Alice and Bob chat over TCP; Carol connects afterwards and receives every
message once, in the order the room agrees on.

    python examples/chat.py
"""

from __future__ import annotations

import trio

import repred
from repred.types import events


def member(name: str) -> repred.types.Events:
    room = events(id=name, max_events=1000)
    room.on("say", lambda msg: print(f"  [{name} sees] {msg['from']}: {msg['text']}"))
    return room


async def main() -> None:
    alice, bob = member("alice"), member("bob")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, alice, 0)
        port = listeners[0].socket.getsockname()[1]
        conn = await nursery.start(repred.connect_tcp, bob, "127.0.0.1", port)
        await conn.wait_synced()

        with repred.subscribe(bob) as at_bob:
            alice.emit("say", {"from": "alice", "text": "hello"})
            await at_bob.receive()
        with repred.subscribe(alice) as at_alice:
            bob.emit("say", {"from": "bob", "text": "hi alice"})
            await at_alice.receive()

        print("carol joins late:")
        carol = member("carol")
        await repred.connect_tcp(carol, "127.0.0.1", port, live=False, close_timeout=0)
        history = [(e, d["text"]) for e, d in carol.recent()]
        assert history == [("say", "hello"), ("say", "hi alice")], history
        print("carol read back:", [text for _, text in history])
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
