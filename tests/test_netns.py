"""Partitions across real network stacks: peers in Linux network namespaces.

Four peer processes, each in its own network namespace, joined by a bridge
in a fifth. The bridge is split in two ({S, A} and {B, C}) by moving ports
to a second bridge, both sides write, the seed S is killed during the
split, and the bridge is healed: everyone converges and ``down`` and ``up``
events fire. Needs root and ``ip netns``; skipped with the reason otherwise.
"""

import os
import shutil
import subprocess
import sys
import uuid
from functools import partial

import pytest
import trio

from .helpers import PeerProcess

pytestmark = pytest.mark.slow

TAG = uuid.uuid4().hex[:6]
SWITCH = f"rp{TAG}sw"
NAMES = ["s", "a", "b", "c"]
SUBNET = "10.231.77"


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, check=check, timeout=30)


def _can_make_namespaces():
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"rp{TAG}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.decode().strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _host(name):
    return f"rp{TAG}{name}"


def _address(i):
    return f"{SUBNET}.{i + 1}"


@pytest.fixture
def network():
    reason = _can_make_namespaces()
    if reason:
        pytest.skip(reason)
    try:
        _ip("netns", "add", SWITCH)
        _ip("-n", SWITCH, "link", "add", "br0", "type", "bridge")
        _ip("-n", SWITCH, "link", "add", "br1", "type", "bridge")
        _ip("-n", SWITCH, "link", "set", "br0", "up")
        _ip("-n", SWITCH, "link", "set", "br1", "up")
        for i, name in enumerate(NAMES):
            host = _host(name)
            _ip("netns", "add", host)
            _ip("-n", host, "link", "set", "lo", "up")
            _ip(
                "-n",
                host,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                f"p{name}",
                "netns",
                SWITCH,
            )
            _ip("-n", host, "addr", "add", f"{_address(i)}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            _ip("-n", SWITCH, "link", "set", f"p{name}", "master", "br0")
            _ip("-n", SWITCH, "link", "set", f"p{name}", "up")
        yield
    finally:
        for name in NAMES:
            _ip("netns", "del", _host(name), check=False)
        _ip("netns", "del", SWITCH, check=False)


def _split(side):
    """Move the ports of ``side`` to the other bridge: a partition."""
    for name in side:
        _ip("-n", SWITCH, "link", "set", f"p{name}", "master", "br1")


def _heal(side):
    for name in side:
        _ip("-n", SWITCH, "link", "set", f"p{name}", "master", "br0")


async def _start(nursery, i, name):
    command = [
        "ip",
        "netns",
        "exec",
        _host(name),
        sys.executable,
        "-m",
        "repred.peer",
        "8001",
        "--host",
        _address(i),
        "--json",
        "--heartbeat",
        "0.2",
        "--down-after",
        "1.5",
        "--gossip",
        "0.6",
        "--seed-interval",
        "0.5",
        "--max-backoff",
        "1.0",
    ]
    if name != "s":
        command += ["--seed", f"{_address(0)}:8001"]
    process = await nursery.start(
        partial(
            trio.run_process,
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
        )
    )
    node = PeerProcess(process)
    await node.until(lambda e: e["event"] == "listening")
    return node


def _has(key, value):
    return lambda e: e["event"] == "update" and e["key"] == key and e["value"] == value


async def test_a_partition_across_network_stacks_heals(network):
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            nodes = {}
            for i, name in enumerate(NAMES):
                nodes[name] = await _start(nursery, i, name)
            everyone = {f"{_address(i)}:8001" for i in range(4)}
            for name in "abc":
                others = everyone - {f"{_address(NAMES.index(name))}:8001"}
                for other in others:
                    await nodes[name].until(
                        lambda e, o=other: e["event"] == "up" and e["peer"] == o
                    )
            _split(["b", "c"])
            b_address = f"{_address(2)}:8001"
            await nodes["a"].until(
                lambda e: e["event"] == "down" and e["peer"] == b_address
            )
            await nodes["a"].send("set left 1")
            await nodes["b"].send("set right 2")
            await nodes["c"].until(_has("right", 2))
            # The seed dies during the split.
            await nodes["s"].process.stdin.aclose()
            assert await nodes["s"].process.wait() == 0
            nodes["a"].events.clear()
            _heal(["b", "c"])
            for name in "abc":
                await nodes[name].until(_has("left", 1))
                await nodes[name].until(_has("right", 2))
            await nodes["a"].until(
                lambda e: e["event"] == "up" and e["peer"] == b_address
            )
            for name in "abc":
                await nodes[name].process.stdin.aclose()
            for name in "abc":
                assert await nodes[name].process.wait() == 0
