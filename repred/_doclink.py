"""Document links: many placed documents over one link, opened as needed.

A placed peer (``open_peer(documents=...)``) reaches a document's owners
over links of their own, one per node it dials. Each side first sends a
hello line, ``{"repred-docs": 1, "node": "host:port", "copies": 3}``; then
every line goes as ``seq TAB name TAB line``, numbered as on the gossip
links (:mod:`repred._mux`): a line lost, repeated or reordered ends the
link. A line with a document's name belongs to that document's scuttlebutt
session; a line with an empty name is a control message:

* ``{"open": NAME, "type": T}``: the sender would replicate ``NAME`` (a
  replica of type ``T``). Nothing of the document follows until the answer.
* ``{"accept": NAME}``: the session starts (each side's digest follows), or
  ``{"refuse": NAME, "reason": R}``: it does not (``not-owner``, ``busy``,
  ``full``, ``type``, ``reserved``).
* ``{"close": NAME}``: either side ends a session; the other answers with
  the same line, and lines already on their way for it are dropped.
* ``{"clock": NAME, "at": {source: ts}}``: how far the sender's replica
  now holds those sources (applied, and committed if it has a store): the
  acknowledgement scuttlebutt lacks. Sent after the sender applied lines
  of that document, or gained entries for the other side; only the sources
  that moved since the last one, so a quiet session sends none.
* ``{"probe": NAME}``, answered by ``{"held": NAME, "at": clock}`` (``null``
  if the other side holds no copy): what a node asks before it opens a
  session only to check that a copy is there (two short lines instead of
  two digests and a sync).

What the other side holds of a document is its digest's clock, moved on by
its ``clock`` lines: :func:`covers` says whether that is everything this
side held at some moment. A side takes at most :data:`MAX_LINK_DOCUMENTS`
sessions the other opened (``busy`` past that), has at most one probe of
a name outstanding, and a clock that names more sources than a replica
takes by default (16,384) ends the link. The other side's probes are
answered once per name, when the answer goes out, and more names probed
and not answered yet than sessions it may open end the link: what it asks
costs this side a name each, not a clock. As many opens refused in a row
as it may open sessions end the link too (each refusal costs a placement
over every member).

The name of a document is checked by :func:`check_document_name`, the one
owner of that rule (for :meth:`repred.Peer.document`, the web port and the
peer command too).

Pure, beside :mod:`repred._mux`: bytes in, bytes out, no trio.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import orjson

from ._address import parse_member
from ._errors import RemoteProtocolError
from ._mux import Framing
from ._replica import DEFAULT_MAX_SOURCES
from ._wire import (
    KEEPALIVE,
    LineDecoder,
    canonical_stamp,
    is_source,
    is_stamp,
    loads_strict,
    snippet,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._options import LinkOptions
    from ._replica import Replica
    from ._session import Session

__all__ = [
    "DOCS_PROTOCOL",
    "MAX_DOCUMENT_NAME",
    "MAX_LINK_DOCUMENTS",
    "DocChannel",
    "DocHost",
    "LinkDoc",
    "check_document_name",
    "covers",
]

DOCS_PROTOCOL = 1
#: The longest document name.
MAX_DOCUMENT_NAME = 128
#: Sessions one side of a link takes that the other side opened.
MAX_LINK_DOCUMENTS = 256
#: The longest hello accepted.
_MAX_HELLO_BYTES = 4096
#: The longest refusal reason read.
_MAX_REASON = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_OPT = orjson.OPT_APPEND_NEWLINE


def check_document_name(name: Any) -> str:
    """``name`` if it can name a placed document, else the reason why not.

    A document name is 1 to 128 characters of ``A-Z a-z 0-9 . _ -``,
    starting with a letter or a digit: it travels on links, names a store
    file (the peer command's ``--data``) and a web path (``/replicas/NAME``)
    as it is, with nothing to escape anywhere.

    >>> check_document_name("recipes-2024.v1")
    'recipes-2024.v1'

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: it is empty, too long, or holds another character.
    """
    if type(name) is not str:
        raise TypeError(f"a document name is a str, not {type(name).__name__}")
    if not 0 < len(name) <= MAX_DOCUMENT_NAME or not _NAME.match(name):
        raise ValueError(
            f"bad document name {name[:MAX_DOCUMENT_NAME]!r}: 1 to"
            f" {MAX_DOCUMENT_NAME} of A-Z a-z 0-9 . _ -, starting with a"
            " letter or a digit"
        )
    return name


def covers(known: Mapping[str, float] | None, clock: Mapping[str, float]) -> bool:
    """Whether a replica known to hold ``known`` holds everything ``clock``
    says (per source: by per-source completeness, a clock is what it holds)."""
    if known is None:
        return False
    return all(known.get(source, -1) >= ts for source, ts in clock.items())


def _bad(message: str, line: bytes, reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason, line=snippet(line))


def _clock(at: Any, body: bytes) -> dict[str, float]:
    """A clock from a control line, checked by the wire's rules."""
    if (
        type(at) is not dict
        or len(at) > DEFAULT_MAX_SOURCES
        or not all(is_source(s) and is_stamp(ts) for s, ts in at.items())
    ):
        raise _bad("a clock is {source: stamp}", body, "bad-clock")
    return {source: canonical_stamp(ts) for source, ts in at.items()}


class DocHost(Protocol):
    """What a :class:`DocChannel` asks of the node it runs in."""

    def accept(self, peer: str, name: str, type_name: str) -> Replica | str:
        """The replica to open ``name`` with, for ``peer`` (the node its
        hello names), or why not (a short reason, sent to the peer)."""
        ...

    def released(self, name: str, replica: Replica) -> None:
        """A session the other side opened on ``name`` has ended."""
        ...

    def clock(self, name: str) -> Mapping[str, float] | None:
        """This node's clock for ``name``, if it holds a copy."""
        ...


@attrs.define(eq=False)
class LinkDoc:
    """One document on one link, as this side sees it.

    Attributes:
        state: ``"opening"`` (ours, not answered yet; ``"opening-closed"``
            if closed meanwhile), ``"open"``, ``"closing"`` (this side
            closed it: lines on their way are dropped) or ``"refused"``.
        ours: this side opened it.
        known: the other side's clock for it (its digest, then its ``clock``
            lines), once its digest arrived.
        told: this side's clock as last told the other side.
        due: a ``clock`` line may be due.
        reason: why the other side refused it.
        activity: lines it carried either way (what tells an idle one).
        keep: the node keeps it open (a live copy's link to its owner).
        reopen: open it again once the close is answered.
        idle_mark: ``activity`` when the node last looked (an idle check).
    """

    name: str
    replica: Replica
    ours: bool
    state: str = "opening"
    session: Session | None = None
    known: dict[str, float] | None = None
    told: dict[str, float] = attrs.Factory(dict)
    due: bool = False
    reason: str | None = None
    activity: int = 0
    keep: bool = False
    reopen: bool = False
    idle_mark: int = -1

    @property
    def synced(self) -> bool:
        """Both sides exchanged everything they held when it opened."""
        return self.session is not None and self.session.synced


#: The control messages: the key each starts with, and all its keys.
_SHAPES: dict[str, frozenset[str]] = {
    "open": frozenset(("open", "type")),
    "accept": frozenset(("accept",)),
    "refuse": frozenset(("refuse", "reason")),
    "close": frozenset(("close",)),
    "clock": frozenset(("clock", "at")),
    "probe": frozenset(("probe",)),
    "held": frozenset(("held", "at")),
    "keepalive": frozenset(("keepalive",)),
}


class DocChannel:
    """The framing of a document link (see the module docstring), driven
    by the trio edge like any channel: bytes in (:meth:`feed`), bytes out
    (:meth:`data_to_send`).

    ``on_change(name)`` is called whenever something about a document on
    this link changes: an answer, a digest, a ``clock`` line, a ``SYNC``,
    its end.
    """

    def __init__(
        self,
        node: str,
        copies: int,
        host: DocHost,
        options: LinkOptions,
        *,
        on_change: Callable[[str], None],
        max_documents: int = MAX_LINK_DOCUMENTS,
    ) -> None:
        self._copies = copies
        self._host = host
        self._options = options
        self._on_change = on_change
        self._max_documents = max_documents
        self._decoder = LineDecoder(_MAX_HELLO_BYTES)
        hello = {"repred-docs": DOCS_PROTOCOL, "node": node, "copies": copies}
        self._hello = orjson.dumps(hello, option=_OPT)
        #: Lines to send, ``name TAB body`` (an empty name: control).
        self._lines: list[bytes] = []
        self._framing = Framing("document", "bad-line")
        self._seq_out = 0
        self._wakeup: Callable[[], None] | None = None
        self.hello: dict[str, Any] | None = None
        self.docs: dict[str, LinkDoc] = {}
        #: Probes sent and not answered; answers not taken yet.
        self._asked: set[str] = set()
        #: The peer's probes not answered yet, each answered once, when the
        #: answer goes out (with the clock as it is then): a peer that asks
        #: again and again, and reads nothing, costs a name, not a clock.
        self._probed: dict[str, None] = {}
        self.answers: dict[str, dict[str, float] | None] = {}
        #: Bytes the link carried each way, and opens this side refused.
        self.bytes_in = self.bytes_out = self.refused = 0
        self._refused_in_a_row = 0
        #: The link is over (see :meth:`end`).
        self.closed = False

    def __repr__(self) -> str:
        return f"<DocChannel to {self.peer_id!r} docs={len(self.docs)}>"

    # -- what the connection reads ----------------------------------------

    @property
    def sessions(self) -> list[Session]:
        return [d.session for d in self.docs.values() if d.session is not None]

    @property
    def peer_id(self) -> str | None:
        return None if self.hello is None else str(self.hello["node"])

    @property
    def handshake_done(self) -> bool:
        return self.hello is not None

    @property
    def lines_in(self) -> int:
        return self._decoder.lines

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    @property
    def expects_keepalives(self) -> bool:
        return True

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        self._wakeup = wakeup

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup()

    def keepalive(self) -> None:
        if self.hello is not None and not self._lines:
            self._queue({"keepalive": KEEPALIVE})

    # -- what the node does -------------------------------------------------

    def open(self, name: str, replica: Replica, *, keep: bool = False) -> LinkDoc:
        """Open ``name`` on this link, or keep the session there is; its
        :attr:`LinkDoc.state` says when the other side answered."""
        doc = self.docs.get(name)
        if doc is not None and doc.state == "refused":
            del self.docs[name]
            doc = None
        if doc is None:
            doc = self.docs[name] = LinkDoc(name, replica, ours=True)
            self._queue({"open": name, "type": replica.type_name})
        elif doc.state == "closing":
            doc.reopen = True
        elif doc.state == "opening-closed":
            doc.state = "opening"
        doc.keep = doc.keep or keep
        return doc

    def probe(self, name: str) -> None:
        """Ask how far the other side holds ``name``: the answer comes in
        :attr:`answers` (``None``: it holds no copy)."""
        if name not in self._asked:
            self._asked.add(name)
            self.answers.pop(name, None)
            self._queue({"probe": name})

    def close(self, name: str) -> None:
        """End the session on ``name``, if there is one (the other side is
        told); forget a refused open."""
        doc = self.docs.get(name)
        if doc is None:
            return
        doc.keep = doc.reopen = False
        if doc.state == "refused":
            del self.docs[name]
        elif doc.state == "open":
            self._detach(doc)
            doc.state = "closing"
            self._queue({"close": name})
        elif doc.state == "opening":
            doc.state = "opening-closed"

    def end(self) -> list[LinkDoc]:
        """The link is over: every session detached; the documents it
        carried (to release those the other side opened)."""
        self.closed = True
        docs = list(self.docs.values())
        for doc in docs:
            self._detach(doc)
        self.docs.clear()
        return docs

    def _queue(self, msg: dict[str, Any]) -> None:
        self._lines.append(b"\t" + orjson.dumps(msg))
        self._wake()

    def _detach(self, doc: LinkDoc) -> None:
        if doc.session is not None:
            doc.session.close()
            doc.session.wakeup = None
            doc.session = None

    # -- bytes in -----------------------------------------------------------

    def feed(self, data: bytes | bytearray) -> list[object]:
        events: list[object] = []
        if data:
            self.bytes_in += len(data)
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
        current: LinkDoc | None = None
        bodies: list[bytes] = []
        for line in lines[start:]:
            try:
                name, body = self._framing.split(line)
            except RemoteProtocolError:
                self._deliver(current, bodies, events)  # (the lines before it)
                raise
            doc = self._doc_for(name, line) if name else None
            if doc is not current:
                self._deliver(current, bodies, events)
                current, bodies = doc, []
            if doc is not None:
                bodies.append(body)
            elif not name:
                self._control(body)
        self._deliver(current, bodies, events)

    def _doc_for(self, name: bytes, line: bytes) -> LinkDoc | None:
        """The open document a line is for; ``None`` for one this side
        closed (its lines were on their way)."""
        doc = self.docs.get(name.decode("ascii", "replace"))
        if doc is not None and doc.state == "open":
            return doc
        if doc is not None and doc.state == "closing":
            return None
        raise _bad(
            f"a line for document {name[:80]!r}, which is not open",
            line,
            "unknown-document",
        )

    def _deliver(
        self, doc: LinkDoc | None, bodies: list[bytes], events: list[object]
    ) -> None:
        """Hand a document's lines to its session, then say what moved."""
        if doc is None or not bodies or doc.session is None:
            return
        session = doc.session
        doc.activity += len(bodies)
        events += session.receive_data(b"\n".join(bodies) + b"\n")
        doc.due = True  # it applied what came: say how far it now holds
        if doc.known is None and session.peer is not None:
            doc.known = dict(session.peer.clock)
        self._wake()
        self._on_change(doc.name)

    def _on_hello(self, line: bytes) -> None:
        msg = loads_strict(line)
        if (
            type(msg) is not dict
            or msg.get("repred-docs") != DOCS_PROTOCOL
            or type(msg.get("node")) is not str
            or type(msg.get("copies")) is not int
        ):
            raise _bad("not a repred document link (no hello)", line, "not-a-peer")
        try:
            parse_member(msg["node"])
        except ValueError:
            raise _bad("a hello naming no member", line, "not-a-peer") from None
        if msg["copies"] != self._copies:
            raise _bad(
                f"the peer keeps {msg['copies']} copies of each document,"
                f" this node {self._copies}: every node must be given the"
                " same copies=",
                line,
                "copies-mismatch",
            )
        self.hello = msg
        # Past the hello, a line may carry a whole entry and its prefix.
        self._decoder.set_limit(self._options.max_line_bytes + 256)
        self._wake()

    # -- control messages -----------------------------------------------

    def _control(self, body: bytes) -> None:
        msg = loads_strict(body, "at")
        kind = next(iter(msg), None) if type(msg) is dict else None
        if kind not in _SHAPES or msg.keys() != _SHAPES[kind]:
            raise _bad("not a control message", body, "bad-control")
        if kind == "keepalive":
            return
        name = msg[kind]
        try:
            check_document_name(name)
        except (TypeError, ValueError) as exc:
            raise _bad(str(exc), body, "bad-document-name") from None
        if kind == "open":
            self._on_open(name, msg["type"], body)
        elif kind == "clock":
            self._on_clock(name, msg["at"], body)
        elif kind == "probe":
            if name not in self._probed:
                if len(self._probed) >= self._max_documents:
                    raise _bad("too many probes unanswered", body, "too-many-probes")
                self._probed[name] = None
                self._wake()
        elif kind == "held":
            self._on_held(name, msg["at"], body)
        elif kind == "close":
            self._on_close(name, body)
        else:
            self._on_answer(name, msg.get("reason", ""), body, kind == "accept")

    def _on_open(self, name: str, type_name: Any, body: bytes) -> None:
        if type(type_name) is not str or len(type_name) > MAX_DOCUMENT_NAME:
            raise _bad("a document's type is a short str", body, "bad-control")
        if name in self.docs:
            raise _bad(f"{name!r} opened twice", body, "duplicate-open")
        if self._refused_in_a_row >= self._max_documents:
            # Each costs a placement over every member: a peer that names
            # what this node does not hold, again and again, is cut.
            raise _bad("too many opens refused in a row", body, "too-many-refused")
        theirs = sum(1 for d in self.docs.values() if not d.ours)
        took = (
            "busy"
            if theirs >= self._max_documents
            else self._host.accept(self.peer_id or "", name, type_name)
        )
        if isinstance(took, str):
            self.refused += 1
            if took != "busy":  # (the host was asked)
                self._refused_in_a_row += 1
            self._queue({"refuse": name, "reason": took[:_MAX_REASON]})
            return
        self._refused_in_a_row = 0
        doc = self.docs[name] = LinkDoc(name, took, ours=False)
        self._queue({"accept": name})
        self._start(doc)

    def _start(self, doc: LinkDoc) -> None:
        doc.state = "open"
        doc.told = dict(doc.replica.clock)  # what the session's digest says
        session = doc.session = self._options.session(doc.replica)
        session.wakeup = lambda: self._woken(doc)
        self._wake()

    def _woken(self, doc: LinkDoc) -> None:
        """The session has entries for the other side: this side gained
        some, which the next ``clock`` line says."""
        doc.due = True
        self._wake()

    def _on_answer(self, name: str, reason: Any, body: bytes, accepted: bool) -> None:
        doc = self.docs.get(name)
        if doc is None or not doc.ours or not doc.state.startswith("opening"):
            raise _bad(
                f"an answer for {name!r}, never asked", body, "unexpected-answer"
            )
        if type(reason) is not str:
            raise _bad("a refusal's reason is a str", body, "bad-control")
        if accepted:
            closed = doc.state == "opening-closed"
            self._start(doc)
            if closed:
                self.close(name)
        elif doc.state == "opening-closed":
            del self.docs[name]
        else:
            doc.state, doc.reason = "refused", reason[:_MAX_REASON]
        self._on_change(name)

    def _on_close(self, name: str, body: bytes) -> None:
        doc = self.docs.get(name)
        if doc is None or doc.state not in ("open", "closing"):
            raise _bad(
                f"a close for {name!r}, which is not open", body, "unknown-document"
            )
        if doc.state == "open":
            self._detach(doc)
            self._queue({"close": name})
        del self.docs[name]
        if not doc.ours:
            self._host.released(name, doc.replica)
        elif doc.reopen:
            self.open(name, doc.replica, keep=doc.keep)
        self._on_change(name)

    def _on_clock(self, name: str, at: Any, body: bytes) -> None:
        doc = self.docs.get(name)
        if doc is not None and doc.state == "closing":
            return  # on its way before our close
        if doc is None or doc.state != "open" or doc.known is None:
            raise _bad(
                f"a clock for {name!r} before its digest", body, "unknown-document"
            )
        known = doc.known
        for source, ts in _clock(at, body).items():
            if known.get(source, -1) < ts:
                known[source] = ts
        if len(known) > DEFAULT_MAX_SOURCES:
            raise _bad(
                "a clock naming more sources than a replica takes",
                body,
                "too-many-sources",
            )
        self._on_change(name)

    def _on_held(self, name: str, at: Any, body: bytes) -> None:
        if name not in self._asked:
            raise _bad(
                f"an answer for {name!r}, never asked", body, "unexpected-answer"
            )
        self._asked.discard(name)
        self.answers[name] = None if at is None else _clock(at, body)
        self._on_change(name)

    # -- bytes out ----------------------------------------------------------

    def data_to_send(self) -> bytes:
        lines, self._lines = self._lines, []
        for name in self._probed:
            held = self._host.clock(name)
            at = None if held is None else dict(held)
            lines.append(b"\t" + orjson.dumps({"held": name, "at": at}))
        self._probed.clear()
        for doc in list(self.docs.values()):
            session = doc.session
            if session is None:
                continue
            data = session.data_to_send()
            if data:
                doc.activity += 1
                prefix = doc.name.encode() + b"\t"
                lines += [prefix + line for line in data[:-1].split(b"\n")]
            if doc.due and session.peer is not None:
                doc.due = False
                self._report(doc, lines)
        out = [self._hello] if self._hello else []
        self._hello = b""
        seq = self._seq_out
        for line in lines:
            seq += 1
            out.append(b"%d\t%s\n" % (seq, line))
        self._seq_out = seq
        data = b"".join(out)
        self.bytes_out += len(data)
        return data

    def _report(self, doc: LinkDoc, lines: list[bytes]) -> None:
        """A ``clock`` line: the sources that moved since the last one."""
        told = doc.told
        moved = {s: ts for s, ts in doc.replica.clock.items() if told.get(s, -1) < ts}
        if moved:
            told.update(moved)
            lines.append(b"\t" + orjson.dumps({"clock": doc.name, "at": moved}))
