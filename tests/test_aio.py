"""repred inside an asyncio program, through :mod:`repred.aio`.

The suite runs pytest-trio in trio mode, so these are plain sync tests that
call ``asyncio.run``: no trio run is active in the thread when they start
(each checks), and none is left behind when they end. Every wait is on an
event, a future or a subscription; ``asyncio.timeout`` only guards against
a hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal

import pytest
import trio
import trio.testing

import repred
import repred.aio
from repred.types import model

#: A hang guard, never a synchronisation: every test waits on events.
GUARD = 30

FAST = {
    "heartbeat_interval": 0.05,
    "down_after": 0.5,
    "gossip_interval": 0.2,
    "seed_interval": 0.2,
    "max_backoff": 0.5,
    "connect_timeout": 2.0,
}


def run_asyncio(main):
    """Run ``main()`` under plain asyncio, in a thread with no trio run."""
    assert not trio.lowlevel.in_trio_run()
    expired = []

    async def guarded():
        async with asyncio.timeout(GUARD) as guard:
            try:
                return await main()
            finally:
                expired.append(guard.expired())

    try:
        return asyncio.run(guarded())
    finally:
        assert expired == [False], "the hang guard fired"
        assert not trio.lowlevel.in_trio_run()  # the portal's run has ended


async def until(changes, predicate):
    """Read changes from an asyncio subscription until ``predicate()``."""
    while not predicate():
        await changes.receive()


# -- links ---------------------------------------------------------------------


def test_a_replica_served_from_asyncio_syncs_with_a_trio_client_in_a_thread():
    served = model(id="served")
    served.set("from-asyncio", 1)

    async def trio_client(port):
        # A separate program: its own replica and its own trio.run.
        client = model(id="client")
        client.set("from-trio", 2)
        await repred.connect_tcp(client, "127.0.0.1", port, live=False)
        return client.to_dict()

    async def main():
        async with repred.aio.open_portal() as portal:
            listeners = await portal.start(repred.serve_tcp, served, 0)
            port = listeners[0].socket.getsockname()[1]
            with portal.subscribe(served) as changes:
                seen = await asyncio.to_thread(trio.run, trio_client, port)
                await until(changes, lambda: "from-trio" in served.state)
            return seen

    seen = run_asyncio(main)
    assert seen == {"from-asyncio": 1, "from-trio": 2}
    assert served.to_dict() == {"from-asyncio": 1, "from-trio": 2}


def test_a_client_in_the_same_portal_connects_and_returns_its_statistics():
    served, client = model(id="s"), model(id="c")
    served.set("colour", "blue")

    async def main():
        async with repred.aio.open_portal() as portal:
            listeners = await portal.start(repred.serve_tcp, served, 0)
            port = listeners[0].socket.getsockname()[1]
            stats = await portal.run(
                lambda: repred.connect_tcp(client, "127.0.0.1", port, live=False)
            )
            return stats

    stats = run_asyncio(main)
    assert isinstance(stats, repred.ConnectionStatistics)
    assert client.to_dict() == {"colour": "blue"}


def test_live_writes_from_asyncio_reach_an_asyncio_subscriber_in_order():
    """A replica's sync methods called from asyncio wake its links."""
    a, b = model(id="a"), model(id="b")

    async def main():
        left, right = trio.testing.memory_stream_pair()
        async with repred.aio.open_portal() as portal:
            await portal.start(repred.replicate, a, left)
            conn = await portal.start(repred.replicate, b, right)
            await portal.run(conn.wait_synced)
            received = []
            with portal.subscribe(b) as changes:
                for i in range(50):
                    a.set(f"k{i}", i)  # straight from asyncio: no portal call
                async for change in changes:
                    received.append(change)
                    if len(received) == 50:
                        break
            return received

    received = run_asyncio(main)
    assert all(isinstance(c, repred.Change) for c in received)
    assert [c.change for c in received] == [[f"k{i}", i] for i in range(50)]
    assert {c.source for c in received} == {"a"}
    assert b.to_dict() == {f"k{i}": i for i in range(50)}


def test_a_subscription_by_key_and_its_bound_hold_in_asyncio():
    m = model(id="m")

    async def main():
        async with repred.aio.open_portal() as portal:
            with portal.subscribe(m, key="colour") as colours:
                m.set("size", 1)
                m.set("colour", "red")
                first = await colours.receive()
            with portal.subscribe(m, max_buffer=2) as small:
                for i in range(3):
                    m.set("n", i)
                got = [await small.receive(), await small.receive()]
                with pytest.raises(repred.SubscriptionOverflow):
                    await small.receive()
            with portal.subscribe(m) as ended:
                pass
            with pytest.raises(StopAsyncIteration):
                await ended.receive()
            return first, got

    first, got = run_asyncio(main)
    assert first.change == ["colour", "red"]
    assert [c.change for c in got] == [["n", 0], ["n", 1]]
    with pytest.raises(ValueError, match="max_buffer"):
        repred.aio.open_portal().subscribe(m, max_buffer=0)


def test_websocket_links_run_in_a_portal():
    served, client = model(id="s"), model(id="c")
    served.set("over", "websocket")

    async def main():
        async with repred.aio.open_portal() as portal:
            listeners = await portal.start(repred.serve_websocket, served, 0)
            port = listeners[0].socket.getsockname()[1]
            await portal.run(
                lambda: repred.connect_websocket(
                    client, f"ws://127.0.0.1:{port}/", live=False
                )
            )

    run_asyncio(main)
    assert client.to_dict() == {"over": "websocket"}


def test_two_peers_entered_from_asyncio_converge():
    da, db = model(id="da"), model(id="db")

    async def main():
        async with repred.aio.open_portal() as portal:
            async with portal.wrap(
                repred.open_peer(replicas={"data": da}, rng=random.Random(1), **FAST)
            ) as pa:
                async with portal.wrap(
                    repred.open_peer(
                        replicas={"data": db},
                        seeds=[pa.address],
                        rng=random.Random(2),
                        **FAST,
                    )
                ) as pb:
                    assert isinstance(pb, repred.Peer)
                    with portal.subscribe(da) as on_a, portal.subscribe(db) as on_b:
                        da.set("left", 1)
                        db.set("right", 2)
                        both = {"left": 1, "right": 2}
                        await until(on_a, lambda: da.to_dict() == both)
                        await until(on_b, lambda: db.to_dict() == both)
                    return pa.address, pb.address

    a_address, b_address = run_asyncio(main)
    assert a_address != b_address
    assert da.to_dict() == db.to_dict() == {"left": 1, "right": 2}


def test_an_asyncio_http_endpoint_serves_replica_state():
    """A plain asyncio server (standing in for aiohttp or Starlette) reads
    a replica that trio links keep up to date."""
    settings, editor = model(id="settings"), model(id="editor")

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps(settings.to_dict()).encode()  # read straight from asyncio
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + body)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def get(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /settings HTTP/1.0\r\n\r\n")
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
        return json.loads(response.split(b"\r\n\r\n", 1)[1])

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        http_port = server.sockets[0].getsockname()[1]
        async with server, repred.aio.open_portal() as portal:
            left, right = trio.testing.memory_stream_pair()
            await portal.start(repred.replicate, settings, left)
            await portal.start(repred.replicate, editor, right)
            before = await get(http_port)
            with portal.subscribe(settings) as changes:
                editor.set("theme", "dark")
                await until(changes, lambda: "theme" in settings.state)
            after = await get(http_port)
        return before, after

    assert run_asyncio(main) == ({}, {"theme": "dark"})


# -- errors --------------------------------------------------------------------


class Boom(Exception):
    pass


async def fail_now(message):
    await trio.lowlevel.checkpoint()
    raise Boom(message)


async def fail_in_a_nursery():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_now, "inside")


def test_an_exception_inside_run_arrives_as_itself():
    async def main():
        async with repred.aio.open_portal() as portal:
            with pytest.raises(Boom, match="plain") as plain:
                await portal.run(fail_now, "plain")
            # A function that raises a group raises it as it is: the
            # portal adds no wrapping of its own.
            with pytest.raises(BaseExceptionGroup) as group:
                await portal.run(fail_in_a_nursery)
            # The portal goes on serving after a failed call.
            assert await portal.run(trio.to_thread.run_sync, lambda: 7) == 7
            return plain.value, group.value

    plain, group = run_asyncio(main)
    assert type(plain) is Boom
    assert [type(e) for e in group.exceptions] == [Boom]


def test_a_task_that_fails_before_started_fails_its_start_alone():
    async def refuses(task_status=trio.TASK_STATUS_IGNORED):
        await fail_now("before started")

    async def main():
        async with repred.aio.open_portal() as portal:
            with pytest.raises(Boom, match="before started") as failed:
                await portal.start(refuses)
            with pytest.raises(OSError):  # a port that cannot be bound
                await portal.start(repred.serve_tcp, model(), -1)
            return type(failed.value), await portal.run(trio.sleep, 0)

    assert run_asyncio(main) == (Boom, None)


def test_a_started_task_that_fails_later_stops_the_block_with_its_error():
    reached = []

    async def fails_later(fail: trio.Event, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started("running")
        await fail.wait()
        raise Boom("after started")

    async def stopped():
        fail = trio.Event()
        async with repred.aio.open_portal() as portal:
            assert await portal.start(fails_later, fail) == "running"
            fail.set()  # a trio event set from asyncio
            try:
                await asyncio.Event().wait()  # the block waits on something else
            finally:
                reached.append(asyncio.current_task().cancelling())
        reached.append("not here")

    async def main():
        with pytest.raises(Boom, match="after started") as failed:
            await stopped()
        # The cancellation that stopped the block was taken back: the task
        # goes on as if it had never been cancelled.
        return type(failed.value), asyncio.current_task().cancelling()

    assert run_asyncio(main) == (Boom, 0)  # itself, not a group
    assert reached == [1]  # the block was cancelled once, to stop it


def test_an_error_in_the_block_and_one_in_trio_are_both_raised():
    async def fails_later(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await fail_now("trio side")

    async def main():
        async with repred.aio.open_portal() as portal:
            await portal.start(fails_later)
            try:
                await asyncio.Event().wait()
            finally:
                raise KeyError("asyncio side")

    with pytest.raises(BaseExceptionGroup) as failed:
        run_asyncio(main)
    assert sorted(type(e).__name__ for e in failed.value.exceptions) == [
        "Boom",
        "KeyError",
    ]


# -- cancellation ----------------------------------------------------------------


def test_cancelling_the_asyncio_caller_cancels_the_trio_function():
    events = []

    async def sleeper(started, cancelled, release):
        started.set_result(None)  # asyncio futures, set from trio
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set_result(None)
            raise
        finally:
            with trio.CancelScope(shield=True):
                await release.wait()  # cleanup that takes its time
            events.append("trio finished")

    async def main():
        loop = asyncio.get_running_loop()
        started, cancelled = loop.create_future(), loop.create_future()
        release = trio.Event()
        async with repred.aio.open_portal() as portal:
            call = asyncio.create_task(portal.run(sleeper, started, cancelled, release))
            await started
            call.cancel()
            try:
                await cancelled  # (the hang guard would end this wait, were
                # the trio function never cancelled)
                assert not call.done()  # run() waits for the trio function
            finally:
                release.set()
            await asyncio.wait([call])
            assert call.cancelled()
            events.append("asyncio saw it")
            # The portal is unharmed and still runs calls.
            return await portal.run(trio.to_thread.run_sync, lambda: "still open")

    assert run_asyncio(main) == "still open"
    assert events == ["trio finished", "asyncio saw it"]


def test_an_asyncio_timeout_around_run_cancels_the_trio_function():
    cancelled = []

    async def forever():
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(True)

    async def times_out(portal):
        async with asyncio.timeout(-1):  # already due: no waiting on time
            await portal.run(forever)

    async def main():
        async with repred.aio.open_portal() as portal:
            call = asyncio.create_task(times_out(portal))
            await asyncio.wait([call])
            with pytest.raises(TimeoutError):
                call.result()
            return call.cancelling()

    assert run_asyncio(main) == 0
    assert cancelled == [True]


def test_cancelling_an_unstarted_start_cancels_the_starting_task():
    events = []

    async def never_starts(reached, task_status=trio.TASK_STATUS_IGNORED):
        reached.set_result(None)
        try:
            await trio.sleep_forever()
        finally:
            events.append("cancelled before started")

    async def main():
        async with repred.aio.open_portal() as portal:
            reached = asyncio.get_running_loop().create_future()
            start = asyncio.create_task(portal.start(never_starts, reached))
            await reached
            start.cancel()
            with pytest.raises(asyncio.CancelledError):
                await start

    run_asyncio(main)
    assert events == ["cancelled before started"]


def test_a_call_cut_short_by_the_portal_closing_raises_portal_closed():
    """Cancellation from the trio side: the run ends under a waiting call."""

    async def main():
        started = asyncio.get_running_loop().create_future()

        async def waits_in_another_task(portal):
            call = portal.run(trio.sleep_forever)
            started.set_result(None)
            await call

        async with repred.aio.open_portal() as portal:
            other = asyncio.create_task(waits_in_another_task(portal))
            await started
        with pytest.raises(repred.aio.PortalClosed):
            await other
        with pytest.raises(repred.aio.PortalClosed):
            await portal.run(trio.sleep, 0)
        with portal.subscribe(model()) as changes:
            with pytest.raises(repred.aio.PortalClosed):
                await changes.receive()

    run_asyncio(main)


def test_cancelling_the_task_that_holds_the_portal_stops_trio_first():
    events = []

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            events.append("trio stopped")

    async def holder(ready):
        async with repred.aio.open_portal() as portal:
            await portal.start(serve)
            ready.set_result(None)
            await asyncio.Event().wait()

    async def main():
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(holder(ready))
        await ready
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events.append("holder cancelled")
        return trio.lowlevel.in_trio_run()

    assert run_asyncio(main) is False
    assert events == ["trio stopped", "holder cancelled"]


# -- leaving -----------------------------------------------------------------------


def test_leaving_the_portal_with_links_open_closes_them_and_waits():
    a, b, c = model(id="a"), model(id="b"), model(id="c")
    finished = []

    async def lingers(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()  # cleanup that itself waits
            finished.append("cleanup ran")

    async def main():
        async with repred.aio.open_portal() as portal:
            listeners = await portal.start(repred.serve_tcp, a, 0)
            port = listeners[0].socket.getsockname()[1]
            link = await portal.start(repred.connect_tcp, b, "127.0.0.1", port)
            await portal.run(link.wait_synced)
            peer = await portal.wrap(
                repred.open_peer(replicas={"data": c}, **FAST)
            ).__aenter__()  # entered and never left: the portal ends it
            await portal.start(lingers)
            assert peer.address
        return link, listeners

    link, listeners = run_asyncio(main)
    assert finished == ["cleanup ran"]
    assert link.stream.socket.fileno() == -1  # the link's socket was closed
    assert listeners[0].socket.fileno() == -1


def test_asyncio_run_shutting_down_with_a_portal_open_lets_trio_finish():
    """asyncio.run cancels the tasks left when its main coroutine returns,
    and runs the loop until they end: the portal's run ends first."""
    served = model(id="served")
    events = []

    async def lingers(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()
            events.append("trio cleaned up")

    async def background(ready):
        async with repred.aio.open_portal() as portal:
            await portal.start(repred.serve_tcp, served, 0)
            await portal.start(lingers)
            ready.set_result(None)
            await asyncio.Event().wait()

    async def main():
        ready = asyncio.get_running_loop().create_future()
        left_running = asyncio.create_task(background(ready))
        await ready
        return left_running  # returned still running: asyncio.run ends it

    task = run_asyncio(main)
    assert task.cancelled()
    assert events == ["trio cleaned up"]


def test_a_wrapped_context_is_exited_when_its_block_ends():
    events = []

    class Context:
        async def __aenter__(self):
            await trio.lowlevel.checkpoint()
            events.append("entered in trio")
            return "value"

        async def __aexit__(self, *exc_info):
            await trio.lowlevel.checkpoint()
            events.append(("exited", exc_info[0]))
            return False

    class FailsToExit(Context):
        async def __aexit__(self, *exc_info):
            raise Boom("on exit")

    async def main():
        async with repred.aio.open_portal() as portal:
            async with portal.wrap(Context()) as value:
                events.append(value)
            events.append("after the block")
            with pytest.raises(Boom, match="on exit"):
                async with portal.wrap(FailsToExit()):
                    pass
            return await portal.run(trio.sleep, 0)

    assert run_asyncio(main) is None
    assert events == [
        "entered in trio",
        "value",
        ("exited", None),
        "after the block",
        "entered in trio",
    ]


def test_the_loops_signal_handlers_keep_working_with_a_portal():
    """Servers install signal handlers on the loop (which sets the signal
    wakeup fd); the portal's trio run leaves them to asyncio."""

    async def main():
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, arrived.set)
        try:
            async with repred.aio.open_portal() as portal:
                await portal.run(trio.sleep, 0)
                os.kill(os.getpid(), signal.SIGUSR1)
                await arrived.wait()
            arrived.clear()
            os.kill(os.getpid(), signal.SIGUSR1)
            await arrived.wait()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)

    run_asyncio(main)


def test_cancelling_the_entry_of_a_wrapped_context_cancels_it_in_trio():
    events = []

    class NeverEnters:
        async def __aenter__(self):
            try:
                await trio.sleep_forever()
            finally:
                events.append("entry cancelled in trio")

        async def __aexit__(self, *exc_info):
            raise AssertionError("never entered, never exited")

    async def enter(portal, entering):
        wrapped = portal.wrap(NeverEnters())
        entering.set_result(None)
        async with wrapped:
            raise AssertionError("never entered")

    async def main():
        async with repred.aio.open_portal() as portal:
            entering = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(enter(portal, entering))
            await entering  # (set just before the task waits in its entry)
            task.cancel()
            await asyncio.wait([task])  # (the hang guard would end a hang)
            assert task.cancelled()
            events.append("asyncio saw it")

    run_asyncio(main)
    assert events == ["entry cancelled in trio", "asyncio saw it"]


def test_a_wrapped_context_that_fails_in_the_background_stops_its_block():
    reached = []

    class FailsInTheBackground:
        """Like open_peer: background tasks that live while the block runs."""

        def __init__(self):
            self.fail = trio.Event()

        async def __aenter__(self):
            self._nursery_manager = trio.open_nursery()
            nursery = await self._nursery_manager.__aenter__()
            nursery.start_soon(self._background)
            return self.fail

        async def _background(self):
            await self.fail.wait()
            raise Boom("in the background")

        async def __aexit__(self, *exc_info):
            try:
                return await self._nursery_manager.__aexit__(*exc_info)
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None

    async def stopped(portal):
        async with portal.wrap(FailsInTheBackground()) as fail:
            fail.set()
            try:
                await asyncio.Event().wait()
            finally:
                reached.append(asyncio.current_task().cancelling())
        reached.append("not here")

    async def main():
        async with repred.aio.open_portal() as portal:
            with pytest.raises(Boom, match="in the background") as failed:
                await stopped(portal)
            assert asyncio.current_task().cancelling() == 0
            assert await portal.run(trio.sleep, 0) is None  # the portal goes on
            return type(failed.value)

    assert run_asyncio(main) is Boom
    assert reached == [1]


def test_a_wrapped_context_exits_normally_when_the_asyncio_block_raises():
    exits = []

    class Context:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc_info):
            exits.append(exc_info[0])

    async def main():
        async with repred.aio.open_portal() as portal:
            with pytest.raises(KeyError):
                async with portal.wrap(Context()):
                    raise KeyError("asyncio side")

    run_asyncio(main)
    assert exits == [None]


# -- misuse ------------------------------------------------------------------------


def test_a_portal_is_refused_where_a_trio_run_is_active():
    async def main():
        async with repred.aio.open_portal() as portal:
            with pytest.raises(RuntimeError, match="already"):
                async with repred.aio.open_portal():
                    pass
            with pytest.raises(RuntimeError, match="once"):
                async with portal:
                    pass

            async def calls_back_from_trio():
                await portal.run(trio.sleep, 0)

            with pytest.raises(RuntimeError, match="trio code"):
                await portal.run(calls_back_from_trio)

    run_asyncio(main)


def test_a_portal_is_used_only_from_its_own_event_loop():
    async def main():
        async with repred.aio.open_portal() as portal:
            return await asyncio.to_thread(asyncio.run, portal.run(trio.sleep, 0))

    with pytest.raises(RuntimeError, match="event loop that opened it"):
        run_asyncio(main)


def test_the_module_exports_what_it_says_and_import_repred_does_not_load_it():
    import subprocess
    import sys

    for name in repred.aio.__all__:
        assert hasattr(repred.aio, name)
    assert issubclass(repred.aio.PortalClosed, repred.RepredError)
    code = "import sys, repred; print('repred.aio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
