"""An unmodified JS scuttlebutt Model peer replicates with repred's model().

The npm package is installed by ``.ci/run`` into ``tests/js``; the tests skip
only where node itself is absent.
"""

import json
import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest
import trio

import repred
from repred.types import model

from .helpers import wait_until

JS = Path(__file__).parent / "js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


@pytest.fixture(scope="module", autouse=True)
def _npm_package():
    if not all(
        (JS / "node_modules" / package).is_dir()
        for package in ("scuttlebutt", "websocket-stream")
    ):
        npm = shutil.which("npm")
        assert npm, "node is here but npm is not: cannot install scuttlebutt"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=JS, check=True
        )


class JSPeer:
    def __init__(self, process: trio.Process):
        self.process = process
        self._buf = b""
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout

    async def send(self, **cmd):
        await self._stdin.send_all(json.dumps(cmd).encode() + b"\n")

    async def event(self, kind: str) -> dict:
        while True:
            while b"\n" not in self._buf:
                data = await self._stdout.receive_some(65536)
                assert data, "the JS peer exited"
                self._buf += data
            line, self._buf = self._buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg["event"] == kind:
                return msg
            assert msg["event"] != "error", msg

    async def dump(self) -> dict:
        await self.send(dump=True)
        return (await self.event("dump"))["state"]


async def _start_peer(nursery, *args):
    process = await nursery.start(
        partial(
            trio.run_process,
            [NODE, str(JS / "peer.js"), *args],
            check=False,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    )
    return JSPeer(process)


async def test_repred_connects_to_a_js_listener_both_ways_and_live():
    ours = model(id="py")
    ours.set("from_py", {"a": [1, 2]})
    ours.set("shared", "py-early")
    ours.set("uni", "héllo ✓")
    async with trio.open_nursery() as nursery:
        js = await _start_peer(nursery, "js", "listen")
        port = (await js.event("listening"))["port"]
        await js.send(set=["from_js", 1])
        await js.send(set=["gone", True])
        await js.send(set=["gone", None])
        await js.event("update")
        with trio.fail_after(20):
            conn = await nursery.start(repred.connect_tcp, ours, "127.0.0.1", port)
            await conn.wait_synced()
            await js.event("synced")
            assert ours.get("from_js") == 1
            assert "gone" not in ours
            assert await js.dump() == ours.to_dict()
            # Live, both directions.
            await js.send(set=["live_js", "x"])
            await wait_until(ours, lambda: ours.get("live_js") == "x")
            ours.set("live_py", [1, None])
            while (await js.event("update"))["key"] != "live_py":
                pass
            assert await js.dump() == ours.to_dict()
        await js.process.stdin.aclose()
        nursery.cancel_scope.cancel()


async def test_a_js_peer_connects_to_repred_server():
    ours = model(id="srv")
    for i in range(200):
        ours.set(f"k{i % 50}", i)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, ours, 0)
        port = listeners[0].socket.getsockname()[1]
        js = await _start_peer(nursery, "jsclient", "connect", str(port))
        with trio.fail_after(20):
            await js.event("synced")
            assert await js.dump() == ours.to_dict()
            await js.send(set=["k1", "js-wins"])
            await wait_until(ours, lambda: ours.get("k1") == "js-wins")
            ours.set("k2", "py-wins")
            while (await js.event("update"))["key"] != "k2":
                pass
            assert await js.dump() == ours.to_dict()
        await js.process.stdin.aclose()
        nursery.cancel_scope.cancel()


async def test_one_way_links_with_a_js_peer():
    mirror = model(id="mirror")
    mirror.set("served", 1)
    async with trio.open_nursery() as nursery:
        # A read-only mirror for a JS client: it sends, and refuses.
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        js = await _start_peer(nursery, "jsclient", "connect", str(port))
        stream = await listeners[0].accept()
        done = []
        finished = trio.Event()

        async def serve():
            done.append(await repred.replicate(mirror, stream, receive=False))
            finished.set()

        nursery.start_soon(serve)
        with trio.fail_after(20):
            await js.event("synced")
            assert (await js.dump())["served"] == 1
            await js.send(set=["from_js", "refused"])
            await js.event("update")  # its own write: on its way to us
            mirror.set("later", 2)  # the link stays up
            while (await js.event("update"))["key"] != "later":
                pass
            await js.process.stdin.aclose()  # the JS peer exits: the link ends
            await js.process.wait()
            await finished.wait()
        assert done[0].refused == 1
        assert "from_js" not in mirror
        await listeners[0].aclose()
        # A write-only link to a JS listener: it takes, and sends nothing.
        js2 = await _start_peer(nursery, "jsserver", "listen")
        port2 = (await js2.event("listening"))["port"]
        await js2.send(set=["theirs", 3])
        await js2.event("update")
        puller = model(id="puller")
        puller.set("mine", 4)
        with trio.fail_after(20):
            stats = await repred.connect_tcp(
                puller, "127.0.0.1", port2, live=False, send=False, close_timeout=0
            )
        assert stats.synced
        assert stats.updates_out == 0
        assert puller.get("theirs") == 3
        assert "mine" not in await js2.dump()
        await js2.process.stdin.aclose()
        nursery.cancel_scope.cancel()


async def test_a_js_model_over_websocket_stream():
    """JS scuttlebutt piped through websocket-stream, as a browser or Node
    program would, to repred's WebSocket server."""
    ours = model(id="py")
    ours.set("from_py", [1, 2])
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_websocket, ours, 0)
        port = listeners[0].socket.getsockname()[1]
        url = f"ws://127.0.0.1:{port}/replicas/data"
        process = await nursery.start(
            partial(
                trio.run_process,
                [NODE, str(JS / "ws_peer.js"), "jsws", url],
                check=False,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        )
        js = JSPeer(process)
        with trio.fail_after(20):
            await js.event("synced")
            assert await js.dump() == ours.to_dict()
            await js.send(set=["from_js", {"x": 1}])
            await wait_until(ours, lambda: ours.get("from_js") == {"x": 1})
            ours.set("live_py", "yes")
            while (await js.event("update"))["key"] != "live_py":
                pass
            assert await js.dump() == ours.to_dict()
            # The JS peer exits at the end of its input, which ends the link
            # (cancelled instead, the server's end would wait for a close frame).
            await js.process.stdin.aclose()
            await js.process.wait()
        nursery.cancel_scope.cancel()
