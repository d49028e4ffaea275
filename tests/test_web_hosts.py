"""Who may use a web port: the Host a request names and the page it comes
from (DNS rebinding: a page whose own name now points at 127.0.0.1)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import orjson
import pytest
import trio
import trio.testing
import trio_websocket

import repred
from repred.peer import main
from repred.types import model

from .helpers import wait_until

_UPGRADE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


async def _status(
    port: int, path: str, host: str, *, origin: str | None = None, upgrade: bool = False
) -> int:
    """The status a raw request for ``path`` naming ``host`` gets."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode()
    if origin is not None:
        head += f"Origin: {origin}\r\n".encode()
    head += (_UPGRADE if upgrade else b"") + b"\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head)
        reply = b""
        with trio.fail_after(10):
            while b"\r\n" not in reply:
                data = await stream.receive_some(4096)
                assert data, reply
                reply += data
    return int(reply.split(b" ", 2)[1])


async def _write_through(port: int, host: str, origin: str) -> bool:
    """What a page at ``origin`` does once its name resolves to this port:
    open a WebSocket naming ``host``, and write an entry; whether it could."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    wrote = False
    try:
        async with stream, trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,
                host,
                "/replicas/data",
                extra_headers=[(b"Origin", origin.encode())],
            )
            await ws.send_message(
                b'{"id":"page","clock":{}}\n'
                + orjson.dumps([["owned", True], 1_700_000_000_000, "page"])
                + b"\n"
            )
            await ws.aclose()
            wrote = True
    except* trio_websocket.HandshakeError:
        pass
    return wrote


@pytest.fixture
async def web_peer(nursery):
    data = model(id="victim")

    async def run(task_status=trio.TASK_STATUS_IGNORED, **options):
        async with repred.open_peer(
            replicas={"data": data}, web_port=0, **options
        ) as peer:
            task_status.started(peer)
            await trio.sleep_forever()

    async def start(**options):
        peer = await nursery.start(functools.partial(run, **options))
        return int(peer.web_address.rsplit(":", 1)[1]), data

    return start


async def test_a_rebound_name_is_refused_before_the_upgrade(web_peer):
    port, data = await web_peer()
    evil = f"evil.example:{port}"
    origin = f"http://{evil}"
    assert (
        await _status(port, "/replicas/data", evil, origin=origin, upgrade=True) == 403
    )
    assert not await _write_through(port, evil, origin)
    await trio.testing.wait_all_tasks_blocked()
    assert "owned" not in data
    # The pages too: a rebound page could read them and script the port.
    for path in ("/", "/todo", "/repred.js", "/nowhere"):
        assert await _status(port, path, evil) == 403, path


async def test_the_names_the_peer_serves_are_let_in(web_peer):
    port, data = await web_peer(advertise="peer.example", web_hosts=["app.example"])
    for name in ("127.0.0.1", "localhost", "LocalHost.", "peer.example", "app.example"):
        host = f"{name}:{port}"
        assert await _status(port, "/", host) == 200, name
        origin = f"http://{host}"
        code = await _status(port, "/replicas/data", host, origin=origin, upgrade=True)
        assert code == 101, name
    # A page of the peer's own origin writes through.
    assert await _write_through(
        port, f"app.example:{port}", f"http://app.example:{port}"
    )
    with trio.fail_after(10):
        await wait_until(data, lambda: data.get("owned") is True)
    # Another page, at a name the peer serves, is still another origin.
    other = "http://app.example:1"
    assert (
        await _status(
            port, "/replicas/data", f"app.example:{port}", origin=other, upgrade=True
        )
        == 403
    )


async def test_any_host_when_asked(web_peer):
    port, _ = await web_peer(web_hosts=["*"])
    assert await _status(port, "/", f"anything.example:{port}") == 200


@pytest.mark.parametrize(
    "bad", ["", "http://app.example", "app.example:8080", "a b", "app.example/x", 7]
)
async def test_web_hosts_are_checked_at_the_call(bad):
    with pytest.raises(ValueError, match="host"):
        async with repred.open_peer(web_port=0, web_hosts=[bad]):
            pass  # pragma: no cover


def test_the_peer_command_checks_its_web_hosts(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["0", "--no-stdin", "--web", "0", "--web-host", "a b"])
    assert exited.value.code == 2
    assert "not a host name" in capsys.readouterr().err


async def test_the_peer_command_serves_its_web_hosts(nursery):
    command = [sys.executable, "-m", "repred.peer", "0", "--json", "--no-stdin"]
    command += [
        "--web",
        "0",
        "--advertise",
        "peer.example",
        "--web-host",
        "App.Example",
    ]
    process = await nursery.start(
        functools.partial(
            trio.run_process, command, stdout=subprocess.PIPE, check=False
        )
    )
    buf = b""
    with trio.fail_after(30):
        while b"\n" not in buf:
            data = await process.stdout.receive_some(65536)
            assert data, "the peer exited"
            buf += data
    port = int(json.loads(buf.split(b"\n")[0])["web"].rstrip("/").rsplit(":", 1)[1])
    for name, status in [
        ("app.example", 200),
        ("peer.example", 200),
        ("x.example", 403),
    ]:
        assert await _status(port, "/", f"{name}:{port}") == status, name
    process.terminate()


# -- serve_websocket ---------------------------------------------------------


async def _serve_ws(nursery, **options) -> int:
    listeners = await nursery.start(
        functools.partial(repred.serve_websocket, model(id="s"), 0, **options)
    )
    return listeners[0].socket.getsockname()[1]


async def test_serve_websocket_on_loopback_refuses_a_rebound_name(nursery):
    port = await _serve_ws(nursery)
    evil = f"evil.example:{port}"
    assert await _status(port, "/", evil, origin=f"http://{evil}", upgrade=True) == 403
    assert await _status(port, "/", evil, upgrade=True) == 403
    own = f"127.0.0.1:{port}"
    assert await _status(port, "/", own, upgrade=True) == 101
    assert await _status(port, "/", own, origin=f"http://{own}", upgrade=True) == 101
    # A page of another origin is refused unless listed.
    assert (
        await _status(port, "/", own, origin="http://other.example", upgrade=True)
        == 403
    )


async def test_serve_websocket_hosts_and_origins_are_configurable(nursery):
    port = await _serve_ws(nursery, hosts=["proxy.example"], origins=None)
    proxied = f"proxy.example:{port}"
    assert (
        await _status(port, "/", proxied, origin="http://any.example", upgrade=True)
        == 101
    )
    assert await _status(port, "/", f"evil.example:{port}", upgrade=True) == 403
    port = await _serve_ws(nursery, hosts=None)
    assert await _status(port, "/", f"anything.example:{port}", upgrade=True) == 101


# -- the one policy ----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "served"),
    [
        ("127.0.0.1", {"127.0.0.1", "localhost", "::1"}),
        ("::1", {"127.0.0.1", "localhost", "::1"}),
        ("0.0.0.0", {"127.0.0.1", "localhost", "::1"}),
        ("127.0.0.2", {"127.0.0.2", "127.0.0.1", "localhost", "::1"}),
        ("192.0.2.7", {"192.0.2.7", "localhost"}),
    ],
)
def test_the_names_a_server_serves(host, served):
    from repred._http import RequestPolicy

    assert RequestPolicy.serving(host).hosts == served


@pytest.mark.parametrize(
    ("header", "taken"),
    [
        (b"127.0.0.1:8080", True),
        (b"127.0.0.1", True),
        (b"[::1]:8080", True),
        (b"LOCALHOST:8080", True),
        (b"localhost.:8080", True),
        (b"evil.example:8080", False),
        (b"127.0.0.1.evil.example", False),
        (b"[::1", False),
        (b"", False),
        (None, False),
    ],
)
def test_a_host_header_is_read_as_its_name(header, taken):
    from repred._http import RequestPolicy

    policy = RequestPolicy.serving("127.0.0.1")
    headers = [] if header is None else [(b"host", header)]
    assert (policy.refusal(headers) is None) is taken


def test_a_server_on_every_interface_is_reached_by_any_of_its_addresses():
    from repred._http import RequestPolicy

    policy = RequestPolicy.serving("0.0.0.0", advertise="peer.example")
    for host in (b"192.0.2.7:8080", b"[2001:db8::1]:8080", b"peer.example:8080"):
        assert policy.refusal([(b"host", host)]) is None, host
    assert policy.refusal([(b"host", b"evil.example:8080")]) is not None
    # Bound to one address, the others are not its own.
    policy = RequestPolicy.serving("192.0.2.7")
    assert policy.refusal([(b"host", b"192.0.2.8:8080")]) is not None
