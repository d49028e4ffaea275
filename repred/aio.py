"""repred inside an asyncio program (aiohttp, Starlette, plain asyncio).

repred's links are trio code: awaited from asyncio they fail with trio's
``must be called from async context``. A *portal* runs them for asyncio
code: a trio run started in trio's guest mode on the program's own event
loop, in the same thread, for as long as an ``async with`` block lasts::

    async with repred.aio.open_portal() as portal:
        listeners = await portal.start(repred.serve_tcp, replica, 8001)
        async with portal.wrap(repred.open_peer(replicas={"data": m})) as peer:
            with portal.subscribe(m) as changes:
                async for change in changes:
                    ...

Because trio runs in the asyncio thread, a replica's sync methods
(``update``, ``set``, ``get``, ``state``, ``statistics``...) are called
straight from asyncio code, and a write made there wakes the trio links
that carry it. Only what is awaited goes through the portal.

>>> import asyncio, trio, repred.aio
>>> async def main():
...     async with repred.aio.open_portal() as portal:
...         return await portal.run(trio.to_thread.run_sync, lambda: "from trio")
>>> asyncio.run(main())
'from trio'
"""

# Theory of operation
#
# trio.lowlevel.start_guest_run unrolls trio's scheduler into callbacks on
# a host loop: run_sync_soon_threadsafe is asyncio's call_soon_threadsafe
# (the trio I/O thread uses it to hand events back), the not-threadsafe
# variant is call_soon, and done_callback receives the run's outcome when
# its main task ends. Only the wait for I/O leaves the thread; every trio
# task runs in asyncio's thread between asyncio's own callbacks. trio's run
# context is installed in the thread for the whole run, so sync trio calls
# made from asyncio code (a nursery's start_soon, a cancel scope's cancel,
# an Event's set, a memory channel's send_nowait inside a replica's
# listener) are supported by trio in guest mode: they wake its I/O thread
# when a task becomes runnable. This module relies on exactly that, and on
# nothing private to trio.
#
# - The run's main task holds one nursery inside one cancel scope until the
#   portal closes. Each call from asyncio is a task of that nursery with its
#   own cancel scope and an asyncio future for its result; the future is
#   set by the trio task itself (same thread), and awaited through
#   asyncio.shield so that an asyncio cancellation leaves it pending.
# - asyncio cancels a caller: the call's scope is cancelled and the caller
#   waits for the trio task to finish before it raises CancelledError, so
#   no trio work outlives the await that started it.
# - trio cancels a call (the portal is closing): the caller gets
#   PortalClosed, never trio.Cancelled.
# - A task started into the portal fails after started: the nursery fails,
#   the run ends, and done_callback cancels the asyncio task in the
#   ``async with`` block, as asyncio.TaskGroup does; leaving the block
#   takes that cancellation back and raises the error as itself.
# - The block ends (or its task is cancelled, e.g. at loop shutdown): the
#   main scope is cancelled and the exit waits, through any number of
#   further asyncio cancellations, for done_callback: trio's guest-mode
#   rule is that the host loop must not stop before the guest run ends.
# - The host loop owns signals: asyncio sets signal.set_wakeup_fd when it
#   installs signal handlers (loop.add_signal_handler, as servers do), so
#   trio is told host_uses_signal_set_wakeup_fd=True and leaves it alone.
#   asyncio.run's own SIGINT handler is installed before any portal, so
#   Ctrl-C cancels the asyncio main task, which closes the portal.
# - Bounds: a call holds one task and one future while it runs; a
#   subscription's changes stay in its own bounded channel (max_buffer)
#   and cross one at a time, when asyncio asks for the next.

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Generic, TypeVar, TypeVarTuple, Unpack, final

import trio

from ._errors import PortalClosed
from ._subscribe import DEFAULT_SUBSCRIPTION_BUFFER, subscribe

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from outcome import Outcome

    from ._replica import Replica
    from ._subscribe import Change, Subscription

__all__ = ["Portal", "PortalClosed", "PortalSubscription", "open_portal"]

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")

#: What a call's trio task reports: ``(True, value)``, ``(False, error)``,
#: or ``None`` when trio cancelled it (the portal was closing).
_Result = tuple[bool, Any] | None


def open_portal() -> Portal:
    """A portal: trio, for asyncio code, while an ``async with`` block lasts.

    Use as ``async with repred.aio.open_portal() as portal:`` inside a
    running asyncio loop. Entering starts a trio run in trio's guest mode
    on that loop, in the same thread; leaving cancels everything still
    running in it (links, servers, peers, calls) and waits until it has
    finished. One portal at a time per thread: trio allows one run per
    thread.

    Error handling: a task started into the portal (:meth:`Portal.start`,
    :meth:`Portal.wrap`) that fails later stops the block the way
    ``asyncio.TaskGroup`` does (its task is cancelled), and leaving the
    block raises that error as itself; an error of the block and one of
    trio together are raised as an exception group of both.

    Raises:
        RuntimeError: (on entering) no running asyncio loop, a trio run
            already active in this thread, or the portal entered twice.
    """
    return Portal()


@final
class _Call:
    """One trio task run for asyncio code: its cancel scope and its result."""

    __slots__ = ("done", "scope")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.scope = trio.CancelScope()
        self.done: asyncio.Future[_Result] = loop.create_future()

    async def run(
        self, afn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        result: _Result = None  # stays None if our own scope was cancelled
        try:
            with self.scope:
                result = (True, await afn(*args))
        except BaseException as exc:  # it belongs to the asyncio caller
            rest = _without_cancelled(exc)
            if rest is None:
                self._report(None)
                raise  # the portal is closing: trio's cancellation goes on
            result = (False, rest)
        self._report(result)

    def _report(self, result: _Result) -> None:
        if not self.done.done():
            self.done.set_result(result)


def _without_cancelled(exc: BaseException) -> BaseException | None:
    """``exc`` less its ``trio.Cancelled`` part (``None`` if that is all)."""
    if isinstance(exc, trio.Cancelled):
        return None
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1]
    return exc


async def _wait(
    done: asyncio.Future[T], on_cancel: Callable[[], None]
) -> tuple[T, bool]:
    """Wait for ``done`` through asyncio cancellations, calling ``on_cancel``
    at each; return its result and whether the waiter was cancelled."""
    cancelled = False
    while not done.done():
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            cancelled = True
            on_cancel()
    return done.result(), cancelled


def _deliver(result: _Result, cancelled: bool) -> Any:
    """What a call's caller gets: the value, the error as itself, or the
    cancellation that applies."""
    if result is not None and not result[0]:
        raise result[1]
    if cancelled:
        raise asyncio.CancelledError
    if result is None:
        raise PortalClosed("the portal closed while the call ran")
    return result[1]


def _single(exc: BaseException) -> BaseException:
    """A group of one error (nested or not) as that error."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@final
class Portal:
    """A trio run inside an asyncio loop, for asyncio code (see
    :func:`open_portal`).

    Its methods are called from asyncio code running on the loop that opened
    it, never from trio code (trio code awaits repred directly) nor from
    another thread.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host: asyncio.Task[Any] | None = None
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._ready: asyncio.Future[None] | None = None
        self._ran: asyncio.Future[Outcome[None]] | None = None
        self._closing = False
        self._stopped_host = False

    # -- the run -------------------------------------------------------

    async def __aenter__(self) -> Portal:
        if self._loop is not None:
            raise RuntimeError("a portal is entered once")
        if trio.lowlevel.in_trio_run():
            raise RuntimeError(
                "a trio run is already active in this thread: use its portal"
                " (trio allows one run per thread)"
            )
        loop = asyncio.get_running_loop()
        self._loop, self._host = loop, asyncio.current_task()
        self._ready, self._ran = loop.create_future(), loop.create_future()
        trio.lowlevel.start_guest_run(
            self._main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=self._finished,
            host_uses_signal_set_wakeup_fd=True,
        )
        try:
            await asyncio.shield(self._ready)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _main(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                assert self._ready is not None
                self._ready.set_result(None)
                await trio.sleep_forever()

    def _finished(self, outcome: Outcome[None]) -> None:
        assert self._ran is not None
        assert self._ready is not None
        self._ran.set_result(outcome)
        if not self._ready.done():
            self._ready.set_exception(PortalClosed("the portal's trio run ended"))
        if not self._closing and self._host is not None:
            self._stopped_host = True  # the run failed under the block: stop it
            self._host.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._ran is not None
        self._closing = True
        self._scope.cancel()
        outcome, cancelled = await _wait(self._ran, self._scope.cancel)
        if self._stopped_host:
            assert self._host is not None
            self._host.uncancel()
        error = self._error(outcome)
        if error is None:
            if cancelled and exc is None:
                raise asyncio.CancelledError
            return False
        if exc is not None and not isinstance(
            exc, asyncio.CancelledError | PortalClosed
        ):
            raise BaseExceptionGroup(
                "the block and the portal both failed", [exc, error]
            )
        raise error from error.__cause__

    @staticmethod
    def _error(outcome: Outcome[None]) -> BaseException | None:
        """The run's error, without the cancellations that ended it."""
        try:
            outcome.unwrap()
        except BaseException as exc:
            rest = _without_cancelled(exc)
            return None if rest is None else _single(rest)
        return None

    # -- calls -----------------------------------------------------------

    def _open_nursery(self) -> trio.Nursery:
        """The run's nursery, checked to be usable by the caller."""
        if self._nursery is None or (self._ran is not None and self._ran.done()):
            raise PortalClosed("the portal is not open")
        if trio.lowlevel.in_trio_task():
            raise RuntimeError(
                "a portal is for asyncio code; trio code awaits repred directly"
            )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop:
            raise RuntimeError("a portal is used from the event loop that opened it")
        return self._nursery

    def _spawn(
        self, afn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> _Call:
        nursery = self._open_nursery()
        assert self._loop is not None
        call = _Call(self._loop)
        try:
            nursery.start_soon(call.run, afn, args, name=afn)
        except RuntimeError as exc:  # the nursery closed: the run is ending
            raise PortalClosed("the portal is closing") from exc
        return call

    async def run(
        self, afn: Callable[[Unpack[PosArgsT]], Awaitable[T]], *args: *PosArgsT
    ) -> T:
        """Run a trio async function to completion; return its result.

        ``await portal.run(afn, *args)`` is ``await afn(*args)`` done in
        trio. Pass a lambda or ``functools.partial`` for keyword arguments.

        Cancellation: cancelling the asyncio task that awaits this (a
        ``task.cancel()``, an ``asyncio.timeout``) cancels ``afn``, waits
        for it to finish, then raises ``CancelledError``.

        Raises:
            Exception: whatever ``afn`` raised, as itself (the portal wraps
                nothing in an exception group).
            PortalClosed: the portal is not open, or closed while ``afn``
                ran (trio cancelled it).
            RuntimeError: called from trio code, or from another loop.
        """
        call = self._spawn(afn, args)
        result, cancelled = await _wait(call.done, call.scope.cancel)
        return _deliver(result, cancelled)  # type: ignore[no-any-return]

    async def start(self, afn: Callable[..., Awaitable[object]], *args: Any) -> Any:
        """Start a trio task in the portal; return what it reported started.

        The ``nursery.start`` pattern: ``listeners = await
        portal.start(repred.serve_tcp, replica, 0)``, ``conn = await
        portal.start(repred.connect_tcp, replica, host, port)``. The task
        then runs until the portal closes (or it returns).

        Error handling: an error before the task reports started is raised
        here, as itself, and nothing else is disturbed; an error after it
        stops the portal's block (see :func:`open_portal`). Cancelling the
        awaiting asyncio task before the task started cancels it.

        Raises:
            Exception: what the task raised before it started.
            PortalClosed, RuntimeError: as :meth:`run`.
        """
        return await self.run(self._open_nursery().start, afn, *args)

    def wrap(
        self, cm: AbstractAsyncContextManager[T]
    ) -> AbstractAsyncContextManager[T]:
        """A trio async context manager as one asyncio code can enter.

        ``async with portal.wrap(repred.open_peer(...)) as peer:`` enters
        ``open_peer`` in a trio task and exits it when the asyncio block
        ends (or when the portal closes, whichever is first). To keep one
        open for the portal's lifetime, enter it in the same ``async with``
        statement as the portal, or in a ``contextlib.AsyncExitStack``.

        The trio context manager is exited as if its block ended normally,
        even when the asyncio block raised: that exception goes on in
        asyncio. What the exit raises is raised from the asyncio exit.
        """
        return _Wrapped(self, cm)

    def subscribe(
        self,
        replica: Replica,
        *,
        key: Hashable | None = None,
        max_buffer: int = DEFAULT_SUBSCRIPTION_BUFFER,
    ) -> PortalSubscription:
        """:func:`repred.subscribe` for asyncio code.

        ``with portal.subscribe(replica) as changes: async for change in
        changes: ...`` yields the same :class:`repred.Change` records, with
        the same ``key`` filter and the same bound: a subscriber more than
        ``max_buffer`` changes behind gets
        :class:`repred.SubscriptionOverflow`.

        Raises:
            ValueError: as :func:`repred.subscribe`.
        """
        return PortalSubscription(
            self, subscribe(replica, key=key, max_buffer=max_buffer)
        )


async def _hold(
    cm: AbstractAsyncContextManager[T], leave: trio.Event, entered: asyncio.Future[T]
) -> None:
    async with cm as value:
        entered.set_result(value)
        await leave.wait()


@final
class _Wrapped(Generic[T]):
    """What :meth:`Portal.wrap` returns."""

    def __init__(self, portal: Portal, cm: AbstractAsyncContextManager[T]) -> None:
        self._portal = portal
        self._cm = cm
        self._leave = trio.Event()
        self._call: _Call | None = None
        self._host: asyncio.Task[Any] | None = None
        self._stopped_host = False

    async def __aenter__(self) -> T:
        if self._call is not None:
            raise RuntimeError("a wrapped context manager is entered once")
        entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        call = self._call = self._portal._spawn(_hold, (self._cm, self._leave, entered))
        try:
            await asyncio.wait(
                (entered, call.done), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            call.scope.cancel()
            await _wait(call.done, call.scope.cancel)
            raise
        if not entered.done():
            _deliver(call.done.result(), False)
            raise AssertionError("the context manager ended without entering")
        self._host = asyncio.current_task()
        call.done.add_done_callback(self._ended)
        return entered.result()

    def _ended(self, done: asyncio.Future[_Result]) -> None:
        # Ended before the block left it: it failed (None is the portal
        # closing, which stops the block itself).
        if not self._leave.is_set() and done.result() is not None and self._host:
            self._stopped_host = True
            self._host.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._call is not None
        call = self._call
        self._leave.set()
        result, cancelled = await _wait(call.done, call.scope.cancel)
        if self._stopped_host:
            assert self._host is not None
            self._host.uncancel()  # the error below replaces that cancellation
        elif result is None and exc is not None:
            return False  # the portal closed under the block: its error goes on
        _deliver(result, cancelled)
        return False


@final
class PortalSubscription:
    """A :class:`repred.Subscription` read from asyncio (see
    :meth:`Portal.subscribe`).

    Each change crosses from trio when asyncio asks for it; the changes
    not yet asked for wait in the subscription's own bounded buffer.
    """

    def __init__(self, portal: Portal, subscription: Subscription) -> None:
        self._portal = portal
        self._subscription = subscription

    def __enter__(self) -> PortalSubscription:
        self._subscription.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._subscription.__exit__(*exc_info)

    def __aiter__(self) -> PortalSubscription:
        return self

    async def __anext__(self) -> Change:
        return await self._portal.run(self._subscription.receive)

    async def receive(self) -> Change:
        """The next change (waits for one).

        Raises:
            StopAsyncIteration: the ``with`` block ended and what it had
                buffered was read.
            repred.SubscriptionOverflow: the subscriber fell too far behind.
            PortalClosed: the portal closed.
        """
        return await self.__anext__()
