import itertools
import logging

import pytest

import repred

from .helpers import FakeWall, gset, sync, union


def test_update_returns_change_or_none():
    names = gset("A")
    assert names.update(["jim", "bob"]) == ["jim", "bob"]
    assert names.update(["jim"]) is None
    assert names.state == {"jim", "bob"}
    assert len(list(names.history())) == 1


def test_noop_update_records_and_stamps_nothing():
    wall = FakeWall()
    names = gset("A", wall=wall)
    names.update(["x"])
    clock = dict(names.clock)
    names.update(["x"])
    assert dict(names.clock) == clock


def test_map_turns_arguments_into_updates():
    names = repred.repred(union, set(), map=lambda *xs: list(xs) or None)
    assert names.update("a", "b") == ["a", "b"]
    assert names.update() is None


def test_update_needs_exactly_one_argument_without_map():
    with pytest.raises(TypeError):
        gset("A").update(["a"], ["b"])


def test_non_json_change_is_refused():
    r = repred.repred(lambda s, u: {1, 2}, None)
    with pytest.raises(TypeError, match="JSON"):
        r.update("x")
    assert r.clock == {}


def test_stamps_strictly_increase_even_with_a_frozen_clock():
    wall = FakeWall()
    r = gset("A", wall=wall)
    stamps = []
    for i in range(2000):
        r.update([i])
        stamps.append(r.clock["A"])
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert stamps[0] == wall.now


def test_stamps_never_go_below_a_seen_stamp_when_the_wall_steps_back():
    wall = FakeWall()
    r = gset("A", wall=wall)
    r.apply([(["far"], wall.now + 60_000, "B")])
    wall.now -= 5_000
    r.update(["mine"])
    assert r.clock["A"] > 60_000 + wall.now


def test_a_future_stamp_is_not_applied_and_changes_nothing():
    wall = FakeWall()
    r = gset("A", wall=wall)
    r.update(["x"])
    before = (set(r.state), dict(r.clock), list(r.history()))
    assert not r.apply([(["evil"], 9e15, "B")])
    assert r.deferred == 1
    assert (set(r.state), dict(r.clock), list(r.history())) == before
    assert r.update(["y"]) == ["y"]  # local writes still work


def test_future_bound_is_configurable():
    wall = FakeWall()
    r = gset("A", wall=wall, max_drift_ms=10, max_ahead_ms=5)
    assert r.apply([(["ok"], wall.now + 10, "B")])
    assert not r.apply([(["no"], wall.now + 11, "C")])
    assert "C" not in r.clock


def test_apply_drops_what_is_already_held():
    r = gset("A")
    assert r.apply([(["x"], 10, "B")])
    assert not r.apply([(["x"], 10, "B")])
    assert r.state == {"x"}
    assert r.statistics().repaired == 0


def test_an_entry_the_clock_covers_but_the_replica_lacks_is_taken(caplog):
    # The clock claims every entry of B up to 10; one at 5 that is not held
    # was skipped on the way (a relay's omission): it is taken, and said.
    caplog.set_level(logging.INFO, logger="repred")
    r = gset("A")
    assert r.apply([(["x"], 10, "B")])
    r.apply([(["y"], 5, "B")])
    assert r.state == {"x", "y"}
    assert [e.ts for e in r.history()] == [5, 10]
    assert r.statistics().repaired == 1
    assert "lacked although its clock covered them" in caplog.text


def test_two_versions_of_one_stamp_settle_on_the_smaller_hash(caplog):
    # Whichever arrives first, every replica ends with the same version.
    a, b = gset("A"), gset("C")
    assert a.apply([(["x"], 10, "B")])
    assert b.apply([(["y"], 10, "B")])
    a.apply([(["y"], 10, "B")])  # no error: settled and reported
    b.apply([(["x"], 10, "B")])
    assert a.state == b.state
    assert list(a.history()) == list(b.history())
    assert len(a.state) == 1
    assert a.statistics().equivocations == b.statistics().equivocations == 1
    assert "two different entries with stamp 10" in caplog.text


def test_relay_records_entry_as_origin_wrote_it_even_with_no_effect():
    r = gset("A")
    r.apply([(["x"], 10, "B")])
    r.apply([(["x", "y"], 11, "C")])  # local effect only ["y"]
    assert [e.change for e in r.history() if e.source == "C"] == [("x", "y")]


def test_reducer_error_leaves_clock_and_history_untouched():
    def picky(state, update):
        if update == "bad":
            raise ValueError("no")
        state.append(update)
        return update

    r = repred.repred(picky, [])
    r.apply([("good", 1, "B")])
    with pytest.raises(ValueError, match="no"):
        r.apply([("bad", 2, "B")])
    assert r.clock == {"B": 1}
    assert [e.change for e in r.history()] == ["good"]


def test_a_reducer_error_inside_a_run_keeps_the_entries_before_it():
    def picky(state, update):
        if update == "bad":
            raise ValueError("no")
        state.append(update)
        return update

    r = repred.repred(picky, [])
    run = [("a", 1, "B"), ("b", 2, "B"), ("bad", 3, "B"), ("c", 4, "B")]
    with pytest.raises(ValueError, match="no"):
        r.apply(run)
    assert r.clock == {"B": 2}
    assert [e.change for e in r.history()] == ["a", "b"]
    assert r.state == ["a", "b"]
    r.apply([entry for entry in run if entry[0] != "bad"])
    assert [e.change for e in r.history()] == ["a", "b", "c"]
    assert r.state == ["a", "b", "c"]


def test_history_since_returns_only_what_is_missing_in_source_order():
    r = gset("A")
    r.apply([(["a1"], 1, "A")])
    r.apply([(["b1"], 1, "B")])
    r.apply([(["a2"], 2, "A")])
    r.apply([(["b2"], 3, "B")])
    assert [e.change for e in r.history({"A": 1})] == [("a2",), ("b1",), ("b2",)]
    assert list(r.history(r.clock)) == []


def test_recorded_entries_cannot_be_changed_through_the_caller_list():
    r = gset("A")
    change = r.update(["x"])
    change.append("sneaky")
    assert [e.change for e in r.history()] == [("x",)]


def test_history_since_is_cheap_on_a_large_history():
    r = gset("A")
    for i in range(50_000):
        r.apply([([i], i + 1, "B")])
    log = r._history.logs["B"]
    assert log.after(49_999, 10) == [(50_000, (49_999,))]
    assert log.count_after(50_000) == 0


def test_listener_sees_every_entry_and_a_raising_listener_is_contained(caplog):
    r = gset("A")
    seen = []
    remove = r.add_listener(lambda *args: seen.append(args))
    r.add_listener(lambda *args: 1 / 0)
    r.update(["x"])
    r.apply([(["y"], 5, "B")], origin="conn")
    assert [(s[0], s[2], s[3]) for s in seen] == [
        (["x"], "A", None),
        (["y"], "B", "conn"),
    ]
    remove()
    remove()
    r.update(["z"])
    assert len(seen) == 2
    assert "listener" in caplog.text


def test_clock_is_a_read_only_view():
    r = gset("A")
    with pytest.raises(TypeError):
        r.clock["A"] = 5  # type: ignore[index]


@pytest.mark.parametrize("bad", ["", 5, "x" * 300])
def test_bad_ids_are_refused(bad):
    with pytest.raises(ValueError):
        gset(bad)


def test_type_name_defaults_to_the_reducer_name():
    assert gset("A").type_name == "union"
    assert gset("A", type_name="names").type_name == "names"


def test_a_write_over_one_stamped_minutes_ahead_wins_everywhere():
    """A peer's clock three minutes fast: its write is taken (within the
    drift allowed), and a later local write to the same key must still win,
    here and on every peer, not only here."""
    from repred.types import heartbeats, model

    wall = FakeWall()
    ahead = model(id="ahead", wall=lambda: wall.now + 3 * 60 * 1000)
    ahead.set("x", "from-the-future")
    me, other = model(id="me", wall=wall), model(id="other", wall=wall)
    sync(ahead, me)
    assert me.set("x", "mine, later") == ["x", "mine, later"]
    sync(me, other)
    sync(ahead, other)
    sync(other, ahead)
    assert me.to_dict() == other.to_dict() == ahead.to_dict() == {"x": "mine, later"}
    # The same for a type whose reducer takes the stamp.
    fast = heartbeats(id="fast", wall=lambda: wall.now + 3 * 60 * 1000)
    fast.beat("n")
    mine = heartbeats(id="mine", wall=wall)
    sync(fast, mine)
    mine.beat("n")
    sync(mine, fast)
    assert mine.state == fast.state
    assert mine.state["n"] > wall.now + 3 * 60 * 1000


def test_a_write_over_one_stamped_at_the_last_stamp_is_refused_whole():
    """Stamping a write just above a peer's write held for the same key
    must not go past the largest stamp peers accept: the write is refused,
    and changes nothing."""
    from repred._wire import MAX_STAMP
    from repred.types import model

    now = MAX_STAMP - 2 * 60 * 1000  # the peer's write is two minutes ahead
    ahead = model(id="ahead", wall=lambda: MAX_STAMP)
    ahead.set("x", "from-the-future")
    me = model(id="me", wall=lambda: now)
    sync(ahead, me)
    assert me.clock["ahead"] == MAX_STAMP
    with pytest.raises(ValueError, match="out of range"):
        me.set("x", "mine, later")
    assert me.to_dict() == {"x": "from-the-future"}
    assert [e.ts for e in me.history()] == [MAX_STAMP]
    assert "me" not in me.clock


def test_statistics_count_what_watches_and_listens_until_it_is_removed():
    names = gset("A")
    watched, heard = [], []
    unwatch = names.watch(lambda source, ts, origin: watched.append(source))
    unlisten = names.add_listener(lambda change, *stamp: heard.append(change))
    stats = names.statistics()
    assert (stats.watchers, stats.listeners) == (1, 1)
    names.update(["x"])
    assert (watched, heard) == (["A"], [["x"]])
    unwatch()
    unlisten()
    stats = names.statistics()
    assert (stats.watchers, stats.listeners) == (0, 0)
    names.update(["y"])
    assert (watched, heard) == (["A"], [["x"]])
