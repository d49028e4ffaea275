"""What a placed peer holds, and what it owes other nodes: hand-off plans
and their retries, kept without I/O.

A placed peer holds each document it owns (:func:`repred.owners` over the
members it sees), each one the program asked for (a live copy, linked to
an owner), and each one it no longer owns until the owners hold it all. It
owes a node a *job* (a document, a node): bring that node's copy up to
everything this node holds of it. The trio edge (:mod:`repred._placed`)
runs the jobs over document links and says how each ended; this ledger
decides which jobs exist, when each is due, and what a finished one proves.

When the members change (:meth:`Ledger.view`), for each document held:

* every node that now owns it and did not before is owed a *hand-off*. The
  first of its former owners still alive (the one ranked highest: ranks do
  not depend on the members) sends at once; every other holder checks a
  little later (``grace``), which costs two digests if the copy is there,
  and makes the copy if that first one failed;
* a node that no longer owns a document owes every owner a check, and drops
  its copy (:meth:`Ledger.droppable`) only once each has been seen to hold
  everything it holds (its clock), and nothing is pinned there.

A write to a document it owns makes this node owe the other owners a
*sync*, at once, if it was made here or came from a node that does not
own the document (a live copy's write); one that came from another owner
is that owner's to spread. When an owner is lost, the owners left owe each
other a sync too (after ``grace``): it may have spread a write only in
part. A job asks first (a probe: two short lines) and sends only if the
other copy lacks something; a *pull* (what :meth:`repred.Peer.document`
asks on an owner) syncs both ways. A job that
fails is due again after a backoff that doubles up to ``max_backoff``,
drawn between half and one and a half of it; it is dropped only when it is
no longer owed (the node owns the document no more, or this node dropped
it). At most ``concurrency`` jobs run at once, the earliest due first.

Pure: no trio. Times are the caller's, in seconds.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from typing import TYPE_CHECKING

import attrs

from ._doclink import covers
from ._placement import Placement

if TYPE_CHECKING:
    import random
    from collections.abc import Iterable, Mapping

__all__ = ["HANDOFF", "SYNC", "Held", "Job", "Ledger"]

#: Jobs that run at once to a node whose last try failed: a node that never
#: answers holds no more of the slots (each until its try times out), so
#: jobs to the nodes that do answer go on.
JOBS_TO_A_FAILING_NODE = 1

#: A job kind: a copy a node must now hold (the members changed).
HANDOFF = "handoff"
#: A job kind: a copy's catch-up (a write, or a wait for acknowledgements).
SYNC = "sync"


@attrs.define(eq=False)
class Held:
    """A document this node holds.

    Attributes:
        owner: this node owns it, among the members it last settled on.
        pinned: the program asked for it here: kept, owned or not.
        uses: links of the web port using it (kept while there are any).
        covered: node -> this node's clock that the node was seen to hold
            (the owners' only: a record per owner).
    """

    name: str
    owner: bool = False
    pinned: bool = False
    uses: int = 0
    covered: dict[str, dict[str, float]] = attrs.Factory(dict)

    @property
    def kept(self) -> bool:
        """Kept here whoever owns it."""
        return self.pinned or self.uses > 0


@attrs.define(eq=False)
class Job:
    """Bring ``to``'s copy of ``name`` up to this node's.

    Attributes:
        kind: :data:`HANDOFF` or :data:`SYNC`.
        due: when it may start.
        attempts: tries that failed in a row.
        running: it is being run.
        again: asked for while running: run once more after it.
        reason: why the last try failed.
        pull: sync both ways (this node takes what the other holds too).
    """

    name: str
    to: str
    kind: str
    due: float
    attempts: int = 0
    running: bool = False
    again: bool = False
    reason: str | None = None
    pull: bool = False


class Ledger:
    """The documents held and the jobs owed (see the module docstring).

    Args:
        copies: how many nodes own each document.
        concurrency: jobs run at once, at most.
        max_documents: documents held at once, at most.
        grace: seconds a holder that is not the first waits before its
            check (and a write that came from a link before its sync).
        backoff: the first wait, in seconds, after a job failed.
        max_backoff: the longest.
        rng: the draws of the backoffs.
    """

    def __init__(
        self,
        copies: int,
        *,
        concurrency: int,
        max_documents: int,
        grace: float,
        backoff: float,
        max_backoff: float,
        rng: random.Random,
    ) -> None:
        self.copies = copies
        self.concurrency = concurrency
        self.max_documents = max_documents
        self.grace = grace
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._rng = rng
        #: This node's address (known once it listens).
        self.node = ""
        self.members: frozenset[str] = frozenset()
        self._placement = Placement(())
        self.held: dict[str, Held] = {}
        self.jobs: dict[tuple[str, str], Job] = {}
        self._by_name: dict[str, set[str]] = {}
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self.running = 0
        #: Jobs running to each node; nodes whose last try failed, and the
        #: jobs due to them that wait for a slot (JOBS_TO_A_FAILING_NODE).
        self._running_to: collections.Counter[str] = collections.Counter()
        self._failing: set[str] = set()
        self._waiting: dict[str, list[tuple[float, int, Job]]] = {}
        #: What happened so far: handoffs, syncs, failures, dropped, ...
        self.counts: collections.Counter[str] = collections.Counter()
        #: Documents whose jobs :meth:`start` found owed no more, since
        #: :meth:`take_cancelled` (a copy may be droppable now).
        self._cancelled: set[str] = set()

    # -- placement ----------------------------------------------------------

    def owners(self, name: str) -> list[str]:
        """The owners of ``name`` among the members, most preferred first."""
        return self._placement.owners(name, self.copies)

    def role(self, name: str) -> str | None:
        """``"owner"``, ``"copy"`` (kept here, owned elsewhere),
        ``"leaving"`` (to drop once the owners hold it) or ``None``."""
        held = self.held.get(name)
        if held is None:
            return None
        if held.owner:
            return "owner"
        return "copy" if held.kept else "leaving"

    def view(self, members: Iterable[str], now: float) -> int:
        """Settle on new members: who owns what, and the jobs it makes
        owed. Returns how many documents changed owners."""
        before = self._placement
        self._placement = Placement(members)
        self.members = frozenset(self._placement.nodes)
        changed = 0
        for name, held in self.held.items():
            was = before.owners(name, self.copies)
            now_owners = self.owners(name)
            if was != now_owners:
                changed += 1
                self._replan(held, was, now_owners, now)
        return changed

    def _replan(
        self, held: Held, was: list[str], owners: list[str], now: float
    ) -> None:
        me = self.node
        held.owner = me in owners
        held.covered = {n: c for n, c in held.covered.items() if n in owners}
        alive = [n for n in was if n in self.members]
        # The first former owner still alive sends at once; any other
        # holder checks after the grace (and sends, if that one failed).
        first = not alive or alive[0] == me
        lost = len(alive) < len(was)
        for node in owners:
            if node == me:
                continue
            if node not in was:
                due = now if first else now + self.grace
                self.request(held.name, node, HANDOFF, due)
            elif lost or me not in was or not held.owner:
                self.request(held.name, node, SYNC, now + self.grace)

    # -- documents ------------------------------------------------------------

    @property
    def full(self) -> bool:
        """As many documents are held as may be."""
        return len(self.held) >= self.max_documents

    def hold(self, name: str) -> Held:
        """Hold ``name`` (if it is not held already)."""
        held = self.held.get(name)
        if held is None:
            held = self.held[name] = Held(name, owner=self.node in self.owners(name))
        return held

    def forget(self, name: str) -> None:
        """``name`` is no longer held: nothing is owed for it."""
        self.held.pop(name, None)
        for node in self._by_name.pop(name, set()):
            job = self.jobs.pop((name, node))
            if job.running:
                self.running -= 1
                job.running = False
                self._freed(node)

    def changed(self, name: str, now: float, *, source: str | None) -> None:
        """``name`` gained entries, from ``source`` (the node whose link
        brought them; ``None``: written here)."""
        held = self.held.get(name)
        if held is None:
            return
        owners = self.owners(name)
        if held.owner:
            if source in owners:
                return  # that owner spreads them
            due = now
        elif not held.kept:
            # A copy leaving: check every owner again before dropping it,
            # the one that sent these too (what it was seen to hold is older).
            due, source = now + self.grace, None
        else:
            return  # a live copy: its link to an owner carries it
        for node in owners:
            if node != self.node and node != source:
                self.request(name, node, SYNC, due)

    def confirmed(self, name: str, clock: Mapping[str, float]) -> int:
        """How many owners are known to hold everything ``clock`` says
        (this node among them, if it owns ``name``)."""
        held = self.held.get(name)
        if held is None:
            return 0
        return sum(
            1
            for node in self.owners(name)
            if node == self.node or covers(held.covered.get(node), clock)
        )

    def droppable(self, name: str, clock: Mapping[str, float]) -> bool:
        """Whether this node may drop its copy of ``name``, whose clock is
        ``clock``: it owns it no more, keeps it for no one, owes nothing
        for it, and every owner was seen to hold all of it."""
        held = self.held.get(name)
        if held is None or held.owner or held.kept or self._by_name.get(name):
            return False
        owners = self.owners(name)
        return bool(owners) and all(
            covers(held.covered.get(node), clock) for node in owners
        )

    def restarted(self, node: str, now: float) -> int:
        """``node`` came back as a new node (another id at its address):
        nothing it was seen to hold counts any more, and every document it
        owns that this node holds owes it a check. Returns how many."""
        owed = 0
        for name, held in self.held.items():
            if held.covered.pop(node, None) is None or node not in self.owners(name):
                continue
            if held.owner or not held.kept:
                self.request(name, node, SYNC, now)
                owed += 1
        return owed

    def recheck(self, name: str, clock: Mapping[str, float], now: float) -> bool:
        """A copy leaving, with nothing owed for it, that some owner is not
        known to hold all of (its clock moved after that owner's check):
        owe each such owner a check, after the grace, so that a leaving
        copy always has a job until it is dropped. Whether any was owed."""
        held = self.held.get(name)
        if held is None or held.owner or held.kept or self._by_name.get(name):
            return False
        owed = False
        for node in self.owners(name):
            if node != self.node and not covers(held.covered.get(node), clock):
                self.request(name, node, SYNC, now + self.grace)
                owed = True
        return owed

    # -- jobs ---------------------------------------------------------------------

    def request(
        self, name: str, to: str, kind: str, due: float, *, pull: bool = False
    ) -> Job:
        """Owe ``to`` a job on ``name``, due at ``due`` (or sooner, if it
        is owed already; once more after it, if it is running)."""
        job = self.jobs.get((name, to))
        if job is None:
            job = self.jobs[name, to] = Job(name, to, kind, due)
            self._by_name.setdefault(name, set()).add(to)
        elif job.running:
            job.again = True
        elif due < job.due:
            job.due = due
        elif not pull or job.pull:
            return job
        job.pull = job.pull or pull
        if kind == HANDOFF:
            job.kind = HANDOFF
        if not job.running:
            heapq.heappush(self._heap, (job.due, next(self._seq), job))
        return job

    def _owed(self, job: Job) -> bool:
        return (
            self.jobs.get((job.name, job.to)) is job
            and job.name in self.held
            and job.to != self.node
            and job.to in self.owners(job.name)
        )

    def start(self, now: float) -> list[Job]:
        """The jobs to run now (each marked running), within the
        concurrency, the earliest due first."""
        started = []
        heap = self._heap
        while heap and heap[0][0] <= now and self.running < self.concurrency:
            due, _, job = heapq.heappop(heap)
            if (
                job.running
                or due != job.due
                or self.jobs.get((job.name, job.to)) is not job
            ):
                continue  # an older entry of a job due sooner, or gone
            if not self._owed(job):
                self._remove(job)
                self.counts["cancelled"] += 1
                self._cancelled.add(job.name)
                continue
            if (
                job.to in self._failing
                and self._running_to[job.to] >= JOBS_TO_A_FAILING_NODE
            ):
                self._waiting.setdefault(job.to, []).append((due, _, job))
                continue
            job.running = True
            self.running += 1
            self._running_to[job.to] += 1
            started.append(job)
        return started

    def take_cancelled(self) -> list[str]:
        """The documents some job of which was found owed no more since the
        last call."""
        names, self._cancelled = sorted(self._cancelled), set()
        return names

    def next_due(self) -> float | None:
        """When the next job not running is due, if any."""
        heap = self._heap
        while heap:
            due, _, job = heap[0]
            if (
                not job.running
                and due == job.due
                and self.jobs.get((job.name, job.to)) is job
            ):
                return due
            heapq.heappop(heap)
        return None

    def done(
        self, job: Job, now: float, clock: Mapping[str, float], *, sent: bool
    ) -> None:
        """``job`` ended well: ``job.to`` holds all of ``clock`` (``sent``:
        it lacked some, which this node sent)."""
        self._failing.discard(job.to)
        self._stopped(job)
        held = self.held.get(job.name)
        if held is not None and job.to in self.owners(job.name):
            held.covered[job.to] = dict(clock)
        self.counts[job.kind + "s" if sent else "checks"] += 1
        if job.again and self._owed(job):
            job.again, job.attempts, job.reason = False, 0, None
            job.due = now
            heapq.heappush(self._heap, (now, next(self._seq), job))
        else:
            self._remove(job)

    def failed(self, job: Job, now: float, reason: str) -> float:
        """``job`` failed for ``reason``: it is due again after a backoff,
        which is returned (in seconds)."""
        self._failing.add(job.to)
        self._stopped(job)
        self.counts["failures"] += 1
        job.attempts += 1
        job.reason = reason
        job.again = False
        step = self.backoff * 2.0 ** min(job.attempts - 1, 32)
        delay = min(self.max_backoff, step) * self._rng.uniform(0.5, 1.5)
        job.due = now + delay
        if self._owed(job):
            heapq.heappush(self._heap, (job.due, next(self._seq), job))
        else:
            self._remove(job)
        return delay

    def _stopped(self, job: Job) -> None:
        if job.running:
            job.running = False
            self.running -= 1
            self._freed(job.to)

    def _freed(self, node: str) -> None:
        """A job to ``node`` ended: those waiting for a slot to it are due."""
        self._running_to[node] -= 1
        if self._running_to[node] <= 0:
            del self._running_to[node]
        for entry in self._waiting.pop(node, ()):
            heapq.heappush(self._heap, entry)

    def _remove(self, job: Job) -> None:
        if self.jobs.get((job.name, job.to)) is job:
            del self.jobs[job.name, job.to]
            targets = self._by_name.get(job.name)
            if targets is not None:
                targets.discard(job.to)
                if not targets:
                    del self._by_name[job.name]

    def owed(self, name: str) -> list[Job]:
        """The jobs owed on ``name``."""
        return [self.jobs[name, to] for to in self._by_name.get(name, ())]

    def pending(self, kind: str | None = None) -> int:
        """Jobs owed (of ``kind``, or of any)."""
        return sum(1 for j in self.jobs.values() if kind is None or j.kind == kind)
