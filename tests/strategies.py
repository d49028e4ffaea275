"""Hypothesis strategies shared by the property tests."""

from hypothesis import strategies as st

elements = st.integers(0, 20)
keys = st.sampled_from(["a", "b", "c", "d"])
values = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=3))


def schedules(n_min: int = 3, n_max: int = 6, max_ops: int = 40):
    """(n, ops): ops over n replicas.

    ``("update", i, payload)``, ``("sync", i, j)``, ``("cut", i, j, k, seed)``
    (a sync stopped after k lines, moving lines in a seeded order),
    ``("replay", i, j)`` (the bytes i once sent to j, delivered again),
    ``("tick", ms)`` (the shared wall clock moves),
    ``("compact", i)`` (replica i folds its history into a snapshot).
    """

    @st.composite
    def build(draw):
        n = draw(st.integers(n_min, n_max))
        idx = st.integers(0, n - 1)
        op = st.one_of(
            st.tuples(st.just("update"), idx, st.integers(0, 10**6)),
            st.tuples(st.just("sync"), idx, idx),
            st.tuples(st.just("cut"), idx, idx, st.integers(0, 30), st.integers(0, 9)),
            st.tuples(st.just("replay"), idx, idx),
            st.tuples(st.just("tick"), st.integers(0, 3)),
            st.tuples(st.just("compact"), idx),
        )
        return n, draw(st.lists(op, max_size=max_ops))

    return build()
