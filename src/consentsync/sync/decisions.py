"""What the examination decides for a batch of people, as plain data: made by the run
(sync/engine.py) or a batch ahead by a second process (sync/ahead.py), which sends it over a pipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["PUSH_HELD_ACTION", "DecidedPushes", "HeldWrite", "NewPush", "QueuedRow", "RecordKey"]


class QueuedRow(NamedTuple):
    """An outbox row of a record, as the examination weighs it against a new decision."""

    id: int
    record_id: str
    status: str
    fields: str
    action: str
    rule: str | None


class RecordKey(NamedTuple):
    object_type: str
    record_id: str


# The audit entry of a record's writes held back as irreversible (``HeldWrite``).
PUSH_HELD_ACTION = "crm.push_held"


class HeldWrite(NamedTuple):
    """Writes to a record held back as irreversible (an unsubscribe the CRM could never undo, for
    a state that rests on no evidenced no): which record, whose, which fields, by which rule."""

    subject_id: int
    object_type: str
    record_id: str
    fields: tuple[str, ...]
    rule: str | None


class NewPush(NamedTuple):
    """An outbox row decided, before the run and the moment it is written with are added."""

    object_type: str
    record_id: str
    subject_id: int
    fields: str
    suppress: bool
    rule: str | None
    action: str


@dataclass(slots=True)
class DecidedPushes:
    """What the examination decided for a batch of people: the rows to add, the pending rows they
    supersede, the irreversible writes held back; and what it weighed (``records``: every live
    record of theirs; ``queued``: those records' outbox rows that still matter). ``merged``: their
    records the CRM merged away, as (person, object, survivor's record id), whose survivor may be
    another person's (that person then takes on their nos)."""

    new_rows: list[NewPush]
    superseded: list[int]
    irreversible_held: int
    records: list[RecordKey]
    queued: dict[tuple[str, str], list[QueuedRow]]
    merged: list[tuple[int, str, str]] = field(default_factory=list)
    # The rows kept as they were decided again (pending or dead-lettered), by id: whether their
    # write restricts processing (their ``suppression`` flag, set where it says otherwise).
    flags: dict[int, bool] = field(default_factory=dict)
    # The writes held back as irreversible, record by record (``irreversible_held`` counts them).
    held: list[HeldWrite] = field(default_factory=list)
    # (the person of a record others' records point to, one of those others: sync/shared.py):
    # the first's nos reach the second, as a merge's do (``merged``).
    shared: list[tuple[int, int]] = field(default_factory=list)
