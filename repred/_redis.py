"""Replicas through Redis: a link whose peer is a Redis stream.

Theory of operation
-------------------

Every replica linked under one ``name`` shares, in one Redis (or Valkey; in
a Redis Cluster every key of a name carries the hash tag ``{name}``, so all
of them live in one slot):

* ``PREFIX:{name}:log``, a Redis Stream. Each record holds ``d``, lines of
  the wire protocol exactly as a link sends them to a repred peer (batches
  and entries with their signatures, snapshots), and ``w``, the id of the
  link that wrote it.
* ``PREFIX:{name}:image:TOKEN``, a compacted image: a list whose first
  element is a digest line (the clock the image covers) and whose others
  are what a full sync sends an empty peer: the newest entry per key of a
  last-write-wins type, a type's snapshot and its tail.
* ``PREFIX:{name}:meta``, a hash: ``epoch`` (random, made with the hash: a
  Redis that lost its data has another), ``type``, and the current image
  (``image``, ``image_id``, the stream id it covers, ``image_len``,
  ``image_bytes``), and ``trimmed``, the stream id the log was trimmed to.
* ``PREFIX:{name}:lock``, held by the link writing an image.

A link drives an ordinary protocol :class:`~repred.protocol.Session` whose
peer is the stream, so every rule of a TCP link holds: what it reads is
fed to the session (the same wire checks, the same ``Replica.apply_runs``),
what the session sends is appended to the stream, and an entry read from
the stream is never written back (the session's origin check). The
digest the session is given says what Redis holds, as far as the link
knows (:attr:`RedisLink._known`): the image's clock, then whatever was read
from the stream or written and flushed. It is a lower bound, so at worst an
entry goes to the stream twice; never is one left out.

Joining: read the meta, load the image unless the replica's clock already
covers it, then read the stream from the image's id until it is read to its
end, then write what the replica holds beyond what Redis holds. A link
that reconnects to the same epoch, whose position is still in the stream,
skips the image and reads on from where it was.

Images: once the stream's tail since the image holds more bytes than the
image (at least ``compact_bytes``), a caught-up link takes the lock, writes
a new image (a full sync into a list, with a time to live until it is
committed) and commits it with a script that checks the epoch and the
image it replaces, expires that one after a grace period, and trims the
stream behind the new one, keeping ``tail_seconds`` of records. A reader
whose position is behind ``trimmed`` may have missed records: it starts
again from the image. The stream is never trimmed otherwise.

Anti-entropy: none. The stream carries entry lines only (see
``_ENTRY_STARTS``), so a replica that reaches the others only through Redis
is not compared with them by hash trees, and what a peer link repairs below
a replica's clock is not passed on to the stream.

Faults: any Redis error ends the attempt; the link retries with backoff,
logging once per spell of failures, and the replica goes on working. On
reconnecting, a new epoch (Redis was emptied or restarted without its data)
or a stream that ends before what the link last read or wrote (restored
from an older dump) makes the link forget what it knew: it starts from what
Redis still holds and writes everything the replica holds beyond it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Any, NoReturn, final

import attrs
import trio

from ._errors import (
    IncompatiblePeerError,
    LocalProtocolError,
    RemoteProtocolError,
    RepredError,
    StoreError,
)
from ._groups import single_errors
from ._log import limited, log
from ._options import pick
from ._session import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ENTRIES, Session
from ._wire import (
    BATCH_PREFIX,
    DEFAULT_MAX_LINE_BYTES,
    SYNC_LINE,
    Digest,
    decode,
    encode_digest,
    snippet,
)

try:
    import coredis
    import coredis.connection
    import coredis.exceptions
    import coredis.retry
    import coredis.tokens
except ImportError as exc:  # pragma: no cover  (the extra is not installed)
    raise ImportError(
        "repred.connect_redis needs the coredis package: pip install 'repred[redis]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ._replica import Replica

__all__ = [
    "DEFAULT_COMPACT_BYTES",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_READ_COUNT",
    "RedisLink",
    "RedisOptions",
    "RedisStatistics",
    "connect_redis",
]


#: Stream records taken per XREAD (and image elements per LRANGE). A record
#: holds at most ``batch_bytes`` of entries and one line more, so a read
#: holds at most this many times that.
DEFAULT_READ_COUNT = 64
#: An image is written once the stream's tail holds more bytes than the
#: image, and at least this many.
DEFAULT_COMPACT_BYTES = 1 << 20
#: The largest image a link writes; a replica holding more is not imaged
#: (a warning says so) and the stream is not trimmed.
DEFAULT_MAX_IMAGE_BYTES = 256 << 20
#: Seconds an XREAD waits for records before the link looks at the meta.
DEFAULT_POLL_SECONDS = 5.0
#: Seconds any other Redis call may take.
DEFAULT_TIMEOUT = 10.0
#: The longest wait between two attempts to reach Redis.
DEFAULT_RETRY_SECONDS = 5.0
#: Seconds a cancelled link may take to write what Redis lacks.
DEFAULT_FLUSH_SECONDS = 5.0

#: Seconds of records before a new image's id that stay in the stream, so
#: that readers a little behind read on rather than load the image.
DEFAULT_TAIL_SECONDS = 60.0
#: Seconds a replaced image stays readable, for a joiner reading it.
_OLD_IMAGE_SECONDS = 300
#: How long the lock on writing an image lasts (and an uncommitted image).
_LOCK_MS = 120_000
#: Seconds before a link reads again the records whose entries were
#: stamped too far ahead to apply (they are then, most likely, not).
_REWIND_SECONDS = 30.0
#: Seconds between two copies of the replica's clock as what Redis holds.
_KNOWN_EVERY = 1.0
#: Seconds a link may read only its own records without looking at the meta.
_CHECK_EVERY = 1.0
#: Bytes of image elements pushed in one call.
_PUSH_BYTES = 1 << 20
#: The first attempts to reach Redis again wait this long, doubling.
_RETRY_FIRST = 0.05

_DATA, _WRITER = b"d", b"w"
_ZERO = b"0-0"

# Create the meta hash (a new epoch) if there is none; return it.
_INIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'type', ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
"""

# Make a written image current, if the epoch and the image it replaces are
# still what the writer saw; trim the stream behind it.
# KEYS: meta, log, new image, old image (or the new one again)
# ARGV: epoch, image id, token, elements, bytes, old token or '', trim id
#       or '', seconds the old image stays
_COMMIT = """
local function lt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local m = KEYS[1]
if redis.call('HGET', m, 'epoch') ~= ARGV[1] then return 0 end
local old = redis.call('HGET', m, 'image') or ''
if old ~= ARGV[6] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('PERSIST', KEYS[3])
redis.call('HSET', m, 'image', ARGV[3], 'image_id', ARGV[2],
           'image_len', ARGV[4], 'image_bytes', ARGV[5])
if old ~= '' then redis.call('EXPIRE', KEYS[4], ARGV[8]) end
if ARGV[7] ~= '' then
  local t = redis.call('HGET', m, 'trimmed')
  if not t or lt(t, ARGV[7]) then
    redis.call('XTRIM', KEYS[2], 'MINID', ARGV[7])
    redis.call('HSET', m, 'trimmed', ARGV[7])
  end
end
return 1
"""

# The current image is gone (evicted): start a new epoch, so that every
# link fills Redis again. KEYS: meta. ARGV: epoch, token, new epoch.
_DROP = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[1], 'image') or '') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], 'image', 'image_id', 'image_len', 'image_bytes',
           'trimmed')
redis.call('HSET', KEYS[1], 'epoch', ARGV[3])
return 1
"""

# Append to an image being written, which expires unless it is committed.
# KEYS: the image. ARGV: milliseconds it lives, then the elements.
_PUSH = """
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""

# Let go of the lock, if it is still ours. KEYS: lock. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class _Resync(Exception):
    """Start the sync with Redis again (the stream has a gap for this link,
    Redis lost its data, or records wait to be read again)."""


def _stream_id(ident: bytes | None) -> tuple[int, int]:
    """A stream id ``ms-seq`` as a pair that sorts as Redis sorts them."""
    if not ident:
        return (0, 0)
    ms, _, seq = ident.partition(b"-")
    try:
        return (int(ms), int(seq or 0))
    except ValueError:
        return (2**64, 0)  # not an id Redis makes: after every one


class _Keys:
    """The Redis keys of one name (see the module docstring)."""

    def __init__(self, prefix: str, name: str) -> None:
        self.base = f"{prefix}:{{{name}}}"
        self.meta = f"{self.base}:meta"
        self.log = f"{self.base}:log"
        self.lock = f"{self.base}:lock"

    def image(self, token: bytes | str) -> str:
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        return f"{self.base}:image:{token}"


@attrs.frozen(kw_only=True)
class _Meta:
    """What the meta hash says."""

    epoch: bytes | None
    type: bytes | None = None
    image: bytes | None = None
    image_id: bytes = _ZERO
    image_len: int = 0
    image_bytes: int = 0
    trimmed: bytes = _ZERO

    @classmethod
    def parse(cls, fields: Mapping[bytes, Any]) -> _Meta:
        def number(key: bytes) -> int:
            try:
                return max(int(fields.get(key) or 0), 0)
            except ValueError:
                return 0

        return cls(
            epoch=fields.get(b"epoch"),
            type=fields.get(b"type"),
            image=fields.get(b"image"),
            image_id=fields.get(b"image_id") or _ZERO,
            image_len=number(b"image_len"),
            image_bytes=number(b"image_bytes"),
            trimmed=fields.get(b"trimmed") or _ZERO,
        )


#: How the lines a stream carries start: batches, entries and snapshots, as
#: a session writes them. A link's digest, announcements, ``"SYNC"`` and
#: keep-alives are for a peer on a link, and so is anti-entropy: it is a
#: conversation between two replicas, each answering the other's hashes of
#: what it holds, round by round. A stream has no one to answer (Redis holds
#: no tree, and many readers each hold something else), so a Redis link
#: never offers it, and a line of it in a record is refused, a proof of
#: equivocation too: a verifying replica bans a source on a peer's word
#: only.
_ENTRY_STARTS = (BATCH_PREFIX, b"[", b'{"snapshot":')


def _entry_lines(data: bytes) -> bytes:
    """The lines of a session's output that carry entries (see
    _ENTRY_STARTS)."""
    if not data:
        return b""
    kept = [line for line in data.split(b"\n") if line.startswith(_ENTRY_STARTS)]
    if not kept:
        return b""
    kept.append(b"")
    return b"\n".join(kept)


def display_url(url: str) -> str:
    """``url`` without its password, for logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<a malformed Redis URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _check_name(name: Any) -> str:
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= 256
        or "{" in name
        or "}" in name
    ):
        raise ValueError(
            "name must be a non-empty string of at most 256 characters without"
            f" braces (it is the Redis hash tag of its keys), not {name!r}"
        )
    return name


@attrs.frozen(kw_only=True)
class RedisStatistics:
    """A snapshot of one Redis link.

    Attributes:
        name: the name the replica is shared under.
        connected: Redis is reachable and the link is reading it.
        synced: the link read the stream to its end and wrote everything
            the replica held beyond it, since it last connected.
        updates_in: entries read from Redis that were new here.
        updates_out: entries written to Redis.
        bytes_in: bytes of entries read from Redis (images and stream).
        bytes_out: bytes of entries written to the stream.
        deferred: entries not applied because they were stamped too far
            ahead (the link reads them again later).
        refused: lines or records read from Redis that were refused (each
            is logged, bounded; the link goes on past them), and, on a link
            that does not receive, the entries read that were new here.
        reconnects: times the link connected to Redis again after losing it.
        attempts_failed: attempts to reach Redis that failed.
        images_loaded: images a sync started from.
        images_written: images this link wrote and made current.
        started: when the link started (``trio.current_time()``).
    """

    name: str
    connected: bool
    synced: bool
    updates_in: int
    updates_out: int
    bytes_in: int
    bytes_out: int
    deferred: int = 0
    refused: int = 0
    reconnects: int = 0
    attempts_failed: int = 0
    images_loaded: int = 0
    images_written: int = 0
    started: float = 0.0


@attrs.define(kw_only=True)
class RedisOptions:
    """The options of a Redis link (:func:`repred.connect_redis` takes each
    as a keyword of its own, checked at the call; ``timeout`` is its
    ``command_timeout``).

    Attributes:
        prefix: the start of every key.
        read_count: stream records per read, and image elements per read.
        poll_seconds: a read waits this long for records, then the link
            checks that Redis still holds its data.
        timeout: seconds any other Redis call may take.
        retry_seconds: the longest wait between attempts to reach Redis.
        max_line_bytes: the longest line accepted from Redis (and written).
        batch_entries: entries of one source per batch line.
        batch_bytes: bytes of entries per stream record.
        max_image_bytes: the largest image this link writes.
        compact_bytes: the tail the stream holds, at least, before an image
            replaces it (an image is written once the tail holds more
            bytes than the last image, and at least this many).
        tail_seconds: records this much older than a new image stay in the
            stream, so that a reader a little behind reads on rather than
            loads the image.
        cluster: the URL is a node of a Redis Cluster (the client follows
            the cluster's slots; every key of a name lives in one).
        flush_seconds: once cancelled (or closed), the link may take this
            long to write what Redis still lacks (writes made just before
            a shutdown), if it is linked; it returns as soon as it has.
        send: write what the replica holds to Redis (``False``: nothing is
            written).
        receive: apply what is read from Redis. With ``False`` its entries
            are checked and counted in ``refused``, never applied: a
            read-only mirror, as ``receive=False`` on
            :func:`repred.connect_tcp`. A link that does not send or does
            not receive writes no image (another link must, for the stream
            to be trimmed). Not both ``False``.
    """

    prefix: str
    read_count: int
    poll_seconds: float
    timeout: float
    retry_seconds: float
    max_line_bytes: int
    batch_entries: int
    batch_bytes: int
    max_image_bytes: int
    compact_bytes: int
    tail_seconds: float
    cluster: bool
    flush_seconds: float
    send: bool = True
    receive: bool = True

    def __attrs_post_init__(self) -> None:
        for name in ("send", "receive"):
            if type(getattr(self, name)) is not bool:
                raise TypeError(f"{name} must be a bool")
        if not (self.send or self.receive):
            raise ValueError(
                "send=False and receive=False: a link that neither writes nor"
                " reads has nothing to do"
            )
        counts = ("read_count", "max_line_bytes", "batch_entries", "batch_bytes")
        for name in (*counts, "max_image_bytes", "compact_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int")
        for name in ("poll_seconds", "timeout", "retry_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("tail_seconds", "flush_seconds"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")
        if not isinstance(self.prefix, str) or "{" in self.prefix:
            raise ValueError("prefix must be a string without braces")


#: What means Redis is not there, or not usable now (down, restarting,
#: out of memory, a dropped connection, a call that took too long), or that
#: the replica could not keep what it read (its store failed: read again
#: later): the link waits and tries again.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    StoreError,
    LocalProtocolError,
)


def _unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception in a group) means Redis is away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_unavailable(inner) for inner in exc.exceptions)
    return isinstance(exc, _UNAVAILABLE)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@final
class RedisLink:
    """A replica linked to a Redis server (see :func:`connect_redis`).

    Reported through ``task_status`` by :func:`connect_redis` as soon as it
    starts, whether or not Redis can be reached yet.

    Attributes:
        replica: the replica it links.
        name: the name the replica is shared under.
        url: the Redis URL, without its password.
        started: when the link started (``trio.current_time()``).
    """

    def __init__(
        self, replica: Replica, url: str, name: str, options: RedisOptions
    ) -> None:
        self.replica = replica
        self.name = name
        self.url = display_url(url)
        self._url = url
        self._options = options
        #: The longest record or image element read: what any link writes
        #: (a send's worth of entries, and the line that went past it).
        self._longest = (
            max(options.batch_bytes, DEFAULT_BATCH_BYTES) + options.max_line_bytes + 1
        )
        self._keys = _Keys(options.prefix, name)
        #: Marks this link's records, which it does not read back.
        self._id = secrets.token_urlsafe(9).encode()
        #: The id its sessions are told Redis has: random, so that no
        #: replica (one whose id is "redis", say) takes it for its own twin.
        self._peer_id = f"redis-{self._id.decode()}"
        self._session: Session | None = None
        self._wake = trio.Event()
        self._synced = trio.Event()
        self._closed = trio.Event()
        self._scope = trio.CancelScope()
        #: Where the link runs, shielded (see _run); _closing once the
        #: caller is done with it.
        self._inner = trio.CancelScope(shield=True)
        self._closing = False
        self._connected = False
        #: Caught up with the stream since it last connected.
        self._live_phase = False
        self.started = trio.current_time()
        # What Redis is known to hold, within one epoch of its data.
        self._epoch: bytes | None = None
        self._position: bytes | None = None  # the last stream id read
        self._written = _ZERO  # the last stream id this link wrote
        self._known: dict[str, float] = {}
        self._known_at = -math.inf
        self._tail_bytes = 0
        self._image_id = _ZERO
        self._image_bytes = 0
        self._rewind: tuple[bytes, float] | None = None
        #: Where reads were last checked against the meta, and when, if
        #: some were not (see _check_later).
        self._unchecked: tuple[bytes, float] | None = None
        self._compacting = False
        self._said_no_image = False
        #: Set when the statistics change, if someone waits on them.
        self._changed: trio.Event | None = None
        #: The writer has nothing left to send.
        self._flushed = False
        self._failure: BaseException | None = None
        self._live_nursery: trio.Nursery | None = None
        # Counters of the sessions that ended, and the link's own.
        self._done = [0, 0, 0, 0]  # updates_in, updates_out, deferred, refused
        self._bytes_in = self._bytes_out = self._refused = 0
        self._reconnects = self._attempts_failed = 0
        self._images_loaded = self._images_written = 0

    def __repr__(self) -> str:
        return (
            f"<repred.RedisLink {self.name!r} at {self.url}"
            f" connected={self._connected}>"
        )

    @property
    def connected(self) -> bool:
        """Redis is reachable and the link is reading it."""
        return self._connected

    @property
    def synced(self) -> bool:
        """Connected, and both ways caught up at least once since."""
        session = self._session
        return self._live_phase and session is not None and session.sync_sent

    @property
    def closed(self) -> bool:
        """The link has ended."""
        return self._closed.is_set()

    async def wait_synced(self) -> None:
        """Wait until the link has read the stream to its end and written
        what the replica held beyond it (once; it stays live after)."""
        await self._synced.wait()

    async def wait_closed(self) -> None:
        """Wait until the link has ended (closed, or cancelled)."""
        await self._closed.wait()

    async def wait_statistics(
        self, predicate: Callable[[RedisStatistics], object]
    ) -> RedisStatistics:
        """Wait until ``predicate(link.statistics())`` is true, looking again
        whenever they change (``connected``, ``synced`` or a counter);
        return them.

        Raises:
            trio.ClosedResourceError: the link ended before it was true.
        """
        while True:
            stats = self.statistics()
            if predicate(stats):
                return stats
            if self.closed:
                raise trio.ClosedResourceError("the Redis link has ended")
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def _touch(self) -> None:
        """The statistics may have changed: wake wait_statistics."""
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    def close(self) -> None:
        """End the link (its :func:`connect_redis` call returns)."""
        self._scope.cancel()

    def statistics(self) -> RedisStatistics:
        """The link's counters, over every connection it made so far."""
        updates_in, updates_out, deferred, refused = self._counts()
        return RedisStatistics(
            name=self.name,
            connected=self._connected,
            synced=self.synced,
            updates_in=updates_in,
            updates_out=updates_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            deferred=deferred,
            refused=self._refused + refused,
            reconnects=self._reconnects,
            attempts_failed=self._attempts_failed,
            images_loaded=self._images_loaded,
            images_written=self._images_written,
            started=self.started,
        )

    # -- the session ---------------------------------------------------

    def _new_session(self) -> Session:
        """A session whose peer holds what Redis is known to hold."""
        self._end_session()
        options = self._options
        session = self._session_with(send=options.send, receive=options.receive)
        clock = self.replica.clock
        # The stream has no history phase: what comes is live, and a
        # "SYNC" in it is out of place.
        session.receive_data(
            self._digest({s: ts for s, ts in self._known.items() if s in clock})
            + SYNC_LINE
        )
        session.wakeup = self._wakeup
        self._session = session
        self._wakeup()
        return session

    def _session_with(self, **one_way: bool) -> Session:
        """A session with the link's limits (``send``, ``receive``)."""
        options = self._options
        return Session(
            self.replica,
            max_line_bytes=options.max_line_bytes,
            batch_entries=options.batch_entries,
            batch_bytes=options.batch_bytes,
            antientropy=False,  # see _ENTRY_STARTS
            **one_way,
        )

    def _digest(self, clock: Mapping[str, float]) -> bytes:
        """The digest of the stream as a session's peer, holding ``clock``."""
        return encode_digest(
            self._peer_id, clock, self.replica.type_name, self._options.max_line_bytes
        )

    def _counts(self) -> list[int]:
        """``updates_in``, ``updates_out``, ``deferred`` and ``refused`` of
        every session so far."""
        if self._session is None:
            return list(self._done)
        now = self._session.statistics()
        this = (now.updates_in, now.updates_out, now.deferred, now.refused)
        return [a + b for a, b in zip(self._done, this, strict=True)]

    def _end_session(self) -> None:
        session = self._session
        if session is not None:
            self._done = self._counts()
            session.close()
            self._session = None

    def _wakeup(self) -> None:
        self._wake.set()

    def _on_applied(self, source: str, ts: float, origin: object) -> None:
        # Entries read from Redis: Redis holds them (what a new session's
        # digest says, if this one is replaced).
        if origin is self._session and origin is not None:
            if ts > self._known.get(source, -1):
                self._known[source] = ts

    def _note_flushed(self) -> None:
        """The session has nothing left to send and all of it is in the
        stream: Redis holds what the replica holds (copied at most once a
        second: a copy costs a step per source)."""
        now = trio.current_time()
        if now - self._known_at >= _KNOWN_EVERY:
            self._known_at = now
            self._known.update(self.replica.clock)

    def _forget(self) -> None:
        """Redis lost what this link knew it held."""
        self._position = None
        self._written = _ZERO
        self._known = {}
        self._known_at = -math.inf
        self._rewind = None
        self._unchecked = None
        self._tail_bytes = 0

    # -- feeding what Redis holds ----------------------------------------

    def _feed(self, payload: bytes, where: str) -> None:
        """Apply the lines of one record or image element, each on its
        own: a refused line is logged and counted, and the lines after it
        are still read (a new session takes over from the failed one)."""
        self._bytes_in += len(payload)
        for line in payload.split(b"\n"):
            if not line:
                continue
            session = self._session
            assert session is not None
            try:
                if not line.startswith(_ENTRY_STARTS):
                    raise RemoteProtocolError(
                        "a stream record holds batches, entries and snapshots only",
                        reason="not-entries",
                        line=snippet(line),
                    )
                session.receive_data(line + b"\n")
            except RemoteProtocolError as exc:
                self._refuse(" refused a line of %s: %s (%s)", where, exc, exc.reason)
                self._new_session()
        self._touch()

    def _refuse(self, message: str, *args: object) -> None:
        """Count what was read from Redis and refused; log it (bounded)
        as ``message`` says, after the link's name."""
        self._refused += 1
        self._touch()
        limited(
            logging.WARNING,
            "redis-refused",
            "repred: Redis link %r" + message,
            self.name,
            *args,
        )

    # -- running ---------------------------------------------------------

    async def _run(self) -> None:
        """Link to Redis until closed or cancelled; then write what Redis
        lacks, for at most ``flush_seconds``, before returning.

        The link runs shielded (the Redis client's own tasks live inside
        it, so a cancelled caller would cancel them before anything could
        be written); the caller's cancellation, or :meth:`close`, lands in
        this task, which lets the writer finish and bounds how long."""
        async with single_errors(), trio.open_nursery() as nursery:
            nursery.start_soon(self._shielded, nursery.cancel_scope)
            try:
                with self._scope:
                    await trio.sleep_forever()
            finally:
                self._closing = True
                if self._live_phase:
                    flush = self._options.flush_seconds
                    self._inner.deadline = trio.current_time() + flush
                    self._wakeup()
                else:
                    self._inner.cancel()  # nothing can be written now

    async def _shielded(self, outer: trio.CancelScope) -> None:
        with self._inner:
            await self._loop()
        outer.cancel()  # the link is over, for whatever reason

    async def _loop(self) -> None:
        """Link to Redis, reconnecting whenever it is lost."""
        remove = self.replica.watch(self._on_applied)
        failures = 0
        spell_started = 0.0
        try:
            while True:
                try:
                    await self._attempt(failures, spell_started)
                except IncompatiblePeerError:
                    raise
                except Exception as exc:
                    if not _unavailable(exc):
                        raise
                    if self._connected:
                        failures = 0  # it was linked: a new spell
                    if failures == 0:
                        spell_started = trio.current_time()
                        self._log_unreachable(exc)
                    failures += 1
                    self._attempts_failed += 1
                    if self._closing:
                        return  # Redis is away: nothing more can be written
                self._connected = self._live_phase = False
                self._end_session()
                self._touch()
                await trio.sleep(self._backoff(failures))
        finally:
            remove()
            self._connected = False
            self._end_session()
            self._closed.set()
            self._touch()

    def _backoff(self, failures: int) -> float:
        wait = _RETRY_FIRST * 2 ** min(failures, 20)
        return float(min(wait, self._options.retry_seconds))

    def _log_unreachable(self, exc: BaseException) -> None:
        lost = self._connected or self._epoch is not None
        log.warning(
            "repred: Redis link %r %s at %s (%s); the replica keeps working"
            " locally and over its other links, and what it writes goes to"
            " Redis once it is back; retrying every %g s at most, logged again"
            " once it is back",
            self.name,
            "lost Redis" if lost else "waiting for Redis",
            self.url,
            _describe(exc),
            self._options.retry_seconds,
        )

    def _client(self) -> Any:
        options: dict[str, Any] = {
            "retry_policy": coredis.retry.NoRetryPolicy(),
            "connect_timeout": self._options.timeout,
        }
        if not self._options.cluster:
            return coredis.Redis.from_url(self._url, **options)
        # The first node as a TCPLocation: from the URL alone, coredis
        # names it in a form it warns is deprecated.
        parts = urllib.parse.urlsplit(self._url)
        first = coredis.connection.TCPLocation(parts.hostname or "", parts.port or 6379)
        return coredis.RedisCluster.from_url(
            self._url, startup_nodes=[first], **options
        )

    async def _call(self, request: Awaitable[Any], seconds: float = 0.0) -> Any:
        """One Redis call, within the link's timeout (and ``seconds`` more)."""
        with trio.fail_after(self._options.timeout + seconds):
            return await request

    async def _attempt(self, failures: int, spell_started: float) -> None:
        """One connection to Redis: sync, then stay live until it fails."""
        # coredis runs a task group per client, which wraps whatever ends
        # the block in an exception group: one error comes out as itself.
        first = self._epoch is None
        async with single_errors(), self._client() as client:
            meta = await self._attach(client)
            if failures:
                self._reconnects += 1
                log.info(
                    "repred: Redis link %r reached Redis at %s again, after %d"
                    " failed attempts over %.1f s; catching up",
                    self.name,
                    self.url,
                    failures,
                    trio.current_time() - spell_started,
                )
            elif first:
                log.info("repred: Redis link %r linked to %s", self.name, self.url)
            self._connected = True
            self._touch()
            while True:
                try:
                    await self._catch_up(client, meta)
                    await self._live(client)
                except _Resync:
                    meta = await self._attach(client)

    async def _attach(self, client: Any) -> _Meta:
        """Read (or make) the meta; forget what this link knew if Redis lost
        it (a new epoch, or a stream that ends before what the link read or
        wrote)."""
        init = client.register_script(_INIT)
        args = [secrets.token_urlsafe(12), self.replica.type_name]
        raw = await self._call(init(keys=[self._keys.meta], args=args))
        fields = dict(zip(raw[::2], raw[1::2], strict=True))
        meta = _Meta.parse(fields)
        theirs = (meta.type or b"").decode("utf-8", "replace")
        if theirs != self.replica.type_name:
            raise IncompatiblePeerError(
                f"Redis holds {theirs!r} under the name {self.name!r}, this"
                f" replica is {self.replica.type_name!r} (replicas of one name"
                " must share a type)",
                reason="incompatible-type",
            )
        if meta.epoch != self._epoch:
            if self._epoch is not None:
                log.warning(
                    "repred: Redis link %r: Redis at %s lost its data for this"
                    " name (a new epoch); filling it again from this replica",
                    self.name,
                    self.url,
                )
            self._forget()
            self._epoch = meta.epoch
        elif self._position is not None and not await self._stream_holds(client):
            log.warning(
                "repred: Redis link %r: the stream at %s ends before what this"
                " link read or wrote (restored from an older copy?); filling it"
                " again from this replica",
                self.name,
                self.url,
            )
            self._forget()
        self._note_image(meta)
        return meta

    async def _stream_holds(self, client: Any) -> bool:
        """Whether the stream still reaches what this link last read and wrote."""
        newest = await self._call(client.xrevrange(self._keys.log, count=1))
        last = _stream_id(newest[0].identifier) if newest else (0, 0)
        mine = max(_stream_id(self._position), _stream_id(self._written))
        return last >= mine

    def _note_image(self, meta: _Meta) -> None:
        """Another image became current: the tail counts from it."""
        if meta.image_id != self._image_id:
            self._image_id = meta.image_id
            self._tail_bytes = 0
        self._image_bytes = meta.image_bytes

    # -- catching up -------------------------------------------------------

    async def _catch_up(self, client: Any, meta: _Meta) -> None:
        """Read what Redis holds that this replica may lack: the image, if
        the link has no position in the stream (or one trimmed away), then
        the stream to its end."""
        self._live_phase = False
        if self._rewind is not None and self._position is not None:
            # Entries were stamped too far ahead to apply: read them again.
            self._position = self._rewind[0]
        self._rewind = None
        while True:
            if self._position is None or _stream_id(self._position) < _stream_id(
                meta.trimmed
            ):
                meta = await self._load_image(client, meta)
                if _stream_id(meta.image_id) < _stream_id(meta.trimmed):
                    # Trimmed past the image (by hand?): what lay between
                    # is lost.
                    await self._drop_image(client, meta)
            else:
                self._new_session()
            if await self._read_to_end(client):
                break
            meta = await self._read_meta(client)
        self._live_phase = True

    async def _load_image(self, client: Any, meta: _Meta) -> _Meta:
        """Start from the current image (or from the stream's start, if
        there is none); returns the meta it went by."""
        while True:
            if meta.image is None:
                self._new_session()
                self._position = _ZERO
                return meta
            if await self._read_image(client, meta):
                self._position = meta.image_id
                return meta
            fresh = await self._read_meta(client)
            if fresh.image == meta.image:
                await self._drop_image(client, meta)  # gone, yet current
            meta = fresh

    async def _drop_image(self, client: Any, meta: _Meta) -> NoReturn:
        """The current image is lost (evicted, or trimmed past): start a
        new epoch, so that every link fills Redis again."""
        log.warning(
            "repred: Redis link %r: the image at %s is lost; every linked replica"
            " fills Redis again",
            self.name,
            self.url,
        )
        drop = client.register_script(_DROP)
        args = [meta.epoch or b"", meta.image or b"", secrets.token_urlsafe(12)]
        await self._call(drop(keys=[self._keys.meta], args=args))
        raise _Resync

    async def _read_image(self, client: Any, meta: _Meta) -> bool:
        """Apply the image ``meta`` names; ``False`` if it is not all there."""
        assert meta.image is not None
        key = self._keys.image(meta.image)
        head = await self._call(client.lrange(key, 0, 0))
        if not head:
            return False
        digest = None
        if len(head[0]) <= self._options.max_line_bytes:
            with contextlib.suppress(RepredError):
                digest = decode(head[0])
        if type(digest) is not Digest:
            self._refuse(
                ": the image %r does not start with a clock; taking it as lost",
                meta.image,
            )
            return False
        known = self._known  # what the link knew stands, in this epoch
        for source, ts in digest.clock.items():
            if ts > known.get(source, -1):
                known[source] = ts
        self._new_session()
        clock = self.replica.clock
        if all(clock.get(s, -1) >= ts for s, ts in digest.clock.items()):
            return True  # nothing in it is new here
        count = self._options.read_count
        index = 1
        while index < meta.image_len:
            last = min(index + count, meta.image_len) - 1
            page = await self._call(client.lrange(key, index, last))
            if len(page) != last - index + 1:
                return False  # replaced, and expired while being read
            for element in page:
                if len(element) > self._longest:
                    self._refused += 1
                    self._touch()
                    continue
                self._feed(element, "an image")
                await trio.lowlevel.checkpoint()
            index = last + 1
        self._images_loaded += 1
        self._touch()
        return True

    async def _read_meta(self, client: Any) -> _Meta:
        names = [field.name for field in attrs.fields(_Meta)]
        values = await self._call(client.hmget(self._keys.meta, names))
        return _Meta.parse(
            {k.encode(): v for k, v in zip(names, values, strict=True) if v is not None}
        )

    async def _read_to_end(self, client: Any) -> bool:
        """Read the stream from the link's position until a read comes
        back short; ``False`` if the stream has a gap for this link."""
        while True:
            records = await self._read(client)
            if not await self._take(client, records):
                return False
            if len(records) < self._options.read_count:
                return True

    async def _read(self, client: Any, wait: bool = False) -> Any:
        """The next records after the link's position (``wait``: for up to
        ``poll_seconds``, until some come)."""
        assert self._position is not None
        options = self._options
        block = round(options.poll_seconds * 1000) if wait else None
        streams = {self._keys.log: self._position}
        read = client.xread(streams, count=options.read_count, block=block)
        reply = await self._call(read, options.poll_seconds if wait else 0.0)
        return reply.get(self._keys.log.encode(), ()) if reply else ()

    async def _take(self, client: Any, records: Any) -> bool:
        """Apply records read after the link's position, unless the meta
        (read after them) says the stream was trimmed past that position:
        then ``False`` (nothing applied). Raises :class:`_Resync` if Redis
        lost its data meanwhile."""
        before = self._position if self._unchecked is None else self._unchecked[0]
        assert before is not None
        if records and all(r.field_values.get(_WRITER) == self._id for r in records):
            # All this link's own: nothing to apply, so a live write's round
            # trip need not wait for the meta. The next read that applies
            # anything checks from before them (as does this one, once a
            # second has passed or an image is due).
            if self._unchecked is None:
                self._unchecked = (before, trio.current_time())
            for record in records:
                self._take_record(record)
            if not self._check_due():
                return True
            records = ()
        meta = await self._read_meta(client)
        if meta.epoch != self._epoch:
            raise _Resync
        self._note_image(meta)
        self._unchecked = None
        if _stream_id(before) < _stream_id(meta.trimmed):
            self._position = before  # nothing after it is known to be whole
            return False
        for record in records:
            self._take_record(record)
            # A read holds up to read_count records of a send's worth each:
            # other tasks run between them, as between a TCP link's reads.
            await trio.lowlevel.checkpoint()
        return True

    def _check_due(self) -> bool:
        """Reads left unchecked must be checked now: a second has passed,
        or an image is due (an image covers only checked reads)."""
        unchecked = self._unchecked
        return unchecked is not None and (
            trio.current_time() - unchecked[1] >= _CHECK_EVERY
            or self._tail_bytes >= max(self._image_bytes, self._options.compact_bytes)
        )

    def _take_record(self, record: Any) -> None:
        fields = record.field_values
        payload = fields.get(_DATA)
        size = len(payload) if isinstance(payload, bytes) else 0
        self._tail_bytes += size
        if fields.get(_WRITER) == self._id:
            pass  # this link's own: the session sent it
        elif not size or size > self._longest:
            self._refuse(
                " refused the stream record %r: %s",
                record.identifier,
                "it holds no entries" if not size else f"{size} bytes, too long",
            )
        else:
            deferred = self.replica.deferred
            # A store that fails raises here, before the position moves: the
            # record is read again once the link reconnects.
            self._feed(payload, f"the stream record {record.identifier!r}")
            if self.replica.deferred > deferred and self._rewind is None:
                # Stamped too far ahead to apply now: read again later.
                self._rewind = (self._position or _ZERO, trio.current_time())
        self._position = record.identifier

    # -- live --------------------------------------------------------------

    async def _live(self, client: Any) -> None:
        """Write what the replica holds beyond Redis, and read what others
        write, until something fails (raised here, as one exception)."""
        self._failure = None
        self._flushed = False
        async with trio.open_nursery() as nursery:
            self._live_nursery = nursery
            nursery.start_soon(self._guard, self._writer, client)
            nursery.start_soon(self._guard, self._reader, client)
        self._live_nursery = None
        if self._failure is not None:
            raise self._failure

    async def _guard(self, task: Callable[[Any], Awaitable[None]], client: Any) -> None:
        """Run a task of the live phase; its error ends the phase."""
        try:
            await task(client)
        except Exception as exc:
            if self._failure is None:
                self._failure = exc
            nursery = self._live_nursery
            if nursery is not None:
                nursery.cancel_scope.cancel()

    async def _writer(self, client: Any) -> None:
        while True:
            self._wake = trio.Event()
            session = self._session
            assert session is not None
            data = session.data_to_send()
            payload = _entry_lines(data)
            if payload:
                fields = {_DATA: payload, _WRITER: self._id}
                self._written = await self._call(client.xadd(self._keys.log, fields))
                self._bytes_out += len(payload)
            if data:
                self._flushed = False
                self._touch()
                continue
            if session is self._session:
                self._flushed = True
                self._note_flushed()
                if self.synced:
                    self._synced.set()
                self._touch()
                if self._closing:
                    self._inner.cancel()  # everything is in Redis: done
            await self._wake.wait()

    async def _reader(self, client: Any) -> None:
        while True:
            records = await self._read(client, wait=True)
            if not await self._take(client, records):
                raise _Resync  # a gap: start again from the image
            if len(records) < self._options.read_count:
                self._caught_up(client)

    def _caught_up(self, client: Any) -> None:
        """The reader read to the stream's end: read deferred records again,
        or write an image, when it is time."""
        rewind = self._rewind
        if rewind is not None:
            if trio.current_time() - rewind[1] >= _REWIND_SECONDS:
                self._position = rewind[0]
                self._rewind = None
                raise _Resync
            return  # no image misses what waits to be read again
        threshold = max(self._image_bytes, self._options.compact_bytes)
        nursery = self._live_nursery
        if (
            self._tail_bytes >= threshold
            and not self._compacting
            # Everything written, and read past its own records: the
            # records before the image's id hold all the replica did.
            and self._flushed
            and self._unchecked is None
            and _stream_id(self._position) >= _stream_id(self._written)
            and nursery is not None
        ):
            if self._options.send and self._options.receive:
                self._compacting = True
                nursery.start_soon(self._guard, self._compact, client)
            else:
                self._no_image()

    def _no_image(self) -> None:
        """A one-way link writes no image: one that does not receive holds
        less than the stream (the stream would be trimmed behind what it
        lacks), and one that does not send would publish what it keeps."""
        if not self._said_no_image:
            self._said_no_image = True
            log.info(
                "repred: Redis link %r writes no image (it %s): the stream is"
                " trimmed only behind images written by links that send and"
                " receive",
                self.name,
                "does not receive" if self._options.send else "does not send",
            )

    # -- images ------------------------------------------------------------

    async def _compact(self, client: Any) -> None:
        """Write an image of what the replica holds and make it current, if
        no other link is writing one."""
        try:
            token = secrets.token_urlsafe(12)
            nx = coredis.tokens.PureToken.NX
            locked = await self._call(
                client.set(self._keys.lock, token, condition=nx, px=_LOCK_MS)
            )
            if not locked:
                return
            try:
                await self._write_image(client, token)
            finally:
                release = client.register_script(_RELEASE)
                await self._call(release(keys=[self._keys.lock], args=[token]))
        finally:
            self._compacting = False

    async def _write_image(self, client: Any, token: str) -> None:
        covers = self._position
        epoch = self._epoch
        meta = await self._read_meta(client)
        if covers is None or epoch is None or meta.epoch != epoch:
            return
        key = self._keys.image(token)
        written = await self._push_image(client, key)
        if written is None:
            self._tail_bytes = 0  # too large: not again before as much more
            return
        length, size = written
        tail_ms = round(self._options.tail_seconds * 1000)
        trim = _stream_id(covers)[0] - tail_ms
        trim_to = covers if not tail_ms else f"{trim}-0".encode() if trim > 0 else b""
        old = meta.image or b""
        commit = client.register_script(_COMMIT)
        keys = [self._keys.meta, self._keys.log, key, self._keys.image(old or token)]
        args = [epoch, covers, token, length, size, old, trim_to, _OLD_IMAGE_SECONDS]
        committed = await self._call(commit(keys=keys, args=args))
        if committed:
            self._images_written += 1
            self._touch()
            self._note_image(_Meta(epoch=epoch, image_id=covers, image_bytes=size))
        else:
            await self._call(client.delete([key]))

    async def _push_image(self, client: Any, key: str) -> tuple[int, int] | None:
        """Push a full sync of the replica to the list ``key`` (which expires
        unless committed); its element count and bytes, or ``None`` if it
        would be larger than ``max_image_bytes``."""
        options = self._options
        replica = self.replica
        head = encode_digest("image", dict(replica.clock), replica.type_name)
        session = self._session_with()
        try:
            session.receive_data(self._digest({}))
            pending, size, length = [head], len(head), 0
            while not session.sync_sent:
                payload = _entry_lines(session.data_to_send())
                if payload:
                    pending.append(payload)
                    size += len(payload)
                if size > options.max_image_bytes:
                    await self._call(client.delete([key]))
                    limited(
                        logging.WARNING,
                        "redis-image",
                        "repred: Redis link %r: an image of this replica would"
                        " take more than %d bytes (max_image_bytes); no image is"
                        " written, so the stream is not trimmed",
                        self.name,
                        options.max_image_bytes,
                    )
                    return None
                if pending and (
                    sum(map(len, pending)) >= _PUSH_BYTES or session.sync_sent
                ):
                    push = client.register_script(_PUSH)
                    await self._call(push(keys=[key], args=[_LOCK_MS, *pending]))
                    length += len(pending)
                    pending = []
            return length, size
        finally:
            session.close()


async def connect_redis(
    replica: Replica,
    url: str,
    *,
    name: str,
    prefix: str = "repred",
    read_count: int = DEFAULT_READ_COUNT,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    command_timeout: float = DEFAULT_TIMEOUT,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_entries: int = DEFAULT_BATCH_ENTRIES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    compact_bytes: int = DEFAULT_COMPACT_BYTES,
    tail_seconds: float = DEFAULT_TAIL_SECONDS,
    cluster: bool = False,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    send: bool = True,
    receive: bool = True,
    task_status: trio.TaskStatus[RedisLink] = trio.TASK_STATUS_IGNORED,
) -> RedisStatistics:
    """Link ``replica`` to a Redis server under ``name``; runs until cancelled.

    Used as ``link = await nursery.start(repred.connect_redis, m, url,
    name="data")``, it reports a :class:`RedisLink` at once, whether or not
    Redis can be reached yet, and returns its final statistics. Replicas
    linked under one name converge: each appends what it holds, as its
    authors wrote it, to a Redis Stream and applies what the others
    appended; a new or old one starts from a compacted image, then the
    tail. What is read is checked as from any peer (a line that fails is
    logged, counted in ``refused`` and passed over) and never written back.
    Without Redis the replica works on; the link says so once per spell of
    failures, retries with backoff, and then writes all that Redis lacks.
    ``url`` is ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://`` for TLS, or ``unix://`` (the password is never logged);
    ``name`` holds no braces. Every other option is described in
    :class:`RedisOptions`. A bad option raises ``TypeError`` or
    ``ValueError`` at the call; Redis holding a replica of another type
    under ``name``, :class:`IncompatiblePeerError`.
    """
    _check_name(name)
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {url!r}")
    given = {**locals(), "timeout": command_timeout, "cluster": bool(cluster)}
    options = pick(RedisOptions, given)
    link = RedisLink(replica, url, name, options)
    task_status.started(link)
    await link._run()
    return link.statistics()
