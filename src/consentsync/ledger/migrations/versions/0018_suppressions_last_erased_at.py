"""suppressions: the time of the address's latest erasure; chain entries for older suppressions
of an erased person's other address

An erasure of an address already on the suppression list keeps its entry (and its
``created_at``, the first erasure). What a new consent must be newer than is the latest erasure:
it was read from the people erased onto the entry, so an address erased again while nobody held
it, or an erased person's other address already on the list, kept the first erasure's date.
``last_erased_at`` says it; every erasure moves it.

Backfilled with the latest erasure the ledger knows of each entry: the latest of its own time,
its people's erasure times and the times of the chain's entries naming it (``subject.erased``,
``suppression.added``). The chain's entries correct the two cases above where they happened
before this revision (the second erasure's entry names the kept entry).

Suppression entries an erasure made for an erased person's other address before such entries
had a chain entry of their own (before ``suppression.added``) could be deleted without ``audit
verify`` noticing. Each one ``audit verify`` recognises as such (no entry of its own, and a
``subject.erased`` entry of an older version at its time with its reason: the same test verify
applies) gets a ``suppression.added`` entry now, a backfill: source ``migration``, actor
``migration 0018``, naming the erasure entry it goes with, and saying the row's ``created_at``
and ``last_erased_at`` as found (its ``at`` is the migration's). A row verify would name as
inserted by hand gets none. The chain is appended to as consentsync appends (the head locked,
each entry hashed onto the previous one).

Downgrading drops the column; the chain's entries stay (the log is append-only; an older
version reads them as any ``suppression.added``).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 20:00:00
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from consentsync.domain import canonical_json, iso

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
ERASURE_ACTIONS = ("subject.erased", "suppression.added")

# The tables as this revision reads and writes them (never schema.py's: a later change to it
# must not change what this revision did).
suppressions = sa.table(
    "suppressions",
    sa.column("id", sa.Integer),
    sa.column("email_hmac", sa.String),
    sa.column("reason", sa.String),
    sa.column("created_at", TIMESTAMP),
    sa.column("last_erased_at", TIMESTAMP),
)
subjects = sa.table(
    "subjects",
    sa.column("id", sa.Integer),
    sa.column("uid", sa.String),
    sa.column("erased_at", TIMESTAMP),
    sa.column("suppression_id", sa.Integer),
)
audit_entries = sa.table(
    "audit_entries",
    sa.column("seq", sa.Integer),
    sa.column("at", TIMESTAMP),
    sa.column("action", sa.String),
    sa.column("subject_uid", sa.String),
    sa.column("run_id", sa.String),
    sa.column("payload", sa.Text),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
    sa.column("subject_id", sa.Integer),
)
audit_details = sa.table(
    "audit_details",
    sa.column("seq", sa.Integer),
    sa.column("subject_id", sa.Integer),
    sa.column("content", sa.Text),
)
audit_head = sa.table(
    "audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.Integer), sa.column("hash", sa.String)
)


def upgrade() -> None:
    # Nullable: SQLite adds no NOT NULL column without a default to a table with rows, and a
    # batch rebuild would drop the table subjects reference. Every row is set below.
    op.add_column("suppressions", sa.Column("last_erased_at", TIMESTAMP, nullable=True))
    conn = op.get_bind()
    sqlite = conn.dialect.name == "sqlite"
    rows = {row.id: row for row in conn.execute(sa.select(suppressions).order_by(suppressions.c.id))}
    latest = {row_id: _utc(row.created_at) for row_id, row in rows.items()}
    for suppression_id, erased_at in conn.execute(
        sa.select(subjects.c.suppression_id, sa.func.max(subjects.c.erased_at))
        .where(subjects.c.suppression_id.is_not(None), subjects.c.erased_at.is_not(None))
        .group_by(subjects.c.suppression_id)
    ):
        if suppression_id in latest:
            latest[suppression_id] = max(latest[suppression_id], _utc(erased_at))
    # The chain's erasure entries, read once (the log has no index on the action; a migration
    # may read it whole, as building 0013's indexes did).
    named: dict[int, list[datetime]] = {}
    backfilled: set[int] = set()  # by this revision before (upgraded, downgraded, upgraded again)
    older_erasures: dict[datetime, list[tuple[int, dict[str, Any]]]] = {}
    for seq, at, text in conn.execute(
        sa.select(audit_entries.c.seq, audit_entries.c.at, audit_entries.c.payload)
        .where(audit_entries.c.action.in_(ERASURE_ACTIONS))
        .order_by(audit_entries.c.seq)
    ):
        payload = _payload(text)
        what = payload.get("what") if isinstance(payload.get("what"), dict) else {}
        moment = _utc(at)
        target = what.get("suppression")
        new = payload.get("new")
        if type(target) is int and payload.get("source") == "migration" and isinstance(new, dict):
            # A backfill entry's own time is the migration's: it says the erasure's.
            backfilled.add(target)
            # One not as this revision wrote it (verify names the entry): its own time.
            with contextlib.suppress(ValueError):
                moment = _utc(datetime.fromisoformat(str(new.get("last_erased_at"))))
        if type(target) is int:
            named.setdefault(target, []).append(moment)
        if payload.get("action") == "subject.erased" and "email_hmac" not in what:
            older_erasures.setdefault(moment, []).append((seq, payload))
    for suppression_id, moments in named.items():
        if suppression_id in latest:
            latest[suppression_id] = max(latest[suppression_id], *moments)
    for suppression_id, moment in latest.items():
        conn.execute(
            sa.update(suppressions)
            .where(suppressions.c.id == suppression_id)
            .values(last_erased_at=_stored(moment, sqlite))
        )
    backfill = []
    for suppression_id, row in rows.items():
        created = _utc(row.created_at)
        if suppression_id in backfilled or created in named.get(suppression_id, ()):
            continue  # its entry made it, or a backfill says it: in the chain already
        reason = _digest({"reason": row.reason})
        erasure = next(
            (
                (seq, payload)
                for seq, payload in older_erasures.get(created, ())
                if payload.get("details_sha256") == reason
            ),
            None,
        )
        if erasure is not None:
            backfill.append((row, erasure, latest[suppression_id]))
    if backfill:
        _append_backfill(conn, backfill, sqlite)


def downgrade() -> None:
    op.drop_column("suppressions", "last_erased_at")


def _append_backfill(
    conn: sa.Connection, backfill: list[tuple[Any, tuple[int, dict[str, Any]], datetime]], sqlite: bool
) -> None:
    """A ``suppression.added`` entry for each row, appended to the chain as ``audit.append``
    does: the head read and locked, each entry's hash over the previous one's and its canonical
    payload, the reason's text in ``audit_details`` and its digest in the payload."""
    head = conn.execute(
        sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
    ).one()
    seq, prev = head.seq, head.hash
    last_at = conn.execute(sa.select(sa.func.max(audit_entries.c.at))).scalar()
    # Never before the chain's last entry (a clock behind the ledger's): its times only go on.
    now = datetime.now(UTC) if last_at is None else max(datetime.now(UTC), _utc(last_at))
    uids = sorted({erasure[1].get("subject") for _row, erasure, _latest in backfill} - {None})
    ids = (
        dict(conn.execute(sa.select(subjects.c.uid, subjects.c.id).where(subjects.c.uid.in_(uids))).all())
        if uids
        else {}
    )
    for row, (erasure_seq, erasure), latest in backfill:
        seq += 1
        details = {"reason": row.reason}
        owner = erasure.get("subject")
        payload = {
            "action": "suppression.added",
            "subject": owner,
            "run": None,
            "what": {"suppression": row.id, "email_hmac": row.email_hmac, "erasure_entry": erasure_seq},
            "old": None,
            "new": {
                "suppressed": True,
                "created_at": iso(_utc(row.created_at)),
                "last_erased_at": iso(latest),
            },
            "rule": "erasure_suppression",
            "source": "migration",
            "actor": "migration 0018",
            "seq": seq,
            "at": iso(now),
            "details_sha256": _digest(details),
        }
        text = canonical_json(payload)
        digest = hashlib.sha256((prev + text).encode("utf-8")).hexdigest()
        subject_id = ids.get(owner)
        conn.execute(
            sa.insert(audit_entries).values(
                seq=seq,
                at=_stored(now, sqlite),
                action="suppression.added",
                subject_uid=owner,
                run_id=None,
                payload=text,
                prev_hash=prev,
                hash=digest,
                subject_id=subject_id,
            )
        )
        conn.execute(
            sa.insert(audit_details).values(seq=seq, subject_id=subject_id, content=canonical_json(details))
        )
        prev = digest
    conn.execute(sa.update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev))


def _payload(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _digest(details: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(details).encode("utf-8")).hexdigest()


def _utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite keeps no offset: its times are UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _stored(moment: datetime, sqlite: bool) -> datetime:
    """A time as the ledger stores it (``schema.UTCDateTime``): naive UTC on SQLite."""
    return moment.replace(tzinfo=None) if sqlite else moment
