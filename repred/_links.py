"""The trio edge: drive a :class:`Session` over any ``trio.abc.Stream``.

This is the only module of the library that imports trio. A connection is a
stream, a session and two tasks: a reader that feeds the session what
arrives, and a writer that sends what the session produces, woken whenever
the replica applies something new. Both tasks catch their own errors and
record the first one, so callers see a single exception, never a group.
"""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, final

import attrs
import trio

from ._errors import (
    PeerClosed,
    RemoteProtocolError,
    RepredError,
    SyncTimeout,
)
from ._log import limited
from ._pending import PendingTable
from ._replica import is_empty
from ._session import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_ENTRIES,
    Session,
    SyncReceived,
)
from ._wire import DEFAULT_MAX_LINE_BYTES

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable

    from ._replica import Replica

__all__ = [
    "DEFAULT_ANTIENTROPY_INTERVAL",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_MAX_LINKS",
    "DEFAULT_SEND_TIMEOUT",
    "Change",
    "Channel",
    "Connection",
    "ConnectionStatistics",
    "LinkOptions",
    "LinkTable",
    "Subscription",
    "SubscriptionOverflow",
    "connect_tcp",
    "replicate",
    "serve_tcp",
    "subscribe",
]

log = logging.getLogger("repred")

#: Seconds a send may make no progress before the peer counts as stuck.
DEFAULT_SEND_TIMEOUT = 30.0
#: Seconds a new peer has to send its digest.
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

_RECEIVE_SIZE = 64 * 1024
_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@attrs.frozen(kw_only=True)
class ConnectionStatistics:
    """A snapshot of one connection.

    Attributes:
        peer_id: the peer's replica id, once its digest arrived.
        synced: both sides have exchanged everything they had at connect.
        updates_in: entries received that were new here.
        updates_out: entries sent.
        bytes_in: bytes received.
        bytes_out: bytes sent.
        deferred: entries not applied because they were stamped too far
            ahead of this replica's clock (they come again on a later link).
        refused: entries not applied because the link does not receive
            (``receive=False``).
        entries_received: entries received so far, new or not.
        entries_expected: how many entries the peer announced for its
            history (a repred peer does; ``None`` for a JS peer, or before
            the announcement). With ``entries_received``, the progress of a
            long sync.
        started: when the connection started (``trio.current_time()``).
        antientropy_rounds: anti-entropy rounds this side started (see
            ``antientropy_interval``).
        antientropy_differed: rounds in which the two replicas turned out
            to hold different entries although their clocks agreed.
        repaired_in: entries anti-entropy took from the peer.
        repaired_out: entries anti-entropy sent to the peer.
    """

    peer_id: str | None
    synced: bool
    updates_in: int
    updates_out: int
    bytes_in: int
    bytes_out: int
    deferred: int = 0
    refused: int = 0
    entries_received: int = 0
    entries_expected: int | None = None
    started: float = 0.0
    antientropy_rounds: int = 0
    antientropy_differed: int = 0
    repaired_in: int = 0
    repaired_out: int = 0


def _total(counts: Iterable[int | None]) -> int | None:
    """The sum of the counts that are known; ``None`` if none is."""
    known = [n for n in counts if n is not None]
    return sum(known) if known else None


class Channel(Protocol):
    """The framing of one link, as a connection drives it.

    :class:`Session`-based framings implement it: the plain one here (one
    replica, the scuttlebutt lines as they are) and the gossip peer's, which
    carries several named replicas over one stream.
    """

    @property
    def sessions(self) -> list[Session]:
        """The protocol sessions on this link (one per shared replica)."""
        ...

    @property
    def peer_id(self) -> str | None:
        """Who the peer is, once it said."""
        ...

    @property
    def handshake_done(self) -> bool:
        """The peer's opening message (digest or hello) has arrived."""
        ...

    @property
    def lines_in(self) -> int:
        """Complete lines received so far."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held."""
        ...

    @property
    def expects_keepalives(self) -> bool:
        """The peer sends keep-alives, so a quiet link means a dead one."""
        ...

    def feed(self, data: bytes | bytearray) -> list[object]:
        """Bytes from the peer (``b""`` at the end); the events they caused."""
        ...

    def data_to_send(self) -> bytes:
        """The next bytes for the peer, ``b""`` when there is nothing."""
        ...

    def keepalive(self) -> None:
        """Queue a keep-alive line."""
        ...

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        """Call ``wakeup()`` whenever there is something new to send."""
        ...


def _settled(channel: Channel) -> bool:
    """Every session's anti-entropy rounds have ended (see Session.settled)."""
    return all(s.settled for s in channel.sessions)


def _antientropy(channel: Channel) -> None:
    """Start an anti-entropy round on every session that has one."""
    for session in channel.sessions:
        session.antientropy()


class _Plain:
    """One replica's session, speaking the scuttlebutt lines as they are."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.sessions = [session]
        self.feed = session.receive_data
        self.data_to_send = session.data_to_send
        self.keepalive = session.keepalive

    @property
    def peer_id(self) -> str | None:
        peer = self.session.peer
        return None if peer is None else peer.id

    @property
    def handshake_done(self) -> bool:
        return self.session.peer is not None

    @property
    def lines_in(self) -> int:
        return self.session.lines_in

    @property
    def buffered(self) -> int:
        return self.session.buffered

    @property
    def expects_keepalives(self) -> bool:
        # JS scuttlebutt peers send none: a quiet one is not a dead one.
        return self.session.peer_is_repred

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        self.session.wakeup = wakeup


#: Bytes a reader must take, or complete lines a peer must send, within
#: ``idle_timeout`` to count as making progress.
_PROGRESS_BYTES = 16 * 1024
#: The largest piece handed to one ``send_all``: the send timeout is per
#: piece, so it measures progress, not the time to send a whole batch.
_SEND_PIECE = 16 * 1024

#: In the live tail, the writer lets entries gather before a send. It
#: first watches the scheduler's turns: a write with nothing after it goes
#: out once _QUIET_TURNS turns in a row bring nothing new (tasks run in no
#: fixed order within a turn, so one quiet turn proves little).
_QUIET_TURNS = 2
#: When _BUSY_TURNS turns bring new writes (a producer that yields after
#: each write), the writer stops taking a turn each time: it sleeps
#: _LINGER_SECONDS at a time while each sleep brings more, and sends once
#: one brings nothing, _LINGER_ENTRIES writes have gathered (they wake it
#: at once), or _LINGER_MAX_SECONDS have passed. Nothing waits on a timer
#: unless writes are streaming in.
_BUSY_TURNS = 4
_LINGER_SECONDS = 500e-6
_LINGER_ENTRIES = 256
_LINGER_MAX_SECONDS = 2e-3


@final
class Connection:
    """A running replication over one stream (see :func:`replicate`).

    Reported through ``task_status`` by :func:`replicate` and
    :func:`connect_tcp`, and passed to ``on_connection`` by
    :func:`serve_tcp`.
    """

    def __init__(self, channel: Channel, stream: trio.abc.Stream) -> None:
        self._channel = channel
        self.stream = stream
        self._synced = trio.Event()
        self._closed = trio.Event()
        self._wake = trio.Event()
        self._woken = False
        self._scope = trio.CancelScope()
        self._error: BaseException | None = None
        self._sync_flushed = False
        #: Times the session said it had something new to send.
        self._wakes = 0
        #: While the writer sleeps to gather writes: the scope of its
        #: sleep, and the count of wakes that cuts it short.
        self._lingering: trio.CancelScope | None = None
        self._linger_until = 0
        #: When the connection started (trio time).
        self.started = trio.current_time()
        #: When the peer last made progress (trio time).
        self.last_progress = self.started
        self._unproven = 0  # bytes received since the last progress
        #: When the next anti-entropy round starts (live links, once synced).
        self._next_round: float | None = None
        channel.set_wakeup(self._wakeup)

    def __repr__(self) -> str:
        return f"<repred.Connection peer={self.peer_id!r} synced={self.synced}>"

    @property
    def peer_id(self) -> str | None:
        """The peer's replica id (or node address, for a peer link)."""
        return self._channel.peer_id

    @property
    def handshake_done(self) -> bool:
        """The peer's opening message has arrived."""
        return self._channel.handshake_done

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def closed(self) -> bool:
        """The connection has ended (for whatever reason)."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Wait until the connection has ended, its stream closed.

        Useful beside a server's ``on_connection``: a link ends when the
        peer closes it, breaks the protocol, stops reading or goes quiet
        (see the timeouts of :func:`replicate`), or when :meth:`close` is
        called.
        """
        await self._closed.wait()

    async def wait_synced(self) -> None:
        """Wait until both sides have exchanged everything they had.

        After it returns, this replica holds everything the peer had when
        the connection opened, and the peer has been sent everything this
        replica had.

        To watch a long sync meanwhile, read :meth:`statistics` from another
        task: ``entries_received`` of ``entries_expected`` (which a repred
        peer announces right after its digest)::

            async def watch(conn):
                while not conn.synced:
                    s = conn.statistics()
                    if s.entries_expected:
                        print(f"{s.entries_received / s.entries_expected:.0%}")
                    await trio.sleep(1)

            async with trio.open_nursery() as nursery:
                conn = await nursery.start(repred.connect_tcp, m, host, port)
                nursery.start_soon(watch, conn)
                await conn.wait_synced()
        """
        await self._synced.wait()

    def statistics(self) -> ConnectionStatistics:
        stats = [s.statistics() for s in self._channel.sessions]
        return ConnectionStatistics(
            peer_id=self.peer_id,
            synced=self.synced,
            updates_in=sum(s.updates_in for s in stats),
            updates_out=sum(s.updates_out for s in stats),
            bytes_in=sum(s.bytes_in for s in stats),
            bytes_out=sum(s.bytes_out for s in stats),
            deferred=sum(s.deferred for s in stats),
            refused=sum(s.refused for s in stats),
            entries_received=sum(s.entries_received for s in stats),
            entries_expected=_total(s.entries_expected for s in stats),
            started=self.started,
            antientropy_rounds=sum(s.antientropy_rounds for s in stats),
            antientropy_differed=sum(s.antientropy_differed for s in stats),
            repaired_in=sum(s.repaired_in for s in stats),
            repaired_out=sum(s.repaired_out for s in stats),
        )

    def close(self) -> None:
        """End this connection (its :func:`replicate` call returns)."""
        self._scope.cancel()

    # -- internals -----------------------------------------------------

    def _wakeup(self) -> None:
        # (Called on every write: the Event is set once per wait.)
        self._wakes += 1
        if self._lingering is not None and self._wakes >= self._linger_until:
            self._lingering.cancel()
            self._lingering = None  # once: cancelling costs a few us in trio
        if not self._woken:
            self._woken = True
            self._wake.set()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._scope.cancel()

    def _sync_received(self) -> bool:
        channel = self._channel
        done: bool = channel.handshake_done and all(
            s.sync_received for s in channel.sessions
        )
        return done

    def _check_synced(self) -> None:
        if self._sync_flushed and self._sync_received():
            self._synced.set()

    async def _reader(self, handshake_timeout: float, idle_timeout: float) -> None:
        channel = self._channel
        try:
            with trio.move_on_after(handshake_timeout) as handshake:
                while not channel.handshake_done:
                    if not await self._receive_once():
                        return
            if handshake.cancelled_caught:
                raise SyncTimeout(f"no digest within {handshake_timeout} s")
            while True:
                # A peer that sends keep-alives, or is halfway through a
                # line, must make progress: a line, or 16 KiB, per
                # idle_timeout. A quiet JS peer between lines is just quiet.
                watched = channel.expects_keepalives or channel.buffered
                deadline = self.last_progress + idle_timeout if watched else math.inf
                with trio.move_on_at(deadline) as idle:
                    if not await self._receive_once():
                        return
                if idle.cancelled_caught:
                    raise SyncTimeout(f"the peer made no progress for {idle_timeout} s")
        except RepredError as exc:
            self._fail(exc)

    async def _receive_once(self) -> bool:
        """Receive and process one chunk; ``False`` once the peer has ended."""
        try:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
        except _TRANSPORT_ERRORS as exc:
            if self._synced.is_set():
                self._scope.cancel()
                return False
            raise PeerClosed(f"connection lost: {exc!r}") from None
        channel = self._channel
        lines = channel.lines_in
        for event in channel.feed(data):
            if type(event) is SyncReceived:
                self._check_synced()
                self._wakeup()
        self._unproven += len(data)
        if channel.lines_in > lines or self._unproven >= _PROGRESS_BYTES:
            self.last_progress = trio.current_time()
            self._unproven = 0
        if not data:
            if not channel.handshake_done:
                raise PeerClosed(
                    "the peer closed the connection before its digest (a TLS"
                    " peer does so to a client without TLS: pass ssl_context=)"
                )
            if not self._sync_received():
                raise PeerClosed("the peer closed the connection before its SYNC")
            self._scope.cancel()
            return False
        return True

    async def _send(self, data: bytes, send_timeout: float) -> None:
        """Send ``data`` in pieces, each of which must go within the timeout."""
        view = memoryview(data)
        for start in range(0, len(view), _SEND_PIECE):
            with trio.move_on_after(send_timeout) as scope:
                try:
                    await self.stream.send_all(view[start : start + _SEND_PIECE])
                except _TRANSPORT_ERRORS as exc:
                    raise PeerClosed(f"connection lost: {exc!r}") from None
            if scope.cancelled_caught:
                raise SyncTimeout(f"the peer read nothing for {send_timeout} s")

    async def _linger(self) -> None:
        """Live: let entries gather while writes keep coming (see
        _QUIET_TURNS and _BUSY_TURNS)."""
        quiet = busy = 0
        while quiet < _QUIET_TURNS:
            wakes = self._wakes
            await trio.lowlevel.cancel_shielded_checkpoint()
            if self._wakes == wakes:
                quiet += 1
                continue
            quiet = 0
            busy += 1
            if busy == _BUSY_TURNS:
                break
        else:
            return
        # Writes are streaming in: sleep instead of taking every turn.
        give_up = trio.current_time() + _LINGER_MAX_SECONDS
        self._linger_until = self._wakes + _LINGER_ENTRIES
        try:
            while self._wakes < self._linger_until:
                wakes = self._wakes
                deadline = min(trio.current_time() + _LINGER_SECONDS, give_up)
                with trio.CancelScope(deadline=deadline, shield=True) as scope:
                    self._lingering = scope
                    await trio.sleep_forever()
                if self._wakes == wakes or trio.current_time() >= give_up:
                    return
        finally:
            self._lingering = None

    async def _wait(self, live: bool, options: LinkOptions) -> None:
        """Until there is something to send: a wakeup, the keep-alive
        interval (then a keep-alive goes out), or the next anti-entropy
        round of a live link."""
        now = trio.current_time()
        deadline = now + options.keepalive_interval
        interval = options.antientropy_interval
        due = math.inf
        if live and interval is not None and self._synced.is_set():
            if self._next_round is None:
                self._next_round = now + interval
            due = self._next_round
        with trio.move_on_at(min(deadline, due)):
            await self._wake.wait()
        if self._wake.is_set():
            return
        if trio.current_time() >= due:
            self._next_round = None
            _antientropy(self._channel)
        else:
            self._channel.keepalive()  # quiet for a while: say "still here"

    async def _writer(self, live: bool, options: LinkOptions) -> None:
        channel = self._channel
        stream = self.stream
        try:
            while True:
                self._wake = trio.Event()
                self._woken = False
                if self._sync_flushed:
                    await self._linger()
                data = channel.data_to_send()
                if data:
                    await self._send(data, options.send_timeout)
                if (
                    not self._sync_flushed
                    and channel.handshake_done
                    and all(s.sync_sent for s in channel.sessions)
                ):
                    # Everything we had at connect is out (or, on a link
                    # that does not send, there was nothing to send).
                    self._sync_flushed = True
                    self._check_synced()
                if data:
                    continue
                if not live and self._synced.is_set() and _settled(channel):
                    break
                if channel.handshake_done and not channel.sessions:
                    break  # nothing in common: nothing will ever flow
                await self._wait(live, options)
            # live=False: everything is exchanged. Say so, and give the peer
            # a moment to finish its side before the connection is dropped.
            if isinstance(stream, trio.abc.HalfCloseableStream):
                try:
                    await stream.send_eof()
                except _TRANSPORT_ERRORS:
                    pass
                await trio.sleep(options.close_timeout)
            self._scope.cancel()
        except RepredError as exc:
            self._fail(exc)


@attrs.frozen(kw_only=True)
class LinkOptions:
    """The options of one link, checked when a link function is called.

    Attributes:
        send_timeout: seconds a send may make no progress before the peer
            counts as stuck (:class:`SyncTimeout`).
        handshake_timeout: seconds the peer has to send its digest.
        close_timeout: with ``live=False``, seconds to wait for the peer to
            end its side after the sync.
        keepalive_interval: seconds of quiet after which a keep-alive line
            goes out; a repred peer that makes no progress for three times
            this (see :attr:`idle_timeout`) is cut.
        max_line_bytes: the longest line accepted from the peer.
        batch_entries: entries read from one source's history at a time
            (and the most in one batch).
        batch_bytes: bytes of entries handed to one send.
        batches: offer batched framing (used only with a repred peer that
            offers it too).
        send: send entries (``False``: only the digest and keep-alives).
        receive: apply what the peer sends (``False``: count it as refused).
        antientropy_interval: seconds between anti-entropy rounds on a live
            link with a repred peer (a round also follows every sync);
            ``None``: only after the sync.
    """

    send_timeout: float = DEFAULT_SEND_TIMEOUT
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    batch_entries: int = DEFAULT_BATCH_ENTRIES
    batch_bytes: int = DEFAULT_BATCH_BYTES
    batches: bool = True
    send: bool = True
    receive: bool = True
    antientropy_interval: float | None = DEFAULT_ANTIENTROPY_INTERVAL

    @property
    def idle_timeout(self) -> float:
        """Seconds a peer may make no progress: three keep-alive intervals."""
        return 3 * self.keepalive_interval

    def __attrs_post_init__(self) -> None:
        for name in ("send_timeout", "handshake_timeout", "keepalive_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not self.close_timeout >= 0:
            raise ValueError("close_timeout must not be negative")
        for name in ("max_line_bytes", "batch_entries", "batch_bytes"):
            if type(getattr(self, name)) is not int:
                raise TypeError(f"{name} must be an int")
        for name in ("batches", "send", "receive"):
            if type(getattr(self, name)) is not bool:
                raise TypeError(f"{name} must be a bool")
        if self.max_line_bytes < 64 or self.batch_entries < 1 or self.batch_bytes < 1:
            raise ValueError("limits must be positive (max_line_bytes >= 64)")
        interval = self.antientropy_interval
        if interval is not None and not (
            isinstance(interval, int | float) and 0 < interval < math.inf
        ):
            raise ValueError("antientropy_interval must be positive seconds or None")

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


#: The options every link function takes, as keywords of its own.
_LINK_FIELDS = tuple(field.name for field in attrs.fields(LinkOptions))


def _link_options(arguments: dict[str, Any]) -> dict[str, Any]:
    """The LinkOptions fields among a link function's arguments."""
    return {name: arguments[name] for name in _LINK_FIELDS}


async def run_channel(
    channel: Channel,
    stream: trio.abc.Stream,
    *,
    live: bool,
    on_start: Callable[[Connection], None],
    options: LinkOptions,
) -> ConnectionStatistics:
    """Run a connection over ``stream`` with the given framing channel.

    Raises the single error that ended it (never an exception group).
    """
    conn = Connection(channel, stream)
    try:
        with conn._scope:
            async with single_errors():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        conn._reader, options.handshake_timeout, options.idle_timeout
                    )
                    nursery.start_soon(conn._writer, live, options)
                    on_start(conn)
    finally:
        for session in channel.sessions:
            session.close()
            session.wakeup = None
        channel.set_wakeup(_no_wakeup)
        await trio.aclose_forcefully(stream)
        conn._closed.set()
    # What a link held goes back as it ends, by reference counting alone:
    # nothing may point back at the connection (the sessions' wakeups did)
    # or at the error (held by the connection, and its traceback by the
    # frames that hold the connection), or a cut link would wait for a
    # full collection, its unfinished line and all.
    error, conn._error = conn._error, None
    if error is None:
        return conn.statistics()
    try:
        raise error
    finally:
        del error


async def start_tls(
    stream: trio.abc.Stream,
    ssl_context: ssl.SSLContext,
    *,
    server_hostname: str | None,
    timeout: float,  # noqa: ASYNC109  (the handshake's own bound)
) -> trio.SSLStream[trio.abc.Stream]:
    """Wrap ``stream`` in TLS and complete the handshake, or fail clearly.

    Raises:
        PeerClosed: the handshake failed (a certificate the other side does
            not trust, a peer that does not speak TLS, ...); the stream is
            closed.
        SyncTimeout: the handshake took longer than ``timeout``.
    """
    tls = trio.SSLStream(
        stream,
        ssl_context,
        server_side=server_hostname is None,
        server_hostname=server_hostname,
    )
    try:
        with trio.fail_after(timeout):
            await tls.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise SyncTimeout(f"no TLS handshake within {timeout} s") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        cause = exc.__cause__ or exc
        reason = getattr(cause, "reason", None) or str(cause) or type(cause).__name__
        raise PeerClosed(f"TLS handshake failed: {reason}") from None
    return tls


def tls_server(
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
    ssl_context: ssl.SSLContext,
    *,
    timeout: float,
    max_handshakes: int,
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """``handler``, for streams that must complete a TLS handshake first.

    At most ``max_handshakes`` handshakes run at once, and 16 from one
    client address: one more pushes out the oldest (of that address, or of
    all; see :mod:`repred._pending`), so connections that never finish a
    handshake cost bounded sockets and time, and never keep others out. A
    failed handshake is logged and ends only its connection.
    """
    handshakes = PendingTable(max_handshakes)

    async def tls_handler(stream: trio.abc.Stream) -> None:
        tls = None
        with handshakes.hold(stream):
            try:
                tls = await start_tls(
                    stream, ssl_context, server_hostname=None, timeout=timeout
                )
            except RepredError as exc:
                limited(
                    logging.INFO, "tls-failed", "repred: connection refused: %s", exc
                )
                return
        if tls is None:  # pushed out by newer ones
            await trio.aclose_forcefully(stream)
            return
        await handler(tls)

    return tls_handler


async def replicate(
    replica: Replica,
    stream: trio.abc.Stream,
    *,
    live: bool = True,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_entries: int = DEFAULT_BATCH_ENTRIES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    batches: bool = True,
    send: bool = True,
    receive: bool = True,
    antientropy_interval: float | None = DEFAULT_ANTIENTROPY_INTERVAL,
    task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
) -> ConnectionStatistics:
    """Replicate ``replica`` with one peer over ``stream``.

    Both sides exchange digests, send each other what the other lacks, and
    (with ``live=True``) go on streaming new entries until the stream ends.
    With ``live=False`` it returns once both sides have exchanged everything
    they had. Under ``nursery.start`` it reports the :class:`Connection`.
    The stream is closed on return.

    Live writes go out as soon as the program pauses: a write with nothing
    after it leaves within two turns of the scheduler. While writes keep
    coming (a loop that writes and yields), they are gathered into one send
    for up to 2 ms or 256 writes, so a producer pays for one send per many
    writes. In a test, wait for what should arrive (:func:`subscribe` on the
    other side), not for every task to block: the end of a gathering is a
    timer, which ``trio.testing.wait_all_tasks_blocked`` does not wait for.

    Args:
        replica: the replica to replicate.
        stream: any ``trio.abc.Stream`` to the peer.
        live: keep streaming after the sync.
        send_timeout: seconds a send may make no progress before the peer
            counts as stuck (:class:`SyncTimeout`).
        handshake_timeout: seconds the peer has to send its digest.
        close_timeout: with ``live=False``, seconds to wait for the peer to
            end its side after the sync.
        keepalive_interval: seconds of quiet before a keep-alive line goes
            out. A repred peer (or one halfway through a line) that makes no
            progress, a line or 16 KiB, for three times this is cut
            (:class:`SyncTimeout`); a quiet JS peer between lines is not.
        max_line_bytes: the longest line accepted from the peer (announced
            to it in the digest).
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
            stays up (a read-only mirror, JS ``createReadStream``).
        antientropy_interval: with a repred peer, on a link that sends and
            receives, both sides compare hash trees of what they hold after
            the sync (a ``live=False`` sync returns once that is done) and,
            on a live link, every this many seconds; whatever one holds that
            the other lacks, although their clocks agree, is repaired (see
            :meth:`repred.Replica.on_divergence`). ``None``: only after the
            sync.

    Returns:
        The connection's final statistics.

    Raises:
        TypeError, ValueError: a bad option (at the call).
        RemoteProtocolError: the peer broke the protocol (a subclass says
            how). Everything it sent before was applied; the offending
            message changed nothing.
        PeerClosed: the stream ended or broke before the peer's ``"SYNC"``.
        SyncTimeout: the peer stopped reading, or sent no digest in time.
        StoreError: the replica's store could not keep what arrived.
    """
    options = LinkOptions(**_link_options(locals()))
    return await _replicate(replica, stream, live, task_status.started, options)


async def _replicate(
    replica: Replica,
    stream: trio.abc.Stream,
    live: bool,
    on_start: Callable[[Connection], None],
    options: LinkOptions,
) -> ConnectionStatistics:
    return await run_channel(
        _Plain(options.session(replica)),
        stream,
        live=live,
        on_start=on_start,
        options=options,
    )


async def connect_tcp(
    replica: Replica,
    host: str,
    port: int,
    *,
    live: bool = True,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_entries: int = DEFAULT_BATCH_ENTRIES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    batches: bool = True,
    send: bool = True,
    receive: bool = True,
    antientropy_interval: float | None = DEFAULT_ANTIENTROPY_INTERVAL,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
) -> ConnectionStatistics:
    """Connect to a peer over TCP and :func:`replicate` with it.

    With ``ssl_context`` (a client-side ``ssl.SSLContext``), the link runs
    over TLS, and ``host`` is the name the peer's certificate must carry;
    a context that holds a certificate chain presents it (mutual TLS). The
    other options are those of :func:`replicate`.

    Raises:
        OSError: the connection could not be made.
        PeerClosed: the TLS handshake failed (the message says why).
        RepredError: as :func:`replicate`.
    """
    options = LinkOptions(**_link_options(locals()))
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if ssl_context is not None:
        stream = await start_tls(
            stream,
            ssl_context,
            server_hostname=host,
            timeout=options.handshake_timeout,
        )
    return await _replicate(replica, stream, live, task_status.started, options)


async def serve_tcp(
    replica: Replica,
    port: int,
    *,
    host: str | None = "127.0.0.1",
    live: bool = True,
    handler_nursery: trio.Nursery | None = None,
    on_connection: Callable[[Connection], None] | None = None,
    max_links: int = DEFAULT_MAX_LINKS,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    batch_entries: int = DEFAULT_BATCH_ENTRIES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    batches: bool = True,
    send: bool = True,
    receive: bool = True,
    antientropy_interval: float | None = DEFAULT_ANTIENTROPY_INTERVAL,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept peers on a TCP port and replicate with each; runs until cancelled.

    Used as ``listeners = await nursery.start(repred.serve_tcp, replica, 0)``,
    it reports its listeners the way ``trio.serve_tcp`` does (port 0 picks a
    free port). One replica serves any number of connections at once.

    Error handling: a bad option raises at the call; a port that cannot be
    bound raises ``OSError``; whatever one peer does ends only that peer's
    connection: the error is logged on the ``"repred"`` logger and serving
    goes on.

    Args:
        replica: the replica to serve.
        port: the port to listen on (0: any free port).
        host: the address to listen on.
        live: passed to :func:`replicate` for each connection.
        handler_nursery: where connection tasks run (as ``trio.serve_tcp``).
        on_connection: called with each new :class:`Connection`.
        max_links: the most connections served at once; a new one past it
            drops the connection that has been quiet longest.
        ssl_context: serve over TLS with this server-side
            ``ssl.SSLContext``. A context that requires client certificates
            (``verify_mode = ssl.CERT_REQUIRED`` and a CA loaded) makes it
            mutual TLS. A client whose handshake fails (plain TCP, an
            untrusted certificate) is logged and dropped; serving goes on.

    The other options are those of :func:`replicate`, for each connection.
    """
    options = LinkOptions(**_link_options(locals()))
    handler = stream_server(replica, live, options, max_links, on_connection)
    await serve_streams(
        handler,
        port,
        host=host,
        ssl_context=ssl_context,
        handshake_timeout=options.handshake_timeout,
        max_links=max_links,
        handler_nursery=handler_nursery,
        task_status=task_status,
    )


async def serve_streams(
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
    port: int,
    *,
    host: str | None,
    ssl_context: ssl.SSLContext | None,
    handshake_timeout: float,
    max_links: int,
    handler_nursery: trio.Nursery | None,
    task_status: trio.TaskStatus[list[Any]],
) -> NoReturn:
    """Serve TCP on ``port``, each stream to ``handler`` (over TLS, with
    ``ssl_context``: at most ``max_links`` handshakes at once, each within
    ``handshake_timeout``)."""
    serving = handler
    if ssl_context is not None:
        serving = tls_server(
            handler,
            ssl_context,
            timeout=handshake_timeout,
            max_handshakes=max_links,
        )
    async with single_errors():
        await trio.serve_tcp(
            serving,
            port,
            host=host,
            handler_nursery=handler_nursery,
            task_status=task_status,
        )
    raise AssertionError("trio.serve_tcp returned")  # pragma: no cover


def stream_server(
    replica: Replica,
    live: bool,
    options: LinkOptions,
    max_links: int,
    on_connection: Callable[[Connection], None] | None,
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """A handler that replicates with each stream it is given, keeping at
    most ``max_links`` at once; whatever one peer does ends only its own
    connection, and is logged (bounded, see :mod:`repred._log`)."""
    links = LinkTable(max_links)

    async def handler(stream: trio.abc.Stream) -> None:
        started: list[Connection] = []

        def on_start(conn: Connection) -> None:
            started.append(conn)
            links.add(conn)
            if on_connection is not None:
                on_connection(conn)

        try:
            await _replicate(replica, stream, live, on_start, options)
        except RemoteProtocolError as exc:
            limited(
                logging.WARNING,
                "refused",
                "repred: refused what a peer sent: %s",
                _describe(exc),
            )
        except RepredError as exc:
            limited(
                logging.INFO, "closed", "repred: connection closed: %s", _describe(exc)
            )
        except Exception:
            # Nothing one peer does may take the server down.
            log.exception("repred: connection failed")
        finally:
            for conn in started:
                links.discard(conn)

    return handler


class LinkTable:
    """The inbound links of one listener, at most ``limit`` of them.

    Adding one past the limit closes the link whose peer made progress
    least recently: a flood of idle connections pushes out only idle ones.
    """

    def __init__(self, limit: int) -> None:
        if type(limit) is not int or limit < 1:
            raise ValueError("max_links must be a positive int")
        self.limit = limit
        self._links: set[Connection] = set()

    def __len__(self) -> int:
        return len(self._links)

    def add(self, conn: Connection) -> None:
        """Take a new link, dropping the quietest if there are too many."""
        while len(self._links) >= self.limit:
            quietest = min(self._links, key=lambda c: c.last_progress)
            self._links.discard(quietest)
            limited(
                logging.INFO,
                "too-many-links",
                "repred: too many links; dropped the quietest: %r",
                quietest,
            )
            quietest.close()
        self._links.add(conn)

    def discard(self, conn: Connection) -> None:
        """A link ended."""
        self._links.discard(conn)


@asynccontextmanager
async def single_errors() -> AsyncIterator[None]:
    """Turn an exception group with one exception in it into that exception.

    trio's nurseries wrap every error in an ``ExceptionGroup``; callers of
    repred's functions get the single exception that happened instead, so
    that ``except ValueError:`` works as it reads.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        # A cancellation stays in its group, which trio's cancel scopes
        # take as they take the leaf: raised here, the leaf would get the
        # group as its context while the group holds it, a cycle that keeps
        # every frame of the ended task (and what they hold) until a full
        # collection. Every link ends with one.
        if len(leaves) != 1 or isinstance(leaves[0], trio.Cancelled):
            raise
        leaf = leaves[0]
        try:
            raise leaf from leaf.__cause__
        finally:
            del leaf, leaves  # (this frame is in the traceback: no cycle)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _ignore(conn: Connection) -> None:
    pass


def _no_wakeup() -> None:
    pass


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    name = type(exc).__name__
    return f"{name}({reason}): {exc}" if reason else f"{name}: {exc}"


# -- subscriptions ---------------------------------------------------------


@attrs.frozen
class Change:
    """A change a replica applied: its effect here, and its stamp."""

    change: Any
    ts: float
    source: str


class SubscriptionOverflow(RepredError):
    """A subscriber fell further behind than its buffer allows."""


#: Changes a subscriber may fall behind before :class:`SubscriptionOverflow`.
DEFAULT_SUBSCRIPTION_BUFFER = 100_000


@final
class Subscription:
    """The changes a replica applies, as an async iterator.

    Use as ``with repred.subscribe(replica) as changes: async for c in
    changes: ...``. Only changes with a local effect are delivered. It is a
    trio memory channel of ``max_buffer`` changes: a subscriber that falls
    further behind gets :class:`SubscriptionOverflow` (after the changes
    already buffered) rather than unbounded memory growth. Leaving the
    ``with`` block ends the iteration after what was buffered.
    """

    def __init__(
        self, replica: Replica, max_buffer: int, key: Hashable | None = None
    ) -> None:
        self._replica = replica
        self._key = key
        self._max = max_buffer
        send, receive = trio.open_memory_channel[Change](max_buffer)
        self._send = send
        self._receive = receive
        self._overflow = False
        self._remove: Callable[[], None] | None = None

    def __enter__(self) -> Subscription:
        self._remove = self._replica.add_listener(self._listener)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
            self._send.close()

    def _listener(self, effect: Any, ts: float, source: str, origin: object) -> None:
        if is_empty(effect) or self._overflow:
            return
        if self._key is not None and not self._matches(effect):
            return
        try:
            self._send.send_nowait(Change(effect, ts, source))
        except trio.WouldBlock:
            self._overflow = True
            self._send.close()  # the receiver drains, then hears of it

    def _matches(self, effect: Any) -> bool:
        """Whether a change is to the watched key (or the watched row)."""
        key_of = self._replica.last_write_wins
        assert key_of is not None
        try:
            key = key_of(effect)
        except ValueError:  # pragma: no cover  (applied changes have keys)
            return False
        return key == self._key or (type(key) is tuple and key[0] == self._key)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Change:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._overflow:
                raise SubscriptionOverflow(
                    f"more than {self._max} changes behind"
                ) from None
            raise StopAsyncIteration from None

    async def receive(self) -> Change:
        """The next change (waits for one)."""
        return await self.__anext__()


def subscribe(
    replica: Replica,
    *,
    key: Hashable | None = None,
    max_buffer: int = DEFAULT_SUBSCRIPTION_BUFFER,
) -> Subscription:
    """Subscribe to the changes ``replica`` applies, local and remote.

    With ``key``, only the changes to that key of a last-write-wins type:
    a key of ``model()`` (``subscribe(m, key="colour")``), or a row of
    ``doc()`` (``subscribe(d, key="row-id")``: every field of that row), as
    ``on('change:key')`` does in JS ``scuttlebutt/model``.

    Raises:
        ValueError: ``max_buffer`` is not positive, or ``key`` is given for
            a type that has no keys.
    """
    if type(max_buffer) is not int or max_buffer < 1:
        raise ValueError("max_buffer must be a positive int")
    if key is not None and replica.last_write_wins is None:
        raise ValueError(f"a {replica.type_name!r} replica has no keys")
    return Subscription(replica, max_buffer, key)
