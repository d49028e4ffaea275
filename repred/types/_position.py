"""Position keys for ordered lists: strings that sort between any two others."""

from __future__ import annotations

import random

__all__ = ["between", "slot"]

DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_VALUE = {c: i for i, c in enumerate(DIGITS)}


def between(lo: str | None, hi: str | None, rng: random.Random | None = None) -> str:
    """A key ``k`` with ``lo < k < hi`` (``None``: no bound on that side).

    Keys are digits in base 36 read as a fraction, never ending in ``"0"``,
    so there is always room between two of them. A random tail of two
    digits keeps keys made at the same spot by two replicas at once apart
    (as JS ``crdt`` does); ties left after that are broken by item id.
    """
    lo = lo or ""
    if hi is not None and not lo < hi:
        raise ValueError(f"no key between {lo!r} and {hi!r}")
    out = []
    i = 0
    while True:
        a = _VALUE[lo[i]] if i < len(lo) else 0
        b = _VALUE[hi[i]] if hi is not None and i < len(hi) else len(DIGITS)
        if b - a > 1:
            out.append(DIGITS[(a + b) // 2])
            break
        out.append(DIGITS[a])
        if b - a == 1:
            hi = None  # anything longer than this prefix of lo sorts below hi
        i += 1
    r = rng or random
    return "".join(out) + "".join(r.choice(DIGITS[1:]) for _ in range(2))


def valid(key: object) -> bool:
    return (
        isinstance(key, str)
        and 0 < len(key) <= 256
        and not key.endswith("0")
        and all(c in _VALUE for c in key)
    )


def slot(
    order: list[tuple[str, str]],
    *,
    before: str | None = None,
    after: str | None = None,
    moving: str | None = None,
) -> str:
    """A new position key for an item placed in ``order``.

    ``order`` is the list of ``(position, id)`` pairs, sorted. The key goes
    before the item ``before``, after the item ``after``, or at the end;
    ``moving`` (an item being moved) is left out of the count.

    Raises:
        ValueError: both ``before`` and ``after``, or an unknown item.
    """
    if before is not None and after is not None:
        raise ValueError("give before= or after=, not both")
    order = [pair for pair in order if pair[1] != moving]
    ids = [item for _, item in order]
    try:
        if before is not None:
            i = ids.index(before)
        elif after is not None:
            i = ids.index(after) + 1
        else:
            i = len(ids)
    except ValueError:
        raise ValueError(f"no item {before or after!r} in this list") from None
    lo = order[i - 1][0] if i > 0 else None
    hi = order[i][0] if i < len(order) else None
    return between(lo, hi)
