"""The options of links and peers: taken as keywords, checked at the call,
carried as values (repred.LinkOptions, repred.PeerOptions, repred.Trust)."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

import repred
from repred.testing import MemoryNetwork, simulate_peers
from repred.types import model


def _stream():
    return trio.testing.memory_stream_pair()[0]


#: Every link function, called with the given keywords; what it would do
#: beyond checking them never happens (nothing listens on port 1).
LINK_FUNCTIONS = {
    "replicate": lambda **kw: repred.replicate(model(), _stream(), **kw),
    "connect_tcp": lambda **kw: repred.connect_tcp(model(), "127.0.0.1", 1, **kw),
    "serve_tcp": lambda **kw: repred.serve_tcp(model(), 0, **kw),
    "connect_websocket": lambda **kw: repred.connect_websocket(
        model(), "ws://127.0.0.1:1/", **kw
    ),
    "serve_websocket": lambda **kw: repred.serve_websocket(model(), 0, **kw),
}


@pytest.mark.parametrize("name", sorted(LINK_FUNCTIONS))
async def test_a_link_that_neither_sends_nor_receives_is_refused(name, autojump_clock):
    # (A server that took it would serve for ever: the bound is virtual
    # time, so that such a server fails the test instead of hanging it.)
    with trio.fail_after(3600), pytest.raises(ValueError, match="neither sends"):
        await LINK_FUNCTIONS[name](send=False, receive=False)


def test_the_options_value_refuses_it_too():
    with pytest.raises(ValueError, match="neither sends nor receives"):
        repred.LinkOptions(send=False, receive=False)
    assert not repred.LinkOptions(send=False).send
    assert not repred.LinkOptions(receive=False).receive


@pytest.mark.parametrize("name", sorted(LINK_FUNCTIONS))
def test_a_misspelt_link_option_is_a_type_error_at_the_call(name):
    with pytest.raises(TypeError, match="send_timout"):
        LINK_FUNCTIONS[name](send_timout=1.0)


ENTRY_POINTS = {
    "open_peer": lambda: repred.open_peer(heartbeat_intervall=1.0),
    "subscribe": lambda: repred.subscribe(model(), max_bufer=1),
    "MemoryNetwork": lambda: MemoryNetwork(latancy=0.1),
    "LinkOptions": lambda: repred.LinkOptions(send_timout=1.0),
    "PeerOptions": lambda: repred.PeerOptions(heartbeat_intervall=1.0),
    "Trust": lambda: repred.Trust(verfiy=True),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_a_misspelt_option_is_a_type_error_at_the_call(name):
    with pytest.raises(TypeError):
        ENTRY_POINTS[name]()


async def test_a_misspelt_option_of_a_simulated_cluster_is_a_type_error():
    async with trio.open_nursery() as nursery:
        with pytest.raises(TypeError, match="heartbeat_intervall"):
            await simulate_peers(nursery, 1, heartbeat_intervall=1.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"send_timeout": 0},
        {"handshake_timeout": -1},
        {"close_timeout": -1},
        {"keepalive_interval": 0},
        {"max_line_bytes": 10},
        {"max_line_bytes": 1.5},
        {"batches": 1},
        {"antientropy_interval": 0},
    ],
)
async def test_bad_link_options_are_refused_at_the_call(bad):
    with pytest.raises((TypeError, ValueError)):
        await repred.replicate(model(), _stream(), **bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"heartbeat_interval": 0},
        {"down_after": float("inf")},
        {"fanout": 0},
        {"max_members": 1.5},
        {"port": 70000},
        {"web_port": -1},
        {"seeds": ["0.0.0.0:80"]},
        {"read_only": "yes"},
        {"host": "0.0.0.0"},
    ],
)
async def test_bad_peer_options_are_refused_at_the_call(bad):
    with pytest.raises((TypeError, ValueError)):
        async with repred.open_peer(**bad):
            pass  # pragma: no cover


def test_options_are_values():
    options = repred.PeerOptions(seeds=["127.0.0.1:5"], web_hosts=["example.org"])
    assert options.seeds == ("127.0.0.1:5",)
    assert options == repred.PeerOptions(
        seeds=("127.0.0.1:5",), web_hosts=("example.org",)
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        options.fanout = 9  # type: ignore[misc]
    assert (
        repred.LinkOptions().idle_timeout == 3 * repred.LinkOptions().keepalive_interval
    )


async def test_a_peer_reports_the_options_it_was_given():
    network = MemoryNetwork()
    async with repred.open_peer(
        transport=network, heartbeat_interval=0.5, read_only=True
    ) as peer:
        assert peer.options.heartbeat_interval == 0.5
        assert peer.options.read_only
        assert isinstance(peer.options, repred.PeerOptions)


async def test_a_peer_signs_its_heartbeats_as_its_trust_says():
    key = repred.SigningKey.generate()
    network = MemoryNetwork()
    async with repred.open_peer(transport=network, signing_key=key) as peer:
        assert peer.node_id(peer.address) == key.id
        assert peer.membership.signature(key.id, peer.membership.clock[key.id])
    with pytest.raises(ValueError, match="writers= needs verify"):
        async with repred.open_peer(transport=network, writers={"x"}):
            pass  # pragma: no cover
