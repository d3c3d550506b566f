"""A confirmation link's terms, bound in the audit chain (docs/tamper-evidence.md, "Confirmation
links").

A ``confirmations`` row says what following its mailed link records: a double opt-in, a consent
request or a renewal grants its purpose on its channel under its notice version, from its
source; an erasure or restriction link erases or restricts its person. The row stays writable (a
link is confirmed, lapses, is disowned), so a plain edit of a pending row (another purpose,
another notice version, a later expiry) made the person's own click record what they never
asked for, as a double opt-in, with the chain whole. Every row is opened here, with a
``confirmation.opened`` entry naming its person and binding its terms (``BOUND_TERMS`` and the
SHA-256 of its token's hash); a double opt-in the person disowns says so in a
``confirmation.disowned`` entry. ``audit verify`` holds every row to them
(``audit_registry``), and a link whose row no longer says what they bound opens nothing
(``holds_to_chain``).

Rows an older version opened carry no binding. The first open of the ledger by this version
appends ``CONFIRMATIONS_BOUND_ACTION`` once (``mark_confirmations_bound``), saying the highest row id
then and the latest expiry of those rows: a row without a binding is an older version's when its
id is at most that id and its expiry at most that expiry (``older_version_row``), so its link
keeps working until it expires as it would have, and none is made to work longer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import IntegrityError

from consentsync import audit
from consentsync.audit import AuditRecord, entry_instant
from consentsync.domain import iso
from consentsync.hub.links import LinkRefused
from consentsync.ledger.engine import reading
from consentsync.ledger.schema import audit_entries, audit_head, confirmations, ledger_settings, subjects
from consentsync.ledger.service import Ledger

CONFIRMATION_OPENED_ACTION = "confirmation.opened"
# A double opt-in the person said was not theirs (hub/capture.py ``DISOWNED_KIND``): its kind.
CONFIRMATION_DISOWNED_ACTION = "confirmation.disowned"
CONFIRMATION_ACTIONS = (CONFIRMATION_OPENED_ACTION, CONFIRMATION_DISOWNED_ACTION)
# The entry naming no person appended once per ledger (``mark_confirmations_bound``), and the
# ledger_settings row sparing each open a look for it.
CONFIRMATIONS_BOUND_ACTION = "ledger.confirmations_bound"
CONFIRMATIONS_BOUND_SETTING = "confirmations_bound"
# The columns deciding what confirming a link records, bound as they are (times as ``iso``
# spells them); the token's hash as the SHA-256 of the stored hash (which link opens the row).
BOUND_TERMS = (
    "kind",
    "purpose",
    "channel",
    "notice_version",
    "notice_language",
    "source",
    "requested_at",
    "expires_at",
)
TOKEN_HASH_DIGEST = "token_hash_sha256"
# The kinds whose row consentsync deletes, when the mail carrying the link did not go
# (hub/outreach.py ``_unsent``); a row of another kind deleted is a finding of audit verify.
DELETED_WHEN_UNSENT = ("request", "renewal")
_TIMES = ("requested_at", "expires_at")

log = structlog.get_logger("consentsync.hub")


def row_terms(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the chain binds of a confirmation, from its row's columns (or the values inserted)."""
    terms = {name: iso(row[name]) if name in _TIMES else row[name] for name in BOUND_TERMS}
    token_hash = row["token_hash"]
    text = token_hash if isinstance(token_hash, str) else ""
    terms[TOKEN_HASH_DIGEST] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return terms


def open_confirmation(
    conn: Connection,
    now: datetime,
    *,
    token_hash: str,
    kind: str,
    subject_id: int,
    source: str,
    expires_at: datetime,
    actor: str,
    purpose: str | None = None,
    channel: str | None = None,
    notice_version: str | None = None,
    notice_language: str | None = None,
    subject_uid: str | None = None,
) -> int:
    """Inserts a confirmation row (requested ``now``) in the caller's transaction and binds its
    terms in the chain (``CONFIRMATION_OPENED_ACTION``, naming its person, dated ``now``); returns its
    id. ``subject_uid``: the person's, where the caller holds it (else read)."""
    values: dict[str, Any] = {
        "token_hash": token_hash,
        "kind": kind,
        "subject_id": subject_id,
        "purpose": purpose,
        "channel": channel,
        "notice_version": notice_version,
        "notice_language": notice_language,
        "source": source,
        "requested_at": now,
        "expires_at": expires_at,
    }
    row_id = int(conn.execute(insert(confirmations).values(**values)).inserted_primary_key[0])
    uid = subject_uid or conn.execute(select(subjects.c.uid).where(subjects.c.id == subject_id)).scalar_one()
    entry = AuditRecord(
        CONFIRMATION_OPENED_ACTION,
        {"confirmation": row_id},
        new=row_terms(values),
        source=source,
        actor=actor,
        subject_uid=uid,
        subject_id=subject_id,
    )
    audit.append(conn, [entry], now)
    return row_id


def disowned(row: Any, kind: str, uid: str) -> AuditRecord:
    """The entry saying confirmation ``row`` took the kind ``kind`` (its person disowned the
    sign-up): appended by the caller in the transaction that changes the row."""
    return AuditRecord(
        CONFIRMATION_DISOWNED_ACTION,
        {"confirmation": row.id},
        old={"kind": row.kind},
        new={"kind": kind},
        source=row.source,
        actor="data subject",
        subject_uid=uid,
        subject_id=row.subject_id,
    )


# -- what the chain says of a row -----------------------------------------------------------------


Said = dict[str, tuple[Any, int]]  # a bound term: its value, and the entry saying it last


def said_by(entries: Iterable[tuple[int, dict[str, Any]]]) -> tuple[Said | None, str | None]:
    """What the entries of one confirmation (seq, payload; chain order) bind of it, and the person
    its opening names; (None, None) where none opens it. A later opening of the same id (SQLite
    reuses the id of the newest row once it is deleted: an unsent link) starts anew."""
    said: Said | None = None
    person: str | None = None
    for seq, payload in entries:
        new = payload.get("new")
        if not isinstance(new, dict):
            new = {}
        action = payload.get("action")
        if action == CONFIRMATION_OPENED_ACTION:
            said = {name: (value, seq) for name, value in new.items()}
            subject = payload.get("subject")
            person = subject if isinstance(subject, str) else None
        elif action == CONFIRMATION_DISOWNED_ACTION and said is not None:
            said.update({name: (value, seq) for name, value in new.items() if name == "kind"})
    return said, person


def differences(row: Mapping[str, Any], said: Said) -> list[tuple[str, Any, Any, int | None]]:
    """The bound terms of ``row`` that differ from ``said``: (term, the row's value, the chain's,
    the entry saying it; None where no entry says the term)."""
    found = []
    for name, have in row_terms(row).items():
        value, seq = said.get(name, (None, None))
        if have != value:  # times compared as ``iso`` spells them, on both sides
            found.append((name, have, value, seq))
    return found


@dataclass(frozen=True, slots=True)
class Marker:
    """The chain's ``CONFIRMATIONS_BOUND_ACTION`` entry: the rows an older version opened (ids up to
    ``through``, expiring by ``expires_by``) carry no binding."""

    seq: int
    through: int
    expires_by: datetime | None


def confirmations_marker(conn: Connection) -> Marker | None:
    """The chain's first ``CONFIRMATIONS_BOUND_ACTION`` entry; None on a ledger this version has not
    opened. By the index of the entries naming no person (read where a row has no binding)."""
    found = conn.execute(
        select(audit_entries.c.seq, audit_entries.c.payload)
        .where(
            audit_entries.c.subject_id.is_(None),
            audit_entries.c.subject_uid.is_(None),
            audit_entries.c.action == CONFIRMATIONS_BOUND_ACTION,
        )
        .order_by(audit_entries.c.seq)
        .limit(1)
    ).first()
    if found is None:
        return None
    try:
        payload = orjson.loads(found.payload)
    except orjson.JSONDecodeError:
        return Marker(found.seq, 0, None)  # the chain check names it; nothing passes unbound
    what = payload.get("what") if isinstance(payload, dict) else None
    what = what if isinstance(what, dict) else {}
    through = what.get("confirmations_through")
    return Marker(found.seq, through if type(through) is int else 0, entry_instant(what.get("expires_by")))


def older_version_row(marker: Marker | None, row: Any) -> bool:
    """Whether ``row``, bound by no entry, is one an older version opened: at or below the
    marker's id and expiring no later than the rows then did. Without a marker no row is."""
    if marker is None or row.id > marker.through:
        return False
    return (
        marker.expires_by is not None and row.expires_at is not None and row.expires_at <= marker.expires_by
    )


def holds_to_chain(conn: Connection, row: Any) -> bool:
    """Whether confirmation ``row`` says what the chain bound when it was opened (or is an older
    version's, ``older_version_row``): the link's gate. The person's entries of the two actions,
    by the index on the person."""
    query = (
        select(audit_entries.c.seq, audit_entries.c.payload)
        .where(audit_entries.c.subject_id == row.subject_id, audit_entries.c.action.in_(CONFIRMATION_ACTIONS))
        .order_by(audit_entries.c.seq)
    )
    entries = []
    for seq, text in conn.execute(query):
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue  # the chain check names it
        what = payload.get("what") if isinstance(payload, dict) else None
        if (
            isinstance(what, dict)
            and type(what.get("confirmation")) is int
            and what["confirmation"] == row.id
        ):
            entries.append((seq, payload))
    said, _person = said_by(entries)
    if said is None:
        return older_version_row(confirmations_marker(conn), row)
    return not differences(row._mapping, said)


# What a link whose row the chain does not bind says: what a cut or changed link says.
UNBOUND_LINK = "this confirmation link is not valid: it may have been cut or changed"


def refuse_unless_bound(conn: Connection, row: Any) -> None:
    """Refuses (``LinkRefused``) the link of a confirmation row that does not say what the chain
    bound (``holds_to_chain``): edited, or inserted, outside consentsync. Logged by the row's
    id, for whoever runs ``audit verify`` next (it names the terms that differ)."""
    if not holds_to_chain(conn, row):
        log.warning("hub.confirmation_unbound", confirmation=row.id, kind=row.kind)
        raise LinkRefused(UNBOUND_LINK)


# -- the one-time marker ----------------------------------------------------------------------------


def mark_confirmations_bound(ledger: Ledger, actor: str = "consentsync") -> int:
    """Once per ledger, at the first open by a version binding confirmations: the
    ``CONFIRMATIONS_BOUND_ACTION`` entry (naming no person) saying which rows an older version opened
    (the highest id then, and the latest expiry among them); a new ledger gets it at its start.
    Returns its seq. An entry, not a settings row: its place and content are in the hash chain,
    so a cutoff moved to let a row pass breaks the chain; the settings row only spares each open
    a look for it (``Ledger.mark_binding_by_chain``, the same way)."""
    by_name = ledger_settings.c.name == CONFIRMATIONS_BOUND_SETTING
    with reading(ledger.engine) as conn:
        said = conn.execute(select(ledger_settings.c.value).where(by_name)).scalar()
    if said is not None:
        return int(said)
    try:
        with ledger.engine.begin() as conn:
            # The head first: another process opening the ledger waits here, then finds it.
            conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1).with_for_update())
            marker = confirmations_marker(conn)
            if marker is not None:
                seq = marker.seq
            else:
                through, expires_by = conn.execute(
                    select(func.max(confirmations.c.id), func.max(confirmations.c.expires_at))
                ).one()
                what = {"confirmations_through": int(through or 0), "expires_by": iso(expires_by)}
                (seq,) = audit.append(
                    conn, [AuditRecord(CONFIRMATIONS_BOUND_ACTION, what, actor=actor)], ledger.clock()
                )
            if conn.execute(select(ledger_settings.c.value).where(by_name)).scalar() is None:
                row = {"name": CONFIRMATIONS_BOUND_SETTING, "value": str(seq), "set_at": ledger.clock()}
                conn.execute(insert(ledger_settings).values(**row))
    except IntegrityError:  # another process opening the ledger wrote it meanwhile
        with reading(ledger.engine) as conn:
            marker = confirmations_marker(conn)
        assert marker is not None
        seq = marker.seq
    return seq
