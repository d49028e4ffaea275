"""What a replica reports when replicas turn out to differ.

Anti-entropy (see :mod:`repred._antientropy`) finds replicas that hold
different entries although their clocks agree. Each such finding is either
repaired or reported, never silent: a :class:`Divergence` goes to the
replica's handlers (:meth:`repred.Replica.on_divergence`), the ``"repred"``
logger says it (a WARNING naming the source where a person may need to act:
an equivocation, a twin id, a banned source; INFO for entries repaired), and
:meth:`repred.Replica.statistics` counts it.
"""

from __future__ import annotations

import attrs

__all__ = ["KINDS", "Divergence", "ReplicaStatistics"]

#: The kinds of divergence, and what each means.
KINDS = {
    "repaired": "entries this replica lacked although its clock covered them,"
    " taken from a peer",
    "equivocation": "a source wrote two different entries with one stamp;"
    " every replica keeps the one with the smaller hash",
    "twin-id": "another live replica writes under this replica's id (said"
    " for a peer's handshake that claims it too; counted only on evidence)",
    "banned": "a source proven (by two valid signatures on one stamp) to"
    " equivocate: its later entries are refused",
}


@attrs.frozen(kw_only=True)
class Divergence:
    """One finding of anti-entropy, or of the checks on what peers send.

    Attributes:
        kind: one of :data:`KINDS`: ``"repaired"``, ``"equivocation"``,
            ``"twin-id"`` or ``"banned"``.
        source: the source concerned.
        ts: the stamp concerned, if one is (``None`` for a twin id seen at
            a link's handshake).
        entries: how many entries (for ``"repaired"``).
        message: the same finding in plain words, and what to do about it.
    """

    kind: str
    source: str
    ts: float | None = None
    entries: int = 1
    message: str = ""


@attrs.frozen(kw_only=True)
class ReplicaStatistics:
    """A snapshot of a replica's counts.

    Attributes:
        sources: sources in its clock.
        entries: entries its history holds.
        repaired: entries taken by anti-entropy although the clock covered
            them (omitted by a relay, lost, or written by a twin).
        equivocations: stamps for which two different entries were seen.
        twin_ids: entries (or handshakes holding writes in this name it
            never made) showing another live replica writing under this
            replica's id, since its id was last taken.
        banned: sources refused for proven equivocation.
        refused: entries of banned sources refused.
        watchers: what watches it for writes to send
            (:meth:`repred.Replica.watch`): one per open link, none once its
            links have ended.
        listeners: its listeners (:meth:`repred.Replica.add_listener`: each
            open :func:`repred.subscribe`, and any a type adds itself).
    """

    sources: int
    entries: int
    repaired: int = 0
    equivocations: int = 0
    twin_ids: int = 0
    banned: int = 0
    refused: int = 0
    watchers: int = 0
    listeners: int = 0
