"""``python -m repred.peer`` as separate processes on loopback."""

import signal
import subprocess
import sys
from functools import partial

import trio

from .helpers import PeerProcess

ARGS = [
    "--json",
    "--heartbeat",
    "0.1",
    "--down-after",
    "1.0",
    "--gossip",
    "0.4",
    "--seed-interval",
    "0.3",
]


async def _start(nursery, port, *extra):
    cmd = [sys.executable, "-m", "repred.peer", str(port), *extra, *ARGS]
    process = await nursery.start(
        partial(
            trio.run_process,
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
        )
    )
    node = PeerProcess(process)
    listening = await node.until(lambda e: e["event"] == "listening")
    node.address = listening["address"]
    node.port = int(node.address.rsplit(":", 1)[1])
    return node


def _has(key, value):
    return lambda e: e["event"] == "update" and e["key"] == key and e["value"] == value


async def test_chain_of_five_converges_reports_down_and_catches_up():
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # Port 0: each node says where it listens; the next joins it.
            nodes = [await _start(nursery, 0)]
            for _ in range(1, 5):
                nodes.append(await _start(nursery, 0, str(nodes[-1].port)))
            addr = [node.address for node in nodes]
            ports = [node.port for node in nodes]
            # Every node learns every member, each knowing only the previous.
            for node in nodes:
                for other in addr:
                    if other != addr[nodes.index(node)]:
                        await node.until(
                            lambda e, o=other: e["event"] == "up" and e["peer"] == o
                        )
            # Data set at either end reaches every node.
            await nodes[0].send('set left {"n": 1}')
            await nodes[4].send("set right two")
            for node in nodes:
                await node.until(_has("left", {"n": 1}))
                await node.until(_has("right", "two"))

            # Killing one is reported down by the others.
            nodes[2].process.kill()
            await nodes[2].process.wait()
            for i in (0, 1, 3, 4):
                await nodes[i].until(
                    lambda e: e["event"] == "down" and e["peer"] == addr[2]
                )
            await nodes[0].send("set while-down yes")
            for i in (1, 3, 4):
                await nodes[i].until(_has("while-down", "yes"))

            # Restarted on the same port, it catches up with what it missed.
            nodes[2] = await _start(nursery, ports[2], str(ports[1]))
            for key, value in (("left", {"n": 1}), ("right", "two")):
                await nodes[2].until(_has(key, value))
            await nodes[2].until(_has("while-down", "yes"))

            # End of input stops each peer cleanly.
            for node in nodes:
                await node.process.stdin.aclose()
            for node in nodes:
                assert await node.process.wait() == 0


def test_end_of_input_exits_cleanly_and_bad_arguments_fail():
    done = subprocess.run(
        [sys.executable, "-m", "repred.peer", "0"],
        input=b"set a 1\nget a\npeers\nbogus\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "a = 1" in out
    assert "unknown command" in out
    assert b"Traceback" not in done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "repred.peer", "0", "--seed", "nonsense"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2
    assert b"HOST:PORT" in bad.stderr


def test_data_dir_keeps_the_map_across_restarts(tmp_path):
    run = partial(
        subprocess.run,
        [sys.executable, "-m", "repred.peer", "0", "--data", str(tmp_path / "d")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    first = run(input=b"set colour blue\nset gone 1\ndel gone\n")
    assert first.returncode == 0, first.stderr
    second = run(input=b"get colour\nget gone\n")
    assert second.returncode == 0, second.stderr
    assert 'colour = "blue"' in second.stdout.decode()
    assert "gone was deleted" in second.stdout.decode()
    third = run(input=b"get never\n")
    assert "never is not set" in third.stdout.decode()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.db").write_bytes(b"garbage" * 100)
    bad = subprocess.run(
        [sys.executable, "-m", "repred.peer", "0", "--data", str(tmp_path / "junk")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2
    assert b"not a usable repred store" in bad.stderr


def _default_sigint():
    # A test runner started in the background may ignore SIGINT, and its
    # children inherit that; a person's terminal does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_peer_cleanly():
    proc = subprocess.Popen(
        [sys.executable, "-m", "repred.peer", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )
    assert b"listening" in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
