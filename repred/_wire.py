"""Bytes to messages and back: newline-delimited JSON, as JS scuttlebutt.

Three kinds of message travel, told apart by their JSON type, as in JS
scuttlebutt:

* an object is a :class:`Digest` ``{"id": ..., "clock": {source: ts}}``,
  with repred's extensions in extra keys (JS peers ignore them);
* an array is an entry ``[change, ts, source]``;
* the string ``"SYNC"`` ends the history.

Between two repred peers (both digests say ``"batches": 1``), entries may also
travel in batches, one source per line (a repred extension; JS peers never
see one)::

    {"batch": source, "stamps": [ts, ...], "changes": [change, ...]}

The stamps strictly increase and are canonical (a whole number is written
as an integer); the i-th change goes with the i-th stamp. A batch is the
same entries as the lines ``[changes[i], stamps[i], source]``, in order,
checked by the same rules: a batch that breaks one is refused whole, before
any of it is applied. Signed entries add ``"signatures": [slot, ...]``,
written before ``"changes"``.

A protocol object (a digest and its clock, a batch, a snapshot and its
clock, an announcement) that names a key twice is refused: JSON parsers
disagree on which of the two counts. What a user wrote (a change, a
snapshot's update) is a value like any other, whatever its keys.

Everything a peer sends is checked here, before it can reach a replica;
whatever fails becomes a :class:`RemoteProtocolError` saying why.
"""

from __future__ import annotations

import json
import math
import mmap
import operator
import weakref
from itertools import compress, repeat
from typing import Any

import attrs
import orjson

from ._errors import IncompatiblePeerError, RemoteProtocolError
from ._trust import SIGNATURE_LENGTH, is_signature

__all__ = [
    "AE_FORMAT",
    "DEFAULT_MAX_LINE_BYTES",
    "KEEPALIVE",
    "KEEPALIVE_LINE",
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "MAX_SIGNATURE_LENGTH",
    "MAX_SOURCE_LENGTH",
    "MAX_STAMP",
    "PROTOCOL_VERSION",
    "SYNC",
    "SYNC_LINE",
    "AeMessage",
    "Batch",
    "Digest",
    "Expect",
    "LineDecoder",
    "Proof",
    "Repair",
    "RepairSnapshot",
    "Snapshot",
    "canonical_stamp",
    "check_unique_keys",
    "check_value",
    "decode",
    "depth_within",
    "encode_ae",
    "encode_batch",
    "encode_digest",
    "encode_entry",
    "encode_expect",
    "encode_proof",
    "encode_repair",
    "encode_repair_snapshot",
    "encode_snapshot",
    "entry_snippet",
    "loads_batch",
    "loads_line",
    "loads_strict",
    "mapped_bytes",
    "parse_entry",
    "parse_message",
    "snippet",
]

#: Longest line accepted from a peer: 1 MiB. JS scuttlebutt has no limit, so
#: a peer that never sends a newline grows its buffer without bound.
DEFAULT_MAX_LINE_BYTES = 1 << 20

#: An unfinished line longer than this is kept in pages of its own, which
#: go back to the system as soon as it is complete (see LineDecoder).
SPILL_BYTES = 64 * 1024

#: Longest source id accepted, locally or from a peer.
MAX_SOURCE_LENGTH = 256

#: Longest signature slot accepted: an ed25519 signature takes 86 characters,
#: and a slot is refused unless it is one spelt canonically (see
#: :func:`repred._trust.is_signature`).
MAX_SIGNATURE_LENGTH = SIGNATURE_LENGTH

#: Largest stamp accepted, locally, from a peer or from a store: the largest
#: integer a JSON number holds exactly everywhere (JavaScript's
#: ``Number.MAX_SAFE_INTEGER``), about 285,000 years of milliseconds.
MAX_STAMP = 2**53 - 1

#: Integers in a value must lie within +-this, so that every peer, JS ones
#: included, reads back exactly the number that was written.
MAX_SAFE_INTEGER = 2**53 - 1

#: Bounds on the encoded size of checked values, so that a writer can tell
#: an entry is within a line limit without encoding it: a character of a
#: string takes at most ``CHAR_BYTES`` in JSON (``\u001f``), a number,
#: ``true``, ``false`` or ``null`` at most ``SCALAR_BYTES``
#: (``-1.7976931348623157e+308``), and an unsigned entry's frame (brackets,
#: commas, its stamp, the source's quotes and the newline) at most
#: ``ENTRY_FRAME_BYTES`` around its change and source.
CHAR_BYTES = 6
SCALAR_BYTES = 24
ENTRY_FRAME_BYTES = 4 + SCALAR_BYTES + 2 + 1

#: Deepest nesting of lists and objects in a change. Deeper values are
#: refused on the way in, locally and from peers, so that every entry a
#: replica holds can be encoded again (orjson stops at 255 levels).
MAX_DEPTH = 128

#: repred's protocol version, sent in the digest's ``"repred"`` key.
PROTOCOL_VERSION = 1

#: The batch format this side reads, sent in the digest's ``"batches"`` key.
BATCH_FORMAT = 1

#: The anti-entropy format this side speaks, sent in the digest's
#: ``"antientropy"`` key (see :mod:`repred._antientropy`).
AE_FORMAT = 1

#: How a batch line starts as repred writes it (the prefix that selects the
#: fast decoder; any other spelling of a batch is read by the general one).
BATCH_PREFIX = b'{"batch":'

SYNC = "SYNC"
SYNC_LINE = b'"SYNC"\n'

#: A line that says "still here" on a quiet link. JS scuttlebutt ignores a
#: JSON string other than ``"SYNC"``, so it is safe to send to any peer.
KEEPALIVE = "KEEPALIVE"
KEEPALIVE_LINE = b'"KEEPALIVE"\n'

_OPT = orjson.OPT_APPEND_NEWLINE
_dumps = orjson.dumps
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


@attrs.frozen(kw_only=True)
class Digest:
    """A peer's opening message: who it is and what it has."""

    id: str | None
    clock: dict[str, float] = attrs.field(hash=False)
    version: int | None = None
    type_name: str | None = None
    #: The longest line the peer accepts, if it said (a repred extension).
    max_line: int | None = None
    #: The batch format the peer reads (a repred extension), if any.
    batch: int | None = None
    #: The peer reads ``{"expect": n}`` announcements (a repred extension).
    progress: bool = False
    #: The peer compares hash trees after a sync (anti-entropy, a repred
    #: extension), in this format.
    antientropy: bool = False
    #: The peer's replica object (a random token; a repred extension): the
    #: same one on both ends is a link of a replica to itself.
    instance: str | None = None


@attrs.frozen
class Batch:
    """Entries of one source, in stamp order (see the module docstring)."""

    source: str
    stamps: list[float] = attrs.field(hash=False)
    changes: list[Any] = attrs.field(hash=False)
    #: The entries' signatures (``None`` for an unsigned one), if any came.
    signatures: list[str | None] | None = attrs.field(default=None, hash=False)


@attrs.frozen
class Expect:
    """How many entries the peer is about to send as its history (a repred
    extension, sent only to a peer whose digest says ``"progress": 1``:
    ``{"expect": entries}``, right after the digest). An upper bound: the
    peer may send fewer."""

    entries: int


@attrs.frozen(kw_only=True)
class Snapshot:
    """A folded history: an update equal to many entries, and what it covers.

    A repred extension, sent only to repred peers: ``{"snapshot": update,
    "clock": {source: ts}}``. Applying ``update`` gives every entry of each
    source up to its ``clock`` value.
    """

    update: Any = attrs.field(hash=False)
    clock: dict[str, float] = attrs.field(hash=False)


_JSON_TYPES = "str, int, float, bool, None, list, or dict with str keys"


def check_value(value: Any, what: str = "value") -> None:
    """Refuse anything that would not come back from JSON exactly as it is.

    A replicated value is a JSON value held as the types JSON decodes to:
    ``dict`` with ``str`` keys, ``list``, ``str``, ``int`` within
    :data:`MAX_SAFE_INTEGER`, finite ``float``, ``bool`` and ``None``, at most
    :data:`MAX_DEPTH` levels deep. Tuples, sets, datetimes, UUIDs, enums,
    dataclasses, NaN and big integers are refused rather than converted, so
    that what the writer holds is exactly what every peer receives.

    Raises:
        TypeError: naming the path of the first offending part, such as
            ``value[1]['when']``.
    """
    # Fast path (every local write): a scalar, or a flat list of scalars,
    # checked inline (the rules of plain_scalar).
    kind = type(value)
    if kind is list:
        for item in value:
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    break
            elif kind is int:
                if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    break
            elif not (kind is bool or item is None or plain_scalar(item)):
                break
        else:
            return
    elif plain_scalar(value):
        return
    _check(value, what, 0)


def plain_scalar(value: Any) -> bool:
    """A scalar that is certainly fine (anything else takes the long way)."""
    kind = type(value)
    if kind is str:
        return bool(value.isascii())
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    if kind is float:
        return math.isfinite(value)
    return kind is bool or value is None


def _check(value: Any, what: str, depth: int) -> None:
    try:
        _check_inner(value, depth)
    except _Refused as refused:
        path = what + "".join(reversed(refused.path))
        if len(path) > 80:
            path = f"{path[:50]}...{path[-25:]}"
        raise TypeError(f"{path} {refused.problem}") from None


class _Refused(Exception):
    """What is wrong, and where: the path is built only on the way out."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str] = []


def _check_inner(value: Any, depth: int) -> None:
    kind = type(value)
    if kind is str:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Refused("is a str with a lone surrogate, not UTF-8") from None
        return
    if kind is bool or value is None:
        return
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return
        raise _Refused(
            "is an integer beyond +-2**53-1, which JSON peers cannot hold"
            " exactly (send it as a string)"
        )
    if kind is float:
        if math.isfinite(value):
            return
        raise _Refused(f"is {value!r}, which JSON cannot hold")
    if depth >= MAX_DEPTH:
        raise _Refused(f"is nested deeper than {MAX_DEPTH} levels")
    if kind is list:
        for i, item in enumerate(value):
            try:
                _check_inner(item, depth + 1)
            except _Refused as refused:
                refused.path.append(f"[{i}]")
                raise
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _Refused(
                    f"has a key {key!r} of type {type(key).__name__};"
                    " JSON object keys are str"
                )
            try:
                _check_inner(item, depth + 1)
            except _Refused as refused:
                refused.path.append(f"[{key!r}]")
                raise
        return
    raise _Refused(
        f"is a {kind.__name__}, not a JSON value ({_JSON_TYPES});"
        " convert it before writing it"
    )


def depth_within(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects in ``value`` nest at most ``limit`` deep."""
    kind = type(value)
    if kind is not list and kind is not dict:
        return True
    items = value if kind is list else value.values()
    return limit > 0 and all(depth_within(item, limit - 1) for item in items)


def snippet(line: bytes | bytearray) -> bytes:
    """The start of an offending line, for an error: at most 200 bytes."""
    return bytes(line[:200])


def entry_snippet(
    change: Any, ts: float, source: str, signature: str | None = None
) -> bytes:
    """The start of an offending entry's line, for an error."""
    return snippet(encode_entry(change, ts, source, signature))


class LineDecoder:
    """Splits a byte stream into lines, refusing any longer than a limit.

    A line over the limit is reported through :attr:`error` after the good
    lines before it have been returned, so those are still processed.

    Work is linear in the bytes fed, however they are chunked: an unfinished
    line is kept with the offset up to which it has been searched for a
    line break (as h11's receive buffer does), so a long line fed a byte at
    a time is not searched again from its start.

    Memory follows what is held. An unfinished line of up to
    :data:`SPILL_BYTES` is kept in a ``bytearray``; a longer one in pages
    mapped for it alone (``mmap``, doubled as it grows), which go back to
    the system the moment the line is complete, refused, or dropped with
    its decoder, whatever else the process allocated meanwhile: a peer that
    held long unfinished lines leaves nothing behind.

    Attributes:
        lines: complete lines returned so far.
        scanned: bytes searched for a line break so far (at most the bytes
            fed: the measure of the work done).
    """

    __slots__ = (
        "__weakref__",
        "_buf",
        "_held",
        "_map",
        "_max",
        "error",
        "lines",
        "scanned",
    )

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        #: A long unfinished line: its pages, and the bytes written to them.
        self._map: mmap.mmap | None = None
        self._held = 0
        self._max = max_line_bytes
        self.error: RemoteProtocolError | None = None
        self.lines = 0
        self.scanned = 0

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self._buf) if self._map is None else self._held

    def set_limit(self, max_line_bytes: int) -> None:
        """Change the line limit (what is held carries over)."""
        self._max = max_line_bytes

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add bytes; return the lines they completed (without the LF)."""
        if self.error is not None:
            return []
        self.scanned += len(data)
        if b"\n" not in data:
            held = len(self._buf) if self._map is None else self._held
            if held + len(data) > self._max:
                self._too_long(self._start() + bytes(data[:256]))
            elif self._map is None and held + len(data) <= SPILL_BYTES:
                self._buf += data  # (the common case, inline)
            else:
                self._hold(data)
            return []
        if self._buf or self._map is not None:
            lines = (self._take() + data).split(b"\n")
        else:
            lines = bytes(data).split(b"\n")
        rest = lines.pop()
        limit = self._max
        for i, line in enumerate(lines):
            if len(line) > limit:
                self._too_long(line)
                self.lines += i
                return lines[:i]
        if len(rest) > limit:
            self._too_long(rest)
        else:
            self._hold(rest)
        self.lines += len(lines)
        return lines

    def eof(self) -> bytes | None:
        """The stream ended: the unfinished last line, if any (as JS reads it)."""
        rest = self._take()
        if not rest.strip():
            return None
        self.lines += 1
        return rest

    def _hold(self, data: bytes | bytearray) -> None:
        pages = self._map
        if pages is None:
            if len(self._buf) + len(data) <= SPILL_BYTES:
                self._buf += data
                return
            pages = self._grow(self._buf, len(self._buf) + len(data))
            self._buf = bytearray()
        elif self._held + len(data) > len(pages):
            pages = self._grow(pages[: self._held], self._held + len(data))
        start = self._held
        pages[start : start + len(data)] = data
        self._held = start + len(data)

    def _grow(self, held: bytes | bytearray, needed: int) -> mmap.mmap:
        """New pages for an unfinished line: ``held`` and room for ``needed``."""
        pages = mmap.mmap(-1, max(needed, 2 * len(held), 2 * SPILL_BYTES))
        pages[: len(held)] = held
        self._unmap()
        self._map, self._held = pages, len(held)
        _MAPPED.add(self)
        return pages

    def _unmap(self) -> None:
        pages = self._map
        if pages is not None:
            _MAPPED.discard(self)
            self._map, self._held = None, 0
            pages.close()

    def _take(self) -> bytes:
        """The unfinished line, no longer held."""
        if self._map is None:
            held = bytes(self._buf)
            self._buf = bytearray()
            return held
        held = self._map[: self._held]
        self._unmap()
        return held

    def _start(self) -> bytes:
        """The start of the unfinished line, for an error."""
        return bytes(self._buf[:256]) if self._map is None else self._map[:256]

    def _too_long(self, line: bytes) -> None:
        self._take()
        self.error = RemoteProtocolError(
            f"line longer than {self._max} bytes",
            reason="line-too-long",
            line=snippet(line),
        )


#: The decoders holding an unfinished line in pages of its own.
_MAPPED: weakref.WeakSet[LineDecoder] = weakref.WeakSet()


def mapped_bytes() -> int:
    """The memory of the pages written with unfinished lines by all
    decoders (pages mapped but not yet written take none): what
    ``tracemalloc`` does not see."""
    page = mmap.PAGESIZE
    return sum(-(-decoder.buffered // page) * page for decoder in _MAPPED)


def _bad(message: str, reason: str, line: bytes) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason, line=snippet(line))


def canonical_stamp(ts: float) -> float:
    """A stamp as every replica writes and compares it: a whole number as an
    ``int`` (the one rule; the hot paths of this module inline it)."""
    if type(ts) is float and ts.is_integer():
        return int(ts)
    return ts


def decode(line: bytes, batches: bool = False) -> Any:
    """One line from a peer to a message, checked: an entry (a tuple of
    three, or four with a signature), a :class:`Batch` (if ``batches``),
    or any other message (see :func:`parse_message`). The one decoder of
    the receive path.

    Raises:
        RemoteProtocolError: the line is not a valid message.
    """
    if batches and line.startswith(BATCH_PREFIX):
        return loads_batch(line)
    try:
        msg = _loads(line)
    except _JSONDecodeError as exc:
        raise _bad(f"malformed JSON: {exc}", "malformed-json", line) from None
    if type(msg) is not list:
        return parse_message(msg, line)
    # The hot path of every sync: an entry [change, ts, source] that
    # passes every check of parse_entry, in one expression (parse_entry
    # says what is wrong with any other).
    if len(msg) == 3:
        ts, source = msg[1], msg[2]
        kind = type(ts)
        if (
            (kind is int or kind is float)
            and 0 <= ts <= MAX_STAMP
            and type(source) is str
            and 0 < len(source) <= MAX_SOURCE_LENGTH
            and source != "__proto__"
            # Only a line this long can nest too deep to be encoded again.
            and (len(line) <= MAX_DEPTH or depth_within(msg[0]))
        ):
            if kind is float and ts.is_integer():
                ts = int(ts)
            return (msg[0], ts, source)
    return parse_entry(msg, line)


def _stamp(value: Any, line: bytes) -> float:
    kind = type(value)
    if kind is not int and kind is not float:
        raise _bad(f"stamp must be a number, not {kind.__name__}", "bad-stamp", line)
    if not 0 <= value <= MAX_STAMP:  # NaN fails too
        raise _bad("stamp out of range", "bad-stamp", line)
    return int(value) if kind is float and value.is_integer() else value


def is_source(value: Any) -> bool:
    """Whether ``value`` is a source id every peer takes: a non-empty
    string of at most :data:`MAX_SOURCE_LENGTH` characters, and not
    ``__proto__`` (a JS peer's objects would lose it). The one rule, for
    entries, clocks, replicas' own ids and stores; the hot paths of this
    module inline it."""
    return (
        type(value) is str
        and 0 < len(value) <= MAX_SOURCE_LENGTH
        and value != "__proto__"
    )


def is_stamp(value: Any) -> bool:
    """Whether ``value`` is a stamp every peer takes: a number within
    ``[0, MAX_STAMP]`` (the one rule; see :func:`canonical_stamp`)."""
    kind = type(value)
    return (kind is int or kind is float) and 0 <= value <= MAX_STAMP


def _source(value: Any, line: bytes) -> str:
    if not is_source(value):
        raise _bad(
            "source must be a short non-empty string, not '__proto__'",
            "bad-source",
            line,
        )
    return value  # type: ignore[no-any-return]


def loads_line(line: bytes) -> Any:
    """The JSON value of one line.

    Raises:
        RemoteProtocolError: the line is not JSON (or too deeply nested).
    """
    try:
        return _loads(line)
    except _JSONDecodeError as exc:
        raise _bad(f"malformed JSON: {exc}", "malformed-json", line) from None


def parse_message(msg: Any, line: bytes) -> Any:
    """A decoded JSON value to a message: an entry tuple, a :class:`Batch`,
    a :class:`Digest`, ``SYNC`` or another of the messages above."""
    kind = type(msg)
    if kind is list:
        return parse_entry(msg, line)
    if kind is dict:
        check_unique_keys(line, "clock")
        if "batch" in msg:
            return _batch(msg, line, depth_checked=False)
        if "ae" in msg:
            return _ae(msg, line)
        if "repair" in msg:
            return _repair(msg, line)
        if "proof" in msg:
            return _proof(msg, line)
        if "repair_snapshot" in msg:
            return _repair_snapshot(msg, line)
        if "snapshot" in msg:
            return _snapshot(msg, line)
        if "expect" in msg:
            return _expect(msg, line)
        return _digest(msg, line)
    if msg == SYNC:
        return SYNC
    if msg == KEEPALIVE:
        return KEEPALIVE
    raise _bad("unexpected message", "unexpected-message", line)


class _Twice(dict[str, Any]):
    """An object read with a key given twice (only its type is looked at)."""


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else _Twice(obj)


# The standard library's decoder hands each object over as its pairs,
# duplicates included (orjson keeps the last value without a word).
_pairs_decoder = json.JSONDecoder(object_pairs_hook=_object_pairs)


def check_unique_keys(line: bytes, *members: str) -> None:
    """Refuse a line whose object names a key twice, at its top level or in
    the objects it holds under ``members`` (what is below is a user's value,
    never looked into). For the lines that are not the hot path (batches in
    repred's own spelling are checked by :func:`loads_batch`).

    Raises:
        RemoteProtocolError: a key given twice (``duplicate-key``).
    """
    try:
        msg = _pairs_decoder.decode(line.decode())
    except RecursionError:
        raise _bad("nested too deep", "too-deep", line) from None
    except ValueError as exc:  # (orjson refuses all that this does)
        raise _bad(f"malformed JSON: {exc}", "malformed-json", line) from None
    if isinstance(msg, dict) and (
        type(msg) is _Twice or any(type(msg.get(m)) is _Twice for m in members)
    ):
        raise _bad("an object with a key given twice", "duplicate-key", line)


def loads_strict(line: bytes, *members: str) -> Any:
    """The JSON value of one line, refused if it is an object that names a
    key twice (at its top level or in its objects under ``members``).

    Raises:
        RemoteProtocolError: not JSON, or a key given twice.
    """
    msg = loads_line(line)
    if type(msg) is dict:
        check_unique_keys(line, *members)
    return msg


def parse_entry(msg: list[Any], line: bytes) -> tuple[Any, ...]:
    """A decoded entry ``[change, ts, source]`` or ``[change, ts, source,
    signature]``, checked and normalised (a tuple of three or four)."""
    if not 3 <= len(msg) <= 4:
        raise _bad("an entry is [change, ts, source]", "bad-entry", line)
    if len(line) > MAX_DEPTH and not depth_within(msg[0]):
        raise _bad(f"change nested deeper than {MAX_DEPTH} levels", "too-deep", line)
    entry = (msg[0], _stamp(msg[1], line), _source(msg[2], line))
    if len(msg) == 3:
        return entry
    return (*entry, _signature(msg[3], line))


def _signature(value: Any, line: bytes) -> str:
    """A signature slot: the one spelling of a signature's bytes. Every
    replica keeps and forwards a slot as it came, verifying or not, so a
    second spelling of the same signature would travel as a different entry."""
    if not is_signature(value):
        raise _bad(
            f"a signature is {MAX_SIGNATURE_LENGTH} characters of unpadded"
            " URL-safe base64, spelt the one way its 64 bytes are",
            "bad-signature",
            line,
        )
    return value  # type: ignore[no-any-return]


def _orjson_depth() -> int:
    """The deepest nesting orjson decodes (1024 today), found by asking it."""
    low, high = 1, 4096
    while high - low > 1:
        mid = (low + high) // 2
        try:
            _loads(b"[" * mid + b"]" * mid)
            low = mid
        except _JSONDecodeError:
            high = mid
    return low


#: The deepest nesting orjson decodes: padding a value with ``[`` brings
#: that limit down to a batch's (a change may nest MAX_DEPTH levels).
_ORJSON_DEPTH = _orjson_depth()
#: The keys of a run of entries: a batch, or a repair (the same shape).
_RUN_KEYS = {
    key: (
        frozenset((key, "stamps", "changes")),
        frozenset((key, "stamps", "changes", "signatures")),
    )
    for key in ("batch", "repair")
}
_NUMBERS = frozenset((int, float))


def loads_batch(line: bytes) -> Batch:
    """A batch line (one that starts with :data:`BATCH_PREFIX`), checked.

    The hot path of a sync between repred peers. A batch in repred's own
    spelling (no spaces; ``"batch"``, ``"stamps"``, ``"signatures"`` if
    any, ``"changes"``, in that order) is cut at its keys and each value
    decoded on its own: each must be one whole JSON value, so the object
    holds exactly those keys, once each (what orjson alone could not tell:
    it keeps the last of two). Any other spelling is read as any object
    message is, duplicates checked on the way (slower, and never sent).

    The depth of every change is checked without walking changes in
    Python: changes with few brackets cannot nest too deep; flat changes
    (no object, no array two deep) are told by counting their arrays; any
    others are decoded inside padding that brings orjson's own depth limit
    down to theirs.

    Raises:
        RemoteProtocolError: the line is not a valid batch.
    """
    cut = _cut_batch(line)
    if cut is not None:
        view = memoryview(line)
        source, stamps, signatures, changes = cut
        try:
            # (The changes last: once the others are whole values, the cut
            # is right, and an error in them is theirs.)
            parts = (
                _loads(view[source]),
                _loads(view[stamps]),
                None if signatures is None else _loads(view[signatures]),
            )
            return _checked_batch(
                *parts, _loads_changes(line, changes), line, depth_checked=True
            )
        except _JSONDecodeError:
            pass  # not cut where its keys are: read it whole
    msg = loads_line(line)
    if type(msg) is not dict:
        raise _bad("a batch is an object", "bad-batch", line)
    check_unique_keys(line)
    return _batch(msg, line, depth_checked=False)


#: The keys of a batch in repred's spelling, as they stand between values.
_STAMPS_KEY = b',"stamps":['
_SIGNATURES_KEY = b',"signatures":['
_CHANGES_KEY = b',"changes":'


def _cut_batch(line: bytes) -> tuple[slice, slice, slice | None, slice] | None:
    """Where the source, stamps, signatures and changes of a batch in
    repred's spelling lie, or ``None`` for another spelling.

    The first ``,"stamps":[`` after the prefix ends the source (a quote
    inside a string is escaped, so the text cannot lie inside one), and
    stamps and signatures hold no ``]`` inside. A cut that is wrong leaves
    a piece that is not one JSON value, and decoding it fails.
    """
    if not line.endswith(b"}"):
        return None
    stamps = line.find(_STAMPS_KEY, len(BATCH_PREFIX))
    if stamps < 0:
        return None
    start = stamps + len(_STAMPS_KEY) - 1
    end = line.find(b"]", start) + 1
    if not end:
        return None
    signatures = None
    if line.startswith(_SIGNATURES_KEY, end):
        begin = end + len(_SIGNATURES_KEY) - 1
        after = line.find(b"]", begin) + 1
        if not after:
            return None
        signatures, end = slice(begin, after), after
    if not line.startswith(_CHANGES_KEY, end):
        return None
    return (
        slice(len(BATCH_PREFIX), stamps),
        slice(start, end),
        signatures,
        slice(end + len(_CHANGES_KEY), len(line) - 1),
    )


def _loads_changes(line: bytes, where: slice) -> Any:
    """A batch's changes (``line[where]``), decoded with their depth
    checked (see :func:`loads_batch`): their array adds one level to each.

    Raises:
        orjson.JSONDecodeError: not one JSON value.
        RemoteProtocolError: nested too deep.
    """
    start, stop = where.start, where.stop
    brackets = line.count(b"[", start, stop)
    braces = line.count(b"{", start, stop)
    text = memoryview(line)[where]
    if brackets + braces <= MAX_DEPTH + 1:
        return _loads(text)  # too few brackets to nest too deep
    if not braces:
        changes = _loads(text)
        # Flat if every array is theirs or one change's.
        if type(changes) is list and brackets == 1 + list(map(type, changes)).count(
            list
        ):
            return changes
    return _loads_within_depth(line, MAX_DEPTH + 1, text)


def _loads_within_depth(
    line: bytes, depth: int = MAX_DEPTH + 2, text: memoryview | None = None
) -> Any:
    """The JSON value of ``text`` (by default the whole line), which may
    nest deeper than ``depth``: decoded inside padding that brings orjson's
    own depth limit down to ``depth``, so no change is walked in Python.

    Raises:
        RemoteProtocolError: nested too deep, or (the whole line) malformed.
        orjson.JSONDecodeError: ``text`` is malformed.
    """
    whole = text is None
    text = memoryview(line) if text is None else text
    pad = _ORJSON_DEPTH - depth
    if pad <= 0:  # pragma: no cover  (an orjson that decodes only shallow values)
        msg = _loads(text)
        if not depth_within(msg, depth):
            raise _bad(
                f"change nested deeper than {MAX_DEPTH} levels", "too-deep", line
            )
        return msg
    try:
        msg = _loads(b"[" * pad + text + b"]" * pad)
    except _JSONDecodeError:
        msg = None
    # Only the text's own value, as nested singletons, decodes to this.
    for _ in range(pad):
        if type(msg) is not list or len(msg) != 1:
            # Malformed: raises (typed for a whole line); else too deep.
            loads_line(line) if whole else _loads(text)
            raise _bad(
                f"change nested deeper than {MAX_DEPTH} levels", "too-deep", line
            )
        msg = msg[0]
    return msg


def _batch(
    msg: dict[str, Any], line: bytes, *, depth_checked: bool, key: str = "batch"
) -> Batch:
    plain, signed = _RUN_KEYS[key]
    keys = msg.keys()
    if keys != plain and keys != signed:
        raise _bad(
            f"a {key} is {{{key}, stamps, changes[, signatures]}}", "bad-batch", line
        )
    return _checked_batch(
        msg[key],
        msg["stamps"],
        msg.get("signatures"),
        msg["changes"],
        line,
        depth_checked=depth_checked,
    )


def _checked_batch(
    source: Any,
    stamps: Any,
    signatures: Any,
    changes: Any,
    line: bytes,
    *,
    depth_checked: bool,
) -> Batch:
    """A run's values checked (the changes' depth too, unless done)."""
    source = _source(source, line)
    if (
        type(stamps) is not list
        or type(changes) is not list
        or not stamps
        or len(stamps) != len(changes)
    ):
        raise _bad(
            "a batch holds as many changes as stamps, at least one", "bad-batch", line
        )
    types = list(map(type, stamps))
    kinds = set(types)
    if not kinds <= _NUMBERS:
        for ts in stamps:
            _stamp(ts, line)  # raises for the first that is not a number
    if len(stamps) > 1 and not all(map(operator.lt, stamps, stamps[1:])):
        raise _bad("the stamps of a batch must increase", "bad-batch", line)
    if stamps[0] < 0 or stamps[-1] > MAX_STAMP:
        raise _bad("stamp out of range", "bad-stamp", line)
    if float in kinds and any(
        map(
            float.is_integer,
            stamps
            if len(kinds) == 1
            # Mixed: the floats among them.
            else compress(stamps, map(operator.is_, types, repeat(float))),
        )
    ):
        raise _bad(
            "a whole-number stamp in a batch is written as an integer",
            "bad-stamp",
            line,
        )
    if not depth_checked and not all(map(depth_within, changes)):
        raise _bad(f"change nested deeper than {MAX_DEPTH} levels", "too-deep", line)
    if signatures is not None:
        if type(signatures) is not list or len(signatures) != len(stamps):
            raise _bad("a batch holds a signature slot per entry", "bad-batch", line)
        for sig in signatures:
            if sig is not None:
                _signature(sig, line)
    return Batch(source, stamps, changes, signatures)


def encode_batch(
    source: str, stamps: Any, changes: Any, signatures: Any = None, key: str = "batch"
) -> bytes:
    """One batch line (a repair line, under ``key="repair"``): ``stamps``
    canonical and increasing, as a replica holds them. The signatures go
    before the changes, so that a reader finds every key but the last
    without searching the changes (see loads_batch)."""
    run: dict[str, Any] = {key: source, "stamps": stamps}
    if signatures is not None:
        run["signatures"] = signatures
    run["changes"] = changes
    return _dumps(run, option=_OPT)


def _expect(msg: dict[str, Any], line: bytes) -> Expect:
    entries = msg["expect"]
    if len(msg) != 1 or type(entries) is not int or entries < 0:
        raise _bad("an announcement is {expect: entries}", "bad-expect", line)
    return Expect(entries)


def encode_expect(entries: int) -> bytes:
    return _dumps({"expect": entries}, option=_OPT)


def _clock(clock: Any, line: bytes) -> dict[str, float]:
    if type(clock) is not dict:
        raise _bad("a clock is an object", "bad-clock", line)
    return _clean_clock(clock, line)


def _clean_clock(clock: dict[Any, Any], line: bytes) -> dict[str, float]:
    """A clock's sources and stamps checked, stamps normalised (a digest may
    hold ten thousand: the common case is checked inline)."""
    clean: dict[str, float] = {}
    for source, ts in clock.items():
        kind = type(ts)
        if (
            type(source) is str
            and 0 < len(source) <= MAX_SOURCE_LENGTH
            and (kind is int or kind is float)
            and 0 <= ts <= MAX_STAMP
            and source != "__proto__"
        ):
            clean[source] = int(ts) if kind is float and ts.is_integer() else ts
        else:
            clean[_source(source, line)] = _stamp(ts, line)  # raises
    return clean


def _snapshot(msg: dict[str, Any], line: bytes) -> Snapshot:
    if set(msg) != {"snapshot", "clock"}:
        raise _bad("a snapshot is {snapshot, clock}", "bad-snapshot", line)
    return Snapshot(update=msg["snapshot"], clock=_clock(msg["clock"], line))


def encode_snapshot(update: Any, clock: dict[str, float]) -> bytes:
    return _dumps({"snapshot": update, "clock": clock}, option=_OPT)


def _digest(msg: dict[str, Any], line: bytes) -> Digest:
    clock = msg.get("clock")
    if clock is None and "repred-peer" in msg:
        raise IncompatiblePeerError(
            "this is a repred gossip peer's port (it speaks the peer protocol);"
            " use repred.open_peer, or its web port's /replicas/NAME",
            reason="gossip-peer",
            line=snippet(line),
        )
    if type(clock) is not dict:
        raise _bad("a digest needs a clock object", "bad-digest", line)
    peer_id = msg.get("id")
    if peer_id is not None and type(peer_id) is not str:
        raise _bad("digest id must be a string", "bad-digest", line)
    clean = _clean_clock(clock, line)
    version = msg.get("repred")
    if version is not None and (type(version) is not int or version < 1):
        raise _bad("bad protocol version", "bad-digest", line)
    if version is not None and version != PROTOCOL_VERSION:
        raise IncompatiblePeerError(
            f"peer speaks repred protocol {version}, this side {PROTOCOL_VERSION}",
            reason="incompatible-version",
            line=snippet(line),
        )
    type_name = msg.get("type")
    if type_name is not None and type(type_name) is not str:
        raise _bad("digest type must be a string", "bad-digest", line)
    max_line = msg.get("max_line")
    if max_line is not None and (type(max_line) is not int or max_line < 64):
        raise _bad("max_line must be an integer >= 64", "bad-digest", line)
    progress = msg.get("progress")
    if progress is not None and type(progress) is not int:
        raise _bad("progress must be an integer", "bad-digest", line)
    batch = msg.get("batches")
    if batch is not None and (type(batch) is not int or batch < 1):
        raise _bad("batches must be a positive integer", "bad-digest", line)
    ae = msg.get("antientropy")
    if ae is not None and (type(ae) is not int or ae < 1):
        raise _bad("antientropy must be a positive integer", "bad-digest", line)
    instance = msg.get("instance")
    if instance is not None and (type(instance) is not str or len(instance) > 64):
        raise _bad("instance must be a short string", "bad-digest", line)
    return Digest(
        id=peer_id,
        clock=clean,
        version=version,
        type_name=type_name,
        max_line=max_line,
        batch=batch,
        progress=progress == 1,
        antientropy=ae == AE_FORMAT,
        instance=instance,
    )


def encode_digest(
    replica_id: str,
    clock: Any,
    type_name: str,
    max_line: int = DEFAULT_MAX_LINE_BYTES,
    *,
    batches: bool = True,
    antientropy: bool = False,
    receive: bool = True,
    instance: str | None = None,
) -> bytes:
    digest: dict[str, Any] = {
        "id": replica_id,
        "clock": dict(clock),
        "repred": PROTOCOL_VERSION,
        "type": type_name,
        "max_line": max_line,
    }
    if batches:
        digest["batches"] = BATCH_FORMAT
    if not receive:
        # This side applies nothing the peer sends (a repred extension):
        # a client that writes (the browser's) shows its writes as refused.
        digest["receive"] = 0
    digest["progress"] = 1
    if antientropy:
        digest["antientropy"] = AE_FORMAT
    if instance is not None:
        digest["instance"] = instance
    return _dumps(digest, option=_OPT)


def encode_entry(
    change: Any, ts: float, source: str, signature: str | None = None
) -> bytes:
    if signature is None:
        return _dumps([change, ts, source], option=_OPT)
    return _dumps([change, ts, source, signature], option=_OPT)


# -- anti-entropy -----------------------------------------------------------
#
# Between two repred peers that both offer it (``"antientropy": 1`` in the
# digest),
# each side compares hash trees of what it holds with the other's after the
# sync and then now and then (see repred._antientropy for the protocol and
# repred._hashtree for the trees). Its messages are objects with an ``"ae"``
# key; what a round finds lacking travels as repairs, runs of entries shaped
# like a batch under ``"repair"``. Everything is checked here, as any
# message is, and bounded: a message holds at most MAX_AE_RANGES ranges and
# MAX_AE_ITEMS listed entries in all.

#: The most ranges one anti-entropy message holds.
MAX_AE_RANGES = 512
#: The most entries (stamps, listed items, fingerprints) one holds in all.
MAX_AE_ITEMS = 8192
#: The deepest level of a hash tree, and its fan-out (see repred._hashtree).
AE_MAX_LEVEL = 16
AE_FANOUT = 16
#: Hex digits of a node's fingerprint, and of an entry's hash.
FP_HEX = 32
ITEM_HEX = 16

#: The kinds of anti-entropy message: a round's first, a step, its end.
AE_KINDS = frozenset(("root", "step", "end"))


@attrs.frozen(kw_only=True)
class AeMessage:
    """One anti-entropy message.

    Attributes:
        kind: ``"root"`` (a round's first), ``"step"`` or ``"end"``.
        round: the round's number, counted by the side that started it.
        mine: the sender started this round.
        horizon: (root) the stamp below which the sender may have dropped
            entries by declaration; both sides compare only newer ones.
        fp: (root) the fingerprint of everything the sender holds.
        snap: (root) the sender holds a snapshot (a compacted history).
        sync: (root) the round that follows a sync: both compare only what
            both held before it (the older of the two digests' clocks).
        ranges: (step) what the sender found, as checked tuples (see
            :func:`_ae_range`).
        more: (step) the next step continues this one (a reply too long
            for one line goes as several; they are answered together).
    """

    kind: str
    round: int
    mine: bool
    horizon: float = 0
    fp: bytes = b""
    snap: bool = False
    sync: bool = False
    ranges: tuple[Any, ...] = ()
    more: bool = False


@attrs.frozen(kw_only=True)
class Proof:
    """Two entries a source signed for one stamp: proof that it equivocates."""

    first: tuple[Any, float, str, str]
    second: tuple[Any, float, str, str]


@attrs.frozen(kw_only=True)
class RepairSnapshot(Snapshot):
    """A peer's whole state (its snapshot) for a replica whose state differs."""


def _ae_bad(message: str, line: bytes) -> RemoteProtocolError:
    return _bad(message, "bad-antientropy", line)


def _ae(msg: dict[str, Any], line: bytes) -> AeMessage:
    kind, rnd, mine = msg.get("ae"), msg.get("r"), msg.get("mine")
    if (
        kind not in AE_KINDS
        or type(rnd) is not int
        or rnd < 0
        or type(mine) is not bool
    ):
        raise _ae_bad("an anti-entropy message is {ae, r, mine, ...}", line)
    if kind == "end":
        if len(msg) != 3:
            raise _ae_bad("an end is {ae, r, mine}", line)
        return AeMessage(kind=kind, round=rnd, mine=mine)
    if kind == "root":
        if (
            set(msg) != {"ae", "r", "mine", "h", "fp", "snap", "sync"}
            or type(msg["snap"]) is not bool
            or type(msg["sync"]) is not bool
        ):
            raise _ae_bad("a root is {ae, r, mine, h, fp, snap, sync}", line)
        return AeMessage(
            kind=kind,
            round=rnd,
            mine=mine,
            horizon=_stamp(msg["h"], line),
            fp=_hex(msg["fp"], FP_HEX, line, empty=True),
            snap=msg["snap"],
            sync=msg["sync"],
        )
    ranges, more = msg.get("ranges"), msg.get("more", False)
    if (
        set(msg) - {"more"} != {"ae", "r", "mine", "ranges"}
        or type(ranges) is not list
        or type(more) is not bool
    ):
        raise _ae_bad("a step is {ae, r, mine, ranges[, more]}", line)
    if not 0 < len(ranges) <= MAX_AE_RANGES:
        raise _ae_bad(f"a step holds 1 to {MAX_AE_RANGES} ranges", line)
    budget = [MAX_AE_ITEMS]
    checked = tuple(_ae_range(r, line, budget) for r in ranges)
    return AeMessage(kind=kind, round=rnd, mine=mine, ranges=checked, more=more)


def _hex(value: Any, size: int, line: bytes, *, empty: bool = False) -> bytes:
    """A fingerprint: ``size`` lowercase hex digits (or ``""`` if allowed)."""
    if type(value) is str and (len(value) == size or (empty and not value)):
        try:
            data = bytes.fromhex(value)
        except ValueError:
            data = None
        if data is not None and data.hex() == value:
            return data
    raise _ae_bad(f"a fingerprint is {size} lowercase hex digits", line)


def _count(value: Any, line: bytes) -> int:
    if type(value) is not int or value < 0:
        raise _ae_bad("a count is a non-negative integer", line)
    return value


def _node(level: Any, index: Any, line: bytes) -> tuple[int, int]:
    if (
        type(level) is not int
        or type(index) is not int
        or not 0 <= level <= AE_MAX_LEVEL
        or not 0 <= index < AE_FANOUT**level
    ):
        raise _ae_bad("a node is a level and an index within it", line)
    return level, index


def _spend(budget: list[int], n: int, line: bytes) -> None:
    budget[0] -= n
    if budget[0] < 0:
        raise _ae_bad(f"an anti-entropy message lists at most {MAX_AE_ITEMS}", line)


def _ae_list(value: Any, line: bytes, budget: list[int]) -> list[Any]:
    if type(value) is not list:
        raise _ae_bad("expected a list", line)
    _spend(budget, len(value), line)
    return value


def _ae_range(r: Any, line: bytes, budget: list[int]) -> tuple[Any, ...]:
    """One range of a step, checked (the tags are explained in
    repred._antientropy)."""
    if type(r) is not list or not r or r[0] not in _RANGE_ARITY:
        raise _ae_bad("a range is a list that starts with its tag", line)
    tag = r[0]
    if len(r) != _RANGE_ARITY[tag]:
        raise _ae_bad(f"a {tag!r} range has {_RANGE_ARITY[tag]} parts", line)
    if tag == "B":
        buckets = r[1]
        if type(buckets) is not list:
            raise _ae_bad("buckets are a list", line)
        _spend(budget, len(buckets), line)
        return (
            "B",
            {
                _bucket(b, line): _hex(fp, FP_HEX, line)
                for b, fp in _pairs(buckets, line)
            },
        )
    if tag == "R":
        return ("R", _source_record(r[1:], line))
    if tag == "S":
        covered = [_bucket(b, line) for b in _ae_list(r[1], line, budget)]
        return (
            "S",
            frozenset(covered),
            [_source_record(x, line) for x in _ae_list(r[2], line, budget)],
        )
    if tag == "X":
        return ("X",)
    if tag == "H":
        return ("H", _stamp(r[1], line))
    if tag == "T":
        return ("T", _hex(r[1], FP_HEX, line), _hex(r[2], FP_HEX, line))
    source = _source(r[1], line)
    if tag == "E":
        return ("E", source, [_stamp(ts, line) for ts in _ae_list(r[2], line, budget)])
    upto = _stamp(r[2], line)
    node = _node(r[3], r[4], line)
    if tag == "W":
        return ("W", source, upto, node)
    if tag == "N":
        kids = []
        for kid in _ae_list(r[5], line, budget):
            if type(kid) is not list or len(kid) != 3:
                raise _ae_bad("a child is [slot, count, fingerprint]", line)
            slot = kid[0]
            if type(slot) is not int or not 0 <= slot < AE_FANOUT:
                raise _ae_bad("a child's slot is 0-15", line)
            kids.append((slot, _count(kid[1], line), _hex(kid[2], FP_HEX, line)))
        return ("N", source, upto, node, kids)
    items = []
    for item in _ae_list(r[5], line, budget):
        if type(item) is not list or len(item) != 2:
            raise _ae_bad("an item is [ts, hash]", line)
        items.append((_stamp(item[0], line), _hex(item[1], ITEM_HEX, line)))
    return ("I", source, upto, node, items)


_RANGE_ARITY = dict(B=2, S=3, N=6, I=6, W=5, E=3, T=3, X=1, H=2, R=7)


def _pairs(items: list[Any], line: bytes) -> list[tuple[Any, Any]]:
    if not all(type(p) is list and len(p) == 2 for p in items):
        raise _ae_bad("expected [key, value] pairs", line)
    return [(p[0], p[1]) for p in items]


def _bucket(value: Any, line: bytes) -> int:
    if type(value) is not int or not 0 <= value < 256:
        raise _ae_bad("a bucket is 0-255", line)
    return value


def _source_record(
    x: Any, line: bytes
) -> tuple[str, float, tuple[int, int] | None, int, bytes]:
    """``[source, clock, level, index, count, fingerprint]`` (level and
    index -1, and no fingerprint, for a source with nothing to compare)."""
    if type(x) is not list or len(x) != 6:
        raise _ae_bad(
            "a source record is [source, clock, level, index, count, fp]", line
        )
    source, clock = _source(x[0], line), _stamp(x[1], line)
    count = _count(x[4], line)
    if count == 0:
        if x[2] != -1 or x[3] != -1 or x[5] != "":
            raise _ae_bad("an empty source record has no node", line)
        return source, clock, None, 0, b""
    return source, clock, _node(x[2], x[3], line), count, _hex(x[5], FP_HEX, line)


def encode_ae(kind: str, rnd: int, mine: bool, **fields: Any) -> bytes:
    """An anti-entropy message (``fields`` as :func:`_ae` reads them)."""
    return _dumps({"ae": kind, "r": rnd, "mine": mine, **fields}, option=_OPT)


@attrs.frozen
class Repair(Batch):
    """Entries of one source a peer found this replica lacks (anti-entropy),
    in stamp order, as their author wrote them: a batch under ``"repair"``."""


def _repair(msg: dict[str, Any], line: bytes) -> Repair:
    changes = msg.get("changes")
    if type(changes) is list and not all(map(depth_within, changes)):
        raise _bad(f"change nested deeper than {MAX_DEPTH} levels", "too-deep", line)
    run = _batch(msg, line, depth_checked=True, key="repair")
    return Repair(run.source, run.stamps, run.changes, run.signatures)


def encode_repair(
    source: str, stamps: Any, changes: Any, signatures: Any = None
) -> bytes:
    """A repair line: entries a peer lacks, as their author wrote them."""
    return encode_batch(source, stamps, changes, signatures, key="repair")


def _proof(msg: dict[str, Any], line: bytes) -> Proof:
    pair = msg["proof"]
    if len(msg) != 1 or type(pair) is not list or len(pair) != 2:
        raise _bad("a proof is {proof: [entry, entry]}", "bad-proof", line)
    first, second = (parse_entry(e, line) if type(e) is list else None for e in pair)
    if (
        first is None
        or second is None
        or len(first) != 4
        or len(second) != 4
        or first[1:3] != second[1:3]
    ):
        raise _bad("a proof is two signed entries of one stamp", "bad-proof", line)
    return Proof(first=first, second=second)


def encode_proof(first: Any, second: Any) -> bytes:
    return _dumps({"proof": [list(first), list(second)]}, option=_OPT)


def _repair_snapshot(msg: dict[str, Any], line: bytes) -> RepairSnapshot:
    if set(msg) != {"repair_snapshot", "clock"}:
        raise _bad(
            "a repair snapshot is {repair_snapshot, clock}", "bad-snapshot", line
        )
    if not depth_within(msg["repair_snapshot"]):
        raise _bad(
            f"a snapshot nested deeper than {MAX_DEPTH} levels", "too-deep", line
        )
    return RepairSnapshot(
        update=msg["repair_snapshot"], clock=_clock(msg["clock"], line)
    )


def encode_repair_snapshot(update: Any, clock: dict[str, float]) -> bytes:
    return _dumps({"repair_snapshot": update, "clock": clock}, option=_OPT)
