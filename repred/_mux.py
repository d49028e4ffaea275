"""Several named replicas over one link: the gossip peers' framing.

Each side first sends a hello line, ``{"repred-peer": 3, "node":
"host:port", "replicas": {name: type}, "members": root, "stay": s}``; then
every line of every replica's scuttlebutt session goes as ``seq TAB name
TAB line``, where ``seq`` counts the lines sent on the link (1, 2, ...): a
line lost, repeated or reordered on the way ends the link before it is
applied, so no source's entries are ever taken out of order. A replica the
other side lacks (or holds with another type) is skipped; a line for a
replica the two did not agree on is refused. The membership map is always
received, even on a read-only peer: it keeps the network whole.

``members`` is the fingerprint of the sender's membership map as it opens
the link (:meth:`repred._members.Membership.fingerprint`). When the two are
equal, both sides hold the same entries, so each sends its membership
digest as the change since then: its ``"clock"`` names only the sources
that moved since the fingerprint was taken (none, most of the time), and
the receiver reads the rest of it from its own clock at that moment. A
link between two nodes whose maps agree opens with a few hundred bytes,
however many members there are; otherwise the digest goes whole. (Two
agreeing maps may still have clocks that differ where an entry was
dropped as superseded before it reached one of them; either reading of
such a clock sends nothing either side lacks.)

``stay``, on a link its dialler means to keep live, is how many seconds it
means to keep it: a link that ends well before then, or that breaks, tells
the other side to check that the dialler is still there (see
:mod:`repred._gossip`).

A peer that speaks another version of this framing (repred-peer 2 sent a
heartbeat every second, which this version's membership does not) is
refused with :class:`~repred.IncompatiblePeerError`, reason
``"incompatible-peer"``; a version 2 peer refuses this one as "not a repred
peer". Every node of a network must run the same version.

Pure, beside :mod:`repred._session`: bytes in, bytes out, no trio.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from ._errors import IncompatiblePeerError, RemoteProtocolError
from ._log import limited, peer_log
from ._members import MEMBERS, Membership
from ._wire import LineDecoder, loads_strict, snippet

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._options import LinkOptions
    from ._session import Session

__all__ = [
    "MAX_HELLO_BYTES",
    "MAX_HELLO_REPLICAS",
    "MAX_NAME_LENGTH",
    "PEER_PROTOCOL",
    "Mux",
]

PEER_PROTOCOL = 3
#: The longest hello accepted, and its limits.
MAX_HELLO_BYTES = 64 * 1024
MAX_HELLO_REPLICAS = 256
MAX_NAME_LENGTH = 128
#: The longest ``stay`` a hello may announce (a day), and the longest root.
MAX_STAY = 86_400.0
_MAX_ROOT = 128
_MEMBERS_NAME = MEMBERS.encode()


def _bad(message: str, line: bytes, reason: str = "not-a-peer") -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason, line=snippet(line))


class Framing:
    """The checks of ``seq TAB name TAB line``, the framing of a link that
    carries several sessions (a gossip link's replicas, a document link's
    documents): each line in two parts and numbered in turn, so that a
    line lost, repeated or out of place on the way ends the link (nothing
    after it could be trusted to keep each source's entries in order).
    ``bad_reason`` is the reason a line not so framed is refused with."""

    __slots__ = ("_bad_reason", "_what", "seq_in")

    def __init__(self, what: str, bad_reason: str) -> None:
        self._what = what
        self._bad_reason = bad_reason
        self.seq_in = 0

    def split(self, line: bytes) -> tuple[bytes, bytes]:
        """The name and the body of the next line."""
        seq, tab, rest = line.partition(b"\t")
        name, tab2, body = rest.partition(b"\t")
        if not (tab and tab2):
            raise _bad(
                f"a {self._what} line is SEQ TAB NAME TAB LINE", line, self._bad_reason
            )
        self.seq_in += 1
        if seq != b"%d" % self.seq_in:
            raise _bad(
                f"line {seq[:20]!r} where line {self.seq_in} was due",
                line,
                "out-of-order",
            )
        return name, body


class Mux:
    """The framing of a peer link (see the module docstring): a hello,
    then ``seq TAB name TAB line`` per line of each replica's session.

    It drives a :class:`~repred.protocol.Session` per replica both sides
    hold with one type, as the trio edge drives any channel: bytes in
    (:meth:`feed`), bytes out (:meth:`data_to_send`).
    """

    def __init__(
        self,
        replicas: Mapping[str, Any],
        node: str,
        options: LinkOptions,
        *,
        receive_writes: bool = True,
        stay: float | None = None,
    ) -> None:
        self._replicas = replicas
        self._decoder = LineDecoder(MAX_HELLO_BYTES)
        self._options = options
        #: Apply what the peer writes to the named replicas (membership is
        #: always received: it keeps the network whole).
        self._receive_writes = receive_writes
        hello: dict[str, Any] = {
            "repred-peer": PEER_PROTOCOL,
            "node": node,
            "replicas": {n: r.type_name for n, r in replicas.items()},
        }
        #: The membership map's fingerprint and clock as the link opens.
        self._root: str | None = None
        self._base: Mapping[str, float] = {}
        members = replicas.get(MEMBERS)
        if isinstance(members, Membership):
            root, self._base = members.fingerprint()
            self._root = hello["members"] = root.hex()
        if stay is not None:
            hello["stay"] = stay
        self._out = [orjson.dumps(hello, option=orjson.OPT_APPEND_NEWLINE)]
        #: Both maps agreed: the first membership line each way is a digest
        #: of what changed since (see the module docstring).
        self._shrink = self._expand = False
        self.hello: dict[str, Any] | None = None
        #: Lines numbered in each direction: a line lost, repeated or
        #: reordered on the way ends the link before it is applied.
        self._framing = Framing("peer", "not-a-peer")
        self._seq_out = 0
        self.sessions: list[Session] = []
        self._by_name: dict[bytes, Session] = {}
        self._wakeup: Callable[[], None] | None = None

    @property
    def peer_id(self) -> str | None:
        return None if self.hello is None else self.hello["node"]

    @property
    def handshake_done(self) -> bool:
        return self.hello is not None

    @property
    def stay(self) -> float | None:
        """How long the peer said it would keep this link, if it said."""
        return None if self.hello is None else self.hello.get("stay")

    @property
    def agreed(self) -> bool:
        """The two membership maps agreed when the link opened."""
        return (
            self._root is not None
            and self.hello is not None
            and (self.hello.get("members") == self._root)
        )

    @property
    def lines_in(self) -> int:
        return self._decoder.lines

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    @property
    def expects_keepalives(self) -> bool:
        return True  # every peer link is between repred peers

    def keepalive(self) -> None:
        for session in self.sessions:
            session.keepalive()

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        self._wakeup = wakeup

    def feed(self, data: bytes | bytearray) -> list[object]:
        events: list[object] = []
        if data:
            self._route(self._decoder.feed(data), events)
            if self._decoder.error is not None:
                raise self._decoder.error
            return events
        rest = self._decoder.eof()
        self._route([rest] if rest is not None else [], events)
        for session in self.sessions:
            if session.their_state.value not in ("closed", "error"):
                events += session.receive_data(None)
        return events

    def _route(self, lines: list[bytes], events: list[object]) -> None:
        start = 0
        if self.hello is None and lines:
            self._on_hello(lines[0])
            start = 1
        current: Session | None = None
        bodies: list[bytes] = []
        by_name = self._by_name
        for line in lines[start:]:
            try:
                name, body = self._framing.split(line)
            except RemoteProtocolError:
                if current is not None and bodies:  # (the lines before it)
                    events += current.receive_data(b"\n".join(bodies) + b"\n")
                raise
            session = by_name.get(name)
            if session is None:
                raise _bad(
                    f"a line for replica {name[:80]!r}, not one both sides hold",
                    line,
                    "unknown-replica",
                )
            if session is not current:
                if current is not None and bodies:
                    events += current.receive_data(b"\n".join(bodies) + b"\n")
                current, bodies = session, []
            if self._expand and name == _MEMBERS_NAME:
                self._expand = False
                body = _expand(body, self._base)
            bodies.append(body)
        if current is not None and bodies:
            events += current.receive_data(b"\n".join(bodies) + b"\n")

    def _on_hello(self, line: bytes) -> None:
        msg = loads_strict(line, "replicas")
        _check_hello(msg, line)
        theirs = msg["replicas"]
        if len(theirs) > MAX_HELLO_REPLICAS or not all(
            type(n) is str
            and type(t) is str
            and 0 < len(n) <= MAX_NAME_LENGTH
            and len(t) <= MAX_NAME_LENGTH
            for n, t in theirs.items()
        ):
            raise _bad("a hello with too many or bad replica names", line)
        for name, replica in self._replicas.items():
            if theirs.get(name) == replica.type_name:
                options = self._options
                if not self._receive_writes and name != MEMBERS:
                    options = attrs.evolve(options, receive=False)
                session = options.session(replica)
                session.wakeup = self._wakeup
                self.sessions.append(session)
                self._by_name[name.encode()] = session
            elif name in theirs:
                _log_type_mismatch(msg["node"], name, theirs[name], replica.type_name)
        self.hello = msg
        if self.agreed and _MEMBERS_NAME in self._by_name:
            self._shrink = self._expand = True
        # Past the hello, a line may carry a whole entry and its prefix.
        self._decoder.set_limit(self._options.max_line_bytes + 256)
        if self._wakeup is not None:
            self._wakeup()

    def data_to_send(self) -> bytes:
        out = self._out
        self._out = []
        for name, session in self._by_name.items():
            data = session.data_to_send()
            if data:
                prefix = b"\t" + name + b"\t"
                lines = data[:-1].split(b"\n")
                if self._shrink and name == _MEMBERS_NAME:
                    self._shrink = False
                    lines[0] = _shrink(lines[0], self._base)
                for line in lines:
                    self._seq_out += 1
                    out.append(b"%d%s%s\n" % (self._seq_out, prefix, line))
        return b"".join(out)


def _check_hello(msg: Any, line: bytes) -> None:
    """A hello of this version, or the error that says what it is."""
    if type(msg) is not dict or "repred-peer" not in msg:
        raise _bad("not a repred peer (no hello)", line)
    version = msg["repred-peer"]
    if version != PEER_PROTOCOL or type(version) is not int:
        raise IncompatiblePeerError(
            f"the peer speaks repred-peer {version!r:.20}, this node"
            f" {PEER_PROTOCOL}: every node of a network must run the same"
            " version (2 sent heartbeats, which 3 does not read)",
            reason="incompatible-peer",
            line=snippet(line),
        )
    stay, root = msg.get("stay"), msg.get("members")
    if (
        type(msg.get("node")) is not str
        or len(msg["node"]) > 300
        or type(msg.get("replicas")) is not dict
        or not (root is None or (type(root) is str and len(root) <= _MAX_ROOT))
        or not (stay is None or (type(stay) in (int, float) and 0 <= stay <= MAX_STAY))
    ):
        raise _bad("a hello with a bad node, replicas, members or stay", line)


def _shrink(digest: bytes, base: Mapping[str, float]) -> bytes:
    """Our membership digest as the change since ``base`` (its clock is
    ours: no check needed)."""
    msg = orjson.loads(digest)
    clock = msg["clock"]
    msg["clock"] = {s: ts for s, ts in clock.items() if base.get(s) != ts}
    return orjson.dumps(msg)


def _expand(line: bytes, base: Mapping[str, float]) -> bytes:
    """The peer's membership digest, given as the change since ``base``,
    whole again: the session checks it as any digest."""
    msg = loads_strict(line, "clock")
    if type(msg) is not dict or type(msg.get("clock")) is not dict:
        raise _bad("a membership digest without a clock", line, "bad-digest")
    msg["clock"] = {**base, **msg["clock"]}
    return orjson.dumps(msg)


def _log_type_mismatch(node: str, name: str, theirs: str, ours: str) -> None:
    """Said once per node and name: a shared name with different types."""
    limited(
        logging.WARNING,
        "type-mismatch",
        "peer %s holds replica %r as type %r, this node as %r: not replicated",
        node,
        name,
        theirs,
        ours,
        logger=peer_log,
        once=(node, name),
    )
