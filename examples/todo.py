"""The talk's todo lists, on a replicated ``doc()``, between two peers.

Rows live in one document; "todo" and "done" are seqs of rows picked by
their ``list`` field. Pushing a row to "done" takes it out of "todo", on
every peer.

    python examples/todo.py
"""

from __future__ import annotations

import trio

import repred
from repred.types import doc


def texts(seq: repred.types.DocSeq) -> list[str]:
    return [row["text"] for row in seq.to_list()]


async def main() -> None:
    mine, yours = doc(id="mine"), doc(id="yours")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, mine, 0)
        port = listeners[0].socket.getsockname()[1]
        conn = await nursery.start(repred.connect_tcp, yours, "127.0.0.1", port)
        await conn.wait_synced()

        todo, done = mine.create_seq("list", "todo"), mine.create_seq("list", "done")
        their_todo = yours.create_seq("list", "todo")
        their_done = yours.create_seq("list", "done")

        with repred.subscribe(yours) as arriving:
            drnk = todo.push({"id": "drnk", "text": "beer"})
            meet = todo.push({"id": "meet", "text": "reject.js"})
            todo.before(meet, drnk)  # reorder: meet first
            while texts(their_todo) != ["reject.js", "beer"]:
                await arriving.receive()
        print("todo on both:", texts(todo), texts(their_todo))

        with repred.subscribe(mine) as arriving:
            their_done.push({"id": meet})  # the other peer finishes a task
            while "meet" in todo:
                await arriving.receive()
        print("after moving 'reject.js' to done:")
        print("  mine:  todo", texts(todo), "done", texts(done))
        print("  yours: todo", texts(their_todo), "done", texts(their_done))
        assert texts(todo) == texts(their_todo) == ["beer"]
        assert texts(done) == texts(their_done) == ["reject.js"]
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
