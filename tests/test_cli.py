"""``python -m repred.peer`` as separate processes on loopback."""

import signal
import subprocess
import sys
from functools import partial

import pytest
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
    node.id = listening["id"]
    node.port = int(node.address.rsplit(":", 1)[1])
    return node


def _has(key, value):
    return lambda e: e["event"] == "update" and e["key"] == key and e["value"] == value


@pytest.mark.slow  # five processes, restarted
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
            ids = {node.address: node.id for node in nodes}
            for node in nodes:
                for other in addr:
                    if other != addr[nodes.index(node)]:
                        up = await node.until(
                            lambda e, o=other: e["event"] == "up" and e["peer"] == o
                        )
                        # The id its updates come from, matched to its host.
                        assert up["id"] == ids[other]
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


async def test_a_signed_verifying_tls_network_of_peers(tmp_path):
    trustme = __import__("pytest").importorskip("trustme")
    from repred import SigningKey

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "node.pem"))
    keys = {name: SigningKey.generate() for name in ("a", "b", "stranger")}
    for name, key in keys.items():
        key.save(tmp_path / f"{name}.key")
    (tmp_path / "writers").write_text(
        f"# the network\n{keys['a'].id}\n{keys['b'].id}  # b\n"
    )
    tls = ["--tls-cert", str(tmp_path / "node.pem"), "--tls-key"]
    tls += [str(tmp_path / "node.pem"), "--tls-ca", str(tmp_path / "ca.pem")]

    def trust(name):
        return [
            "--key",
            str(tmp_path / f"{name}.key"),
            "--verify",
            "--writers",
            str(tmp_path / "writers"),
        ]

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            a = await _start(nursery, 0, *tls, *trust("a"))
            assert a.events[-1]["id"] == keys["a"].id
            b = await _start(nursery, 0, str(a.port), *tls, *trust("b"))
            await a.send("set from-a 1")
            await b.until(_has("from-a", 1))
            await b.send("set from-b 2")
            await a.until(_has("from-b", 2))
            # A node with a key nobody listed is heard by no one.
            stranger = await _start(nursery, 0, str(a.port), *tls, *trust("stranger"))
            await stranger.send("set from-stranger 3")
            await a.send("set after 4")
            await b.until(_has("after", 4))
            await a.send("get from-stranger")
            answer = await a.until(lambda e: e["event"] == "value")
            assert answer["value"] is None
            for node in (a, b, stranger):
                node.process.send_signal(signal.SIGTERM)
            nursery.cancel_scope.cancel()


def test_trust_options_are_checked(tmp_path, capsys):
    from repred.peer import main

    assert main(["0", "--no-stdin", "--verify"]) == 2
    assert "--verify needs --key" in capsys.readouterr().err
    assert main(["0", "--no-stdin", "--key"]) == 2
    assert "--data" in capsys.readouterr().err
    (tmp_path / "w").write_text("not-a-key\n")
    key = str(tmp_path / "k")
    assert (
        main(
            [
                "0",
                "--no-stdin",
                "--key",
                key,
                "--verify",
                "--writers",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )
    assert "not a key id" in capsys.readouterr().err
    assert (
        main(["0", "--no-stdin", "--key", key, "--writers", str(tmp_path / "w")]) == 2
    )
