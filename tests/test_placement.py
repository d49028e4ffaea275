"""Placement: owners() is rendezvous hashing, pure and the same everywhere."""

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import repred
from repred._placement import Move, Placement, handoff, score

from .helpers import examples

# -- the score, as the documentation states it (written out again here, so
# that a change to the module's own hashing shows as a difference) ----------------


def h64(tag, text):
    digest = hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"), digest_size=8, person=tag
    ).digest()
    return int.from_bytes(digest, "little")


def fmix64(x):
    mask = (1 << 64) - 1
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & mask
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & mask
    return x ^ (x >> 33)


def ranked(name, nodes):
    d = h64(b"repred-doc", name)
    return sorted(set(nodes), key=lambda n: (-fmix64(h64(b"repred-node", n) ^ d), n))


node_names = st.text(max_size=8)
members = st.lists(node_names, max_size=40)
doc_names = st.text(max_size=12)
copies_counts = st.integers(1, 6)


@given(doc_names, members, copies_counts)
def test_owners_are_the_top_scores(name, nodes, copies):
    assert repred.owners(name, nodes, copies) == ranked(name, nodes)[:copies]


@given(node_names, doc_names)
def test_the_stated_score_is_the_one_used(node, name):
    assert score(node, name) == fmix64(
        h64(b"repred-node", node) ^ h64(b"repred-doc", name)
    )


@given(doc_names, st.lists(node_names, min_size=1, max_size=40), copies_counts)
def test_owners_are_distinct_members_and_as_many_as_asked(name, nodes, copies):
    got = repred.owners(name, nodes, copies)
    assert len(got) == len(set(got)) == min(copies, len(set(nodes)))
    assert set(got) <= set(nodes)


@given(doc_names, members, copies_counts, st.randoms(use_true_random=False))
def test_the_order_and_repeats_of_nodes_do_not_matter(name, nodes, copies, rnd):
    shuffled = nodes + rnd.choices(nodes, k=len(nodes) // 2) if nodes else []
    rnd.shuffle(shuffled)
    want = repred.owners(name, nodes, copies)
    assert repred.owners(name, shuffled, copies) == want
    assert repred.owners(name, iter(shuffled), copies) == want
    assert repred.owners(name, frozenset(shuffled), copies) == want
    assert repred.owners(name, tuple(reversed(shuffled)), copies) == want


@given(doc_names, members, copies_counts)
def test_more_copies_extend_the_same_preference_list(name, nodes, copies):
    assert repred.owners(name, nodes, copies + 1)[:copies] == repred.owners(
        name, nodes, copies
    )


@given(st.lists(doc_names, max_size=30), st.lists(node_names, min_size=1, max_size=30))
def test_a_loss_changes_only_the_documents_the_lost_node_held(names, nodes):
    lost = nodes[0]
    rest = [n for n in nodes if n != lost]
    for name in names:
        before = repred.owners(name, nodes)
        after = repred.owners(name, rest)
        if lost not in before:
            assert after == before
        else:
            # The survivors keep their copies and their order; the next
            # node in the preference list takes the lost one's place.
            kept = [n for n in before if n != lost]
            assert after[: len(kept)] == kept
            assert len(after) == min(3, len(set(rest)))


@given(st.lists(doc_names, max_size=30), members, node_names)
def test_a_join_moves_copies_only_to_the_joining_node(names, nodes, joiner):
    grown = [*nodes, joiner]
    for name in names:
        before = repred.owners(name, nodes)
        after = repred.owners(name, grown)
        if joiner in nodes or joiner not in after:
            assert after == before
        else:
            # The newcomer takes its rank; everyone else keeps theirs, and
            # the last copy (if there were enough) is the one that moved.
            assert [n for n in after if n != joiner] == before[: len(after) - 1]


def test_bad_arguments_are_refused_at_the_call():
    with pytest.raises(ValueError, match="copies"):
        repred.owners("doc", ["a:1"], 0)
    with pytest.raises(ValueError, match="copies"):
        repred.owners("doc", ["a:1"], -2)
    for copies in (2.0, True, "3", None):
        with pytest.raises(TypeError, match="copies"):
            repred.owners("doc", ["a:1"], copies)
    for name in (b"doc", 7, None, ["doc"]):
        with pytest.raises(TypeError, match="document name"):
            repred.owners(name, ["a:1"])
    with pytest.raises(TypeError, match="not one name"):
        repred.owners("doc", "a:1")
    for nodes in ([b"a:1"], ["a:1", 2], [None], frozenset({3})):
        with pytest.raises(TypeError, match="node"):
            repred.owners("doc", nodes)
    with pytest.raises(TypeError):
        repred.owners("doc", 5)


def test_no_members_own_nothing_and_few_members_own_everything():
    assert repred.owners("doc", []) == []
    assert repred.owners("doc", ["a:1"], 3) == ["a:1"]
    assert sorted(repred.owners("doc", ["b:1", "a:1"], 3)) == ["a:1", "b:1"]


def test_any_string_is_a_name_lone_surrogates_included():
    nodes = ["a:1", "b:1", "c:1", "d:1"]
    for name in ["", "\ud800", "caf\u00e9", "\U0001f600", "x" * 10_000]:
        assert repred.owners(name, nodes) == ranked(name, nodes)[:3]


# Computed once and kept: a placement that changed would move every
# document of every deployment that upgrades.
KNOWN = [
    ("recipes", ["a:1", "b:1", "c:1", "d:1"], 2, ["b:1", "d:1"]),
    ("recipes", ["a:1", "b:1", "c:1", "d:1"], 4, ["b:1", "d:1", "c:1", "a:1"]),
    ("", ["a:1", "b:1", "c:1", "d:1"], 4, ["d:1", "a:1", "c:1", "b:1"]),
    (
        "doc-42",
        [f"10.0.0.{i}:7000" for i in range(50)],
        3,
        ["10.0.0.24:7000", "10.0.0.0:7000", "10.0.0.3:7000"],
    ),
]


def test_known_placements_never_change():
    for name, nodes, copies, want in KNOWN:
        assert repred.owners(name, nodes, copies) == want


def test_the_same_in_another_process_with_another_string_hash():
    nodes = [f"10.0.0.{i}:7000" for i in range(50)]
    names = [f"doc-{i}" for i in range(20)]
    here = [repred.owners(n, nodes) for n in names]
    code = (
        "import repred, json;"
        f"print(json.dumps([repred.owners(n, {nodes!r}) for n in {names!r}]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, check=True
    )
    import json

    assert json.loads(out.stdout) == here


def test_a_placement_ranks_like_owners():
    nodes = [f"n{i}" for i in range(200)]
    placement = Placement(reversed(nodes))
    assert placement.nodes == tuple(sorted(nodes))
    rnd = random.Random(3)
    for name in (f"d{rnd.random()}" for _ in range(50)):
        for copies in (1, 3, 25, 200, 500):
            assert placement.owners(name, copies) == ranked(name, nodes)[:copies]


def tie(placement, a, b):
    """Give node ``b`` the same score as node ``a`` for every name."""
    size = 16 * len(placement.nodes)
    raw = bytearray(placement._lanes.to_bytes(size, "little"))
    ia, ib = placement.nodes.index(a), placement.nodes.index(b)
    raw[16 * ib : 16 * ib + 16] = raw[16 * ia : 16 * ia + 16]
    placement._lanes = int.from_bytes(raw, "little")


@pytest.mark.parametrize(("n", "copies"), [(3, 3), (10, 3), (100, 4)])
def test_equal_scores_rank_by_name(n, copies):
    nodes = [f"n{i:03}" for i in range(n)]
    placement = Placement(nodes)
    tie(placement, "n002", "n001")
    together = 0
    for d in range(300):
        got = placement.owners(f"d{d}", copies)
        if "n001" in got and "n002" in got:
            assert got.index("n001") + 1 == got.index("n002")
            together += 1
        else:
            assert "n002" not in got
    assert together > 0


def test_lanes_read_one_by_one_rank_alike(monkeypatch):
    import repred._placement

    nodes = [f"n{i}" for i in range(40)]
    want = [Placement(nodes).owners(f"d{d}", 5) for d in range(50)]
    monkeypatch.setattr(repred._placement, "_NATIVE_LANES", False)
    assert [Placement(nodes).owners(f"d{d}", 5) for d in range(50)] == want


# -- the figures (at 50 nodes, as the documentation reports them) -----------------


def load(names, nodes, copies=3):
    placement = Placement(nodes)
    return {name: placement.owners(name, copies) for name in names}


def figures(n_names, n_nodes=50):
    nodes = [f"10.0.{i // 256}.{i % 256}:7000" for i in range(n_nodes)]
    names = [f"doc-{i}" for i in range(n_names)]
    base = load(names, nodes)
    per_node = Counter(n for owners in base.values() for n in owners)
    busiest = max(per_node.values()) / (3 * n_names / n_nodes)

    joiner = "10.0.9.9:7000"
    joined = load(names, [*nodes, joiner])
    moved = sum(len(set(joined[d]) - set(base[d])) for d in names)
    assert all(set(joined[d]) - set(base[d]) <= {joiner} for d in names)

    lost = nodes[7]
    survivors = [n for n in nodes if n != lost]
    left = load(names, survivors)
    changed = [d for d in names if left[d] != base[d]]
    assert changed == [d for d in names if lost in base[d]]
    remade = Counter(n for d in changed for n in set(left[d]) - set(base[d]))
    return {
        "busiest": busiest,
        "join": moved / (3 * n_names),
        "loss_spread": len(remade) / len(survivors),
        "largest_share": max(remade.values()) / sum(remade.values()),
    }


def test_the_figures_at_a_smaller_scale():
    # 20,000 names: 1,200 copies a node on average, so the busiest node may
    # stand a few standard deviations (each ~2.8%) above the mean.
    got = figures(20_000)
    assert got["busiest"] <= 1.12
    assert got["join"] <= 1.1 / 51
    assert got["loss_spread"] >= 0.9
    assert got["largest_share"] <= 0.1


@pytest.mark.slow
def test_the_figures_at_full_scale():
    got = figures(100_000)
    assert got["busiest"] <= 1.07
    assert got["join"] <= 1.1 / 51
    assert got["loss_spread"] >= 0.9
    assert got["largest_share"] <= 0.05


# -- hand-off plans ---------------------------------------------------------------


def brute_plan(names, old, new, copies):
    moves, gains, losses = [], {}, {}
    for name in sorted(set(names)):
        was = repred.owners(name, old, copies)
        now = repred.owners(name, new, copies)
        sources = tuple(n for n in was if n in set(new))
        for node in now:
            if node not in was:
                moves.append(Move(name, node, sources))
                gains.setdefault(node, set()).add(name)
        for node in was:
            if node not in now:
                losses.setdefault(node, set()).add(name)
    return moves, gains, losses


@given(
    st.lists(doc_names, max_size=20),
    st.lists(node_names, max_size=12),
    st.lists(node_names, max_size=12),
    copies_counts,
)
def test_a_handoff_plan_is_what_owners_say_before_and_after(names, old, new, copies):
    plan = handoff(names, old, new, copies)
    moves, gains, losses = brute_plan(names, old, new, copies)
    assert list(plan.moves) == moves
    assert {n: set(d) for n, d in plan.gains.items()} == gains
    assert {n: set(d) for n, d in plan.losses.items()} == losses
    for move in plan.moves:
        assert move.to in new
        assert all(s in new and s != move.to for s in move.sources)


def test_a_handoff_after_a_loss_sends_each_document_from_a_survivor():
    nodes = [f"n{i}" for i in range(10)]
    names = [f"d{i}" for i in range(300)]
    plan = handoff(names, nodes, nodes[1:])
    held = {d for d in names if "n0" in repred.owners(d, nodes)}
    assert {n: set(d) for n, d in plan.losses.items()} == {"n0": held}
    assert {m.name for m in plan.moves} == held
    assert all(len(m.sources) == 2 and "n0" not in m.sources for m in plan.moves)
    assert sum(len(v) for v in plan.gains.values()) == len(held)


def test_a_handoff_after_a_join_moves_to_the_newcomer_only():
    nodes = [f"n{i}" for i in range(10)]
    names = [f"d{i}" for i in range(300)]
    plan = handoff(names, nodes, [*nodes, "new"])
    assert set(plan.gains) == {"new"}
    assert all(m.to == "new" and len(m.sources) == 3 for m in plan.moves)
    assert sum(len(v) for v in plan.losses.values()) == len(plan.gains["new"])


def test_a_handoff_with_every_owner_gone_has_no_source():
    plan = handoff(["doc"], ["a", "b"], ["c"], copies=2)
    assert plan.moves == (Move("doc", "c", ()),)


def test_a_handoff_refuses_bad_arguments():
    with pytest.raises(TypeError):
        handoff([b"doc"], ["a"], ["b"])
    with pytest.raises(ValueError, match="copies"):
        handoff(["doc"], ["a"], ["b"], copies=0)
    with pytest.raises(TypeError):
        handoff(["doc"], "ab", ["b"])


@settings(max_examples=examples(30))
@given(st.integers(2, 30), st.integers(0, 10**6))
def test_every_member_owns_something_of_many_documents(n, seed):
    nodes = [f"{seed}-{i}" for i in range(n)]
    per_node = Counter(
        node for d in range(40 * n) for node in repred.owners(f"d{d}", nodes, 1)
    )
    assert set(per_node) == set(nodes)
