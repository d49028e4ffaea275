"""Partitions across real network stacks: peers in Linux network namespaces.

Four peer processes, each in its own network namespace, joined by a bridge
in a fifth. The bridge is split in two ({S, A} and {B, C}) by moving ports
to a second bridge, both sides write, the seed S is killed during the
split, and the bridge is healed: everyone converges and ``down`` and ``up``
events fire. The same split with placed documents (``--copies 2``), each
owned on both sides: each side keeps two copies of each document while
split, and once healed every owner holds both sides' writes and the copies
made meanwhile are dropped. Needs root and ``ip netns``; skipped with the
reason otherwise.
"""

import os
import shutil
import subprocess
import sys
import uuid
from functools import partial

import pytest
import trio

import repred

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


async def _start(nursery, i, name, *extra):
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
        *extra,
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


def _member(name):
    return f"{_address(NAMES.index(name))}:8001"


async def _see(nodes, event, pairs):
    """Until each node of ``pairs`` says ``event`` of the other."""
    for name, other in pairs:
        peer = _member(other)
        await nodes[name].until(
            lambda e, p=peer: e["event"] == event and e["peer"] == p
        )


ACROSS = [(x, y) for x in "sa" for y in "bc"] + [(y, x) for x in "sa" for y in "bc"]


def _split_documents(members, count):
    """Names whose two owners are one on each side of the split."""
    left = {_member("s"), _member("a")}
    found = []
    for i in range(1000):
        owners = set(repred.owners(f"doc{i}", members, 2))
        if len(owners & left) == 1:
            found.append(f"doc{i}")
        if len(found) == count:
            return found
    raise AssertionError("no such names")


async def _confirmed_write(node, doc, key, value):
    """Write ``key`` in ``doc`` through ``node`` and wait until two owners
    hold it (what was read before is set aside: an earlier confirmation
    must not pass for this one)."""
    node.events.clear()
    await node.send(f"use {doc}")
    await node.send(f"set {key} {value}")
    await node.send("confirm 2")
    await node.until(lambda e: e["event"] == "confirmed" and e["document"] == doc)


def _holds(name, key, value):
    return lambda e: (
        e.get("document") == name
        and e["event"] in ("update", "value")
        and e.get("key") == key
        and e.get("value") == value
    )


async def test_a_partition_that_splits_owners_heals_with_every_document_converged(
    network,
):
    members = [_member(n) for n in NAMES]
    docs = _split_documents(members, 3)
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            nodes = {}
            for i, name in enumerate(NAMES):
                nodes[name] = await _start(nursery, i, name, "--copies", "2")
            await _see(nodes, "up", [(x, y) for x in NAMES for y in NAMES if x != y])
            for doc in docs:
                await _confirmed_write(nodes["a"], doc, "base", 0)
            _split(["b", "c"])
            await _see(nodes, "down", ACROSS)
            # Each side writes, and confirms two copies on its own side.
            for doc in docs:
                for name, key in [("a", "left"), ("b", "right")]:
                    await _confirmed_write(nodes[name], doc, key, 1)
            _heal(["b", "c"])
            await _see(nodes, "up", ACROSS)
            # Both sides' writes reach every owner; the copies made on S and
            # C during the split go once the owners hold them.
            for doc in docs:
                owners = repred.owners(doc, members, 2)
                for name in ("s", "c"):
                    if _member(name) not in owners:
                        await nodes[name].until(
                            lambda e, d=doc: (
                                e["event"] == "copy-dropped" and e["document"] == d
                            )
                        )
                for name in ("a", "b"):
                    await nodes[name].send(f"use {doc}")
                    for key in ("base", "left", "right"):
                        await nodes[name].send(f"get {key}")
                        await nodes[name].until(
                            _holds(doc, key, 0 if key == "base" else 1)
                        )
            # Each node holds as an owner what it owns, once it has settled
            # on the healed members (a few heartbeats after they are up;
            # nothing says when, so each is asked until it says so).
            for name, node in nodes.items():
                mine = {
                    d for d in docs if _member(name) in repred.owners(d, members, 2)
                }
                while True:
                    await node.send("holding")
                    held = await node.until(lambda e: e["event"] == "holding")
                    node.events.remove(held)
                    if set(docs) & set(held["documents"]) == mine:
                        break
                    await trio.sleep(0.5)
            for node in nodes.values():
                await node.process.stdin.aclose()
            for node in nodes.values():
                assert await node.process.wait() == 0
