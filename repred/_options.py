"""The options of links and of gossip peers, each described once.

Every link function (:func:`repred.replicate` and the rest) and
:func:`repred.open_peer` take their options as keywords of their own, so a
misspelt one is a ``TypeError`` at the call; they check them by building
these values, which are what travels on, to the connections, the sessions
and the parts of a peer. Every duration is in seconds.

Pure: no trio, no sockets.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ._address import parse_member
from ._session import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ENTRIES, Session
from ._wire import DEFAULT_MAX_LINE_BYTES

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

    from ._replica import Replica
    from ._trust import SigningKey, Writers

__all__ = [
    "DEFAULT_ANTIENTROPY_INTERVAL",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_FANOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_MAX_DOCUMENTS",
    "DEFAULT_MAX_LINKS",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_REAP_AFTER",
    "DEFAULT_SEND_TIMEOUT",
    "LinkOptions",
    "PeerOptions",
    "PlacementOptions",
    "Trust",
    "pick",
]

#: Seconds a send may make no progress before the peer counts as stuck.
DEFAULT_SEND_TIMEOUT = 30.0
#: Seconds a new link has to open (its TLS handshake, its request, its digest).
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
#: Seconds to wait for the peer to finish after a ``live=False`` sync.
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Seconds of quiet before a keep-alive goes out; a repred peer silent for
#: three times this is cut (a stalled link is noticed within 45 s).
DEFAULT_KEEPALIVE_INTERVAL = 15.0
#: Inbound links one listener keeps at most; past it, the link that has been
#: quiet longest is dropped to make room.
DEFAULT_MAX_LINKS = 512
#: Seconds between anti-entropy rounds on a live link (see
#: repred._antientropy): each side compares a root hash of what it holds.
DEFAULT_ANTIENTROPY_INTERVAL = 5.0
#: The most nodes a membership map holds.
DEFAULT_MAX_MEMBERS = 16_384
#: Seconds after a node was suspected that it is forgotten: an hour.
DEFAULT_REAP_AFTER = 3600.0
#: Outgoing live links a peer keeps at once (each to a random live node).
DEFAULT_FANOUT = 3
#: The most placed documents one node holds at once.
DEFAULT_MAX_DOCUMENTS = 16_384

T = TypeVar("T", bound=attrs.AttrsInstance)


def pick(cls: type[T], arguments: Mapping[str, Any]) -> T:
    """An options value of ``cls`` from those of its fields that
    ``arguments`` (an entry point's keywords) holds; the rest default."""
    names = (field.name for field in attrs.fields(cls))
    return cls(**{name: arguments[name] for name in names if name in arguments})


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive")


def _not_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative")


def _seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and 0 < value < math.inf):
        raise ValueError(f"{attribute.name} must be a positive number of seconds")


def _interval(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (
        isinstance(value, int | float) and 0 < value < math.inf
    ):
        raise ValueError(f"{attribute.name} must be positive seconds or None")


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be a positive int")


def _int(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int:
        raise TypeError(f"{attribute.name} must be an int")


def _flag(_: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if type(value) is not bool:
        raise TypeError(f"{attribute.name} must be a bool")


@attrs.frozen(kw_only=True)
class LinkOptions:
    """The options of one link, as every link function takes them.

    :func:`repred.replicate`, :func:`repred.connect_tcp`,
    :func:`repred.serve_tcp`, :func:`repred.connect_websocket` and
    :func:`repred.serve_websocket` each take these as keywords (checked at
    the call); :func:`repred.open_peer` takes ``send_timeout``,
    ``max_line_bytes``, ``batch_entries``, ``batch_bytes`` and
    ``antientropy_interval`` for all its links and paces the rest by its
    heartbeat.

    Attributes:
        send_timeout: seconds a send may make no progress before the peer
            counts as stuck (:class:`repred.SyncTimeout`).
        handshake_timeout: seconds a new link has to open: its TLS
            handshake (with ``ssl_context``), its WebSocket request, and
            the peer's digest, each within it.
        close_timeout: with ``live=False``, seconds to wait for the peer to
            end its side after the sync.
        keepalive_interval: seconds of quiet before a keep-alive line goes
            out. A repred peer (or one halfway through a line) that makes no
            progress, a line or 16 KiB, for three times this
            (:attr:`idle_timeout`) is cut (:class:`repred.SyncTimeout`); a
            quiet JS peer between lines is not.
        max_line_bytes: the longest line accepted from the peer (announced
            to it in the digest); over WebSockets, a message longer than it
            (and 64 KiB) ends its link.
        batch_entries: entries read from one source's history at a time
            (and the most in one batch).
        batch_bytes: bytes of entries handed to one send.
        batches: offer batched framing; with a repred peer that offers it
            too, entries travel one batch of a source per line (fewer bytes,
            less work). ``False`` sends one entry per line, as JS peers do.
        send: send entries to the peer. With ``False`` only the digest and
            keep-alives go out (a write-only link, JS ``createWriteStream``);
            the peer never counts the link as synced.
        receive: apply what the peer sends. With ``False`` its entries are
            checked and counted in ``refused``, never applied, and the link
            stays up (a read-only mirror, JS ``createReadStream``). A link
            needs ``send`` or ``receive``: both ``False`` is refused.
        antientropy_interval: with a repred peer, on a link that sends and
            receives, both sides compare hash trees of what they hold after
            the sync (a ``live=False`` sync returns once that is done) and,
            on a live link, every this many seconds; whatever one holds that
            the other lacks, although their clocks agree, is repaired (see
            :meth:`repred.Replica.on_divergence`). ``None``: only after the
            sync.
    """

    send_timeout: float = attrs.field(default=DEFAULT_SEND_TIMEOUT, validator=_positive)
    handshake_timeout: float = attrs.field(
        default=DEFAULT_HANDSHAKE_TIMEOUT, validator=_positive
    )
    close_timeout: float = attrs.field(
        default=DEFAULT_CLOSE_TIMEOUT, validator=_not_negative
    )
    keepalive_interval: float = attrs.field(
        default=DEFAULT_KEEPALIVE_INTERVAL, validator=_positive
    )
    max_line_bytes: int = attrs.field(default=DEFAULT_MAX_LINE_BYTES, validator=_int)
    batch_entries: int = attrs.field(default=DEFAULT_BATCH_ENTRIES, validator=_int)
    batch_bytes: int = attrs.field(default=DEFAULT_BATCH_BYTES, validator=_int)
    batches: bool = attrs.field(default=True, validator=_flag)
    send: bool = attrs.field(default=True, validator=_flag)
    receive: bool = attrs.field(default=True, validator=_flag)
    antientropy_interval: float | None = attrs.field(
        default=DEFAULT_ANTIENTROPY_INTERVAL, validator=_interval
    )

    def __attrs_post_init__(self) -> None:
        if self.max_line_bytes < 64 or self.batch_entries < 1 or self.batch_bytes < 1:
            raise ValueError("limits must be positive (max_line_bytes >= 64)")
        if not (self.send or self.receive):
            raise ValueError(
                "a link that neither sends nor receives carries nothing:"
                " send=False and receive=False together"
            )

    @property
    def idle_timeout(self) -> float:
        """Seconds a peer may make no progress: three keep-alive intervals."""
        return 3 * self.keepalive_interval

    def session(self, replica: Replica) -> Session:
        """A protocol session over ``replica`` with these limits."""
        return Session(
            replica,
            max_line_bytes=self.max_line_bytes,
            batch_entries=self.batch_entries,
            batch_bytes=self.batch_bytes,
            batches=self.batches,
            send=self.send,
            receive=self.receive,
        )


def _members(
    _: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]
) -> None:
    for address in value:
        parse_member(address)


def _port(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or not 0 <= value < 65536):
        raise ValueError(f"{attribute.name} must be a port, 0 to 65535")


@attrs.frozen(kw_only=True)
class PeerOptions:
    """What a gossip peer is told: where it listens, whom it dials, how it
    paces itself, what it holds at most, and what its web port serves.

    :func:`repred.open_peer` takes each as a keyword of its own (checked
    at the call); :attr:`repred.Peer.options` gives them back.

    Attributes:
        host: the address to listen on (and to advertise, by default).
        port: where to listen (0: any free port; see ``Peer.address``).
        advertise: the host other nodes should dial, when it is not
            ``host`` (needed when listening on every interface).
        seeds: ``"host:port"`` of nodes to dial first and re-dial now and
            then.
        heartbeat_interval: the peer's pace, in seconds. Links send a
            keep-alive after this much quiet, and a link quiet for three is
            cut (and the node that dialled it suspects the other): a stalled
            link is noticed within three. Who is up and who is down is said
            (``up``/``down`` events) every interval, and this node refutes
            what is said of it at most once an interval.
        down_after: seconds a suspected node (one that another failed to
            reach) stays up, counted from when this node heard of the
            suspicion, before it is down here; a node that can be reached
            refutes a suspicion long before. A node that stops is down
            everywhere about this long after its links close (three
            heartbeats more if it hangs instead, and ``connect_timeout``
            more at worst).
        gossip_interval: seconds an outgoing link lasts before the peer
            moves on to another random node.
        seed_interval: seconds between re-dials of the seeds and of one
            node seen down (so partitions heal without seeds).
        max_backoff: the longest wait, in seconds, before re-dialling a
            failing node.
        connect_timeout: seconds a dial may take to connect and to complete
            its handshakes (TLS, and the peer's hello).
        reap_after: seconds after the stamp of a suspicion that a node
            still suspected is forgotten (an hour by default); a node up is
            never forgotten.
        fanout: outgoing live links kept at once.
        max_members: the most nodes the membership map holds.
        max_links: the most inbound links held at once (the quietest is
            dropped to make room), and the most connections still opening
            (the oldest is pushed out); on the web port, per replica.
        read_only: serve the named replicas but apply nothing that other
            nodes write to them, on any link, whichever side dialled
            (membership still flows); what they send is counted in
            :attr:`repred.PeerStatistics.refused`. The web port's links are
            read-only too; a :func:`repred.connect_redis` link beside the
            peer is the caller's, given ``receive=False`` for the named
            replicas (as the peer command's ``--read-only`` does).
        node_id: the id this node's membership entries go out under, and that
            ``up`` events and :meth:`repred.Peer.node_id` report for it:
            give the id of the node's own replica (the peer command does),
            so that the source of an update names its host. The signing
            key's id with ``signing_key``; a random one otherwise.
        ssl_context: link over TLS: the server-side context for inbound
            links (a context that requires client certificates makes it
            mutual TLS). Needs ``client_ssl_context`` too.
        client_ssl_context: the client-side context for dials (trust in the
            other nodes' certificates, and this node's own chain for mutual
            TLS). Nodes are dialled by their ``host:port``, so their
            certificates must name that host.
        web_port: also serve, on this port, the pages and a WebSocket link
            per named replica: ``GET /`` the live page of the replica named
            ``"data"``, ``GET /todo`` that of the ``doc()`` named
            ``"todo"``, ``ws://HOST:PORT/replicas/NAME`` for each;
            :attr:`repred.Peer.web_address` says where.
        web_origins: origins besides the web port's own whose pages may
            open WebSocket links (``"http://host:port"``).
        web_hosts: names the web port's requests may carry in ``Host``
            besides ``host`` (any address, on every interface),
            ``advertise``, ``localhost`` (and 127.0.0.1 and ::1 when
            listening on them); ``"*"``: any. Every other name gets 403, so
            that a page whose name was pointed at this address (DNS
            rebinding) can neither read the pages nor link.
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=0, validator=_port)
    advertise: str | None = None
    seeds: tuple[str, ...] = attrs.field(
        default=(), converter=tuple, validator=_members
    )
    heartbeat_interval: float = attrs.field(default=1.0, validator=_seconds)
    down_after: float = attrs.field(default=5.0, validator=_seconds)
    gossip_interval: float = attrs.field(default=3.0, validator=_seconds)
    seed_interval: float = attrs.field(default=5.0, validator=_seconds)
    max_backoff: float = attrs.field(default=30.0, validator=_seconds)
    connect_timeout: float = attrs.field(default=5.0, validator=_seconds)
    reap_after: float = attrs.field(default=DEFAULT_REAP_AFTER, validator=_seconds)
    fanout: int = attrs.field(default=DEFAULT_FANOUT, validator=_count)
    max_members: int = attrs.field(default=DEFAULT_MAX_MEMBERS, validator=_count)
    max_links: int = attrs.field(default=DEFAULT_MAX_LINKS, validator=_count)
    read_only: bool = attrs.field(default=False, validator=_flag)
    node_id: str | None = None
    ssl_context: ssl.SSLContext | None = None
    client_ssl_context: ssl.SSLContext | None = None
    web_port: int | None = attrs.field(default=None, validator=_port)
    web_origins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    web_hosts: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if self.host in ("0.0.0.0", "::", "") and not self.advertise:
            raise ValueError(
                f"listening on {self.host!r} (every interface) needs advertise=,"
                " the host other nodes should dial"
            )


@attrs.frozen(kw_only=True)
class Trust:
    """How a replica signs its writes and whose writes it takes: the
    ``signing_key=``, ``verify=`` and ``writers=`` options of
    :func:`repred.repred` (and of every type's factory), as one value.

    :func:`repred.open_peer` takes the three as keywords of its own and
    gives its membership map this value: its entries (that it is alive,
    and its suspicions of others) are signed with the key, and a verifying
    peer takes only signed ones (from ``writers`` only, if given: then no
    one else can announce a node up, or suspect one). The replica
    that takes it checks it, as its factory would.

    Attributes:
        signing_key: sign every entry written here with this key.
        verify: refuse any entry its source did not sign.
        writers: with ``verify``, the only sources that may write (ids, or
            a function of an id).
    """

    signing_key: SigningKey | None = None
    verify: bool = attrs.field(default=False, validator=_flag)
    writers: Writers | None = None


@attrs.frozen(kw_only=True)
class PlacementOptions:
    """How a gossip peer places documents on the members (see
    :ref:`placed-peers`): given to :func:`repred.open_peer` as keywords of
    their own (checked at the call), with ``documents=``.

    Beside them, ``open_peer`` takes ``documents(name)``, which makes a
    document's empty replica (the same type on every node, writing under
    an id of its own; each document lives on ``copies`` members only, see
    :meth:`repred.Peer.document`), ``held``, the names this node held when
    it last ran (made again, so their stores reopen), and
    ``discard(name)``, told when this node dropped one its owners hold. A
    ``read_only`` peer cannot hold documents (an owner takes writes).

    Attributes:
        copies: how many members own each document (Dynamo's N). Every
            node of a cluster must be given the same: a link between nodes
            that differ is refused.
        max_documents: the most documents this node holds at once (owned,
            live copies and copies it is handing off). Past it, peers'
            links to more are refused (``full``), and
            :meth:`repred.Peer.document` raises.
        handoffs: how many copies this node sends or checks at once (the
            rest wait their turn, earliest due first); one at a time to a
            node whose last try failed.
        handoff_timeout: seconds a copy being sent may make no progress
            before the try counts as failed (it is retried, and resumes
            where it stopped).
    """

    copies: int = attrs.field(default=3, validator=_count)
    max_documents: int = attrs.field(default=DEFAULT_MAX_DOCUMENTS, validator=_count)
    handoffs: int = attrs.field(default=8, validator=_count)
    handoff_timeout: float = attrs.field(default=30.0, validator=_seconds)
