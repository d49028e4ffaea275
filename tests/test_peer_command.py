"""The peer command as a service: odd input, bad options, signals, slow readers.

Each runs ``python -m repred.peer`` as a separate process on loopback.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
from functools import partial

import pytest
import trio

import repred
import repred.peer
from repred import SqliteStore
from repred.types import model

from .helpers import wait_until

PEER = [sys.executable, "-m", "repred.peer"]
FAST = ["--heartbeat", "0.1", "--down-after", "1.0", "--gossip", "0.4"]


def _run(*args, stdin=b""):
    return subprocess.run(
        [*PEER, *args], input=stdin, capture_output=True, timeout=60, check=False
    )


#: Options refused before anything listens, and a word of what is said.
OPTION_ERRORS = (
    (["70000"], "port"),
    (["0", "0"], "port"),
    (["0", "99999"], "port"),
    (["0", "--heartbeat", "0"], "seconds"),
    (["0", "--heartbeat", "-1"], "seconds"),
    (["0", "--heartbeat", "nan"], "seconds"),
    (["0", "--seed-interval", "0"], "seconds"),
    (["0", "--down-after", "-1"], "seconds"),
    (["0", "--gossip", "inf"], "seconds"),
    (["0", "--seed", "nohost"], "HOST:PORT"),
    (["0", "--host", "0.0.0.0"], "--advertise"),
    (["x"], "port"),
    # Intervals too short to do anything but spin.
    (["0", "--gossip", "0.0000001"], "--gossip"),
    (["0", "--heartbeat", "0.001"], "--heartbeat"),
    (["0", "--down-after", "0.01"], "--down-after"),
    (["0", "--seed-interval", "0.001"], "--seed-interval"),
    (["0", "--max-backoff", "0.001"], "--max-backoff"),
    # Pacing that contradicts itself: every node down between beats.
    (["0", "--heartbeat", "10", "--down-after", "1"], "--down-after 1"),
    (["0", "--web-origin", "foo"], "--web-origin: 'foo'"),
    (["0", "--web-origin", "http://host:1/path"], "origin"),
    (["0", "--web-origin", "null"], "origin"),
    (["0", "--host", "999.1.1.1"], "--host 999.1.1.1"),
    (["0", "--host", "no-such-host.invalid"], "--host no-such-host.invalid"),
)


@pytest.mark.parametrize(("args", "says"), OPTION_ERRORS)
def test_every_option_is_checked_before_anything_listens(
    args, says, capsys, monkeypatch
):
    # In this process: main() must say what is wrong and return 2 without
    # starting the peer (the command as a process is checked below).
    async def started(args):
        raise AssertionError("the peer started")

    monkeypatch.setattr(repred.peer, "run", started)
    try:
        code = repred.peer.main(args)
    except SystemExit as exit:
        code = exit.code
    assert code == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err
    assert says in err
    assert out == ""


@pytest.mark.parametrize(
    ("args", "says"),
    # One of each kind of check: the parser's, main's, check_options' and
    # check_listening's.
    [OPTION_ERRORS[0], OPTION_ERRORS[10], OPTION_ERRORS[17], OPTION_ERRORS[-1]],
)
def test_the_command_refuses_bad_options_with_one_line_and_status_2(args, says):
    done = _run(*args, stdin=b"set a 1\n")
    assert done.returncode == 2
    err = done.stderr.decode()
    assert err.count("\n") == 1, err
    assert says in err
    assert done.stdout == b""  # never said "listening"


def _one_line_exit_2(done, *says):
    assert done.returncode == 2, done
    err = done.stderr.decode()
    assert err.count("\n") == 1, err
    assert "Errno" not in err
    for word in says:
        assert word in err
    assert done.stdout == b""  # never said "listening"


def test_ports_in_use_are_named_before_anything_listens():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        _one_line_exit_2(_run("0", "--web", port), f"127.0.0.1:{port}", "--web")
        _one_line_exit_2(_run(port), f"127.0.0.1:{port}", "in use")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    _one_line_exit_2(_run(port, "--web", port), f"--web {port}")


def test_a_data_path_that_cannot_be_a_directory_is_named(tmp_path):
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    _one_line_exit_2(_run("0", "--data", str(a_file)), f"--data {a_file}")
    _one_line_exit_2(
        _run("0", "--data", str(a_file / "below")), f"--data {a_file / 'below'}"
    )
    assert a_file.read_text() == "root:x:0:0\n"


def test_help_lists_the_commands_and_the_json_events():
    done = _run("--help")
    assert done.returncode == 0
    text = done.stdout.decode()
    for word in ["set KEY VALUE", "get KEY", "del KEY", "peers", 'set "my key" 1']:
        assert word in text
    for event in ["listening", "update", "delete", "value", "up / down", "error"]:
        assert event in text


def test_deletes_print_as_deletes():
    done = _run("0", "--json", stdin=b"set k 1\ndel k\nget k\nget never\n")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert {"event": "delete", "key": "k", "source": events[0]["id"]} in events
    values = [e for e in events if e["event"] == "value"]
    assert values == [
        {"event": "value", "key": "k", "value": None, "deleted": True},
        {"event": "value", "key": "never", "value": None},
    ]


def test_values_that_cannot_be_replicated_print_an_error_and_the_peer_goes_on():
    deep = "[" * 300 + "]" * 300
    done = _run(
        "0",
        "--json",
        stdin=(
            "set big 123456789012345678901234567890\n"
            f"set deep {deep}\n"
            "set n NaN\n"
            "set onlykey\n"
            f"set huge {'x' * (2 << 20)}\n"
            "set fine 1\n"
            "get fine\n"
        ).encode(),
    )
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert len(errors) == 4, errors
    assert any("2**53" in m for m in errors)
    assert any("deeper" in m for m in errors)
    assert any("usage: set KEY VALUE" == m for m in errors)
    assert any("line limit" in m for m in errors)
    assert not any("b'" in m for m in errors)
    values = {e["key"]: e["value"] for e in events if e["event"] == "value"}
    assert values == {"fine": 1}
    updates = {e["key"]: e["value"] for e in events if e["event"] == "update"}
    assert updates == {"n": "NaN", "fine": 1}  # NaN is not JSON: a string


@pytest.mark.slow  # three processes, a 1 s busy wait
def test_a_set_while_the_store_is_locked_prints_an_error(tmp_path):
    data = tmp_path / "d"
    _run("0", "--data", str(data), stdin=b"set a 1\n")
    other = sqlite3.connect(data / "data.db", isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    try:
        done = _run("0", "--data", str(data), stdin=b"set b 2\nget a\n")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "error: set: cannot write" in out
    assert "a = 1" in out
    m = model(store=SqliteStore(data / "data.db"))
    assert m.to_dict() == {"a": 1}
    m.close()


def test_two_peers_cannot_share_a_data_directory(tmp_path):
    data = tmp_path / "d"
    with subprocess.Popen(
        [*PEER, "0", "--no-stdin", "--data", str(data)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    ) as first:
        assert b"listening" in first.stdout.readline()
        second = _run("0", "--data", str(data))
        assert second.returncode == 2
        assert b"in use" in second.stderr
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0


async def _lines(process, until):
    """Read JSON events from a process until ``until(event)``; return them all."""
    buf, events = b"", []
    with trio.fail_after(60):
        while True:
            while b"\n" not in buf:
                data = await process.stdout.receive_some(65536)
                assert data, "the peer exited"
                buf += data
            line, buf = buf.split(b"\n", 1)
            event = json.loads(line)
            events.append(event)
            if until(event):
                return events


async def test_no_stdin_runs_as_a_service_and_sigterm_stops_it_cleanly(tmp_path):
    data = tmp_path / "d"
    async with trio.open_nursery() as nursery:
        service = await nursery.start(
            partial(
                trio.run_process,
                [*PEER, "0", "--no-stdin", "--json", "--data", str(data), *FAST],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        listening = (await _lines(service, lambda e: e["event"] == "listening"))[-1]
        assert listening["id"]
        writer = model(id="writer")
        async with repred.open_peer(
            replicas={"data": writer},
            seeds=[listening["address"]],
            heartbeat_interval=0.1,
            gossip_interval=0.4,
        ):
            writer.set("kept", "yes")
            await _lines(service, lambda e: e.get("key") == "kept")
        # /dev/null as stdin did not stop it: only the signal does.
        assert service.returncode is None
        service.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await service.wait() == 0
    reopened = model(store=SqliteStore(data / "data.db"))
    assert reopened.get("kept") == "yes"
    reopened.close()


async def test_text_output_cannot_be_forged_by_what_peers_write():
    async with trio.open_nursery() as nursery:
        victim = await nursery.start(
            partial(
                trio.run_process,
                [*PEER, "0", *FAST],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        buf = b""
        while b"\n" not in buf:
            buf += await victim.stdout.receive_some(65536)
        address = buf.split()[2].decode()
        evil = model(id="bank")
        async with repred.open_peer(
            replicas={"data": evil}, seeds=[address], heartbeat_interval=0.1
        ):
            evil.set("x\npeer 127.0.0.1:9999 is down", 1)
            evil.set("balance = 1000000  (from bank)\r", 2)
            evil.set("last", 3)
            with trio.fail_after(60):
                while b"last" not in buf:
                    buf += await victim.stdout.receive_some(65536)
        await victim.stdin.aclose()
        with trio.fail_after(30):
            assert await victim.wait() == 0
    lines = buf.decode().splitlines()
    assert "peer 127.0.0.1:9999 is down" not in lines
    assert not any(line.startswith("balance = 1000000") for line in lines)
    assert not any("\r" in line for line in lines)


@pytest.mark.slow  # 30,000 updates through a process
async def test_a_reader_that_does_not_drain_stdout_never_stalls_replication():
    friend = model(id="friend")
    for i in range(30_000):
        friend.set(f"k{i}", i)
    async with (
        repred.open_peer(
            replicas={"data": friend}, heartbeat_interval=0.1, gossip_interval=0.4
        ) as hub,
        trio.open_nursery() as nursery,
    ):
        slow = await nursery.start(
            partial(
                trio.run_process,
                [*PEER, "0", "--json", "--seed", hub.address, *FAST],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        # The 30,000 updates have started to arrive; from here on, nobody
        # reads the slow peer's output, and it backs up.
        await _lines(slow, lambda e: e["event"] == "update")
        await slow.stdin.send_all(b"set done 1\n")
        with trio.fail_after(60):
            await wait_until(friend, lambda: friend.get("done") == 1)
        # End of input is honoured even though the output is stuck.
        await slow.stdin.aclose()
        with trio.fail_after(60):
            assert await slow.wait() == 0


def test_output_past_the_bound_is_dropped_and_counted():
    from repred.peer import _Output

    read, write = os.pipe()
    os.set_blocking(read, False)
    try:
        out = _Output(as_json=True, fd=write, limit=100)
        for i in range(5000):  # the pipe fills; nobody reads; no call blocks
            out({"event": "update", "key": f"k{i}", "value": i, "source": "s"})
        out.close(timeout=0)
        data = b""
        while True:
            # Whether the writer had ended is read before the pipe is: what
            # it wrote just before ending is then read too.
            ended = not out._thread.is_alive()
            try:
                data += os.read(read, 1 << 20)
            except BlockingIOError:
                if ended:
                    break
                out._thread.join(0.01)
    finally:
        os.close(read)
        os.close(write)
    events = [json.loads(line) for line in data.splitlines()]
    dropped = [e["count"] for e in events if e["event"] == "dropped"]
    updates = [e["value"] for e in events if e["event"] == "update"]
    assert dropped
    assert len(updates) + sum(dropped) == 5000
    assert updates == sorted(updates)


# -- embedding ---------------------------------------------------------------


async def test_open_peer_raises_the_callers_own_error_as_itself():
    with pytest.raises(ValueError, match="mine"):
        async with repred.open_peer():
            raise ValueError("mine")


async def test_open_peer_on_a_port_in_use_raises_oserror():
    async with repred.open_peer() as first:
        port = int(first.address.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            async with repred.open_peer(port=port):
                pass  # pragma: no cover


async def test_misspelt_options_fail_at_the_call():
    m = model()
    async with trio.open_nursery() as nursery:
        with pytest.raises(TypeError):
            await nursery.start(partial(repred.serve_tcp, m, 0, max_line_byte=10))
    with pytest.raises(TypeError):
        async with repred.open_peer(max_line_byte=10):
            pass  # pragma: no cover
    with pytest.raises(ValueError):
        await repred.connect_tcp(m, "127.0.0.1", 1, send_timeout=0)


def test_long_syncs_report_their_progress():
    from repred import ConnectionStatistics
    from repred.peer import format_event, progress_events

    class Link:
        def __init__(self, **figures):
            self.figures = figures

        def statistics(self):
            base = dict(
                peer_id="10.0.0.2:8001",
                synced=False,
                updates_in=0,
                updates_out=0,
                bytes_in=0,
                bytes_out=0,
            )
            return ConnectionStatistics(**{**base, **self.figures})

    slow = Link(started=0.0, entries_received=5000, entries_expected=100_000)
    young = Link(started=9.5, entries_received=10)
    done = Link(started=0.0, synced=True)
    seen = {}
    (event,) = progress_events([slow, young, done], 10.0, seen)
    assert event == {
        "event": "progress",
        "peer": "10.0.0.2:8001",
        "received": 5000,
        "expected": 100_000,
        "rate": 500,
    }
    assert format_event(event, as_json=False) == (
        "sync with 10.0.0.2:8001: 5,000 of 100,000 entries (5%), 500/s"
    )
    slow.figures["entries_received"] = 7000
    (event,) = progress_events([slow], 11.0, seen)
    assert event["rate"] == 2000  # since the last report
    js = Link(started=0.0, entries_received=42)
    (event,) = progress_events([js], 11.0, seen)
    assert format_event(event, as_json=False).endswith(": 42 entries, 4/s")
    assert slow not in seen  # gone links are forgotten


# -- typed commands ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "line",
    [
        # The tail of an over-long line must not run as a command of its own,
        # wherever the limit falls: here 4 MiB + 64 KiB into the line...
        b"set a " + b"z" * (65 * 65536 - 6) + b'set evil "injected"',
        # ...and here over 12 MiB of one line, past three limits.
        b"set a " + b"z" * (3 * (4 << 20) + 12345) + b' set evil "injected"',
    ],
)
def test_a_line_past_the_limit_is_dropped_whole_with_one_error(line):
    done = _run("0", "--json", stdin=line + b"\nset after 1\nget evil\n")
    assert done.returncode == 0, done.stderr
    events = [json.loads(x) for x in done.stdout.splitlines()]
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert errors == ["input line too long; dropped"]
    updates = {e["key"] for e in events if e["event"] == "update"}
    assert "evil" not in updates
    assert "after" in updates  # the next line runs
    (value,) = [e for e in events if e["event"] == "value"]
    assert value["value"] is None


def test_the_command_reader_drops_an_over_long_line_in_any_chunking():
    from repred.peer import CommandLines

    data = b"ok 1\n" + b"x" * 50 + b"tail\nok 2\n" + b"y" * 40 + b"\nlast"
    for size in (1, 3, 7, 16, 41, 64, len(data)):
        reader = CommandLines(limit=32)
        lines, errors = [], 0
        for i in range(0, len(data), size):
            got = reader.feed(data[i : i + size])
            lines += got
            errors += reader.take_dropped()
        rest = reader.eof()
        assert (lines, rest, errors) == ([b"ok 1", b"ok 2"], b"last", 2), size


def test_commands_missing_words_print_their_usage():
    done = _run(
        "0", "--json", stdin=b"set\nset onlykey\nget\nget a b\ndel\npeers x\nsett a 1\n"
    )
    events = [json.loads(x) for x in done.stdout.splitlines()]
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert errors == [
        "usage: set KEY VALUE",
        "usage: set KEY VALUE",
        "usage: get KEY",
        "usage: get KEY",
        "usage: del KEY",
        "usage: peers",
        "unknown command: sett a 1",
    ]


def test_a_key_may_be_quoted_as_a_json_string():
    done = _run(
        "0",
        "--json",
        stdin=(
            b'set "quoted key" 1\n'
            b'set "tab\\there" {"a": 1}\n'
            b'get "quoted key"\n'
            b'del "quoted key"\n'
            b'get "quoted key"\n'
            b'get "tab\\there"\n'
            b'set "unterminated 1\n'
            b'set "a"b 1\n'
        ),
    )
    events = [json.loads(x) for x in done.stdout.splitlines()]
    updates = [(e["key"], e["value"]) for e in events if e["event"] == "update"]
    assert updates == [("quoted key", 1), ("tab\there", {"a": 1})]
    values = [e for e in events if e["event"] == "value"]
    assert [v["value"] for v in values] == [1, None, {"a": 1}]
    assert values[1]["deleted"] is True
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert len(errors) == 2
    assert all("usage: set KEY VALUE" in m for m in errors), errors


@pytest.mark.slow
async def test_deleting_a_key_never_set_records_and_sends_nothing():
    async with trio.open_nursery() as nursery:
        node = await nursery.start(
            partial(
                trio.run_process,
                [*PEER, "0", "--json", *FAST],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        listening = (await _lines(node, lambda e: e["event"] == "listening"))[-1]
        watcher = model(id="watcher")
        async with repred.open_peer(
            replicas={"data": watcher},
            seeds=[listening["address"]],
            heartbeat_interval=0.1,
            gossip_interval=0.4,
        ):
            await node.stdin.send_all(b"del nonexist\nset marker 1\n")
            events = await _lines(node, lambda e: e.get("key") == "marker")
            with trio.fail_after(30):
                await wait_until(watcher, lambda: watcher.get("marker") == 1)
        await node.stdin.send_all(b"get nonexist\n")
        events += await _lines(node, lambda e: e["event"] == "value")
        await node.stdin.aclose()
        assert await node.wait() == 0
    assert "nonexist" not in watcher.state  # no delete went out
    assert not [e for e in events if e["event"] == "delete"]
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert errors == ["del: nonexist is not set"]
    assert events[-1] == {"event": "value", "key": "nonexist", "value": None}


def test_copies_places_documents_each_in_its_own_store(tmp_path):
    # One node with --copies 1 owns every document: the typed commands act
    # on the document "use" named, each kept in its own store.
    stdin = b"set k 0\nuse notes\nset k 1\nget k\nowners\nholding\nuse ../x\n"
    done = _run("0", "--json", "--copies", "1", "--data", str(tmp_path), stdin=stdin)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    address = events[0]["address"]
    assert any(
        (e["event"], e.get("document"), e.get("value")) == ("update", "data", 0)
        for e in events
    )
    assert {"event": "value", "key": "k", "value": 1, "document": "notes"} in events
    assert {"event": "owners", "document": "notes", "owners": [address]} in events
    assert {"event": "holding", "documents": ["data", "notes"]} in events
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert len(errors) == 1
    assert errors[0].startswith("use: ")
    stored = sorted(p.name for p in (tmp_path / "documents").glob("*.db"))
    assert stored == ["data.db", "notes.db"]


def test_document_commands_need_copies():
    done = _run("0", "--json", stdin=b"use notes\nowners\n")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert errors == [
        "unknown command (needs --copies): use notes",
        "unknown command (needs --copies): owners",
    ]


def test_copies_refuses_what_it_does_not_go_with(tmp_path):
    done = _run("0", "--copies", "3", "--read-only")
    _one_line_exit_2(done, "--copies with --read-only")
    _one_line_exit_2(_run("0", "--copies", "0"), "copies are 1 to 64")
