"""The talk's git-like idea as a replicated type: commits that merge themselves.

A commit is ``{"parents": [...], "doc": text}``, addressed by the SHA-256 of
its canonical JSON, so a commit can never be altered and every peer names it
the same. The repository is a grow-only set of commits (a reducer of a few
lines). When two peers commit at once there are two heads; every peer merges
them the same way, with a three-way merge against their common ancestor
(``merge3``), and the merge commit it makes is byte-for-byte the same
everywhere, so it has the same hash and the peers converge on one head.

    python examples/snob.py
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import merge3
import trio

import repred

Commit = dict[str, Any]


def address(commit: Commit) -> str:
    canonical = json.dumps(commit, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def add_commits(state: dict[str, Commit], update: list[Commit]) -> list[Commit]:
    """A grow-only set of commits, keyed by their hash (checked).

    Converges for the reason any grow-only set does: union commutes and is
    idempotent. A commit whose parents are unknown yet is kept all the same;
    it joins the graph when they arrive.
    """
    new = []
    for commit in update:
        if set(commit) != {"parents", "doc"} or not isinstance(commit["doc"], str):
            raise ValueError("a commit is {'parents': [...], 'doc': text}")
        digest = address(commit)
        if digest not in state:
            state[digest] = commit
            new.append(commit)
    return new


class Repo:
    def __init__(self, name: str) -> None:
        self.name = name
        self.replica = repred.repred(add_commits, {}, id=name, type_name="snob")

    @property
    def commits(self) -> dict[str, Commit]:
        return self.replica.state  # type: ignore[no-any-return]

    def heads(self) -> list[str]:
        parents = {p for c in self.commits.values() for p in c["parents"]}
        return sorted(h for h in self.commits if h not in parents)

    def commit(self, doc: str, parents: list[str]) -> str:
        commit = {"parents": sorted(parents), "doc": doc}
        self.replica.update([commit])
        return address(commit)

    def ancestors(self, head: str) -> dict[str, int]:
        """Every ancestor of ``head`` (itself included) with its depth."""
        depth: dict[str, int] = {}
        todo = [(head, 0)]
        while todo:
            h, d = todo.pop()
            if h in self.commits and depth.get(h, -1) < d:
                depth[h] = d
                todo.extend((p, d + 1) for p in self.commits[h]["parents"])
        return depth

    def base(self, a: str, b: str) -> str:
        """The nearest common ancestor, chosen the same way on every peer."""
        da, db = self.ancestors(a), self.ancestors(b)
        common = set(da) & set(db)
        return min(common, key=lambda h: (da[h] + db[h], h))

    def merge(self) -> str:
        """Merge all heads, deterministically; returns the single head."""
        heads = self.heads()
        while len(heads) > 1:
            a, b = heads[0], heads[1]
            text = merge_text(
                self.commits[self.base(a, b)]["doc"],
                self.commits[a]["doc"],
                self.commits[b]["doc"],
            )
            self.commit(text, [a, b])
            heads = self.heads()
        return heads[0]


def merge_text(base: str, mine: str, yours: str) -> str:
    """Three-way merge; a conflict keeps both sides, mine first (by hash)."""
    m = merge3.Merge3(
        base.splitlines(True), mine.splitlines(True), yours.splitlines(True)
    )
    out: list[str] = []
    for region in m.merge_regions():
        kind = region[0]
        if kind == "unchanged":
            out.extend(m.base[region[1] : region[2]])
        elif kind in ("a", "same"):
            out.extend(m.a[region[1] : region[2]])
        elif kind == "b":
            out.extend(m.b[region[1] : region[2]])
        else:  # conflict: (kind, z1, z2, a1, a2, b1, b2)
            out.extend(m.a[region[3] : region[4]])
            out.extend(m.b[region[5] : region[6]])
    return "".join(out)


async def sync(a: Repo, b: Repo, port: int) -> None:
    await repred.connect_tcp(b.replica, "127.0.0.1", port, live=False, close_timeout=0)


async def main() -> None:
    alice, bob = Repo("alice"), Repo("bob")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, alice.replica, 0)
        port = listeners[0].socket.getsockname()[1]

        root = alice.commit("title\nfirst line\nsecond line\nthird line\nend\n", [])
        await sync(alice, bob, port)

        # Concurrent edits, apart: C and F of the talk.
        alice.commit("title\nFIRST LINE\nsecond line\nthird line\nend\n", [root])
        bob.commit("title\nfirst line\nsecond line\nthird line (bob)\nend\n", [root])
        await sync(alice, bob, port)
        print("heads after sync:", [h[:8] for h in alice.heads()])

        # Each peer merges on its own, and makes the same merge commit.
        head_a, head_b = alice.merge(), bob.merge()
        await sync(alice, bob, port)
        assert head_a == head_b, (head_a, head_b)
        assert alice.heads() == bob.heads() == [head_a]
        print("merged head on both:", head_a[:8])
        print(alice.commits[head_a]["doc"], end="")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
