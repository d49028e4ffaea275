"""Placement: which nodes hold a document, computed alike by every node.

Dynamo keeps each document on a few nodes and the list of nodes on every
node, so every node knows where a document is stored without asking. Here
that knowledge is a pure function of the document's name and the members:
rendezvous (highest random weight) hashing. Each node gets a score for each
document, and a document's owners are the ``copies`` nodes with the highest
scores.

Why rendezvous hashing and not a ring: a node's score for a document does
not depend on the other nodes, so

* a node that joins takes exactly the copies for which it now scores in the
  top ``copies`` (the least that can move, ``1/(n+1)`` of them), and takes
  them from every node alike;
* a node that leaves changes only the documents it held, and each of those
  gets its new copy from the node ranked next for it, which is a different
  node for different documents: the copies to re-make are spread over all
  the survivors, not piled on a ring neighbour;
* the load is as even as random placement gets (no tokens to tune).

The score, exactly (so that any implementation places alike)::

    H(tag, text) = int.from_bytes(blake2b(text.encode("utf-8",
        "surrogatepass"), digest_size=8, person=tag).digest(), "little")
    score(node, name) = fmix64(H(b"repred-node", node) ^ H(b"repred-doc", name))

where ``fmix64`` is MurmurHash3's 64-bit finalizer. Owners are ranked by
descending score; two nodes with the same score (a 64-bit collision of their
hashes) are ranked by name.

Speed: scoring every node for every document is ``nodes`` scores per
document. The scores of all nodes for one document are computed at once, as
lanes of one large integer (each node's hash in its own 128-bit slot, so a
lane's product never reaches the next), which costs a few big-integer
operations in C instead of a Python loop per node. Only the lanes whose top
byte could place them among the first ``copies`` are then read.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from typing import TYPE_CHECKING, Final, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["Handoff", "Move", "Placement", "handoff", "owners"]

_NODE_TAG: Final = b"repred-node"
_DOC_TAG: Final = b"repred-doc"
_M64: Final = (1 << 64) - 1
#: MurmurHash3's fmix64 multipliers.
_C1: Final = 0xFF51AFD7ED558CCD
_C2: Final = 0xC4CEB9FE1A85EC53
#: Bytes per lane: a 64-bit score and 64 bits of room for its products.
_SLOT: Final = 16
#: The top byte of a lane, little-endian: where the quick filter looks.
_TOP: Final = 7
#: Up to this many members, every lane is read (the filter would not pay).
_FEW: Final = 64
#: Whether lanes can be read as machine words (8-byte little-endian).
_NATIVE_LANES = sys.byteorder == "little"


def _hash64(tag: bytes, text: str) -> int:
    digest = hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"), digest_size=8, person=tag
    ).digest()
    return int.from_bytes(digest, "little")


def _shift_xor(x: int) -> int:
    """The first and last step of fmix64. The last leaves a lane's top 33
    bits as they were, so the top byte of a lane before it is the score's:
    the filter reads lanes without it, and only the few candidates get it."""
    return x ^ (x >> 33)


def fmix64(x: int) -> int:
    """MurmurHash3's 64-bit finalizer: every input bit moves every output bit."""
    x ^= x >> 33
    x = (x * _C1) & _M64
    x ^= x >> 33
    x = (x * _C2) & _M64
    return x ^ (x >> 33)


def score(node: str, name: str) -> int:
    """The score of ``node`` for the document ``name`` (higher holds it)."""
    return fmix64(_hash64(_NODE_TAG, node) ^ _hash64(_DOC_TAG, name))


def _check_copies(copies: int) -> None:
    if type(copies) is not int:
        raise TypeError(f"copies must be an int, not {type(copies).__name__}")
    if copies < 1:
        raise ValueError(f"copies must be at least 1, not {copies}")


def _check_name(name: str) -> None:
    if type(name) is not str:
        raise TypeError(f"a document name is a str, not {type(name).__name__}")


def _check_not_one_name(nodes: Iterable[str]) -> None:
    if isinstance(nodes, str | bytes):
        raise TypeError("nodes must be an iterable of node names, not one name")


def _members(nodes: Iterable[str]) -> tuple[str, ...]:
    """The distinct members, sorted: what placement depends on."""
    _check_not_one_name(nodes)
    unique = set(nodes)
    for node in unique:
        if type(node) is not str:
            raise TypeError(f"a node is named by a str, not {type(node).__name__}")
    return tuple(sorted(unique))


@final
class Placement:
    """A set of members, prepared: each node's hash is computed once.

    ``Placement(nodes).owners(name, copies)`` is ``owners(name, nodes,
    copies)``; keep one while the members stay the same to place many
    documents.

    Raises:
        TypeError: ``nodes`` is a str, or holds something other than str.
    """

    __slots__ = ("_lanes", "_mask", "_ones", "_size", "nodes")

    def __init__(self, nodes: Iterable[str]) -> None:
        #: The distinct members, sorted by name.
        self.nodes = _members(nodes)
        pad = bytes(_SLOT - 8)
        self._size = _SLOT * len(self.nodes)
        # fmix64 starts with x ^= x >> 33, which distributes over the XOR
        # of node and name: the node's half of it is done here, once.
        self._lanes = int.from_bytes(
            b"".join(
                _shift_xor(_hash64(_NODE_TAG, n)).to_bytes(8, "little") + pad
                for n in self.nodes
            ),
            "little",
        )
        self._ones = int.from_bytes(
            (b"\x01" + bytes(_SLOT - 1)) * len(self.nodes), "little"
        )
        self._mask = _M64 * self._ones

    def __repr__(self) -> str:
        return f"<Placement of {len(self.nodes)} nodes>"

    def owners(self, name: str, copies: int = 3) -> list[str]:
        """The ``copies`` nodes that hold ``name``, most preferred first
        (all of them, ranked, when there are fewer)."""
        _check_name(name)
        _check_copies(copies)
        return [self.nodes[i] for i in self._ranked(name, copies)]

    def _scores(self, name: str, *, finish: bool) -> bytes:
        """Every node's score for ``name`` (without fmix64's last step
        unless ``finish``: see _shift_xor): lane ``i`` is node ``i``'s."""
        mask = self._mask
        x = self._lanes ^ (_shift_xor(_hash64(_DOC_TAG, name)) * self._ones)
        # The rest of fmix64 in every lane: the mask clears what a shift
        # brought in from the lane above before a product could carry it.
        x = (x * _C1) & mask
        x = ((x ^ (x >> 33)) & mask) * _C2 & mask
        if finish:
            x ^= x >> 33  # (what it brings into a lane's upper half is never read)
        return x.to_bytes(self._size, "little")

    def _ranked(self, name: str, copies: int) -> list[int]:
        """The indexes of the top ``copies`` nodes for ``name``, best first."""
        n = len(self.nodes)
        if n == 0:
            return []
        copies = min(copies, n)
        if n > _FEW and copies * 8 <= n:
            raw = self._scores(name, finish=False)
            lanes = _leaders(raw[_TOP : self._size : _SLOT], copies)
            ranked = sorted((-_shift_xor(_lane(raw, i)), i) for i in lanes)
            return [i for _, i in ranked[:copies]]
        scores = _lanes(self._scores(name, finish=True), n)
        best = sorted(scores, reverse=True)[:copies]
        if len(set(best)) == copies:  # each score names one lane
            return [scores.index(s) for s in best]
        ranked = sorted((-s, i) for i, s in enumerate(scores))
        return [i for _, i in ranked[:copies]]


def _lane(raw: bytes, i: int) -> int:
    return int.from_bytes(raw[i * _SLOT : i * _SLOT + 8], "little")


def _lanes(raw: bytes, n: int) -> list[int]:
    """Every lane's score, in node order."""
    if _NATIVE_LANES:
        return memoryview(raw).cast("Q")[0 : 2 * n : 2].tolist()
    return [_lane(raw, i) for i in range(n)]


def _leaders(top: bytes, copies: int) -> list[int]:
    """The lanes whose top byte is as high as the ``copies``-th highest's:
    only they can rank first, and there are few of them."""
    seen = 0
    floor = 256
    while seen < copies:
        floor -= 1
        seen += top.count(floor)
    lanes = []
    for byte in range(255, floor - 1, -1):
        i = top.find(byte)
        while i >= 0:
            lanes.append(i)
            i = top.find(byte, i + 1)
    return lanes


@functools.lru_cache(maxsize=16)
def _placement(members: frozenset[str]) -> Placement:
    return Placement(members)


def owners(name: str, nodes: Iterable[str], copies: int = 3) -> list[str]:
    """The nodes that hold the document ``name``: every node computes the same.

    Rendezvous hashing: the ``copies`` members with the highest score for
    ``name``, most preferred first; every member when there are fewer. The
    answer depends only on ``name``, the set of ``nodes`` (not their order,
    nor repeats) and ``copies``, and is the same in every process and on
    every platform (BLAKE2b, no built-in ``hash``).

    A node that joins takes ``1/(n+1)`` of the copies, from every node
    alike; a node that leaves changes only the documents it held, and their
    new copies spread over all the survivors. See :ref:`placement`.

    >>> owners("recipes", ["a:1", "b:1", "c:1", "d:1"], copies=2)
    ['b:1', 'd:1']

    To place many documents among the same members, pass the members as a
    ``frozenset``: they are prepared once (each node's hash) and remembered.

    Raises:
        TypeError: ``name`` is not a str, ``nodes`` is a str or holds
            something else, or ``copies`` is not an int.
        ValueError: ``copies`` is less than 1.
    """
    _check_name(name)
    _check_copies(copies)
    if not isinstance(nodes, frozenset):
        _check_not_one_name(nodes)
        nodes = frozenset(nodes)  # (checked once, when it is prepared)
    placement = _placement(nodes)
    return [placement.nodes[i] for i in placement._ranked(name, copies)]


# -- hand-off ------------------------------------------------------------------


@attrs.frozen
class Move:
    """A copy of ``name`` that ``to`` must now hold.

    Attributes:
        name: the document.
        to: the node that gains a copy.
        sources: its owners before the change that are still members, most
            preferred first: the nodes that can send it (empty when every
            owner is gone; the copy must then come from any other holder).
    """

    name: str
    to: str
    sources: tuple[str, ...]


@attrs.frozen
class Handoff:
    """What changes for a set of documents when the members change.

    Attributes:
        moves: each copy a node must now hold and did not, by document name
            then node.
        gains: node -> the documents it now owns and did not.
        losses: node -> the documents it owned and no longer does (it may
            drop its copy once the new owners hold it).
    """

    moves: tuple[Move, ...]
    gains: Mapping[str, tuple[str, ...]]
    losses: Mapping[str, tuple[str, ...]]


def handoff(
    names: Iterable[str],
    old: Iterable[str],
    new: Iterable[str],
    copies: int = 3,
) -> Handoff:
    """The hand-off plan for ``names`` when the members go from ``old`` to
    ``new``: which copies move, and who gains and loses what.

    Pure, like :func:`owners`: every node that computes it for the same
    documents gets the same plan.

    Raises:
        TypeError, ValueError: as for :func:`owners`.
    """
    _check_copies(copies)
    before, after = Placement(old), Placement(new)
    alive = set(after.nodes)
    moves: list[Move] = []
    gains: dict[str, list[str]] = {}
    losses: dict[str, list[str]] = {}
    for name in sorted(set(names)):
        _check_name(name)
        was = before.owners(name, copies)
        now = after.owners(name, copies)
        sources = tuple(n for n in was if n in alive)
        for node in now:
            if node not in was:
                moves.append(Move(name, node, sources))
                gains.setdefault(node, []).append(name)
        for node in was:
            if node not in now:
                losses.setdefault(node, []).append(name)
    return Handoff(
        tuple(moves),
        {node: tuple(ns) for node, ns in sorted(gains.items())},
        {node: tuple(ns) for node, ns in sorted(losses.items())},
    )
