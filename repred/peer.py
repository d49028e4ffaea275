"""The gossip peer command: ``python -m repred.peer SERVER_PORT [CLIENT_PORT]``.

It listens on SERVER_PORT, links first to CLIENT_PORT if given (and to every
``--seed``), beats a heartbeat into the replicated membership map, and
replicates a last-write-wins map named ``data``. Type on standard input::

    set KEY VALUE     (VALUE is JSON if it parses, a string otherwise)
    get KEY
    del KEY
    peers

End of input or Ctrl-C stops the peer (exit code 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import trio

from ._errors import ReplicaError
from ._peer import open_peer, parse_address
from ._store import SqliteStore
from ._trio import subscribe
from .types import model

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m repred.peer",
        description="A repred gossip peer replicating a key-value map.",
    )
    p.add_argument("server_port", type=int, help="port to listen on (0: any)")
    p.add_argument("client_port", type=int, nargs="?", help="port of a peer to join")
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
        metavar="HOST:PORT",
        help="a peer to dial first and re-dial now and then (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="keep the replicated map in DIR (SQLite), across restarts",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between heartbeats (default 1)",
    )
    p.add_argument(
        "--down-after",
        type=float,
        default=5.0,
        metavar="S",
        help="a peer silent this long is down (default 5)",
    )
    p.add_argument(
        "--gossip",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds before moving to another random peer (default 3)",
    )
    p.add_argument(
        "--seed-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between re-dials of the seeds (default 5)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log link errors")
    return p


class _Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            line = json.dumps(event, ensure_ascii=False)
        else:
            kind = event["event"]
            if kind == "update":
                value = json.dumps(event["value"], ensure_ascii=False)
                line = f"{event['key']} = {value}  (from {event['source']})"
            elif kind in ("up", "down"):
                line = f"peer {event['peer']} is {kind}"
            elif kind == "listening":
                line = f"listening on {event['address']}"
            elif kind == "value":
                line = f"{event['key']} = {json.dumps(event['value'])}"
            elif kind == "peers":
                line = "peers: " + " ".join(event["peers"])
            else:
                line = f"{kind}: {event.get('message', '')}"
        print(line, flush=True)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@trio.lowlevel.enable_ki_protection
def _open_stdin() -> trio.lowlevel.FdStream:
    # Protected from Ctrl-C: an interrupt halfway through would leak the
    # duplicated descriptor and leave a half-built stream behind.
    return trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))


async def _commands(
    stdin: trio.lowlevel.FdStream, data: Any, peer: Any, out: _Output
) -> None:
    """Run the commands typed on standard input until it ends."""
    buf = b""
    while chunk := await stdin.receive_some(65536):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            _command(raw, data, peer, out)


def _command(raw: bytes, data: Any, peer: Any, out: _Output) -> None:
    words = raw.decode("utf-8", "replace").strip().split(None, 2)
    if not words:
        return
    cmd = words[0].lower()
    if cmd == "set" and len(words) == 3:
        data.set(words[1], _value(words[2]))
    elif cmd == "get" and len(words) == 2:
        out({"event": "value", "key": words[1], "value": data.get(words[1])})
    elif cmd == "del" and len(words) == 2:
        data.delete(words[1])
    elif cmd == "peers":
        out({"event": "peers", "peers": peer.members()})
    else:
        out({"event": "error", "message": f"unknown command: {raw!r}"})


async def _show_updates(
    data: Any, out: _Output, *, task_status: trio.TaskStatus[None]
) -> None:
    with subscribe(data) as changes:
        task_status.started()
        async for change in changes:
            key, value = change.change
            source = change.source
            out({"event": "update", "key": key, "value": value, "source": source})


async def run(args: argparse.Namespace) -> None:
    out = _Output(args.json)
    seeds = list(args.seed)
    if args.client_port is not None:
        seeds.insert(0, f"{args.host}:{args.client_port}")
    for seed in seeds:
        parse_address(seed)
    store = None
    if args.data:
        os.makedirs(args.data, exist_ok=True)
        store = SqliteStore(os.path.join(args.data, "data.db"))
    data = model(store=store)
    try:
        await _serve(args, data, seeds, out)
    finally:
        data.close()


async def _serve(
    args: argparse.Namespace, data: Any, seeds: list[str], out: _Output
) -> None:
    async with open_peer(
        port=args.server_port,
        host=args.host,
        replicas={"data": data},
        seeds=seeds,
        heartbeat_interval=args.heartbeat,
        down_after=args.down_after,
        gossip_interval=args.gossip,
        seed_interval=args.seed_interval,
        on_event=out,
        advertise=args.advertise,
    ) as peer:
        async with _open_stdin() as stdin, trio.open_nursery() as nursery:
            await nursery.start(_show_updates, data, out)
            # Said once the peer is ready for commands.
            out({"event": "listening", "address": peer.address, "id": data.id})
            await _commands(stdin, data, peer, out)
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        trio.run(run, args)
    except BaseException as exc:
        return _exit_code(exc)
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _exit_code(exc: BaseException) -> int:
    """Ctrl-C is a clean stop; a bad port, address or store is a message."""
    leaves = _leaves(exc)
    if all(isinstance(e, KeyboardInterrupt) for e in leaves):
        return 0
    expected = [e for e in leaves if isinstance(e, OSError | ValueError | ReplicaError)]
    if len(expected) != len(leaves):
        raise exc
    for error in expected:
        print(f"repred.peer: {error}", file=sys.stderr)
    return 1 if any(isinstance(e, OSError) for e in expected) else 2


if __name__ == "__main__":
    sys.exit(main())
