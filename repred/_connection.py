"""A connection: a stream, a channel of sessions, and two tasks.

A reader feeds the channel what arrives; a writer sends what the channel
produces, woken whenever a replica applies something new, and lets live
writes gather while they stream in. Both tasks catch their own errors and
record the first one, so callers see a single exception, never a group.
The keep-alives, the progress timeouts and the anti-entropy rounds of a
live link are the writer's and the reader's too.

A channel is the framing of one link: :class:`_Plain` here (one replica,
the scuttlebutt lines as they are), or the gossip peers'
:class:`repred._mux.Mux` (several named replicas over one stream).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Protocol, final

import attrs
import trio

from ._errors import PeerClosed, RepredError, SyncTimeout
from ._groups import single_errors
from ._session import Session, SyncReceived

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._options import LinkOptions
    from ._replica import Replica

__all__ = ["Channel", "Connection", "ConnectionStatistics", "run_channel", "run_link"]

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
        (see the timeouts of :class:`LinkOptions`), or when :meth:`close` is
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
        # What the peer announced, on the sessions where it did.
        expected = [s.entries_expected for s in stats if s.entries_expected is not None]
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
            entries_expected=sum(expected) if expected else None,
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
        return channel.handshake_done and all(s.sync_received for s in channel.sessions)

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
            for session in self._channel.sessions:
                session.antientropy()
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
                if (
                    not live
                    and self._synced.is_set()
                    and all(s.settled for s in channel.sessions)
                ):
                    break
                if channel.handshake_done and not channel.sessions and not live:
                    # Nothing in common: nothing will ever flow. (A live
                    # link stays: a document link opens sessions as needed.)
                    break
                await self._wait(live, options)
            # live=False: everything is exchanged. Say so, and give the peer
            # a moment to finish its side before the connection is dropped.
            if isinstance(stream, trio.abc.HalfCloseableStream):
                with contextlib.suppress(*_TRANSPORT_ERRORS):
                    await stream.send_eof()
                await trio.sleep(options.close_timeout)
            self._scope.cancel()
        except RepredError as exc:
            self._fail(exc)


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
            async with single_errors(), trio.open_nursery() as nursery:
                nursery.start_soon(
                    conn._reader, options.handshake_timeout, options.idle_timeout
                )
                nursery.start_soon(conn._writer, live, options)
                on_start(conn)
    finally:
        for session in channel.sessions:
            session.close()
            session.wakeup = None
        channel.set_wakeup(lambda: None)
        try:
            await trio.aclose_forcefully(stream)  # raises if cancelled
        finally:
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


async def run_link(
    replica: Replica,
    stream: trio.abc.Stream,
    *,
    live: bool,
    on_start: Callable[[Connection], None],
    options: LinkOptions,
) -> ConnectionStatistics:
    """Replicate ``replica`` over ``stream``: a connection of one
    replica's session, speaking the scuttlebutt lines as they are."""
    return await run_channel(
        _Plain(options.session(replica)),
        stream,
        live=live,
        on_start=on_start,
        options=options,
    )
