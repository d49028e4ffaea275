"""The membership map every gossip peer carries, and what a node makes of it.

Theory of operation
-------------------

The map is a last-write-wins map (the one primitive, ``last_write_wins=``,
as under :func:`repred.types.heartbeats`) from a member's address to what
was last said of it, the type ``"membership"``, one change per entry:

``[address, "alive", node_id]``
    the node itself, when it starts, whenever it must refute a suspicion,
    and every ``reap_after / 2`` (:meth:`View.renew`); ``node_id`` is the
    entry's own source (anything else is refused), the id its writes go
    out under;
``[address, "suspect", node_id]``
    any node that failed to reach it: a dial that did not complete its
    handshake, or a link it dialled that went silent (see
    :mod:`repred._gossip`); ``node_id`` is the id the writer knew it by.

Nothing else is written while nothing changes. There are no heartbeats, so what
a node sends and receives for membership does not grow with the number of
nodes: SWIM's design, as in memberlist and Serf. Liveness comes from the
links a node holds anyway (each is a probe, kept alive every heartbeat),
and only changes travel, as entries, over the same live links as every
other entry, so one reaches every node in about log N hops. When two maps
agree, a link's opening costs a fingerprint each way, not a digest of
every member: see :meth:`Membership.fingerprint` and :mod:`repred._mux`.

The map converges because the newest entry per address wins everywhere:
its stamp is a hybrid logical clock, an order every replica agrees on, and
every check made of an entry is a function of the entry alone, except the
bound of ``max_members`` (as before). The stamp is what SWIM calls the
incarnation: a node that hears itself suspected writes "alive" again, and
its clock has seen the suspicion's stamp, so the refutation is newer than
the suspicion on every node.

What a node makes of the map is its :class:`View`: a member is *up* while
its newest entry is "alive". A suspected member stays up for ``down_after``
seconds from when *this* node first heard of the suspicion (its own clock,
not the entry's stamp: a suspicion stamped in the past counts from its
arrival), and is *down* after that, unless it refuted meanwhile. So
whoever writes a suspicion, a node that any other can still reach is never
seen down: its refutation reaches everyone within a few hops, far within
``down_after``. A suspicion is forgotten ``reap_after`` after its stamp.

What a hostile peer can do (without ``verify=``, anyone can write any
entry; with ``verify`` and ``writers``, only the writers can):

* suspect any node, at will: the node refutes at once and is never seen
  down (each costs the network two entries, as a forged heartbeat did);
  what a suspicion can take down is only a node that cannot refute within
  ``down_after``, which an honest node's failed dial would take down too;
* say "alive" for a node that is gone, as a forged heartbeat could; it is
  suspected again by the next node that fails to reach it;
* fill the map, up to ``max_members``, with addresses that never answer:
  each stays up until some node dials it (gossip picks random members) and
  writes a suspicion, then is down ``down_after`` later. A full map passes
  over new addresses (and forgets them at the next :meth:`Membership.trim`)
  rather than refuse the link that brings them, so maps filled with
  different junk do not cut honest nodes apart.

Pure: no trio.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import orjson

from ._address import parse_member
from ._hashtree import fingerprint
from ._options import DEFAULT_MAX_MEMBERS, Trust
from ._replica import Replica, new_id
from ._wire import is_source
from .types._base import build

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ._replica import Stamp

__all__ = [
    "ALIVE",
    "MEMBERS",
    "SUSPECT",
    "Entry",
    "Membership",
    "View",
    "members_replica",
]

#: The name of the membership replica every peer carries.
MEMBERS = "_members"
#: What a node says of itself, and what others say of a node they lost.
ALIVE = "alive"
SUSPECT = "suspect"
_STATUSES = (ALIVE, SUSPECT)

#: What the map holds for an address: ``(status, ts, node_id, source)``,
#: the newest entry's status and node id, and its stamp.
Entry = tuple[str, float, str, str]


def _member_key(change: Any) -> str:
    """A membership change is ``[address, status, node_id]``, each checked."""
    if not isinstance(change, list | tuple) or len(change) != 3:
        raise ValueError(
            f"a membership change is [address, status, node id], not {change!r:.80}"
        )
    address, status, node_id = change
    if type(address) is not str:
        raise ValueError(f"a member is HOST:PORT, not {address!r:.80}")
    _check_member(address)
    if type(status) is not str or status not in _STATUSES:
        raise ValueError(f"a member's status is alive or suspect, not {status!r:.80}")
    if not is_source(node_id):
        raise ValueError(f"a node id is a source id, not {node_id!r:.80}")
    return address


@functools.lru_cache(maxsize=DEFAULT_MAX_MEMBERS)
def _check_member(address: str) -> None:
    """``parse_member``, remembered for the addresses seen lately: parsing
    an address (``ipaddress``, ``inet_aton``) costs more than applying an
    entry. A refused address raises, so it is never remembered."""
    parse_member(address)


def _noted(
    state: dict[str, Entry],
    change: list[Any],
    stamp: Stamp,
    *,
    cap: int,
    own: str,
    passed: set[str],
) -> list[Any]:
    """Record what ``change`` says of its address (the newest entry per
    address reaches the reducer: see the module docstring).

    Only a node itself says it is alive. A full map passes over a new
    address from peers (noted in ``passed``, and forgotten at the next
    :meth:`Membership.trim`) rather than refuse the link that brought it:
    a flood of junk that filled each node's map with other addresses
    would otherwise cut honest nodes apart. This node's own entries always
    go in.
    """
    address, status, node_id = _member_key(change), change[1], change[2]
    if status == ALIVE and node_id != stamp[1]:
        raise ValueError(
            f"{address} said alive by {stamp[1]!r}, not by its node {node_id!r}"
        )
    if address not in state and len(state) >= cap and stamp[1] != own:
        passed.add(address)
        return change
    state[address] = (status, stamp[0], node_id, stamp[1])
    return change


class Membership(Replica):
    """The replicated membership map of a gossip peer
    (:attr:`repred.Peer.membership`), the type ``"membership"``.

    Its state maps each member's address to ``(status, ts, node_id,
    source)``, from the newest entry said of it: ``"alive"`` (written by
    the node itself, when it starts or to refute a suspicion) or
    ``"suspect"`` (written by a node that failed to reach it); the entry's
    stamp in ms; the member's node id (the source of its own writes); and
    who wrote the entry. Nothing is written while nothing changes. The
    documentation's explanation says how it converges and what a node
    makes of it.
    """

    __slots__ = ("_fingerprint", "_passed")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: ``(revision, root, clock)`` of the last :meth:`fingerprint`.
        self._fingerprint: tuple[int, bytes, Mapping[str, float]] | None = None
        #: Addresses a full map passed over (see :func:`_noted`).
        self._passed: set[str] = set()
        super().__init__(*args, **kwargs)

    def trim(self) -> int:
        """Forget the entries of the addresses a full map passed over (their
        history is all that held them); how many. A peer calls it every
        heartbeat, so what a flood leaves behind lasts that long at most."""
        gone = [a for a in self._passed if a not in self.state]
        self._passed.clear()
        if gone:
            self._forget_keys(gone)
        return len(gone)

    def note(self, address: str, status: str, node_id: str | None = None) -> Any:
        """Write what this node says of ``address`` (its own id by default)."""
        return self.update([address, status, self.id if node_id is None else node_id])

    def entry(self, address: str) -> Entry | None:
        """What the map holds for ``address``, if anything."""
        found: Entry | None = self.state.get(address)
        return found

    def fingerprint(self) -> tuple[bytes, Mapping[str, float]]:
        """A fingerprint of every entry held (address, status, node id and
        stamp), and the clock as it was when it was taken; both cached by
        revision, so a link's opening costs a lookup while nothing changes.

        Two maps with one fingerprint hold the same entries, whatever their
        clocks say of entries dropped as superseded (see :mod:`repred._mux`
        for what a link makes of it).
        """
        hit = self._fingerprint
        if hit is not None and hit[0] == self.revision:
            return hit[1], hit[2]
        rows = sorted((address, *entry) for address, entry in self.state.items())
        root = fingerprint(orjson.dumps(rows))
        clock = dict(self.clock)
        self._fingerprint = (self.revision, root, clock)
        return root, clock

    def forget(self, addresses: Iterable[str]) -> None:
        """Drop what the map holds for ``addresses`` (and their entries)."""
        gone = [a for a in addresses if a in self.state]
        for address in gone:
            del self.state[address]
        if gone:
            self._forget_keys(gone)


def members_replica(
    *,
    wall: Callable[[], float],
    max_members: int = DEFAULT_MAX_MEMBERS,
    node_id: str | None = None,
    trust: Trust = Trust(),  # noqa: B008  (a frozen value)
) -> Membership:
    """A new membership map whose entries go out under ``node_id`` (the
    signing key's id, or a new one, by default), signed and checked as
    ``trust`` says."""
    key = trust.signing_key
    own = node_id or (new_id() if key is None else key.id)
    passed: set[str] = set()
    members = build(
        Membership,
        functools.partial(_noted, cap=max_members, own=own, passed=passed),
        {},
        "membership",
        id=own,
        last_write_wins=_member_key,
        stamped=True,
        wall=wall,
        signing_key=key,
        verify=trust.verify,
        writers=trust.writers,
    )
    # A link compares fingerprints of the whole map when it opens (see
    # Membership.fingerprint): trees of it would cost more than they find.
    members.antientropy = False
    members._passed = passed
    return members


class View:
    """What this node makes of the map (see the module docstring): who is
    up, since when each suspicion has stood here, and whether this node
    must refute one of itself.

    Kept up to date entry by entry (a listener on the map), so that reading
    it costs nothing while nothing changes, whatever the number of members.
    ``on_refute`` is called when this node hears itself suspected (or
    another node claiming its address).
    """

    def __init__(self, members: Membership) -> None:
        self.members = members
        #: This node's own address, once it listens (see :meth:`join`).
        self.address = ""
        #: Counts changes to what is up.
        self.version = 0
        #: This node must write "alive" again (see :meth:`refute`).
        self.refute_due = False
        self.on_refute: Callable[[], None] | None = None
        self._alive: set[str] = set()
        #: Members not alive: when this node first heard so (ms, its wall).
        self._since: dict[str, float] = {}
        self._up: tuple[int, float, float, list[str]] | None = None
        for address, entry in members.state.items():
            self._heard_of(address, entry[0], entry[2])
        members.add_listener(self._heard)

    def _heard(self, effect: Any, ts: float, source: str, origin: object) -> None:
        if effect[0] in self.members.state:  # (not passed over by a full map)
            self._heard_of(effect[0], effect[1], effect[2])

    def _heard_of(self, address: str, status: str, node_id: str) -> None:
        self.version += 1
        if status == ALIVE:
            self._alive.add(address)
            self._since.pop(address, None)
        else:
            self._alive.discard(address)
            # From its first arrival: a second suspicion does not restart it.
            self._since.setdefault(address, self.members.wall())
        if address == self.address and (status != ALIVE or node_id != self.members.id):
            self.refute_due = True
            if self.on_refute is not None:
                self.on_refute()

    def join(self, address: str) -> None:
        """This node listens at ``address``: say it is alive."""
        self.address = address
        self.members.note(address, ALIVE)

    def refute(self) -> bool:
        """Say again that this node is alive, if it heard otherwise; whether
        it did."""
        if not self.refute_due:
            return False
        self.refute_due = False
        entry = self.members.entry(self.address)
        if entry is not None and entry[0] == ALIVE and entry[2] == self.members.id:
            return False  # what it heard was overtaken by its own word
        self.members.note(self.address, ALIVE)
        return True

    def renew(self, older_than: float) -> bool:
        """Say again that this node is alive if it last said so more than
        ``older_than`` seconds ago; whether it did.

        Nothing else rewrites a node's entry while nothing changes, and a
        version of it that a hostile peer forged (a suspicion at its stamp
        with a smaller hash, sent to every node but this one) would win
        that stamp everywhere else for good: this node never hears of it,
        so it never refutes. A new entry overtakes it.
        """
        if not self.address:
            return False
        entry = self.members.entry(self.address)
        if entry is not None and entry[1] > self.members.wall() - older_than * 1000:
            return False
        self.members.note(self.address, ALIVE)
        return True

    def suspect(self, address: str) -> bool:
        """Say that this node failed to reach ``address``, if the map still
        has it alive (a suspicion stands until the node refutes it); whether
        it did."""
        entry = self.members.entry(address)
        if entry is None or entry[0] != ALIVE or address == self.address:
            return False
        self.members.note(address, SUSPECT, entry[2])
        return True

    def up(self, within: float) -> list[str]:
        """The members up: alive, or suspected here less than ``within``
        seconds ago, and this node whatever is said of it, sorted (cached
        until something changes or a suspicion runs out)."""
        now = self.members.wall()
        hit = self._up
        if hit is not None and hit[0] == self.version and hit[1] == within:
            if now < hit[2]:
                return hit[3]
        horizon = within * 1000
        recent = [a for a, t in self._since.items() if now - t < horizon]
        until = min((self._since[a] + horizon for a in recent), default=math.inf)
        if self.address:
            recent.append(self.address)
        up = sorted(self._alive.union(recent))
        self._up = (self.version, within, until, up)
        return up

    def suspected(self) -> list[str]:
        """The members whose newest entry is not "alive", sorted."""
        return sorted(self._since)

    def is_alive(self, address: str) -> bool:
        """Whether the newest entry of ``address`` says it is alive."""
        return address in self._alive

    def reap(self, older_than: float) -> list[str]:
        """Forget the members suspected by an entry stamped more than
        ``older_than`` seconds ago (by the stamp, so that every node forgets
        the same ones at about the same time); return them."""
        horizon = self.members.wall() - older_than * 1000
        state = self.members.state
        gone = [
            a
            for a in self._since
            if a != self.address and (a not in state or state[a][1] < horizon)
        ]
        if gone:
            self.members.forget(gone)
            for address in gone:
                del self._since[address]
            self.version += 1
        return gone
