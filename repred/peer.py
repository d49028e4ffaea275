"""The gossip peer command: ``python -m repred.peer SERVER_PORT [CLIENT_PORT]``.

It listens on SERVER_PORT, links first to CLIENT_PORT if given (and to every
``--seed``), says it is alive in the replicated membership map (and again
whenever another node suspects it), and replicates a last-write-wins map
named ``data``. With ``--copies N`` it places documents instead: each
last-write-wins map (the one named ``todo`` is the todo page's lists) lives
on N of the nodes, and any node reaches it through them. Type on standard
input::

    set KEY VALUE     (VALUE is JSON if it parses, a string otherwise)
    get KEY
    del KEY
    peers
    use NAME          (with --copies: the document the commands act on)
    owners [NAME]     (with --copies: the nodes that hold it)
    holding           (with --copies: what this node holds as an owner)
    confirm [COPIES]  (with --copies: wait until that many owners hold it)

KEY is one word, or a JSON string: ``set "my key" 1``.

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
import errno
import functools
import json
import logging
import math
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import orjson
import trio

from ._address import parse_address
from ._doclink import check_document_name
from ._errors import RepredError
from ._gossip import open_peer
from ._groups import single_errors
from ._options import PeerOptions
from ._store import SqliteStore
from ._trust import SigningKey, is_key_id
from ._wire import LineDecoder
from .types import doc, model

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


def _copies(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 64:
        raise argparse.ArgumentTypeError(f"copies are 1 to 64, not {text!r}")
    return int(text)


def _listen_port(text: str) -> int:
    if text == "0":
        return 0
    return _port(text)


def _seconds(least: float) -> Callable[[str], float]:
    """Seconds from ``least`` to a day: shorter intervals only spin."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected seconds, not {text!r}"
            ) from None
        if not (math.isfinite(value) and least <= value <= 86_400):
            raise argparse.ArgumentTypeError(
                f"seconds must be at least {least:g} and at most a day, not {text}"
            )
        return value

    return seconds


def _origin(text: str) -> str:
    """A page's origin, as a browser sends it: ``http(s)://host[:port]``."""
    from ._http import check_origin  # (the web port's rule; only with one)

    try:
        return check_origin(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _web_host(text: str) -> str:
    from ._http import host_name  # (only with --web-host)

    try:
        return text if text == "*" else host_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m repred.peer",
        description="A repred gossip peer replicating a key-value map: a model()"
        ' named "data" (a program that joins with open_peer names its own alike).',
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
    p.add_argument(
        "--copies",
        type=_copies,
        metavar="N",
        help="place documents: each on N nodes only (every node of the network"
        " must say the same N); with --data, each in its own store under"
        " DIR/documents",
    )
    p.add_argument(
        "--new-id",
        action="store_true",
        help="write under a new id from now on, keeping the data held (for a"
        " node started from a copy of another's --data: a restored backup, a"
        " cloned machine)",
    )
    _trust_options(p)
    _web_options(p)
    _redis_options(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log link errors")
    return p


def _web_options(p: argparse.ArgumentParser) -> None:
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
        type=_origin,
        metavar="ORIGIN",
        help="another origin (http://host:port) whose pages may link (repeatable)",
    )
    p.add_argument(
        "--web-host",
        action="append",
        default=[],
        type=_web_host,
        metavar="NAME",
        help="another name the web port may be reached by (a proxy's; '*': any)"
        " besides --host, --advertise and localhost (repeatable)",
    )


def _redis_options(p: argparse.ArgumentParser) -> None:
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
        help="serve the map; apply nothing other nodes or pages write to it",
    )
    p.add_argument(
        "--key",
        nargs="?",
        const="",
        metavar="FILE",
        help="sign this node's writes and membership entries with the ed25519 key in"
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
  del KEY         delete KEY (if it is set)     e.g.  del colour
  peers           print the nodes seen alive
  with --copies, documents (each on N nodes; the commands start on "data"):
  use NAME        act on the document NAME from now on   e.g.  use recipes
  owners [NAME]   print the nodes that hold NAME (or the current one)
  holding         print the documents this node holds as an owner
  confirm [N]     say when N owners (default 2) hold what this node holds of
                  the current document (an error after 60 s)
  KEY is one word, or a JSON string (a key with spaces or quotes):
                  e.g.  set "my key" 1    get "my key"    del "say \\"hi\\""
  a command without its words prints its usage (usage: set KEY VALUE)

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
  repaired   {"event":"repaired","replica":"data","source":"...","entries":1,
              "message":"..."} (entries this node lacked although its clock
              covered them, found by comparing hash trees with a peer)
  equivocation  {"event":"equivocation","replica":"data","source":"...",
              "ts":...,"message":"..."} (a source wrote two entries with one
              stamp; every node keeps the one with the smaller hash)
  twin-id    {"event":"twin-id","replica":"data","source":"...","message":
              "..."} (another live node writes under this node's id: this
              node refuses set and del until restarted with --new-id)
  banned     {"event":"banned",...} (with --verify: a source proven to sign
              two entries for one stamp; its later entries are refused)
  with --copies, update, delete and value name their "document", and:
  using      {"event":"using","document":"recipes","owners":[...]}
  owners     {"event":"owners","document":"recipes","owners":[...]}
  holding    {"event":"holding","documents":["data","recipes"]}
  confirmed  {"event":"confirmed","document":"recipes","copies":2}
  handoff    {"event":"handoff","document":"recipes","to":"...","entries":3}
             (a node that newly owns it was sent this node's copy)
  handoff-failed  {"event":"handoff-failed","kind":"handoff","document":...,
             "to":...,"attempts":1,"reason":"...","retry_in":1.2} (retried)
  received   {"event":"received","document":"recipes","from":"..."}
  copy-dropped  {"event":"copy-dropped","document":"recipes","owners":[...]}
             (no longer owned here, and its owners hold all of it)
  redis      {"event":"redis","state":"waiting","url":"redis://host:6379"}
              (with --redis: "waiting" once while Redis cannot be reached,
              "linked" once every replica has read what Redis holds and
              written what it lacked; never the password)

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


#: The peer's pacing options: flag, the PeerOptions field, what it is, and
#: the shortest interval taken (a link needs some milliseconds to complete a
#: handshake; shorter intervals spin without ever joining).
_PACE = [
    (
        "--heartbeat",
        "heartbeat_interval",
        "seconds between keep-alives on a quiet link (three missed: cut)",
        0.05,
    ),
    (
        "--down-after",
        "down_after",
        "seconds a peer another could not reach stays up before it is down",
        0.1,
    ),
    (
        "--gossip",
        "gossip_interval",
        "seconds before moving to another random peer",
        0.1,
    ),
    ("--seed-interval", "seed_interval", "seconds between re-dials of the seeds", 0.1),
    (
        "--max-backoff",
        "max_backoff",
        "the longest wait before re-dialling a peer",
        0.1,
    ),
]


def _pace_options(p: argparse.ArgumentParser) -> None:
    defaults = PeerOptions()  # one owner for the defaults: the library's
    for flag, field, what, least in _PACE:
        default = getattr(defaults, field)
        p.add_argument(
            flag,
            type=_seconds(least),
            default=default,
            metavar="S",
            help=f"{what} (default {default:g}, at least {least:g})",
        )


def check_options(args: argparse.Namespace) -> None:
    """Refuse what the options say together, before anything listens.

    Raises:
        ValueError: one line saying what is wrong (the flag, host, path or
            port).
    """
    if args.down_after < 2 * args.heartbeat:
        raise ValueError(
            f"--down-after {args.down_after:g} must be at least twice --heartbeat"
            f" {args.heartbeat:g}: a live peer refutes a suspicion within a"
            " heartbeat, and would be seen down before it could"
        )
    if args.web and args.web == args.server_port:
        raise ValueError(f"--web {args.web} is SERVER_PORT too: give it its own port")
    if args.copies:
        _check_placed(args)
    if args.data:
        _data_directory(args.data)


def _check_placed(args: argparse.Namespace) -> None:
    """What --copies does not go with."""
    for flag, given in [
        ("--key", args.key is not None),
        ("--read-only", args.read_only),
        ("--redis", args.redis is not None),
    ]:
        if given:
            raise ValueError(
                f"--copies with {flag}: not supported (a placed document's"
                " copies write under ids of their own, which a node's key"
                " cannot give; an owner must take what is written; Redis"
                " carries named replicas only)"
            )


def _data_directory(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--data {path} is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"--data {path}: cannot make the directory ({exc.strerror})"
        ) from None


def check_listening(host: str, ports: dict[int, str]) -> None:
    """Bind each port (``{port: what it is}``) on ``host`` and let it go:
    a host this machine cannot listen on, or a port in use, is named here
    rather than failing halfway through starting.

    Raises:
        ValueError: one line naming the host, or the port and its flag.
    """
    try:
        addresses = socket.getaddrinfo(
            host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"--host {host}: no address to listen on ({why})") from None
    for port, what in ports.items():
        for family, kind, proto, _, address in addresses:
            sockaddr = (address[0], port, *address[2:])
            error = _bind_error(family, kind, proto, sockaddr)
            if error is None:
                continue
            if error.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"cannot listen on {_join(str(address[0]), port)} ({what}):"
                    " the port is in use"
                )
            raise ValueError(f"--host {host}: cannot listen there ({error.strerror})")


def _bind_error(family: int, kind: int, proto: int, sockaddr: Any) -> OSError | None:
    """Why a listener could not bind ``sockaddr`` (``None``: it could), set
    up as trio's listeners are."""
    try:
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        # A family this system lacks is skipped, as trio skips it.
        return None if exc.errno == errno.EAFNOSUPPORT else exc
    with sock:
        try:
            # SO_REUSEADDR as trio sets it, so a port in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            return exc
    return None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def _nodes(nodes: list[str]) -> str:
    return " ".join(_plain(n) for n in nodes) or "(none)"


def _failed_text(e: dict[str, Any]) -> str:
    return (
        f"cannot bring {_plain(e['to'])}'s copy of {_plain(e['document'])} up"
        f" to date: {_plain(e['reason'])} (try {e['attempts']}; again in"
        f" {e['retry_in']:g} s)"
    )


#: How the events of placed documents read as text.
_PLACED_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "using": lambda e: f"using {_plain(e['document'])} (owners: {_nodes(e['owners'])})",
    "owners": lambda e: f"{_plain(e['document'])} is held by {_nodes(e['owners'])}",
    "holding": lambda e: f"holding: {_nodes(e['documents'])}",
    "confirmed": lambda e: (
        f"{_plain(e['document'])}: {e['copies']} owners hold what this node holds"
    ),
    "handoff": lambda e: (
        f"sent {_plain(e['document'])} to {_plain(e['to'])} ({e['entries']} entries)"
    ),
    "handoff-failed": _failed_text,
    "received": lambda e: (
        f"now holding {_plain(e['document'])} (from {_plain(e['from'])})"
    ),
    "copy-dropped": lambda e: (
        f"dropped {_plain(e['document'])}: its owners hold it ({_nodes(e['owners'])})"
    ),
}


def _value_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def format_event(event: dict[str, Any], as_json: bool) -> str:
    """One output line (without its line break) for an event."""
    if as_json:
        return orjson.dumps(event).decode()
    kind = event["event"]
    if kind in _PLACED_TEXT:
        return _PLACED_TEXT[kind](event)
    if "document" in event:  # a document's update, delete or value
        rest = {k: v for k, v in event.items() if k != "document"}
        return f"{_plain(event['document'])}: {format_event(rest, as_json)}"
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


class CommandLines:
    """Splits typed input into lines; a line over ``limit`` is dropped whole.

    The part of an over-long line that follows the limit is skipped up to
    the line's end, never read as a line of its own: otherwise its tail
    would run as a command.
    """

    def __init__(self, limit: int = MAX_COMMAND_BYTES) -> None:
        self._limit = limit
        self._decoder = LineDecoder(limit)
        self._skipping = False
        self._dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines ``data`` finished (over-long ones left out)."""
        lines: list[bytes] = []
        while data:
            if self._skipping:
                end = data.find(b"\n")
                if end < 0:
                    return lines
                self._skipping = False
                data = data[end + 1 :]
                continue
            held = self._decoder.buffered
            got = self._decoder.feed(data)
            lines += got
            if self._decoder.error is None:
                return lines
            # The decoder stopped at the over-long line, which starts in data
            # after the lines it returned (or began in what it held): go on
            # after that line's end, or skip to it.
            self._dropped += 1
            self._decoder = LineDecoder(self._limit)
            start = max(sum(len(line) + 1 for line in got) - held, 0)
            end = data.find(b"\n", start)
            self._skipping = end < 0
            data = b"" if end < 0 else data[end + 1 :]
        return lines

    def take_dropped(self) -> int:
        """Over-long lines dropped since the last call."""
        dropped, self._dropped = self._dropped, 0
        return dropped

    def eof(self) -> bytes | None:
        """The unfinished last line, if any (none while skipping one)."""
        return None if self._skipping else self._decoder.eof()


class _Shell:
    """What the typed commands act on: the peer, and the replica they read
    and write (``data``, or with ``--copies`` the document ``use`` named)."""

    def __init__(self, peer: Any, out: _Output, data: Any, name: str | None) -> None:
        self.peer = peer
        self.out = out
        self.data = data
        #: The document the commands act on (with --copies).
        self.name = name
        self.nursery: trio.Nursery | None = None
        self._shown: set[str] = set()

    def show(self, data: Any, name: str | None) -> None:
        """Print every change to ``data``, once it is shown at all."""
        if name is not None:
            if name in self._shown:
                return
            self._shown.add(name)
        _show_updates(data, self.out, name)


async def _commands(stdin: trio.lowlevel.FdStream, shell: _Shell) -> None:
    """Run the commands typed on standard input until it ends."""
    reader = CommandLines()
    async with trio.open_nursery() as nursery:
        shell.nursery = nursery  # (where confirm waits)
        while chunk := await stdin.receive_some(65536):
            for line in reader.feed(chunk):
                await _command(line, shell)
            for _ in range(reader.take_dropped()):
                shell.out({"event": "error", "message": "input line too long; dropped"})
        rest = reader.eof()
        if rest is not None:
            await _command(rest, shell)
        nursery.cancel_scope.cancel()


async def _command(raw: bytes, shell: _Shell) -> None:
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return
    name, _, rest = text.partition(" ")
    cmd = name.lower()
    placed = shell.name is not None
    if cmd not in _COMMANDS or (cmd in _PLACED and not placed):
        why = " (needs --copies)" if cmd in _PLACED else ""
        shell.out({"event": "error", "message": f"unknown command{why}: {text[:200]}"})
        return
    run, words = _COMMANDS[cmd]
    args = _arguments(rest.strip(), words)
    if args is None:
        shell.out({"event": "error", "message": f"usage: {_USAGE[cmd]}"})
        return
    try:
        done = run(args, shell)
        if done is not None:
            await done
    except (TypeError, ValueError, RepredError) as exc:
        shell.out({"event": "error", "message": f"{cmd}: {exc}"})


def _writable(data: Any) -> None:
    """Refuse to write under an id another live node writes under."""
    if data.statistics().twin_ids:
        raise RepredError(
            f"refused: another live node writes under this node's id {data.id}"
            " (was it started from a copy of this one's --data?); restart this"
            " node with --new-id to take a new id, keeping the data it holds"
        )


def _arguments(text: str, words: int | tuple[int, ...]) -> list[str] | None:
    """KEY (a word, or a JSON string for a key with spaces), then the rest
    of the line if ``words`` is 2: ``None`` unless exactly that many (or
    one of the counts ``words`` gives)."""
    if isinstance(words, tuple):
        for count in words:
            args = _arguments(text, count)
            if args is not None:
                return args
        return None
    if words == 0:
        return None if text else []
    if not text:
        return None
    if text.startswith('"'):
        try:
            key, end = _JSON_STRING.raw_decode(text)
        except ValueError:
            return None
        if type(key) is not str or text[end : end + 1] not in ("", " ", "\t"):
            return None
        rest = text[end:].strip()
    else:
        key, _, rest = text.partition(" ")
        rest = rest.strip()
    if (words == 2) != bool(rest):
        return None
    return [key, rest] if rest else [key]


_JSON_STRING = json.JSONDecoder()


def _set(args: list[str], shell: _Shell) -> None:
    _writable(shell.data)
    shell.data.set(args[0], _value(args[1]))


def _get(args: list[str], shell: _Shell) -> None:
    key, data = args[0], shell.data
    event = {"event": "value", "key": key, "value": data.get(key)}
    if key in data.state and data.state[key] is None:
        event["deleted"] = True  # a delete, not a key never written
    shell.out(_in_document(event, shell.name))


def _del(args: list[str], shell: _Shell) -> None:
    _writable(shell.data)
    if shell.data.get(args[0]) is None:
        # Nothing to delete: a delete would still be recorded and sent to
        # every peer, for a key no one ever wrote.
        raise ValueError(f"{_plain(args[0])} is not set")
    shell.data.delete(args[0])


def _peers(args: list[str], shell: _Shell) -> None:
    shell.out({"event": "peers", "peers": shell.peer.members()})


async def _use(args: list[str], shell: _Shell) -> None:
    name = check_document_name(args[0])
    data = await shell.peer.document(name)
    if data.type_name != "model":
        raise ValueError(f"{name} is the todo page's lists, not a map")
    shell.data, shell.name = data, name
    shell.show(data, name)
    owners = shell.peer.owners(name)
    shell.out({"event": "using", "document": name, "owners": owners})


def _owners(args: list[str], shell: _Shell) -> None:
    name = check_document_name(args[0] if args else shell.name)
    shell.out({"event": "owners", "document": name, "owners": shell.peer.owners(name)})


def _holding(args: list[str], shell: _Shell) -> None:
    shell.out({"event": "holding", "documents": shell.peer.holding()})


#: How long ``confirm`` waits for the owners' acknowledgements.
CONFIRM_SECONDS = 60.0


def _confirm(args: list[str], shell: _Shell) -> None:
    if args and not args[0].isdigit():
        raise ValueError(f"COPIES is a number of owners, not {args[0][:20]!r}")
    copies = int(args[0]) if args else 2
    assert shell.nursery is not None
    assert shell.name is not None
    shell.nursery.start_soon(_confirmed, shell, shell.name, copies)


async def _confirmed(shell: _Shell, name: str, copies: int) -> None:
    """Say when ``copies`` owners hold what this node holds of ``name``
    (what it holds when the command is typed)."""
    try:
        with trio.fail_after(CONFIRM_SECONDS):
            await shell.peer.wait_replicated(name, copies)
    except trio.TooSlowError:
        message = f"confirm: {copies} copies of {name} not confirmed within"
        shell.out({"event": "error", "message": f"{message} {CONFIRM_SECONDS:g} s"})
    except (ValueError, RepredError) as exc:
        shell.out({"event": "error", "message": f"confirm: {exc}"})
    else:
        shell.out({"event": "confirmed", "document": name, "copies": copies})


_Command = Callable[[list[str], _Shell], Awaitable[None] | None]

#: The commands typed on standard input: name -> (what runs, the words it
#: takes after its name: KEY, or KEY VALUE, or one of several counts).
_COMMANDS: dict[str, tuple[_Command, int | tuple[int, ...]]] = {
    "set": (_set, 2),
    "get": (_get, 1),
    "del": (_del, 1),
    "peers": (_peers, 0),
    "use": (_use, 1),
    "owners": (_owners, (0, 1)),
    "holding": (_holding, 0),
    "confirm": (_confirm, (0, 1)),
}
#: The commands only a peer that places documents (--copies) takes.
_PLACED = frozenset(("use", "owners", "holding", "confirm"))
_USAGE = {
    "set": "set KEY VALUE",
    "get": "get KEY",
    "del": "del KEY",
    "peers": "peers",
    "use": "use NAME",
    "owners": "owners [NAME]",
    "holding": "holding",
    "confirm": "confirm [COPIES]",
}


def _in_document(event: dict[str, Any], name: str | None) -> dict[str, Any]:
    """``event``, naming the document it is about (with --copies)."""
    return event if name is None else {**event, "document": name}


def _show_updates(data: Any, out: _Output, name: str | None = None) -> None:
    """Print every change to the map, local or remote, as it is applied."""

    def show(effect: Any, ts: float, source: str, origin: object) -> None:
        if effect:
            key, value = effect
            if value is None:
                event = {"event": "delete", "key": key, "source": source}
            else:
                event = {
                    "event": "update",
                    "key": key,
                    "value": value,
                    "source": source,
                }
            out(_in_document(event, name))

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
    if args.copies:
        await _run_placed(args, seeds, out)
        return
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
    if args.new_id:
        data.take_new_id()
    replicas: dict[str, Any] = {"data": data}
    if args.web is not None:
        # The todo page's lists, a doc() beside the map.
        todo_store = None
        if args.data:
            todo_store = SqliteStore(os.path.join(args.data, "todo.db"))
        replicas["todo"] = doc(store=todo_store, **trust)
        if args.new_id:
            replicas["todo"].take_new_id(data.id)
    try:
        await _until_signalled_or(_serve(args, replicas, seeds, out))
    finally:
        out.close()
        for replica in replicas.values():
            replica.close()


async def _until_signalled_or(serving: Awaitable[None]) -> None:
    """Run ``serving`` until it returns, or SIGINT or SIGTERM."""
    async with single_errors(), trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(_until_signalled, scope)
            await serving
        nursery.cancel_scope.cancel()


async def _run_placed(args: argparse.Namespace, seeds: list[str], out: _Output) -> None:
    """The peer with --copies: no replica of its own, documents placed."""
    folder = os.path.join(args.data, "documents") if args.data else None
    held = _stored_documents(folder)
    fresh = set(held) if args.new_id else set()

    def factory(name: str) -> Any:
        store = None
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            store = SqliteStore(os.path.join(folder, f"{name}.db"))
        replica = (doc if name == "todo" else model)(store=store)
        if name in fresh:
            fresh.discard(name)
            replica.take_new_id()  # (--new-id: once, for what was stored)
        return replica

    def discard(name: str) -> None:
        if folder is not None:
            SqliteStore.delete(os.path.join(folder, f"{name}.db"))

    placed = {"documents": factory, "held": held, "discard": discard}
    try:
        await _until_signalled_or(_serve(args, {}, seeds, out, placed))
    finally:
        out.close()


def _stored_documents(folder: str | None) -> list[str]:
    """The documents whose stores are in ``folder`` (what a node held)."""
    if folder is None or not os.path.isdir(folder):
        return []
    names = []
    for entry in sorted(os.listdir(folder)):
        name, dot, suffix = entry.rpartition(".")
        try:
            if dot and suffix == "db":
                names.append(check_document_name(name))
        except ValueError:
            pass  # (not one of ours)
    return names


async def _serve(
    args: argparse.Namespace,
    replicas: dict[str, Any],
    seeds: list[str],
    out: _Output,
    placed: dict[str, Any] | None = None,
) -> None:
    data = replicas.get("data")
    placed = placed or {}
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
            node_id=None if data is None else data.id,
            web_port=args.web,
            web_origins=args.web_origin,
            web_hosts=args.web_host,
            copies=args.copies or 3,
            **placed,
        ) as peer,
        trio.open_nursery() as nursery,
    ):
        shell = await _shell(peer, out, data)
        if args.redis:
            await _link_redis(nursery, peer, args, out)
        out(_listening(peer, data))  # (once the peer is ready for commands)
        if out.as_json or out.is_terminal:
            nursery.start_soon(_watch_syncs, peer, out)
        if args.no_stdin:
            await trio.sleep_forever()
        async with _open_stdin() as stdin:
            await _commands(stdin, shell)
        nursery.cancel_scope.cancel()


async def _shell(peer: Any, out: _Output, data: Any) -> _Shell:
    """What the typed commands act on: ``data``, or with --copies the
    document named "data"; every change to it printed."""
    shell = _Shell(peer, out, data, None)
    if data is None:
        shell.data, shell.name = await peer.document("data"), "data"
    shell.show(shell.data, shell.name)
    return shell


def _listening(peer: Any, data: Any) -> dict[str, Any]:
    """The event that says the peer is ready, with the node's own id (its
    map's, or with --copies the one it is known by in the membership)."""
    node = data.id if data is not None else peer.node_id(peer.address)
    listening = {"event": "listening", "address": peer.address, "id": node}
    if peer.web_address is not None:
        listening["web"] = f"http://{peer.web_address}/"
    return listening


async def _link_redis(
    nursery: trio.Nursery, peer: Any, args: argparse.Namespace, out: _Output
) -> None:
    """Link every replica of the peer (the membership too) to Redis, and
    say when Redis cannot be reached and when every link is up. A read-only
    peer applies nothing of its data that comes through Redis either; its
    membership flows both ways, as over its peer links."""
    from ._redis import connect_redis, display_url

    links = [
        await nursery.start(
            functools.partial(
                connect_redis,
                replica,
                args.redis,
                name=name,
                cluster=args.redis_cluster,
                receive=not args.read_only or replica is peer.membership,
            )
        )
        for name, replica in peer.replicas.items()
    ]
    nursery.start_soon(_watch_redis, links, display_url(args.redis), out)


async def _watch_redis(links: list[Any], url: str, out: _Output) -> None:
    said: str | None = None
    while True:
        seen = [link.statistics() for link in links]
        state: str | None
        if all(stats.synced for stats in seen):
            state = "linked"
        elif any(stats.attempts_failed for stats in seen):
            state = "waiting"
        else:
            state = said
        if state != said:
            out({"event": "redis", "state": state, "url": url})
            said = state
        async with trio.open_nursery() as nursery:
            for link, stats in zip(links, seen, strict=True):
                nursery.start_soon(_changes, link, stats, nursery.cancel_scope)


async def _changes(link: Any, seen: Any, done: trio.CancelScope) -> None:
    """Wait until ``link`` is synced or not, or failed again, unlike in
    ``seen``; then cancel ``done``."""
    await link.wait_statistics(
        lambda stats: (
            (stats.synced, stats.attempts_failed) != (seen.synced, seen.attempts_failed)
        )
    )
    done.cancel()


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
        check_options(args)
        args.tls = tls_contexts(args.tls_cert, args.tls_key, args.tls_ca)
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
        if args.new_id and args.signing_key is not None:
            raise ValueError(
                "--new-id with --key: a signed node's id is its key's; give it"
                " a new key file instead"
            )
        ports = {args.server_port: "SERVER_PORT"}
        if args.web is not None:
            ports[args.web] = "--web"
        check_listening(args.host, ports)
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
