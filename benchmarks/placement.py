"""Placement: rendezvous hashing (repred.owners) beside two rings and the ideal.

NODES nodes, NAMES document names, COPIES copies of each. For every scheme,
on the same names and nodes in the same run:

* busiest_over_mean: the copies the busiest node holds over the mean;
* join_moved: the share of all copies that move when one node joins (the
  least possible is 1/(n+1): the newcomer's fair share);
* join_donors: how many nodes give up a copy to the newcomer;
* loss_moved: the share of all copies re-made when one node is lost (its
  own copies, 1/n, are the least);
* loss_spread: the share of the survivors that re-make some copy, and
  loss_largest_share: the share of the re-made copies the busiest of them
  re-makes (ideally 1/(n-1) each);
* seconds: the time the scheme took for its three placements.

The rings place a document on the first COPIES distinct nodes clockwise
from its hash, with one token per node or VNODES tokens per node (Dynamo's
and Cassandra's schemes). Then the speed of owners(): NAMES_FAST names over
MEMBERS_FAST members, prepared (a frozenset of members, or a Placement) and
from a list each call.

    python benchmarks/placement.py [NAMES [NODES]]    (default: 100000 50)
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections import Counter
from typing import TYPE_CHECKING

from repred import owners
from repred._placement import Placement

from _common import arg, report

if TYPE_CHECKING:
    from collections.abc import Callable

COPIES = 3
VNODES = 256
NAMES_FAST = 10_000
MEMBERS_FAST = 1_000


def h64(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class Ring:
    """Consistent hashing on a ring: tokens per node, successors hold copies."""

    def __init__(self, nodes: list[str], tokens: int) -> None:
        points = sorted(
            (h64(f"{node}#{t}" if tokens > 1 else node), node)
            for node in nodes
            for t in range(tokens)
        )
        self.hashes = [h for h, _ in points]
        self.nodes = [n for _, n in points]
        self.distinct = len(set(nodes))

    def owners(self, name: str) -> list[str]:
        want = min(COPIES, self.distinct)
        i = bisect.bisect(self.hashes, h64(name))
        found: list[str] = []
        while len(found) < want:
            node = self.nodes[i % len(self.nodes)]
            if node not in found:
                found.append(node)
            i += 1
        return found


def rendezvous(nodes: list[str]) -> Callable[[str], list[str]]:
    placement = Placement(nodes)
    return lambda name: placement.owners(name, COPIES)


def ring(tokens: int) -> Callable[[list[str]], Callable[[str], list[str]]]:
    return lambda nodes: Ring(nodes, tokens).owners


def measure(scheme, names: list[str], nodes: list[str]) -> dict[str, float]:
    n = len(nodes)
    t = time.perf_counter()
    place = scheme(nodes)
    base = [place(name) for name in names]
    joiner = "10.9.9.9:7000"
    place = scheme([*nodes, joiner])
    joined = [place(name) for name in names]
    lost = nodes[n // 3]
    place = scheme([x for x in nodes if x != lost])
    left = [place(name) for name in names]
    seconds = time.perf_counter() - t

    held = Counter(x for o in base for x in o)
    total = len(names) * COPIES
    gained = [set(b) - set(a) for a, b in zip(base, joined, strict=True)]
    donors = Counter(
        x for a, b in zip(base, joined, strict=True) for x in set(a) - set(b)
    )
    remade = Counter(
        x for a, b in zip(base, left, strict=True) for x in set(b) - set(a)
    )
    return {
        "busiest_over_mean": round(max(held.values()) / (total / n), 3),
        "join_moved": round(sum(map(len, gained)) / total, 4),
        "join_donors": len(donors),
        "loss_moved": round(sum(remade.values()) / total, 4),
        "loss_spread": round(len(remade) / (n - 1), 3),
        "loss_largest_share": round(max(remade.values()) / sum(remade.values()), 3),
        "seconds": round(seconds, 2),
    }


def speed() -> None:
    members = [
        f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:7000" for i in range(MEMBERS_FAST)
    ]
    names = [f"doc-{i}" for i in range(NAMES_FAST)]
    prepared = frozenset(members)
    owners(names[0], prepared)  # prepared once, then remembered
    t = time.perf_counter()
    for name in names:
        owners(name, prepared)
    frozen = time.perf_counter() - t
    t = time.perf_counter()
    for name in names[:1000]:
        owners(name, members)
    listed = (time.perf_counter() - t) * len(names) / 1000
    report(
        "placement_speed",
        names=NAMES_FAST,
        members=MEMBERS_FAST,
        copies=COPIES,
        seconds_prepared=round(frozen, 3),
        us_per_name_prepared=round(frozen / NAMES_FAST * 1e6, 1),
        seconds_from_a_list_each_call=round(listed, 3),
    )


def main() -> None:
    n_names, n_nodes = arg(1, 100_000), arg(2, 50)
    nodes = [f"10.0.{i // 256}.{i % 256}:7000" for i in range(n_nodes)]
    names = [f"doc-{i}" for i in range(n_names)]
    shape = {"names": n_names, "nodes": n_nodes, "copies": COPIES}
    report(
        "placement",
        scheme="ideal",
        **shape,
        busiest_over_mean=1.0,
        join_moved=round(1 / (n_nodes + 1), 4),
        join_donors=n_nodes,
        loss_moved=round(1 / n_nodes, 4),
        loss_spread=1.0,
        loss_largest_share=round(1 / (n_nodes - 1), 3),
    )
    schemes = [
        ("rendezvous (repred.owners)", rendezvous),
        ("ring, 1 token per node", ring(1)),
        (f"ring, {VNODES} tokens per node", ring(VNODES)),
    ]
    for label, scheme in schemes:
        report("placement", scheme=label, **shape, **measure(scheme, names, nodes))
    speed()


if __name__ == "__main__":
    main()
