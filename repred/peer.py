"""The gossip peer command: ``python -m repred.peer SERVER_PORT [CLIENT_PORT]``.

It listens on SERVER_PORT, links first to CLIENT_PORT if given (and to every
``--seed``), beats a heartbeat into the replicated membership map, and
replicates a last-write-wins map named ``data``. Type on standard input::

    set KEY VALUE     (VALUE is JSON if it parses, a string otherwise)
    get KEY
    del KEY
    peers

End of input, Ctrl-C or SIGTERM stops the peer (exit code 0). With
``--no-stdin`` it reads no input and runs until SIGINT or SIGTERM, as a
service does.

Output never holds up replication: lines wait in a bounded queue for a
reader that is slow to drain standard output, and past the bound they are
dropped and counted.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import math
import os
import signal
import ssl
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import trio

from ._errors import RepredError
from ._gossip import PeerOptions, open_peer, parse_address
from ._links import single_errors
from ._store import SqliteStore
from ._trust import SigningKey, is_key_id
from ._wire import LineDecoder
from .types import doc, model

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["main"]

#: The longest command line read from standard input.
MAX_COMMAND_BYTES = 4 << 20

#: Lines of output held for a reader that does not drain standard output.
OUTPUT_BUFFER_LINES = 10_000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, saying what is wrong (argparse prints the whole usage).
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, not {text!r}")
    return int(text)


def _listen_port(text: str) -> int:
    if text == "0":
        return 0
    return _port(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 86_400):
        raise argparse.ArgumentTypeError(
            f"seconds must be positive and at most a day, not {text}"
        )
    return value


def _address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m repred.peer",
        description="A repred gossip peer replicating a key-value map.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "server_port", type=_listen_port, help="port to listen on (0: any free one)"
    )
    p.add_argument(
        "client_port", type=_port, nargs="?", help="port of a peer to join (on --host)"
    )
    _network_options(p)
    _pace_options(p)
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument(
        "--no-stdin",
        action="store_true",
        help="read no commands; run until SIGINT or SIGTERM (for services)",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        help="keep the replicated map in DIR (SQLite), across restarts",
    )
    _trust_options(p)
    p.add_argument(
        "--web",
        type=_listen_port,
        metavar="PORT",
        help="serve the live pages (/ and /todo) and WebSocket links"
        " (/replicas/data, /replicas/todo) on PORT",
    )
    p.add_argument(
        "--web-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another origin (http://host:port) whose pages may link (repeatable)",
    )
    p.add_argument(
        "--redis",
        type=_redis_url,
        metavar="URL",
        help="also replicate the map and the membership through Redis at URL"
        " (redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://, unix://): peers"
        " given the same URL converge with no address to share; needs"
        " pip install 'repred[redis]'",
    )
    p.add_argument(
        "--redis-cluster",
        action="store_true",
        help="--redis names a node of a Redis Cluster",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log link errors")
    return p


def _check_redis_extra() -> None:
    try:
        import coredis  # noqa: F401
    except ImportError:
        raise ValueError("--redis needs pip install 'repred[redis]'") from None


def _redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a redis://, rediss:// or unix:// URL"
        )
    return text


def _trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="link over TLS: this node's certificate chain (PEM); needs --tls-key",
    )
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert")
    p.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="trust peers' certificates signed by this CA (PEM), and require one"
        " from every inbound peer (mutual TLS)",
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        help="serve the map; apply nothing inbound peers write to it",
    )
    p.add_argument(
        "--key",
        nargs="?",
        const="",
        metavar="FILE",
        help="sign this node's writes and heartbeats with the ed25519 key in"
        " FILE (made on first use; without FILE: node.key in --data)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="take only entries their sources signed (needs --key)",
    )
    p.add_argument(
        "--writers",
        metavar="FILE",
        help="with --verify, take entries only from the key ids in FILE (one per"
        " line; # starts a comment)",
    )


def signing_key(path: str | None, data: str | None) -> SigningKey | None:
    """The node's key: loaded from ``path``, or made there on first use.

    Raises:
        ValueError: no place for the key, or a file that holds no key.
    """
    if path is None:
        return None
    if path == "":
        if data is None:
            raise ValueError("--key without FILE keeps the key in --data: give one")
        path = os.path.join(data, "node.key")
    try:
        return SigningKey.load(path)
    except FileNotFoundError:
        key = SigningKey.generate()
        try:
            if os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
            key.save(path)
        except OSError as exc:
            raise ValueError(f"cannot keep the key in {path}: {exc}") from None
        return key
    except OSError as exc:
        raise ValueError(f"cannot read the key in {path}: {exc}") from None


def writer_ids(path: str | None) -> frozenset[str] | None:
    """The key ids listed in ``path``, one per line.

    Raises:
        ValueError: the file cannot be read, or a line is not a key id.
    """
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read(1 << 22).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read --writers {path}: {exc}") from None
    ids = set()
    for number, line in enumerate(lines, 1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        if not is_key_id(word):
            raise ValueError(f"{path}:{number}: not a key id: {word[:60]!r}")
        ids.add(word)
    return frozenset(ids)


def tls_contexts(
    cert: str | None, key: str | None, ca: str | None
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The server- and client-side TLS contexts of a peer, from PEM files.

    With ``ca``, peers must present a certificate signed by it (mutual
    TLS), and dialled peers are trusted if it signed theirs; without, the
    system's trusted CAs check the peers this node dials.

    Raises:
        ValueError: a file is missing or not what it should be.
    """
    if cert is None and key is None and ca is None:
        return None, None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert, key)
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        client.load_cert_chain(cert, key)
        if ca is not None:
            server.verify_mode = ssl.CERT_REQUIRED
            server.load_verify_locations(ca)
            client.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use the TLS files: {exc}") from None
    return server, client


_EPILOG = """\
commands on standard input (one per line):
  set KEY VALUE   write KEY; VALUE is JSON if it parses, else text
                  e.g.  set colour "blue"    set n 3    set tags ["a","b"]
  get KEY         print KEY's value             e.g.  get colour
  del KEY         delete KEY                    e.g.  del colour
  peers           print the nodes seen alive

events printed with --json (one JSON object per line):
  listening  {"event":"listening","address":"127.0.0.1:8001","id":"..."}
             (with --web, also "web":"http://127.0.0.1:8080/")
  update     {"event":"update","key":"colour","value":"blue","source":"..."}
  delete     {"event":"delete","key":"colour","source":"..."}
  value      {"event":"value","key":"colour","value":"blue"}
             (a deleted key: "value":null,"deleted":true)
  peers      {"event":"peers","peers":["127.0.0.1:8001","127.0.0.1:8002"]}
  up / down  {"event":"up","peer":"127.0.0.1:8002","id":"..."}
             (id: the node's own id, the source of its updates)
  error      {"event":"error","message":"unknown command: sett x 1"}
  dropped    {"event":"dropped","count":12} (stdout was not read fast enough)
  progress   {"event":"progress","peer":"127.0.0.1:8002","received":5000,
              "expected":100000,"rate":5000} (each second of a sync that takes
              longer than one; printed as text only on a terminal)
  redis      {"event":"redis","state":"waiting","url":"redis://host:6379"}
             (with --redis: "waiting" once while Redis cannot be reached,
             "linked" once every replica is linked; never the password)

End of input, Ctrl-C or SIGTERM stops the peer (exit 0); bad options exit 2.
"""


def _network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--advertise",
        metavar="HOST",
        help="the host other peers should dial (needed with --host 0.0.0.0)",
    )
    p.add_argument(
        "--seed",
        action="append",
        default=[],
        type=_address,
        metavar="HOST:PORT",
        help="a peer to dial first and re-dial now and then (repeatable)",
    )


#: The peer's pacing options: flag, the PeerOptions field, what it is.
_PACE = [
    ("--heartbeat", "heartbeat_interval", "seconds between heartbeats"),
    ("--down-after", "down_after", "a peer silent this long is down"),
    ("--gossip", "gossip_interval", "seconds before moving to another random peer"),
    ("--seed-interval", "seed_interval", "seconds between re-dials of the seeds"),
    ("--max-backoff", "max_backoff", "the longest wait before re-dialling a peer"),
]


def _pace_options(p: argparse.ArgumentParser) -> None:
    defaults = PeerOptions()  # one owner for the defaults: the library's
    for flag, field, what in _PACE:
        default = getattr(defaults, field)
        p.add_argument(
            flag,
            type=_seconds,
            default=default,
            metavar="S",
            help=f"{what} (default {default:g})",
        )


# -- output ----------------------------------------------------------------


def _plain(text: Any) -> str:
    """What a peer wrote, safe to print on one line of text.

    Plain words are printed as they are; anything else (spaces, ``=``,
    quotes, control characters, line breaks) is printed as a JSON string,
    so nothing a peer writes can pass for a line of ours.
    """
    word = str(text)
    if word and word.isprintable() and not any(c in word for c in ' ="\\'):
        return word
    return orjson.dumps(word).decode()


def _value_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def format_event(event: dict[str, Any], as_json: bool) -> str:
    """One output line (without its line break) for an event."""
    if as_json:
        return orjson.dumps(event).decode()
    kind = event["event"]
    if kind == "update":
        return (
            f"{_plain(event['key'])} = {_value_text(event['value'])}"
            f"  (from {_plain(event['source'])})"
        )
    if kind == "up" and event.get("id"):
        return f"peer {_plain(event['peer'])} is up as {_plain(event['id'])}"
    if kind in ("up", "down"):
        return f"peer {_plain(event['peer'])} is {kind}"
    if kind == "listening":
        text = f"listening on {event['address']} as {_plain(event['id'])}"
        return text + (f"; pages at {event['web']}" if event.get("web") else "")
    if kind == "value":
        if event.get("deleted"):
            return f"{_plain(event['key'])} was deleted"
        if event["value"] is None:
            return f"{_plain(event['key'])} is not set"
        return f"{_plain(event['key'])} = {_value_text(event['value'])}"
    if kind == "delete":
        return f"{_plain(event['key'])} deleted  (from {_plain(event['source'])})"
    if kind == "peers":
        return "peers: " + " ".join(_plain(p) for p in event["peers"])
    if kind == "progress":
        expected = event["expected"]
        done = f"{event['received']:,}"
        if expected:
            share = min(event["received"] / expected, 1.0)
            done += f" of {expected:,} entries ({share:.0%})"
        else:
            done += " entries"
        return f"sync with {_plain(event['peer'])}: {done}, {event['rate']:,}/s"
    if kind == "dropped":
        return f"note: {event['count']} lines of output dropped (stdout not read)"
    if kind == "redis":
        if event["state"] == "waiting":
            return f"waiting for Redis at {_plain(event['url'])} (working locally)"
        return f"linked to Redis at {_plain(event['url'])}"
    message = str(event.get("message", ""))
    if not message.isprintable():
        message = orjson.dumps(message).decode()
    return f"{kind}: {message}"


class _Output:
    """Prints events through a bounded queue, written by a thread of its own.

    A reader that does not drain standard output blocks only that thread:
    events queue up to ``limit`` lines, and past that they are dropped and
    counted (a ``dropped`` event says how many), so replication never waits
    for the terminal.
    """

    def __init__(
        self, as_json: bool, fd: int = 1, limit: int = OUTPUT_BUFFER_LINES
    ) -> None:
        self.as_json = as_json
        self._fd = fd
        self._limit = limit
        self._lines: collections.deque[str] = collections.deque()
        self._dropped = 0
        self._closing = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(
            target=self._write_lines, name="repred-peer-output", daemon=True
        )
        self._thread.start()

    @property
    def is_terminal(self) -> bool:
        """Standard output is a terminal (progress lines are for people)."""
        try:
            return os.isatty(self._fd)
        except OSError:  # pragma: no cover
            return False

    def __call__(self, event: dict[str, Any]) -> None:
        line = format_event(event, self.as_json)
        with self._ready:
            if len(self._lines) >= self._limit:
                self._dropped += 1
                return
            self._note_dropped()
            self._lines.append(line)
            self._ready.notify()

    def _note_dropped(self) -> None:
        if self._dropped:
            note = {"event": "dropped", "count": self._dropped}
            self._lines.append(format_event(note, self.as_json))
            self._dropped = 0

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most ``timeout`` s) and stop."""
        with self._ready:
            self._note_dropped()
            self._closing = True
            self._ready.notify()
        self._thread.join(timeout)

    def _write_lines(self) -> None:
        while True:
            with self._ready:
                while not self._lines and not self._closing:
                    self._ready.wait()
                if not self._lines:
                    return
                data = "".join(line + "\n" for line in self._lines).encode()
                self._lines.clear()
            if not _write_all(self._fd, data):
                return


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError:
            return False  # nobody reads any more: nothing to say to anyone
    return True


# -- commands ----------------------------------------------------------------


def _value(text: str) -> Any:
    """VALUE as JSON if it parses, else the text itself.

    Integers are read exactly (so one too large to replicate is refused, not
    rounded), and ``NaN``/``Infinity``, which are not JSON, stay text.
    """
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text
    except RecursionError:
        raise ValueError("the value is nested too deep") from None


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


@trio.lowlevel.enable_ki_protection
def _open_stdin() -> trio.lowlevel.FdStream:
    # Protected from Ctrl-C: an interrupt halfway through would leak the
    # duplicated descriptor and leave a half-built stream behind.
    return trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))


async def _commands(
    stdin: trio.lowlevel.FdStream, data: Any, peer: Any, out: _Output
) -> None:
    """Run the commands typed on standard input until it ends."""
    decoder = LineDecoder(MAX_COMMAND_BYTES)
    while chunk := await stdin.receive_some(65536):
        for line in decoder.feed(chunk):
            _command(line, data, peer, out)
        if decoder.error is not None:
            out({"event": "error", "message": "input line too long; dropped"})
            decoder = LineDecoder(MAX_COMMAND_BYTES)
    rest = decoder.eof()
    if rest is not None:
        _command(rest, data, peer, out)


def _command(raw: bytes, data: Any, peer: Any, out: _Output) -> None:
    text = raw.decode("utf-8", "replace").strip()
    words = text.split(None, 2)
    if not words:
        return
    cmd = words[0].lower()
    run = _COMMANDS.get((cmd, len(words)))
    if run is None or (len(words) > 1 and not words[1]):
        out({"event": "error", "message": f"unknown command: {text[:200]}"})
        return
    try:
        run(words[1:], data, peer, out)
    except (TypeError, ValueError, RepredError) as exc:
        out({"event": "error", "message": f"{cmd}: {exc}"})


def _set(args: list[str], data: Any, peer: Any, out: _Output) -> None:
    data.set(args[0], _value(args[1]))


def _get(args: list[str], data: Any, peer: Any, out: _Output) -> None:
    key = args[0]
    event = {"event": "value", "key": key, "value": data.get(key)}
    if key in data.state and data.state[key] is None:
        event["deleted"] = True  # a delete, not a key never written
    out(event)


def _del(args: list[str], data: Any, peer: Any, out: _Output) -> None:
    data.delete(args[0])


def _peers(args: list[str], data: Any, peer: Any, out: _Output) -> None:
    out({"event": "peers", "peers": peer.members()})


#: The commands typed on standard input: (name, words) -> what runs.
_COMMANDS: dict[tuple[str, int], Callable[[list[str], Any, Any, _Output], None]] = {
    ("set", 3): _set,
    ("get", 2): _get,
    ("del", 2): _del,
    ("peers", 1): _peers,
}


def _show_updates(data: Any, out: _Output) -> None:
    """Print every change to the map, local or remote, as it is applied."""

    def show(effect: Any, ts: float, source: str, origin: object) -> None:
        if effect:
            key, value = effect
            if value is None:
                out({"event": "delete", "key": key, "source": source})
            else:
                out({"event": "update", "key": key, "value": value, "source": source})

    data.add_listener(show)


async def _until_signalled(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


# -- running -------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    out = _Output(args.json)
    seeds = list(args.seed)
    if args.client_port is not None:
        seeds.insert(0, f"{args.host}:{args.client_port}")
    store = None
    if args.data:
        os.makedirs(args.data, exist_ok=True)
        store = SqliteStore(os.path.join(args.data, "data.db"))
    trust = {
        "signing_key": args.signing_key,
        "verify": args.verify,
        "writers": args.writer_ids,
    }
    data = model(store=store, **trust)
    replicas: dict[str, Any] = {"data": data}
    if args.web is not None:
        # The todo page's lists, a doc() beside the map.
        todo_store = None
        if args.data:
            todo_store = SqliteStore(os.path.join(args.data, "todo.db"))
        replicas["todo"] = doc(store=todo_store, **trust)
    try:
        async with single_errors(), trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(_until_signalled, scope)
                await _serve(args, replicas, seeds, out)
            nursery.cancel_scope.cancel()
    finally:
        out.close()
        for replica in replicas.values():
            replica.close()


async def _serve(
    args: argparse.Namespace,
    replicas: dict[str, Any],
    seeds: list[str],
    out: _Output,
) -> None:
    data = replicas["data"]
    async with (
        open_peer(
            port=args.server_port,
            host=args.host,
            replicas=replicas,
            seeds=seeds,
            heartbeat_interval=args.heartbeat,
            down_after=args.down_after,
            gossip_interval=args.gossip,
            seed_interval=args.seed_interval,
            max_backoff=args.max_backoff,
            on_event=out,
            advertise=args.advertise,
            ssl_context=args.tls[0],
            client_ssl_context=args.tls[1],
            read_only=args.read_only,
            signing_key=args.signing_key,
            verify=args.verify,
            writers=args.writer_ids,
            node_id=data.id,
            web_port=args.web,
            web_origins=args.web_origin,
        ) as peer,
        trio.open_nursery() as nursery,
    ):
        _show_updates(data, out)
        if args.redis:
            await _link_redis(nursery, peer, args, out)
        # Said once the peer is ready for commands.
        listening = {"event": "listening", "address": peer.address, "id": data.id}
        if peer.web_address is not None:
            listening["web"] = f"http://{peer.web_address}/"
        out(listening)
        if out.as_json or out.is_terminal:
            nursery.start_soon(_watch_syncs, peer, out)
        if args.no_stdin:
            await trio.sleep_forever()
        async with _open_stdin() as stdin:
            await _commands(stdin, data, peer, out)
        nursery.cancel_scope.cancel()


async def _link_redis(
    nursery: trio.Nursery, peer: Any, args: argparse.Namespace, out: _Output
) -> None:
    """Link every replica of the peer (the membership too) to Redis, and
    say when Redis cannot be reached and when every link is up."""
    from ._redis import connect_redis, display_url

    links = [
        await nursery.start(
            functools.partial(
                connect_redis,
                replica,
                args.redis,
                name=name,
                cluster=args.redis_cluster,
            )
        )
        for name, replica in peer.replicas.items()
    ]
    nursery.start_soon(_watch_redis, links, display_url(args.redis), out)


async def _watch_redis(links: list[Any], url: str, out: _Output) -> None:
    said: str | None = None
    while True:
        state: str | None
        if all(link.connected for link in links):
            state = "linked"
        elif any(link.statistics().attempts_failed for link in links):
            state = "waiting"
        else:
            state = said
        if state != said:
            out({"event": "redis", "state": state, "url": url})
            said = state
        await trio.sleep(0.2)


#: A sync that takes longer than this (seconds) reports its progress, once
#: per this interval.
PROGRESS_AFTER = 1.0


def progress_events(
    connections: list[Any], now: float, seen: dict[Any, tuple[float, int]]
) -> list[dict[str, Any]]:
    """``progress`` events for the links still syncing after
    :data:`PROGRESS_AFTER` seconds; ``seen`` keeps, per link, the time and
    count of the last report (for the rate)."""
    events = []
    for conn in connections:
        stats = conn.statistics()
        if stats.synced or now - stats.started < PROGRESS_AFTER:
            continue
        then, before = seen.get(conn, (stats.started, 0))
        received = stats.entries_received
        event: dict[str, Any] = {
            "event": "progress",
            "peer": stats.peer_id,
            "received": received,
            "expected": stats.entries_expected,
            "rate": round((received - before) / max(now - then, 1e-9)),
        }
        seen[conn] = (now, received)
        events.append(event)
    for gone in set(seen) - set(connections):
        del seen[gone]
    return events


async def _watch_syncs(peer: Any, out: _Output) -> None:
    seen: dict[Any, tuple[float, int]] = {}
    while True:
        await trio.sleep(PROGRESS_AFTER)
        for event in progress_events(peer.connections(), trio.current_time(), seen):
            out(event)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.host in ("0.0.0.0", "::", "") and not args.advertise:
        print(
            "repred.peer: error: --host on every interface needs --advertise HOST",
            file=sys.stderr,
        )
        return 2
    try:
        args.tls = tls_contexts(args.tls_cert, args.tls_key, args.tls_ca)
        if args.data:
            os.makedirs(args.data, exist_ok=True)
        args.signing_key = signing_key(args.key, args.data)
        args.writer_ids = writer_ids(args.writers)
        if args.verify and args.signing_key is None:
            raise ValueError("--verify needs --key (a verifying network signs)")
        if args.writer_ids is not None and not args.verify:
            raise ValueError("--writers needs --verify")
        if args.redis_cluster and not args.redis:
            raise ValueError("--redis-cluster needs --redis")
        if args.redis:
            _check_redis_extra()
    except (ValueError, OSError) as exc:
        print(f"repred.peer: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        trio.run(run, args)
    except BaseExceptionGroup as group:
        # Several errors at once (rare): Ctrl-C alone is still a clean stop.
        if group.subgroup(KeyboardInterrupt) is not None and not group.subgroup(
            lambda e: not isinstance(e, KeyboardInterrupt | BaseExceptionGroup)
        ):
            return 0
        raise
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError, RepredError) as exc:
        print(f"repred.peer: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, OSError) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
