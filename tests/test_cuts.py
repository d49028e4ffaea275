"""A sync cut after any line, in either direction, loses nothing for later."""

import itertools

import pytest

from repred.types import model

from .helpers import FakeWall, LinePump, assert_complete, gset, sync

#: Links as repred peers make them (batches of two entries, so that a cut
#: can fall between batches of one source) and as JS peers do (one entry
#: per line).
FRAMINGS = {
    "batched": {"batch_entries": 2},
    "per-line": {"batches": False},
}

POLICIES = {
    "a-first": lambda step: True,
    "b-first": lambda step: False,
    "alternate": lambda step: step % 2 == 0,
    "thirds": lambda step: step % 3 != 0,
}


def _world():
    """Three replicas that each hold some entries of several sources."""
    a, b, c = gset("A"), gset("B"), gset("C")
    for i in range(4):
        a.update([f"a{i}"])
        b.update([f"b{i}"])
        c.update([f"c{i}"])
    sync(a, c)  # A relays C's entries
    a.update(["a-after-c"])
    b.update(["a0"])  # B holds an element A has, through its own source
    return a, b, c


def _full_lines(framing):
    a, b, _ = _world()
    pump = LinePump(a, b, **FRAMINGS[framing])
    assert pump.run(None)
    return pump.moved


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_cut_at_every_line_then_converge_with_anyone(policy, framing):
    total = _full_lines(framing)
    assert total > 10
    for k in range(total + 1):
        a, b, c = _world()
        pump = LinePump(a, b, **FRAMINGS[framing])
        pump.run(k, POLICIES[policy])
        pump.cut()
        assert_complete(a, b, c)
        # Whoever syncs with whom afterwards, everyone converges.
        for x, y in [(b, c), (c, a), (a, b), (b, c)]:
            sync(x, y)
        assert a.state == b.state == c.state, (policy, k)
        assert_complete(a, b, c)


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_cut_then_the_other_side_vanishes(framing):
    """B keeps what it got from A; C, which never saw A, still converges via B."""
    total = _full_lines(framing)
    for k in range(total + 1):
        a, b, c = _world()
        pump = LinePump(a, b, **FRAMINGS[framing])
        pump.run(k)
        pump.cut()
        expected = set(b.state)
        sync(b, c)
        assert expected <= c.state
        assert_complete(a, b, c)


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_model_cut_at_every_line_converges_on_resync(framing):
    def world():
        wall = FakeWall()
        a, b = model(id="A", wall=wall), model(id="B", wall=wall)
        for i in range(6):
            a.set(f"k{i % 3}", f"a{i}")
            wall.now += 1
            b.set(f"k{i % 2}", f"b{i}")
            wall.now += 1
        return a, b

    a, b = world()
    pump = LinePump(a, b, **FRAMINGS[framing])
    pump.run(None)
    total = pump.moved
    for k, policy in itertools.product(range(total + 1), POLICIES.values()):
        a, b = world()
        pump = LinePump(a, b, **FRAMINGS[framing])
        pump.run(k, policy)
        pump.cut()
        sync(a, b)
        assert a.to_dict() == b.to_dict()
