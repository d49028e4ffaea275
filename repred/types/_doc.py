"""``doc()``: rows with per-field last-write-wins, sets and seqs of rows.

As JS ``crdt``'s Doc: a row is a dict with an ``"id"``; each field of each
row is a last-write-wins register. A set is a live view of the rows whose
field ``key`` equals ``value``; a seq is such a set in a replicated order.
Moving a row to another set (changing that field) takes it out of the first.
"""

from __future__ import annotations

from typing import Any, Unpack

from .._replica import Replica, ReplicaOptions
from ._base import build, owned
from ._position import slot

__all__ = ["Doc", "DocSeq", "DocSet", "doc"]

#: The field that marks a deleted row (a delete is final).
DELETED = "__deleted"
#: The field a seq orders its rows by.
ORDER = "_order"


def _field_key(change: Any) -> tuple[str, str]:
    if not isinstance(change, list | tuple) or len(change) != 3:
        raise ValueError(f"a doc change is [row, field, value], not {change!r}")
    if type(change[0]) is not str or type(change[1]) is not str:
        raise ValueError(f"row ids and fields are strings in {change!r}")
    return (change[0], change[1])


def write_field(state: dict[str, dict[str, Any]], change: list[Any]) -> Any:
    """Set one field of one row; the ``__deleted`` field removes the row for good.

    Converges because each (row, field) is a last-write-wins register (the
    primitive keeps the write with the greatest stamp per pair) and a row's
    deletion is a grow-only flag: a deleted row ignores later writes, so
    every replica that has the delete agrees the row is gone, and a replica
    joining later receives the delete from the history like any other write.
    """
    row, field, value = change
    if field == DELETED and value is not True:
        raise ValueError("only True deletes a row")
    fields = state.setdefault(row, {})
    if fields.get(DELETED):
        return None
    if field == DELETED:
        fields.clear()
        fields[DELETED] = True
    elif value is None:
        fields.pop(field, None)
    else:
        fields[field] = value
    return change


class Doc(Replica):
    """Rows of fields: ``add``, ``get``, ``set``, ``rm``, sets and seqs of rows."""

    __slots__ = ()

    def add(self, row: dict[str, Any]) -> str:
        """Add (or update) the row ``row["id"]`` with the other fields."""
        if not isinstance(row, dict) or type(row.get("id")) is not str:
            raise ValueError("a row is a dict with a string 'id'")
        fields = {k: v for k, v in row.items() if k != "id"}
        self.set(row["id"], fields)
        return row["id"]  # type: ignore[no-any-return]

    def set(self, row: str, fields: dict[str, Any]) -> None:
        """Write fields of a row (``None`` clears a field).

        Every field is checked before any is written.
        """
        if type(row) is not str:
            raise TypeError(f"row ids are strings, not {type(row).__name__}")
        checked = {}
        for field, value in fields.items():
            if type(field) is not str:
                raise TypeError(f"fields are strings, not {type(field).__name__}")
            if field == DELETED:
                raise ValueError(f"use remove() to delete a row, not {DELETED!r}")
            checked[field] = owned(value, f"the field {field!r}")
        for field, value in checked.items():
            self.update([row, field, value])

    def remove(self, row: str) -> None:
        """Delete a row, for good."""
        self.update([row, DELETED, True])

    def get(self, row: str) -> dict[str, Any] | None:
        fields = self.state.get(row)
        if not fields or fields.get(DELETED):
            return None
        return {"id": row, **fields}

    def rows(self) -> list[dict[str, Any]]:
        return [r for r in map(self.get, sorted(self.state)) if r is not None]

    def create_set(self, key: str, value: Any) -> DocSet:
        """A live view of the rows whose ``key`` field equals ``value``."""
        return DocSet(self, key, value)

    def create_seq(self, key: str, value: Any) -> DocSeq:
        """An ordered live view of the rows whose ``key`` equals ``value``."""
        return DocSeq(self, key, value)


class DocSet:
    """The rows of a :class:`Doc` whose field ``key`` equals ``value``."""

    def __init__(self, doc: Doc, key: str, value: Any) -> None:
        self.doc, self.key, self.value = doc, key, value

    def rows(self) -> list[dict[str, Any]]:
        return [r for r in self.doc.rows() if r.get(self.key) == self.value]

    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows()]

    def __contains__(self, row: object) -> bool:
        found = self.doc.get(row) if isinstance(row, str) else None
        return found is not None and found.get(self.key) == self.value

    def __len__(self) -> int:
        return len(self.rows())

    def add(self, row: dict[str, Any]) -> str:
        """Add a row to this set (moving it out of any other)."""
        return self.doc.add({**row, self.key: self.value})


class DocSeq(DocSet):
    """A :class:`DocSet` in a replicated order (the ``_order`` field)."""

    def rows(self) -> list[dict[str, Any]]:
        rows = super().rows()
        return sorted(rows, key=lambda r: (str(r.get(ORDER, "")), r["id"]))

    def _place(self, row: dict[str, Any], before: str | None, after: str | None) -> str:
        order = [(str(r.get(ORDER, "")), r["id"]) for r in self.rows()]
        position = slot(order, before=before, after=after, moving=row["id"])
        return self.doc.add({**row, self.key: self.value, ORDER: position})

    def push(self, row: dict[str, Any]) -> str:
        """Append a row (moving it here from any other set)."""
        return self._place(row, None, None)

    def unshift(self, row: dict[str, Any]) -> str:
        ids = self.ids()
        return self._place(row, ids[0], None) if ids else self._place(row, None, None)

    def insert(
        self,
        row: dict[str, Any],
        *,
        before: str | None = None,
        after: str | None = None,
    ) -> str:
        return self._place(row, before, after)

    def move(
        self, row: str, *, before: str | None = None, after: str | None = None
    ) -> None:
        """Move a row of this seq before or after another."""
        self._place({"id": row}, before, after)

    def before(self, row: str, other: str) -> None:
        """Put ``row`` before ``other`` (JS crdt's ``seq.before``)."""
        self.move(row, before=other)

    def to_list(self) -> list[dict[str, Any]]:
        return self.rows()


def doc(**options: Unpack[ReplicaOptions]) -> Doc:
    """A document of rows, with live sets and seqs of rows."""
    return build(Doc, write_field, {}, "doc", last_write_wins=_field_key, **options)
