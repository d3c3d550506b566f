"""``audit verify``'s check that the decision tables say what the chain says (docs/tamper-evidence.md):
objections and their decisions, the suppression list, and each person's restriction and erasure
marks. The rows stay writable (a decision changes them), so the chain is what they are held to:
a row the chain does not record was inserted by hand, a row it records that is gone was deleted,
a value it says otherwise was edited.

What the chain says of each row, and by which entries (found by the id they name, ordered by it
in the database, and read beside the table in id order: one pass over each, a few rows at a
time, whatever the ledger's size):

- ``objections``: ``objection.raised`` (person, purpose, direct marketing, when objected, when
  recorded, source, status, and a decision of the policy made then) and ``objection.decided``
  (status, who decided, when), by ``what.objection``;
- ``suppressions``: ``subject.erased`` and ``suppression.added`` (an erased person's other
  address), by ``what.suppression``: the first says when the entry was made and why (the
  reason's digest), each its keyed hash where it carries it (erasures since this check), the
  last when the address was last erased (``last_erased_at``: an erasure of an address on the
  list before names its entry again). Migration 0018's backfill entry (source ``migration``)
  of an older erased person's other address says the row's times as it found them;
- ``subjects``: ``subject.restricted`` and ``subject.restriction_lifted`` (the flag, as the last
  of them left it), ``subject.erased`` (when, and the suppression entry) and ``subject.created``
  of a person created suppressed (an address erased before), by the person's id. The rows read
  are the people flagged (restricted, erased or suppressed) and those the chain flags.

Messages name tables, row ids, audit entries and fields, never a person's data: values are
shown for statuses, flags, times, ids and keyed hashes only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    FromClause,
    Text,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
)

from consentsync.audit import CheckResult, details_digest
from consentsync.domain import iso
from consentsync.ledger.schema import audit_entries, objections, subjects, suppressions

OBJECTION_ACTIONS = ("objection.raised", "objection.decided")
SUPPRESSION_ACTIONS = ("subject.erased", "suppression.added")
SUBJECT_ACTIONS = ("subject.restricted", "subject.restriction_lifted", "subject.erased")
CREATED_SUPPRESSED = '"suppressed_by_earlier_erasure":true'
# Who decided an objection decided when it was raised (``Ledger.raise_objection``), by the rule
# its entry names: a policy, not a reviewer.
RAISE_DECIDERS = {
    "art21(2)_absolute": "policy:art21(2)_direct_marketing",
    "purpose_auto_uphold": "policy:auto_uphold",
}
PENDING = "pending"
# Fields whose values a message may show: no free text, no account names, no addresses.
SHOWN = frozenset(
    {
        "status", "direct_marketing", "purpose", "raised_at", "recorded_at", "decided_at", "created_at",
        "email_hmac", "restricted", "erased_at", "suppression_id", "last_erased_at",
    }
)  # fmt: skip


class _Set:
    """Stands for "any value but none" (a person created suppressed: by some suppression entry)."""

    def __repr__(self) -> str:
        return "set"


SET = _Set()
# (field, the value the chain says, the entry saying it; None: no entry, the value by default)
Said = list[tuple[str, Any, int | None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionsResult(CheckResult):
    objections: int = 0
    suppressions: int = 0
    subjects: int = 0  # the people restricted, erased or created suppressed


def decisions(conn: Connection, batch: int = 5000) -> DecisionsResult:
    """Each objection, suppression entry and person's restriction and erasure marks against the
    chain; the first row that disagrees is named (tables in this order, rows by id)."""
    counts: dict[str, int] = {}
    for name, check in (
        ("objections", _objections),
        ("suppressions", _suppressions),
        ("subjects", _subjects),
    ):
        problem, counts[name] = check(conn, batch)
        if problem is not None:
            return DecisionsResult(ok=False, problem=problem, **counts)
    return DecisionsResult(ok=True, **counts)


# -- reading both sides ---------------------------------------------------------------------------


def _what_id(conn: Connection, key: str) -> ColumnElement[Any]:
    """The integer ``what.<key>`` of an entry's payload, in SQL (NULL where it names none), for the
    database to order the entries by. The payload is canonical JSON (``what`` its last key, no
    whitespace); text that is no JSON (an edit the chain check names) gives NULL on SQLite, and on
    PostgreSQL, which has no cast that tolerates it before version 16, the id is read by pattern."""
    payload = audit_entries.c.payload
    if conn.dialect.name == "postgresql":
        pattern = literal(f'"{key}":([0-9]{{1,18}})[,}}]', Text)
        return cast(func.substring(payload, pattern), BigInteger)
    path = f"$.what.{key}"
    integer = case((func.json_type(payload, path) == "integer", func.json_extract(payload, path)))
    return case((func.json_valid(payload) == 1, integer))  # evaluated only where it is JSON


def _entries_by(
    conn: Connection,
    key: ColumnElement[Any],
    where: ColumnElement[bool],
    batch: int,
    source: FromClause | None = None,
) -> Iterator[tuple[int, list[tuple[int, dict[str, Any]]]]]:
    """The entries ``where`` selects, grouped by ``key`` in its order, each group in chain order."""
    query = (
        select(key.label("key"), audit_entries.c.seq, audit_entries.c.payload)
        .select_from(audit_entries if source is None else source)
        .where(where, key.is_not(None))
        .order_by(key, audit_entries.c.seq)
        .execution_options(yield_per=batch)
    )
    current = 0
    group: list[tuple[int, dict[str, Any]]] = []
    for row in conn.execute(query):
        if row.key != current and group:
            yield current, group
            group = []
        current = int(row.key)
        group.append((row.seq, _payload(row.payload)))
    if group:
        yield current, group


def _payload(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _what(payload: dict[str, Any]) -> dict[str, Any]:
    what = payload.get("what")
    return what if isinstance(what, dict) else {}


def _merged(rows: Iterator[Any], groups: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any, Any]]:
    """(id, the table's row or None, the chain's entries or None), in id order."""
    row, group = next(rows, None), next(groups, None)
    while row is not None or group is not None:
        if group is None or (row is not None and row.id < group[0]):
            yield row.id, row, None
            row = next(rows, None)
        elif row is None or group[0] < row.id:
            yield group[0], None, group[1]
            group = next(groups, None)
        else:
            yield row.id, row, group[1]
            row, group = next(rows, None), next(groups, None)


def _time(value: Any) -> Any:
    """A time as an entry says it, as an instant (``2026-01-01T09:30:15Z`` and ``...+00:00`` are
    the same); anything that is no time stays as it is and matches no row."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        return moment if moment.tzinfo is not None else value
    return value


def _unreadable(seq: int, table: str, row_id: int, payload: dict[str, Any], key: str) -> str | None:
    named = _what(payload).get(key)
    if type(named) is int and named == row_id:
        return None
    return (
        f"audit entry {seq} does not name {table} row {row_id} as the database read it: "
        "edited outside consentsync"
    )


# -- comparing ------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


def _same(have: Any, said: Any) -> bool:
    if said is SET:
        return have is not None
    return bool(have == said)


def _differences(table: str, row_id: int, have: dict[str, Any], said: Said) -> str | None:
    parts = []
    for name, value, seq in said:
        if _same(have.get(name), value):
            continue
        where = f"audit entry {seq}" if seq is not None else "no audit entry"
        if name in SHOWN:
            parts.append(f"{name} is {_shown(have.get(name))} where {where} says {_shown(value)}")
        else:
            parts.append(f"{name} differs from {where}")
    if not parts:
        return None
    return f"{table} row {row_id}: {'; '.join(parts)}: edited outside consentsync"


def _added(table: str, row_id: int) -> str:
    return f"{table} row {row_id} has no audit entry: inserted outside consentsync"


def _gone(table: str, row_id: int, entries: list[tuple[int, dict[str, Any]]]) -> str:
    seq = entries[0][0]
    return f"{table} row {row_id} is gone but audit entry {seq} records it: deleted outside consentsync"


def _check(
    table: str,
    rows: Iterator[Any],
    groups: Iterator[tuple[int, list[tuple[int, dict[str, Any]]]]],
    have: Callable[[Any], dict[str, Any]],
    said: Callable[[list[tuple[int, dict[str, Any]]]], Said],
    key: str,
    orphan_allowed: Callable[[Any], bool] | None = None,
) -> tuple[str | None, int]:
    count = 0
    for row_id, row, entries in _merged(rows, groups):
        count += row is not None
        if entries is None:
            if orphan_allowed is not None and orphan_allowed(row):
                continue
            return _added(table, row_id), count
        for seq, payload in entries:
            problem = _unreadable(seq, table, row_id, payload, key)
            if problem:
                return problem, count
        if row is None:
            return _gone(table, row_id, entries), count
        problem = _differences(table, row_id, have(row), said(entries))
        if problem:
            return problem, count
    return None, count


# -- objections -----------------------------------------------------------------------------------


def _objections(conn: Connection, batch: int) -> tuple[str | None, int]:
    rows = conn.execute(
        select(
            objections.c.id,
            subjects.c.uid,
            objections.c.purpose,
            objections.c.direct_marketing,
            objections.c.status,
            objections.c.raised_at,
            objections.c.recorded_at,
            objections.c.source,
            objections.c.decided_by,
            objections.c.decided_at,
        )
        .select_from(objections.outerjoin(subjects, subjects.c.id == objections.c.subject_id))
        .order_by(objections.c.id)
        .execution_options(yield_per=batch)
    )
    groups = _entries_by(
        conn, _what_id(conn, "objection"), audit_entries.c.action.in_(OBJECTION_ACTIONS), batch
    )
    return _check("objections", iter(rows), groups, _objection_row, _objection_said, "objection")


def _objection_row(row: Any) -> dict[str, Any]:
    return {
        "subject": row.uid,
        "purpose": row.purpose,
        "direct_marketing": bool(row.direct_marketing),
        "status": row.status,
        "raised_at": row.raised_at,
        "recorded_at": row.recorded_at,
        "source": row.source,
        "decided_by": row.decided_by,
        "decided_at": row.decided_at,
    }


def _objection_said(entries: list[tuple[int, dict[str, Any]]]) -> Said:
    """What the objection's row holds after its entries, each field with the entry that set it
    last (a decision overrides the status it was raised with)."""
    said: dict[str, tuple[Any, int]] = {}
    for seq, payload in entries:
        what = _what(payload)
        at = _time(payload.get("at"))
        status = payload.get("new")
        if payload.get("action") == "objection.raised":
            said["subject"] = (payload.get("subject"), seq)
            said["purpose"] = (what.get("purpose"), seq)
            said["direct_marketing"] = (what.get("direct_marketing"), seq)
            if "raised_at" in what:  # in the chain since 1db08f8: older entries do not say it
                said["raised_at"] = (_time(what["raised_at"]), seq)
            said["recorded_at"] = (at, seq)
            said["source"] = (payload.get("source"), seq)
            said["status"] = (status, seq)
            if status == PENDING:
                said["decided_by"] = (None, seq)
                said["decided_at"] = (None, seq)
            else:
                said["decided_at"] = (at, seq)
                if payload.get("rule") in RAISE_DECIDERS:
                    said["decided_by"] = (RAISE_DECIDERS[payload["rule"]], seq)
        elif payload.get("action") == "objection.decided":
            said["purpose"] = (what.get("purpose"), seq)
            said["status"] = (status, seq)
            said["decided_by"] = (payload.get("actor"), seq)
            said["decided_at"] = (at, seq)
    return [(name, value, seq) for name, (value, seq) in said.items()]


# -- suppressions ---------------------------------------------------------------------------------


def _suppressions(conn: Connection, batch: int) -> tuple[str | None, int]:
    rows = conn.execute(
        select(
            suppressions.c.id,
            suppressions.c.email_hmac,
            suppressions.c.reason,
            suppressions.c.created_at,
            suppressions.c.last_erased_at,
        )
        .order_by(suppressions.c.id)
        .execution_options(yield_per=batch)
    )
    groups = _entries_by(
        conn, _what_id(conn, "suppression"), audit_entries.c.action.in_(SUPPRESSION_ACTIONS), batch
    )
    return _check(
        "suppressions",
        iter(rows),
        groups,
        _suppression_row,
        _suppression_said,
        "suppression",
        orphan_allowed=lambda row: _beside_an_older_erasure(conn, row),
    )


def _suppression_row(row: Any) -> dict[str, Any]:
    return {
        "email_hmac": row.email_hmac,
        "reason": details_digest({"reason": row.reason}),
        "created_at": row.created_at,
        "last_erased_at": row.last_erased_at,
    }


def _is_backfill(payload: dict[str, Any]) -> bool:
    """Migration 0018's entry for a suppression an older erasure made without one: it says the
    row's times as found, at the migration's own time."""
    new = payload.get("new")
    return (
        payload.get("action") == "suppression.added"
        and payload.get("source") == "migration"
        and isinstance(new, dict)
        and "created_at" in new
    )


def _suppression_said(entries: list[tuple[int, dict[str, Any]]]) -> Said:
    """The first entry naming a suppression made it (its time, its reason), unless a backfill
    entry says so (``_is_backfill``: the row was made by an erasure whose version wrote no entry
    for it, so the first entry naming it may be a later erasure's); a later erasure of the same
    address names it again, with a reason and a time of its own, and the last one says when the
    address was last erased."""
    backfill = next(((seq, p) for seq, p in entries if _is_backfill(p)), None)
    made_seq, made = backfill or entries[0]
    created = made["new"]["created_at"] if backfill else made.get("at")
    said: Said = [("created_at", _time(created), made_seq)]
    if "details_sha256" in made:
        said.append(("reason", made["details_sha256"], made_seq))
    # A person left by an older erasure and erased onto its entry since (``erasure_entry``:
    # ``Ledger.erase_absorbed``) did not erase the address again: not its last erasure.
    erasures = [(seq, p) for seq, p in entries if not _completes_an_erasure(p)] or entries
    last_seq, last = erasures[-1]
    erased = last["new"].get("last_erased_at") if _is_backfill(last) else last.get("at")
    said.append(("last_erased_at", _time(erased), last_seq))
    for seq, payload in entries:
        what = _what(payload)
        if "email_hmac" in what:  # in the chain since this check: older entries do not say it
            said.append(("email_hmac", what["email_hmac"], seq))
    return said


def _completes_an_erasure(payload: dict[str, Any]) -> bool:
    """A ``subject.erased`` entry of a person erased onto an earlier erasure's suppression entry,
    naming that erasure's entry (``erasure_entry``), the address not erased again."""
    return payload.get("action") == "subject.erased" and "erasure_entry" in _what(payload)


def _beside_an_older_erasure(conn: Connection, row: Any) -> bool:
    """A suppression entry an erasure made, before this check, for an erased person's other
    address wrote no entry of its own: it is the one made with an erasure entry of that version
    (no keyed hash in it) at its time and with its reason. Such rows are few (an erasure of a
    person holding two addresses): one query each. Migration 0018 gave each such row of a
    ledger a backfill entry, so that its deletion is noticed too; this is for the rows written
    by that older version since (a ledger is migrated before anything else opens it: none)."""
    reason = details_digest({"reason": row.reason})
    for text in conn.execute(
        select(audit_entries.c.payload).where(
            audit_entries.c.action == "subject.erased", audit_entries.c.at == row.created_at
        )
    ).scalars():
        payload = _payload(text)
        if "email_hmac" not in _what(payload) and payload.get("details_sha256") == reason:
            return True
    return False


# -- restriction and erasure marks ----------------------------------------------------------------

_SUBJECT_COLUMNS = (
    subjects.c.id,
    subjects.c.uid,
    subjects.c.restricted,
    subjects.c.erased_at,
    subjects.c.suppression_id,
)


def _subjects(conn: Connection, batch: int) -> tuple[str | None, int]:
    flagged = or_(
        subjects.c.restricted.is_(True),
        subjects.c.erased_at.is_not(None),
        subjects.c.suppression_id.is_not(None),
    )
    rows = conn.execute(
        select(*_SUBJECT_COLUMNS).where(flagged).order_by(subjects.c.id).execution_options(yield_per=batch)
    )
    # The person an entry is about: by the id it carries, by its uid where it carries none
    # (written before migration 0013). ``audit.verify`` checks the id names the payload's person.
    named = subjects.alias("named")
    created = and_(
        audit_entries.c.action == "subject.created",
        audit_entries.c.payload.like("%" + CREATED_SUPPRESSED.replace("_", "\\_") + "%", escape="\\"),
    )
    groups = _entries_by(
        conn,
        func.coalesce(audit_entries.c.subject_id, named.c.id),
        or_(audit_entries.c.action.in_(SUBJECT_ACTIONS), created),
        batch,
        audit_entries.outerjoin(named, named.c.uid == audit_entries.c.subject_uid),
    )
    count = 0
    for subject_id, row, entries in _merged(iter(rows), groups):
        count += row is not None
        if row is None:  # not flagged (its flags cleared?), or gone
            row = conn.execute(select(*_SUBJECT_COLUMNS).where(subjects.c.id == subject_id)).first()
            if row is None:
                return _gone("subjects", subject_id, entries), count
        said = _subject_said(entries or [])
        have = {
            "subject": row.uid,
            "restricted": bool(row.restricted),
            "erased_at": row.erased_at,
            "suppression_id": row.suppression_id,
        }
        problem = _differences("subjects", subject_id, have, said)
        if problem:
            return problem, count
    return None, count


def _subject_said(entries: list[tuple[int, dict[str, Any]]]) -> Said:
    """A person's restriction flag (the last restriction entry's), erasure time and suppression
    entry (the erasure's; any, for a person created suppressed), as their entries leave them;
    without an entry, none of them."""
    state: dict[str, tuple[Any, int | None]] = {
        "restricted": (False, None),
        "erased_at": (None, None),
        "suppression_id": (None, None),
    }
    subjects_said: Said = []
    for seq, payload in entries:
        subjects_said.append(("subject", payload.get("subject"), seq))
        action = payload.get("action")
        if action in ("subject.restricted", "subject.restriction_lifted"):
            state["restricted"] = (payload.get("new") is True, seq)
        elif action == "subject.erased":
            state["erased_at"] = (_time(payload.get("at")), seq)
            state["suppression_id"] = (_what(payload).get("suppression"), seq)
        elif action == "subject.created":
            new = payload.get("new")
            if isinstance(new, dict) and new.get("suppressed_by_earlier_erasure") is True:
                state["suppression_id"] = (SET, seq)
    return [*subjects_said, *((name, value, seq) for name, (value, seq) in state.items())]
