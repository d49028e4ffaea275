"""TLS links: server-only and mutual, and what happens to those who fail."""

from __future__ import annotations

import ssl

import pytest
import trio

import repred
from repred.types import model

trustme = pytest.importorskip("trustme")


@pytest.fixture
def ca():
    return trustme.CA()


def _server_context(ca, *, mutual: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


def _client_context(ca, *, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    if cert:
        ca.issue_cert("client").configure_cert(ctx)
    return ctx


async def _serve(nursery, replica, ctx, **options):
    listeners = await nursery.start(
        lambda task_status: repred.serve_tcp(
            replica, 0, ssl_context=ctx, task_status=task_status, **options
        )
    )
    return listeners[0].socket.getsockname()[1]


def _filled(n=50):
    m = model(id="server")
    for i in range(n):
        m.set(f"k{i}", i)
    return m


@pytest.mark.parametrize("mutual", [False, True])
async def test_a_sync_over_tls(ca, mutual):
    server = _filled()
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server, _server_context(ca, mutual=mutual))
        client = model(id="client")
        client.set("from-client", 1)
        stats = await repred.connect_tcp(
            client,
            "127.0.0.1",
            port,
            live=False,
            ssl_context=_client_context(ca, cert=mutual),
        )
        assert stats.synced
        await trio.testing.wait_all_tasks_blocked()
        assert client.to_dict() == server.to_dict()
        nursery.cancel_scope.cancel()


async def test_failed_handshakes_end_only_their_connection(ca, caplog):
    server = _filled()
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server, _server_context(ca, mutual=True))
        # A client that trusts another CA.
        with pytest.raises(repred.PeerClosed, match="TLS handshake failed"):
            await repred.connect_tcp(
                model(id="x"),
                "127.0.0.1",
                port,
                live=False,
                ssl_context=_client_context(trustme.CA()),
            )
        # A client without the certificate mutual TLS requires.
        with pytest.raises(repred.RepredError):
            await repred.connect_tcp(
                model(id="y"),
                "127.0.0.1",
                port,
                live=False,
                ssl_context=_client_context(ca),
            )
        # A plain TCP client.
        with pytest.raises(repred.RepredError) as info:
            await repred.connect_tcp(model(id="z"), "127.0.0.1", port, live=False)
        assert "TLS" in str(info.value)
        # The server still serves a good client.
        good = model(id="good")
        await repred.connect_tcp(
            good,
            "127.0.0.1",
            port,
            live=False,
            ssl_context=_client_context(ca, cert=True),
        )
        assert good.to_dict() == server.to_dict()
        nursery.cancel_scope.cancel()


async def test_a_tls_client_to_a_plain_server_fails_clearly(ca):
    server = _filled()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, server, 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(repred.PeerClosed, match="TLS handshake failed"):
            await repred.connect_tcp(
                model(id="x"),
                "127.0.0.1",
                port,
                live=False,
                ssl_context=_client_context(ca),
                handshake_timeout=5,
            )
        nursery.cancel_scope.cancel()


def _node_contexts(ca, name="127.0.0.1"):
    cert = ca.issue_cert(name)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    server.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    cert.configure_cert(client)
    ca.configure_trust(client)
    return {"ssl_context": server, "client_ssl_context": client}


async def test_gossip_peers_over_mutual_tls_and_a_read_only_node(ca):
    from .helpers import wait_until

    hub, leaf = model(id="hub"), model(id="leaf")
    hub.set("from-hub", 1)
    async with repred.open_peer(
        replicas={"data": hub},
        read_only=True,
        heartbeat_interval=0.2,
        **_node_contexts(ca),
    ) as a:
        async with repred.open_peer(
            replicas={"data": leaf},
            seeds=[a.address],
            heartbeat_interval=0.2,
            **_node_contexts(ca),
        ) as b:
            leaf.set("from-leaf", 1)
            with trio.fail_after(10):
                await wait_until(leaf, lambda: leaf.get("from-hub") == 1)
                # Membership still flows to the read-only node...
                await wait_until(a.membership, lambda: b.address in a.members())
            # ...but what the leaf writes never lands in the hub.
            assert "from-leaf" not in hub


def test_a_peer_needs_both_tls_contexts(ca):
    with pytest.raises(ValueError, match="both"):
        repred._gossip.TcpTransport(ssl_context=_server_context(ca))


def test_the_peer_command_checks_its_tls_files(tmp_path, capsys):
    from repred.peer import main

    assert main(["0", "--no-stdin", "--tls-cert", str(tmp_path / "none.pem")]) == 2
    assert "--tls-key" in capsys.readouterr().err
    missing = str(tmp_path / "none.pem")
    assert main(["0", "--no-stdin", "--tls-cert", missing, "--tls-key", missing]) == 2
    assert "cannot use the TLS files" in capsys.readouterr().err


async def test_connections_that_never_finish_a_handshake_are_bounded(ca):
    server = _filled()
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server, _server_context(ca), max_links=2)
        # Two connections that say nothing hold both handshake slots...
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await trio.testing.wait_all_tasks_blocked()
        # ...so a third pushes out the oldest, without waiting for a
        # timeout, and is served.
        good = model(id="good")
        with trio.fail_after(5):
            await repred.connect_tcp(
                good, "127.0.0.1", port, live=False, ssl_context=_client_context(ca)
            )
            assert await silent[0].receive_some(10) == b""
        assert good.to_dict() == server.to_dict()
        for stream in silent:
            await stream.aclose()
        nursery.cancel_scope.cancel()
