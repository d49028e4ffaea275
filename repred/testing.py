"""Tools for testing code that uses repred, and for simulating networks."""

from __future__ import annotations

import collections
import contextlib
import copy
import errno
import itertools
import random
from typing import TYPE_CHECKING, Any, final

import attrs
import orjson
import trio
import trio.testing

from ._errors import ReducerCheckFailed
from ._replica import Replica

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable, Sequence

    from ._gossip import Peer
    from ._session import Session
    from .types import Model

__all__ = [
    "Faults",
    "MemoryNetwork",
    "ReducerCheckFailed",
    "Simulation",
    "check_reducer",
    "pump",
    "simulate_peers",
]


@final
class MemoryNetwork:
    """An in-memory network for peers: pass it as ``open_peer(transport=...)``.

    Every peer on the same ``MemoryNetwork`` can reach the others by
    address; links are in-memory streams, so hundreds of peers run in one
    process, and under ``autojump_clock`` their timers take no real time.
    :meth:`cut`, :meth:`partition` and :meth:`heal` split the network,
    :meth:`hang` makes a node fall silent; :attr:`faults` injects faults
    into the bytes links carry.

    A link is a pipe with latency, as TCP is: ``send_all`` hands the bytes
    to the network and returns, and they arrive ``latency`` seconds later,
    in order. Everything sent at one instant rides one timer, so a cluster
    of a thousand peers costs a timer per instant, not one per chunk.

    Args:
        latency: seconds each chunk of bytes takes to cross a link.
        rng: where fault injection draws from (seeded: reproducible).
    """

    def __init__(
        self, *, latency: float = 0.0, rng: random.Random | None = None
    ) -> None:
        self.latency = latency
        self._listeners: dict[
            str, tuple[Callable[..., Awaitable[None]], trio.Nursery]
        ] = {}
        self._ports = itertools.count(1)
        self._blocked: set[str] = set()
        self._hung: set[str] = set()
        #: What hung links hold back until they heal, in the order sent.
        self._held_back: list[tuple[_Carrier, bytes | None]] = []
        self._holding: set[_Carrier] = set()
        self._groups: list[set[str]] | None = None
        #: Open links: (dialler, address, outward, inward), until both
        #: ends are closed.
        self._links: set[_Link] = set()
        self.rng = rng or random.Random(0)
        #: Fault injection: ``None`` (no faults) or a :class:`Faults`.
        self.faults: Faults | None = None
        #: Bytes each address has sent over its links, inbound and outbound.
        self.bytes_sent: collections.Counter[str] = collections.Counter()
        # Chunks on their way, in the order they were sent: with one latency
        # for every link, that is also the order in which they are due.
        self._in_flight: collections.deque[tuple[float, _Carrier, bytes | None]] = (
            collections.deque()
        )
        self._courier: trio.lowlevel.Task | None = None

    async def listen(
        self,
        host: str,
        port: int,
        handler: Callable[[trio.abc.Stream], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> str:
        address = f"{host}:{port or next(self._ports)}"
        if address in self._listeners:
            raise OSError(errno.EADDRINUSE, f"{address} is in use")
        self._listeners[address] = (handler, nursery)
        nursery.start_soon(self._hold, address)
        return address

    async def _hold(self, address: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._listeners.pop(address, None)

    def _reachable(self, source: str, address: str) -> bool:
        if self._blocked & {address, source}:
            return False
        if self._groups is None:
            return True
        return any(source in g and address in g for g in self._groups)

    async def connect(self, address: str, *, source: str) -> trio.abc.Stream:
        """An in-memory stream to ``address``, dialled from ``source``."""
        await trio.lowlevel.checkpoint()
        entry = self._listeners.get(address)
        if entry is None or not self._reachable(source, address):
            raise OSError(errno.ECONNREFUSED, f"nothing answers at {address}")
        handler, nursery = entry
        out_recv = trio.testing.MemoryReceiveStream()
        in_recv = trio.testing.MemoryReceiveStream()
        outward = _Carrier(self, out_recv, source)
        inward = _Carrier(self, in_recv, address)
        ours = trio.StapledStream(outward, in_recv)
        theirs = trio.StapledStream(inward, out_recv)
        link = (source, address, outward, inward)
        outward.link = inward.link = link
        self._links.add(link)
        nursery.start_soon(handler, theirs)
        return ours

    def cut(self, address: str) -> None:
        """Cut ``address`` off: it can neither dial nor be dialled.

        Links already open stay open; close them to complete the partition.
        """
        self._blocked.add(address)

    def partition(self, *groups: list[str] | set[str]) -> None:
        """Split the network: addresses reach only those in their own group.

        Links that cross groups are broken at once (both ends see the
        stream fail, and what was on its way is lost), as a switch that
        went down would.
        """
        self._groups = [set(g) for g in groups]
        for source, address, outward, inward in self._links:
            if not self._reachable(source, address):
                outward.sever()
                inward.sever()
        self._links = {
            link for link in self._links if self._reachable(link[0], link[1])
        }

    def hang(self, address: str) -> None:
        """Make ``address`` fall silent, as a process that hangs does: its
        links stay open and it can still be dialled, but nothing it sends
        arrives and nothing sent to it is read, until :meth:`heal` (then
        what was held back goes on, in order, as TCP would carry it)."""
        self._hung.add(address)

    def heal(self) -> None:
        """Make every address reachable again (and every hung one speak)."""
        self._blocked.clear()
        self._hung.clear()
        self._groups = None
        held, self._held_back = self._held_back, []
        self._holding.clear()
        for carrier, data in held:
            self._carry(carrier, data)

    def _carry(self, carrier: _Carrier, data: bytes | None) -> None:
        """Deliver ``data`` (``None``: the end of the stream) after the latency."""
        link = carrier.link
        if self._hung and (
            carrier in self._holding
            or (link is not None and self._hung & {link[0], link[1]})
        ):
            self._holding.add(carrier)
            self._held_back.append((carrier, data))
            return
        if not self.latency:
            carrier.deliver(data)
            return
        self._in_flight.append((trio.current_time() + self.latency, carrier, data))
        if self._courier is None:
            # A system task: it outlives whichever peer happened to send
            # first, and a cancelled peer's nursery cannot strand the chunks
            # of the others.
            self._courier = trio.lowlevel.spawn_system_task(self._deliver)

    async def _deliver(self) -> None:
        """Hand over every chunk that is due, one timer per instant."""
        in_flight = self._in_flight
        try:
            while in_flight:
                await trio.sleep_until(in_flight[0][0])
                now = trio.current_time()
                while in_flight and in_flight[0][0] <= now:
                    _, carrier, data = in_flight.popleft()
                    carrier.deliver(data)
        finally:
            self._courier = None


@attrs.define
class Faults:
    """What a :class:`MemoryNetwork` does to the chunks its links carry.

    Each is a probability per chunk, drawn from the network's ``rng``.

    Attributes:
        delay: the chunk waits up to ``max_delay`` seconds.
        stall: the link stops carrying anything for ``stall_for`` seconds.
        cut: the link is broken after part of the chunk went through (so a
            line is cut in the middle).
        duplicate: the chunk is sent twice.
        reorder: the chunk is held and sent after the next one.
    """

    delay: float = 0.0
    stall: float = 0.0
    cut: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    max_delay: float = 0.5
    stall_for: float = 30.0


_Link = tuple[str, str, "_Carrier", "_Carrier"]


class _Carrier(trio.abc.SendStream):
    """The sending end of one direction of a link, through the network."""

    def __init__(
        self,
        network: MemoryNetwork,
        receiver: trio.testing.MemoryReceiveStream,
        sender: str,
    ) -> None:
        self._network = network
        self._receiver = receiver
        self._sender = sender
        self._held: bytes | None = None
        self._closed = False
        #: The link this end belongs to (set by the network).
        self.link: _Link | None = None
        #: The far end is gone (cut, or it closed): sending fails.
        self._broken = False
        #: The link went down: what was on its way is lost.
        self._severed = False

    def sever(self) -> None:
        """Break the link now: what is on its way is lost."""
        self._broken = self._severed = True
        self._end()

    def deliver(self, data: bytes | None) -> None:
        """The network's side: ``data`` reaches the far end."""
        if self._severed:
            return
        if data is None:
            self._end()
            return
        try:
            self._receiver.put_data(data)
        except trio.ClosedResourceError:
            self._broken = True  # the next send says so, as TCP would

    def _end(self) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            self._receiver.put_eof()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this end of the link is closed")
        if self._broken:
            raise trio.BrokenResourceError("the network link is down")
        network = self._network
        data = bytes(data)
        network.bytes_sent[self._sender] += len(data)
        if network.faults is None:
            network._carry(self, data)
        else:
            await self._send_with_faults(data, network.faults)

    async def _send_with_faults(self, data: bytes, faults: Faults) -> None:
        network = self._network
        rng = network.rng
        if rng.random() < faults.delay:
            await trio.sleep(rng.uniform(0, faults.max_delay))
        if rng.random() < faults.stall:
            await trio.sleep(faults.stall_for)
        if rng.random() < faults.cut:
            network._carry(self, data[: rng.randrange(len(data) + 1)])
            self._broken = True
            network._carry(self, None)
            raise trio.BrokenResourceError("the network cut the link")
        if rng.random() < faults.reorder and self._held is None:
            self._held = data
            return
        if self._held is not None:
            data, held = data + self._held, None
            self._held = held
        network._carry(self, data)
        if rng.random() < faults.duplicate:
            network._carry(self, data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._network._carry(self, None)
            link = self.link
            if link is not None and link[2]._closed and link[3]._closed:
                self._network._links.discard(link)
        await trio.lowlevel.checkpoint()


# -- simulated clusters ------------------------------------------------------


@attrs.frozen
class Simulation:
    """A cluster started by :func:`simulate_peers`."""

    network: MemoryNetwork
    peers: list[Peer]
    data: list[Model]
    scopes: list[trio.CancelScope] = attrs.field(factory=list, repr=False)

    def stop(self, i: int) -> None:
        """Stop peer ``i`` as a process that exits does: its links close
        and nothing answers at its address (see :meth:`MemoryNetwork.cut`
        and :meth:`MemoryNetwork.partition` for a node that hangs or a
        network that fails instead)."""
        self.scopes[i].cancel()


async def simulate_peers(
    nursery: trio.Nursery,
    n: int,
    *,
    seed: int = 0,
    latency: float = 0.0,
    **peer_options: Any,
) -> Simulation:
    """Start ``n`` peers in ``nursery`` on one :class:`MemoryNetwork`.

    Each peer replicates a ``model()`` named ``"data"`` and is seeded with
    one random earlier peer; heartbeats use trio's clock, so under
    ``autojump_clock`` the whole cluster runs in virtual time. Everything is
    drawn from ``seed``. ``peer_options`` go to :func:`repred.open_peer`
    (by default, one-second heartbeats and gossip rounds).
    """
    from ._gossip import open_peer
    from .types import model

    network = MemoryNetwork(latency=latency)
    rng = random.Random(seed)

    def wall() -> float:
        return trio.current_time() * 1000

    options = {
        "heartbeat_interval": 1.0,
        "down_after": 30.0,
        "gossip_interval": 1.0,
        "seed_interval": 10.0,
        **peer_options,
    }
    data = [model(id=f"n{i}", wall=wall) for i in range(n)]
    peers: list[Peer] = []
    scopes = [trio.CancelScope() for _ in range(n)]

    async def run(i: int, task_status: trio.TaskStatus[Peer]) -> None:
        seeds = [peers[rng.randrange(i)].address] if i else []
        with scopes[i]:
            async with open_peer(
                replicas={"data": data[i]},
                seeds=seeds,
                transport=network,
                wall=wall,
                rng=random.Random(seed * 100_000 + i),
                **options,
            ) as peer:
                task_status.started(peer)
                await trio.sleep_forever()

    for i in range(n):
        peers.append(await nursery.start(run, i))
    return Simulation(network, peers, data, scopes)


# -- checking reducers -------------------------------------------------------


def check_reducer(
    reducer: Callable[..., Any],
    initial: Any,
    updates: Any,
    *,
    last_write_wins: Callable[[Any], Hashable] | None = None,
    stamped: bool = False,
    snapshot: Callable[[Any], Any] | None = None,
    max_examples: int = 200,
) -> None:
    """Check, with Hypothesis, that a reducer makes replicas converge.

    Three properties, each over many generated cases:

    1. Commutative and idempotent in effect: the changes of a set of
       updates, applied in any order and with any repetition, give the same
       state.
    2. The delta is honest: the change ``update()`` returns, applied to a
       copy of the state as it was before, has the same effect as the
       update itself.
    3. Replicas converge: updates spread over three replicas and synced in
       random pairs (some syncs cut short) end in one state.

    A violation raises :class:`ReducerCheckFailed` with the smallest
    counterexample Hypothesis finds, in plain words.

    Args:
        reducer: the reducer, as given to :func:`repred.repred`.
        initial: the initial state (deep-copied for every replica).
        updates: a Hypothesis strategy for update payloads.
        last_write_wins: the ``last_write_wins=`` option the type uses, if any.
        stamped: whether the reducer takes the stamp (``stamped=True``).
        snapshot: the ``snapshot=`` function, if any: also checked that it
            rebuilds the state from ``initial``, through JSON, and that it
            gives equal snapshots for equal states reached in any order
            (anti-entropy compares compacted replicas by their snapshots).
        max_examples: cases to try for each property.
    """
    laws = _Laws(reducer, initial, updates, last_write_wins, stamped, snapshot)
    config = laws.settings(max_examples)
    for law in (laws.commutes, laws.honest, laws.converges):
        config(law())()
    if snapshot is not None:
        config(laws.snapshots())()


@attrs.frozen
class _Laws:
    """The properties :func:`check_reducer` checks, one method each."""

    reducer: Callable[..., Any]
    initial: Any
    updates: Any
    last_write_wins: Callable[[Any], Hashable] | None
    stamped: bool
    snapshot: Callable[[Any], Any] | None

    @staticmethod
    def settings(max_examples: int) -> Any:
        try:
            from hypothesis import HealthCheck, settings
        except ImportError as exc:  # pragma: no cover
            raise ImportError(
                "check_reducer needs Hypothesis: pip install 'repred[testing]'"
            ) from exc
        return settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )

    def fresh(self) -> Any:
        return copy.deepcopy(self.initial)

    def make(self, source: str, ms: int | Callable[[], float]) -> Replica:
        return Replica(
            self.reducer,
            self.fresh(),
            id=source,
            last_write_wins=self.last_write_wins,
            stamped=self.stamped,
            type_name="checked",
            wall=ms if callable(ms) else lambda: ms,
        )

    def fold(self, entries: Sequence[tuple[Any, float, str]]) -> Any:
        """Apply entries the way a replica does (dominance by key included)."""
        state, key = self.fresh(), self.last_write_wins
        newest: dict[Hashable, tuple[float, str]] = {}
        for change, ts, source in entries:
            if key is not None:
                k = key(change)
                if k in newest and newest[k] >= (ts, source):
                    continue
                newest[k] = (ts, source)
            self.reduce(state, change, (ts, source))
        return state

    def entries_of(
        self, written: list[tuple[Any, int]]
    ) -> list[tuple[Any, float, str]]:
        """Each update written by its own replica, at a wall time in ms."""
        out = []
        for n, (update, ms) in enumerate(written):
            origin = self.make(f"s{n}", ms)
            if origin.update(update) is not None:
                entry = next(iter(origin.history()))
                out.append((_over_the_wire(entry.change), entry.ts, entry.source))
        return out

    def commutes(self) -> Any:
        """Changes applied in any order, with repeats, give one state."""
        from hypothesis import given
        from hypothesis import strategies as st

        # Wall times from a small range, so that stamps tie across sources.
        writes = st.lists(
            st.tuples(self.updates, st.integers(0, 2)), min_size=1, max_size=6
        )

        @given(writes, st.randoms(use_true_random=False))
        def commutes(written: list[tuple[Any, int]], rnd: Any) -> None:
            one = self.entries_of(written)
            if not one:
                return
            two = one + [rnd.choice(one) for _ in range(rnd.randrange(3))]
            rnd.shuffle(two)
            a, b = self.fold(one), self.fold(two)
            if a != b:
                raise ReducerCheckFailed(
                    "the same updates gave two different states, so replicas"
                    " that receive them in another order (or twice) diverge:\n"
                    f"  updates: {[u for u, _ in written]!r}\n"
                    f"  applied in this order: {_show(one)}\n"
                    f"    gives: {a!r}\n"
                    f"  applied in this order: {_show(two)}\n"
                    f"    gives: {b!r}"
                )

        return commutes

    def honest(self) -> Any:
        """The change an update returns has the update's own effect."""
        from hypothesis import given
        from hypothesis import strategies as st

        @given(st.lists(self.updates, min_size=1, max_size=6))
        def honest(ups: list[Any]) -> None:
            r = self.make("s", 1)
            for update in ups:
                before = copy.deepcopy(r.state)
                change = r.update(update)
                if change is None:
                    if r.state != before:
                        raise ReducerCheckFailed(
                            f"update {update!r} changed the state from"
                            f" {before!r} to {r.state!r} but returned no"
                            " change, so the change is never replicated"
                        )
                    continue
                replay = copy.deepcopy(before)
                self.reduce(replay, _over_the_wire(change), (r.clock["s"], "s"))
                if replay != r.state:
                    raise ReducerCheckFailed(
                        f"the change is not honest: update {update!r} took the"
                        f" state from {before!r} to {r.state!r}, but its change"
                        f" {change!r}, applied to {before!r}, gives {replay!r};"
                        " replicas that receive the change end in another state"
                    )

        return honest

    def reduce(self, state: Any, change: Any, stamp: tuple[float, str]) -> None:
        if self.stamped:
            self.reducer(state, change, stamp)
        else:
            self.reducer(state, change)

    def converges(self) -> Any:
        """Replicas synced in random pairs, some syncs cut, end in one state."""
        from hypothesis import given
        from hypothesis import strategies as st

        from ._session import Session

        placements = st.lists(
            st.tuples(st.integers(0, 2), self.updates), min_size=1, max_size=8
        )
        pairs = st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 12)),
            max_size=6,
        )

        @given(placements, pairs)
        def converges(placed: list[tuple[int, Any]], syncs: list[Any]) -> None:
            ms = iter(range(10**6))

            def wall() -> float:
                return next(ms) // 3

            replicas = [self.make(f"r{i}", wall) for i in range(3)]
            for write, step in itertools.zip_longest(placed, syncs):
                if write is not None:
                    replicas[write[0]].update(write[1])
                if step is not None and step[0] != step[1]:
                    _sync(replicas[step[0]], replicas[step[1]], Session, step[2])
            for a, b in [(0, 1), (1, 2), (0, 1)]:
                _sync(replicas[a], replicas[b], Session, None)
            states = [r.state for r in replicas]
            if not states[0] == states[1] == states[2]:
                raise ReducerCheckFailed(
                    "replicas did not converge after syncing everything:\n"
                    f"  updates (replica, update): {placed!r}\n"
                    f"  syncs (a, b, lines before a cut): {syncs!r}\n"
                    + "".join(f"  replica {i}: {s!r}\n" for i, s in enumerate(states))
                )

        return converges

    def snapshots(self) -> Any:
        """A snapshot, sent through JSON, rebuilds the state it was made of."""
        from hypothesis import given
        from hypothesis import strategies as st

        snapshot = self.snapshot
        assert snapshot is not None

        @given(st.lists(self.updates, max_size=6), st.randoms())
        def snapshots(ups: list[Any], rnd: Any) -> None:
            state = self.fresh()
            for update in ups:
                self.reducer(state, update)
            rebuilt = self.fresh()
            self.reducer(rebuilt, _over_the_wire(snapshot(state)))
            if rebuilt != state:
                raise ReducerCheckFailed(
                    f"the snapshot of {state!r} is {snapshot(state)!r}, which"
                    f" rebuilds {rebuilt!r}: a peer sent the snapshot ends"
                    " elsewhere"
                )
            # The same updates in another order (twice over): the same state,
            # so it must be the same snapshot, byte for byte.
            other = self.fresh()
            for update in rnd.sample(ups * 2, 2 * len(ups)):
                self.reducer(other, _over_the_wire(update))
            if other == state and _canonical(snapshot(other)) != _canonical(
                snapshot(state)
            ):
                raise ReducerCheckFailed(
                    f"equal states give two snapshots, {snapshot(state)!r} and"
                    f" {snapshot(other)!r}: anti-entropy would find compacted"
                    " replicas different for ever (sort what the snapshot lists)"
                )

        return snapshots


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _over_the_wire(change: Any) -> Any:
    """The change as a peer receives it: through JSON."""
    return orjson.loads(orjson.dumps(change))


def _show(entries: Sequence[tuple[Any, float, str]]) -> str:
    return ", ".join(f"{change!r}@{ts}/{source}" for change, ts, source in entries)


def pump(a: Session, b: Session, *, rounds: int | None = None) -> int:
    """Move bytes between two sessions until both are quiet.

    Each round hands each side what the other produced. Stops after
    ``rounds`` rounds if given (a sync cut short). Returns the rounds run.
    """
    done = 0
    while rounds is None or done < rounds:
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            break
        if x:
            b.receive_data(x)
        if y:
            a.receive_data(y)
        done += 1
    return done


def _sync(a: Any, b: Any, session_type: Any, cut: int | None) -> None:
    """Sync two replicas over sessions, stopping after ``cut`` rounds."""
    sa, sb = session_type(a), session_type(b)
    try:
        pump(sa, sb, rounds=cut)
    finally:
        sa.close()
        sb.close()
