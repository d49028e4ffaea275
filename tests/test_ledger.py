"""The ledger, without I/O: who is owed which copy when members change,
when each job is due, what a finished one proves, and when a copy may go."""

import random

import pytest

import repred
from repred._ledger import HANDOFF, SYNC, Ledger

NODES = [f"10.0.0.{i}:7000" for i in range(1, 9)]
GRACE = 2.0


def ledger(node, members, *, now=0.0, **kw):
    options = {
        "concurrency": 4,
        "max_documents": 100,
        "grace": GRACE,
        "backoff": 1.0,
        "max_backoff": 8.0,
        "rng": random.Random(0),
        **kw,
    }
    book = Ledger(3, **options)
    book.node = node
    book.view(members, now)
    return book


def a_name(members, *, owned_by=(), not_owned_by=()):
    """A document name whose owners among ``members`` include every node of
    ``owned_by`` and none of ``not_owned_by``."""
    for i in range(10_000):
        name = f"doc{i}"
        owners = repred.owners(name, members, 3)
        if all(n in owners for n in owned_by) and not any(
            n in owners for n in not_owned_by
        ):
            return name
    raise AssertionError("no such name")


def jobs(book):
    return {(j.to, j.kind, j.due) for j in book.jobs.values()}


def test_a_newcomer_is_owed_a_copy_by_the_first_former_owner_at_once():
    before, newcomer = NODES[:5], NODES[5]
    after = [*before, newcomer]
    name = a_name(after, owned_by=[newcomer])
    was = repred.owners(name, before, 3)
    now = repred.owners(name, after, 3)
    first = was[0] if was[0] in now else next(n for n in was if n in now)
    for node in was:
        book = ledger(node, before)
        book.hold(name)
        book.view(after, 10.0)
        handoffs = [j for j in book.jobs.values() if j.kind == HANDOFF]
        if node in now:
            assert [j.to for j in handoffs] == [newcomer]
            due = 10.0 if node == first else 10.0 + GRACE
            assert handoffs[0].due == due
        else:
            # Displaced: it owes every owner a check before it drops.
            assert book.role(name) == "leaving"
            assert {j.to for j in book.jobs.values()} == set(now)


def test_a_loss_is_remade_by_the_first_survivor_and_checked_by_the_others():
    members = NODES[:6]
    name = a_name(members)
    was = repred.owners(name, members, 3)
    lost = was[0]
    survivors = [n for n in members if n != lost]
    now = repred.owners(name, survivors, 3)
    (new,) = set(now) - set(was)
    books = {}
    for node in was[1:]:
        books[node] = book = ledger(node, members)
        book.hold(name)
        book.view(survivors, 5.0)
    first, second = was[1], was[2]
    assert (new, HANDOFF, 5.0) in jobs(books[first])
    assert (new, HANDOFF, 5.0 + GRACE) in jobs(books[second])
    # The owners left sync with each other: the lost one may have spread a
    # write to one of them only.
    assert (second, SYNC, 5.0 + GRACE) in jobs(books[first])
    assert (first, SYNC, 5.0 + GRACE) in jobs(books[second])


def test_nothing_is_owed_when_the_owners_stay_the_same():
    members = NODES[:6]
    name = a_name(members)
    node = repred.owners(name, members, 3)[0]
    book = ledger(node, members)
    book.hold(name)
    outsider = a_name(members, not_owned_by=[node])
    book.view([*members, NODES[7]], 1.0)
    if NODES[7] not in repred.owners(name, [*members, NODES[7]], 3):
        assert not book.jobs
    assert book.role(outsider) is None


def test_a_copy_leaves_only_once_every_owner_holds_all_of_it():
    members = NODES[:6]
    name = a_name(members, not_owned_by=[NODES[0]])
    owners = repred.owners(name, members, 3)
    book = ledger(NODES[0], members)
    book.hold(name)
    assert book.role(name) == "leaving"
    clock = {"s": 5}
    for node in owners:
        book.request(name, node, SYNC, 0.0)
    started = book.start(0.0)
    assert {j.to for j in started} == set(owners)
    for job in started[:-1]:
        book.done(job, 1.0, clock, sent=False)
        assert not book.droppable(name, clock)  # still owed
    book.done(started[-1], 1.0, clock, sent=True)
    assert book.droppable(name, clock)
    assert not book.droppable(name, {"s": 6})  # it gained an entry since
    book.changed(name, 2.0, source=None)  # and it is checked again
    assert not book.droppable(name, clock)  # while that is owed
    for job in book.start(10.0):
        book.done(job, 10.0, clock, sent=False)
    assert book.droppable(name, clock)
    book.held[name].pinned = True
    assert not book.droppable(name, clock)  # the program holds it here
    assert book.role(name) == "copy"


def test_a_leaving_copy_with_nothing_owed_is_checked_again_until_it_may_go():
    # Its clock moved after an owner's check (entries that owner sent it,
    # say), and nothing is owed: it owes that owner a check, or it would
    # never be dropped.
    members = NODES[:6]
    name = a_name(members, not_owned_by=[NODES[0]])
    owners = repred.owners(name, members, 3)
    book = ledger(NODES[0], members)
    book.hold(name)
    for node in owners:
        book.request(name, node, SYNC, 0.0)
    for job in book.start(0.0):
        book.done(job, 1.0, {"s": 5}, sent=False)
    grown = {"s": 5, "t": 1}
    assert not book.jobs
    assert not book.droppable(name, grown)
    assert book.recheck(name, grown, 3.0)
    assert jobs(book) == {(node, SYNC, 3.0 + GRACE) for node in owners}
    assert not book.recheck(name, grown, 4.0)  # owed already
    for job in book.start(10.0):
        book.done(job, 10.0, grown, sent=False)
    assert book.droppable(name, grown)
    assert not book.recheck(name, grown, 11.0)  # every owner holds it


def test_a_leaving_copy_that_gained_entries_checks_every_owner_again():
    members = NODES[:6]
    name = a_name(members, not_owned_by=[NODES[0]])
    owners = repred.owners(name, members, 3)
    book = ledger(NODES[0], members)
    book.hold(name)
    book.changed(name, 1.0, source=owners[0])
    assert jobs(book) == {(node, SYNC, 1.0 + GRACE) for node in owners}


def test_a_job_cancelled_as_owed_no_more_says_which_document():
    members = NODES[:6]
    name = a_name(members, not_owned_by=[NODES[0]])
    stranger = next(n for n in members if n not in repred.owners(name, members, 3))
    book = ledger(NODES[0], members)
    book.hold(name)
    book.request(name, stranger, SYNC, 0.0)
    assert book.start(1.0) == []
    assert book.take_cancelled() == [name]
    assert book.take_cancelled() == []


def test_an_owner_never_drops():
    members = NODES[:6]
    name = a_name(members, owned_by=[NODES[0]])
    book = ledger(NODES[0], members)
    book.hold(name)
    assert book.role(name) == "owner"
    assert not book.droppable(name, {})


def test_writes_here_are_owed_to_the_other_owners_at_once():
    members = NODES[:6]
    name = a_name(members, owned_by=[NODES[0]])
    others = set(repred.owners(name, members, 3)) - {NODES[0]}
    book = ledger(NODES[0], members)
    book.hold(name)
    book.changed(name, 3.0, source=None)
    assert jobs(book) == {(n, SYNC, 3.0) for n in others}


def test_writes_from_another_owner_are_its_to_spread():
    members = NODES[:6]
    name = a_name(members, owned_by=[NODES[0]])
    other = next(n for n in repred.owners(name, members, 3) if n != NODES[0])
    book = ledger(NODES[0], members)
    book.hold(name)
    book.changed(name, 3.0, source=other)
    assert not book.jobs


def test_writes_from_a_live_copy_are_spread_at_once_to_the_others():
    members = NODES[:6]
    name = a_name(members, owned_by=[NODES[0]], not_owned_by=[NODES[5]])
    others = set(repred.owners(name, members, 3)) - {NODES[0]}
    book = ledger(NODES[0], members)
    book.hold(name)
    book.changed(name, 3.0, source=NODES[5])
    assert jobs(book) == {(n, SYNC, 3.0) for n in others}


def test_a_live_copy_owes_nothing_for_its_writes():
    members = NODES[:6]
    name = a_name(members, not_owned_by=[NODES[0]])
    book = ledger(NODES[0], members)
    book.hold(name).pinned = True
    book.changed(name, 3.0, source=None)
    assert not book.jobs


def test_a_job_asked_for_again_comes_sooner_or_once_more():
    members = NODES[:6]
    name = a_name(members, owned_by=[NODES[0]])
    other = next(n for n in repred.owners(name, members, 3) if n != NODES[0])
    book = ledger(NODES[0], members)
    book.hold(name)
    job = book.request(name, other, SYNC, 10.0)
    assert book.request(name, other, SYNC, 4.0) is job
    assert job.due == 4.0
    assert book.next_due() == 4.0
    assert book.start(3.0) == []
    assert book.start(4.0) == [job]
    assert job.running
    book.request(name, other, SYNC, 5.0)  # while it runs
    book.done(job, 6.0, {}, sent=True)
    assert book.jobs[name, other] is job
    assert job.due == 6.0
    assert book.start(6.0) == [job]
    book.done(job, 7.0, {}, sent=False)
    assert not book.jobs
    assert book.counts["syncs"] == 1
    assert book.counts["checks"] == 1


def test_a_node_that_never_answers_holds_one_slot_once_it_failed():
    # Jobs to a node that never answers each hold a slot until they time
    # out, and their retries come due first: they held every slot, and the
    # owners that did answer waited behind them.
    members = NODES[:6]
    book = ledger(NODES[0], members, concurrency=8)
    silent, honest = NODES[1], NODES[2]
    for i in range(20):
        book.hold(f"s{i}")
        book.request(f"s{i}", silent, SYNC, 1.0)
    first = book.start(10.0)
    assert len(first) == 8  # a node that answers may take every slot
    for job in first:
        book.failed(job, 10.0, "timeout")
    book.hold("h")
    book.request("h", honest, SYNC, 30.0)
    started = book.start(100.0)  # every retry is due, before the other
    assert [j.to for j in started].count(silent) == 1
    assert ("h", honest) in [(j.name, j.to) for j in started]
    assert book.next_due() is None  # the rest wait for the one to end
    book.done(started[0], 100.0, {}, sent=False)  # it answered at last
    assert [j.to for j in book.start(100.0)].count(silent) == 7


def test_at_most_concurrency_jobs_run_the_earliest_first():
    members = NODES[:6]
    book = ledger(NODES[0], members, concurrency=2)
    name = a_name(members, owned_by=[NODES[0]])
    others = [n for n in repred.owners(name, members, 3) if n != NODES[0]]
    second = next(
        f"other{i}"
        for i in range(10_000)
        if {NODES[0], others[0]} <= set(repred.owners(f"other{i}", members, 3))
    )
    book.hold(name)
    book.hold(second)
    book.request(name, others[0], SYNC, 3.0)
    book.request(name, others[1], SYNC, 1.0)
    book.request(second, others[0], SYNC, 2.0)
    started = book.start(10.0)
    assert [(j.name, j.to) for j in started] == [
        (name, others[1]),
        (second, others[0]),
    ]
    assert book.start(10.0) == []  # full
    book.done(started[0], 10.0, {}, sent=True)
    assert [(j.name, j.to) for j in book.start(10.0)] == [(name, others[0])]


def test_a_failed_job_backs_off_doubling_up_to_the_cap():
    members = NODES[:6]
    name = a_name(members, owned_by=[NODES[0]])
    other = next(n for n in repred.owners(name, members, 3) if n != NODES[0])
    book = ledger(NODES[0], members)
    book.hold(name)
    job = book.request(name, other, HANDOFF, 0.0)
    now, delays = 0.0, []
    for _ in range(7):
        (started,) = book.start(now)
        delay = book.failed(started, now, "unreachable")
        delays.append(delay)
        now = job.due
    assert job.attempts == 7
    assert job.reason == "unreachable"
    for attempt, delay in enumerate(delays):
        step = min(8.0, 2.0**attempt)
        assert 0.5 * step <= delay <= 1.5 * step
    assert book.counts["failures"] == 7
    assert book.pending() == 1  # never dropped while owed


def test_jobs_no_longer_owed_are_cancelled():
    members = NODES[:6]
    name = a_name(members, owned_by=[NODES[0]])
    other = next(n for n in repred.owners(name, members, 3) if n != NODES[0])
    book = ledger(NODES[0], members)
    book.hold(name)
    book.request(name, other, SYNC, 0.0)
    book.view([n for n in members if n != other], 0.5)
    assert all(j.to != other for j in book.start(1.0))
    assert book.counts["cancelled"] == 1
    book.forget(name)
    assert not book.jobs
    assert name not in book.held


def test_confirmed_counts_the_owners_seen_to_hold_a_clock():
    members = NODES[:6]
    name = a_name(members, owned_by=[NODES[0]])
    others = [n for n in repred.owners(name, members, 3) if n != NODES[0]]
    book = ledger(NODES[0], members)
    book.hold(name)
    assert book.confirmed(name, {"s": 1}) == 1  # this node
    (job,) = [book.request(name, others[0], SYNC, 0.0)]
    book.start(0.0)
    book.done(job, 0.0, {"s": 1}, sent=True)
    assert book.confirmed(name, {"s": 1}) == 2
    assert book.confirmed(name, {"s": 2}) == 1


def test_the_number_of_documents_is_bounded():
    book = ledger(NODES[0], NODES[:3], max_documents=2)
    book.hold("a")
    assert not book.full
    book.hold("b")
    assert book.full


@pytest.mark.parametrize("seed", range(5))
def test_every_holder_of_a_moved_copy_owes_it_after_any_change(seed):
    # Whatever the change, each document ends up owed to each of its new
    # owners by every node that held it (and at once by one of them).
    rng = random.Random(seed)
    before = rng.sample(NODES, 5)
    after = [n for n in before if rng.random() < 0.7] + rng.sample(NODES, 2)
    after = sorted(set(after)) or before[:1]
    for i in range(20):
        name = f"doc{i}"
        was = repred.owners(name, before, 3)
        now = repred.owners(name, after, 3)
        holders = [n for n in was if n in after]
        owed_now = set()
        for node in holders:
            book = ledger(node, before)
            book.hold(name)
            book.view(after, 1.0)
            owed = {j.to for j in book.jobs.values()}
            assert owed >= set(now) - set(was) - {node}
            owed_now |= {j.to for j in book.jobs.values() if j.due == 1.0}
        if holders:
            assert owed_now >= set(now) - set(was)
