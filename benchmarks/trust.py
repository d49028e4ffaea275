"""Signed sources: the cost of signing a write and of verifying an entry.

    python benchmarks/trust.py [N]     (default: 20000)

Prints the cost per entry of a signed local write (beside an unsigned one),
of applying signed entries to a verifying replica (beside a replica that
does not verify), and the verification alone (the difference). Each
comparison runs both sides in the same shape: one process, the same keys
and values, a fresh replica each time; the applying runs alternate three
times and each keeps its best.
"""

from __future__ import annotations

import time

import repred
from repred.types import model

from _common import arg, report


def main() -> None:
    n = arg(1, 20_000)
    key = repred.SigningKey.generate()
    timings = {}
    for name, options in (("unsigned", {}), ("signed", {"signing_key": key})):
        m = model(**options)
        t = time.perf_counter()
        for i in range(n):
            m.set(f"k{i}", i)
        timings[name] = (time.perf_counter() - t) / n * 1e6
    signed = m
    entries = [
        (list(e.change), e.ts, e.source, signed.signature(e.source, e.ts))
        for e in signed.history()
    ]
    applied = {"plain": float("inf"), "verify": float("inf")}
    for _ in range(3):
        for name, verify in (("plain", False), ("verify", True)):
            r = model(id="reader", verify=verify)
            t = time.perf_counter()
            r.apply(entries)
            applied[name] = min(applied[name], (time.perf_counter() - t) / n * 1e6)
    report(
        "trust",
        entries=n,
        us_per_unsigned_write=round(timings["unsigned"], 2),
        us_per_signed_write=round(timings["signed"], 2),
        us_per_entry_applied=round(applied["plain"], 2),
        us_per_entry_applied_verifying=round(applied["verify"], 2),
        us_per_verification=round(applied["verify"] - applied["plain"], 2),
    )


if __name__ == "__main__":
    main()
