"""The membership map every gossip peer carries: heartbeats per address.

It is :func:`repred.types.heartbeats`, the newest heartbeat stamp (ms) per
name, with two rules of its own: a name is a member address (``host:port``
that some node can dial, see :func:`repred._address.parse_member`), and the
map holds at most ``max_members`` addresses. Its wire format is what every
peer has always sent: the type ``"members"``, a change ``[address]``, its
stamp the heartbeat, the newest per address wins.

Pure: no trio.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ._address import parse_member
from ._options import DEFAULT_MAX_MEMBERS, Trust
from ._replica import new_id
from .types import Heartbeats
from .types._base import build
from .types._lww import beat

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._replica import Stamp

__all__ = ["MEMBERS", "Members", "members_replica"]

#: The name of the membership replica every peer carries.
MEMBERS = "_members"


def _member_key(change: Any) -> str:
    """A membership change is ``[address]``; the address must be a member."""
    if not isinstance(change, list | tuple) or len(change) != 1:
        raise ValueError(f"a membership change is [address], not {change!r:.80}")
    address = change[0]
    if type(address) is not str:
        raise ValueError(f"a member is HOST:PORT, not {address!r:.80}")
    _check_member(address)
    return address


@functools.lru_cache(maxsize=DEFAULT_MAX_MEMBERS)
def _check_member(address: str) -> None:
    """``parse_member``, remembered for the addresses seen lately: every
    heartbeat a node takes in names one of a few known nodes, and parsing
    an address (``ipaddress``, ``inet_aton``) costs more than applying it.
    A refused address raises, so it is never remembered."""
    parse_member(address)


def _heard(
    state: dict[str, float], change: list[Any], stamp: Stamp, *, cap: int, own: str
) -> list[Any]:
    """A heartbeat (see :func:`repred.types._lww.beat`), unless the map is
    full: a full map takes no new node from peers (the node's own heartbeat
    always goes in)."""
    if change[0] not in state and len(state) >= cap and stamp[1] != own:
        raise ValueError(f"the membership map is full ({cap} nodes)")
    return beat(state, change, stamp)


class Members(Heartbeats):
    """The replicated membership map: address -> newest heartbeat stamp (ms)."""

    __slots__ = ()

    def reap(self, older_than: float) -> list[str]:
        """Forget the nodes not heard from in the last ``older_than``
        seconds; return them."""
        horizon = self.wall() - older_than * 1000
        gone = [a for a, t in self.state.items() if t < horizon]
        if gone:
            for address in gone:
                del self.state[address]
            self._forget_keys(gone)
        return gone


def members_replica(
    *,
    wall: Callable[[], float],
    max_members: int = DEFAULT_MAX_MEMBERS,
    node_id: str | None = None,
    trust: Trust = Trust(),  # noqa: B008  (a frozen value)
) -> Members:
    """A new membership map whose heartbeats go out under ``node_id`` (the
    signing key's id, or a new one, by default), signed and checked as
    ``trust`` says."""
    key = trust.signing_key
    own = node_id or (new_id() if key is None else key.id)
    members = build(
        Members,
        functools.partial(_heard, cap=max_members, own=own),
        {},
        "members",
        id=own,
        last_write_wins=_member_key,
        stamped=True,
        wall=wall,
        signing_key=key,
        verify=trust.verify,
        writers=trust.writers,
    )
    # Heartbeats heal themselves within a beat: comparing trees of them
    # would cost more than it finds.
    members.antientropy = False
    return members
