"""Histories: per-source logs stay exact through drops and compaction."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from repred._history import History

# Each step appends the next entry, or drops one held (by its position
# among those appended so far); enough of them to compact many times.
_steps = st.lists(
    st.one_of(st.just(None), st.integers(0, 400)), min_size=200, max_size=600
)


@given(_steps)
def test_a_log_holds_exactly_what_was_kept_through_compaction(steps):
    history = History()
    held: dict[float, tuple[str, int]] = {}
    appended: list[float] = []
    for step in steps:
        if step is None or not appended:
            ts = float(len(appended) + 1)
            change = ("k", len(appended))
            history.record(change, ts, "s")
            held[ts] = change
            appended.append(ts)
        else:
            ts = appended[step % len(appended)]
            history.logs["s"].discard(ts)
            held.pop(ts, None)
        log = history.logs["s"]
        assert len(log) == len(held)
        assert list(log.items()) == sorted(held.items())
    log = history.logs["s"]
    for ts in appended:
        assert log.get(ts) == held.get(ts)
    floor = appended[len(appended) // 2]
    newer = [(t, c) for t, c in sorted(held.items()) if t > floor]
    assert log.after(floor, 10**6) == newer
    assert log.after(floor, 3) == newer[:3]
