"""``consentsync subject search``: people found by email, CRM record id or subject uid.

An ops command: it shows the addresses it finds (the log never does). An erased person is found by
their address's keyed hash (the suppression entry), by uid and by the CRM records still linked.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from consentsync.domain import InvalidInput, iso, lookup_email
from consentsync.ledger.schema import crm_links, subject_identifiers, subjects
from consentsync.ledger.service import Ledger

#: A subject uid prefix shorter than this matches too many people to mean one.
MIN_UID_PREFIX = 6
MAX_RESULTS = 50
KINDS = ("any", "email", "record", "uid")


def search(
    ledger: Ledger, term: str, *, by: str = "any", connector: str | None = None
) -> list[dict[str, Any]]:
    """Every subject ``term`` names (see the module's doc), each with how it matched."""
    if by not in KINDS:
        raise InvalidInput(f"unknown search kind {by!r}: accepted are {', '.join(KINDS)}")
    text = term.strip()
    matched: dict[int, set[str]] = {}
    with ledger.engine.connect() as conn:
        if by in ("any", "email") and ("@" in text or by == "email"):
            for uid in ledger.subject_uids_for_email(lookup_email(text)):  # erased ones too
                for subject_id in _ids_by_uid(conn, uid, exact=True):
                    matched.setdefault(subject_id, set()).add("email")
        if by in ("any", "record"):
            query = select(crm_links.c.subject_id).where(crm_links.c.record_id == text[:64])
            if connector:
                query = query.where(crm_links.c.connector == connector)
            for subject_id in conn.execute(query.limit(MAX_RESULTS)).scalars():
                matched.setdefault(subject_id, set()).add("crm record")
        if by in ("any", "uid"):
            for subject_id in _ids_by_uid(conn, text, exact=by == "any" and len(text) < MIN_UID_PREFIX):
                matched.setdefault(subject_id, set()).add("uid")
        return [_row(conn, subject_id, sorted(how), connector) for subject_id, how in sorted(matched.items())]


def _ids_by_uid(conn: Connection, text: str, *, exact: bool) -> list[int]:
    wanted = text.strip().lower()
    if exact or len(wanted) < MIN_UID_PREFIX:
        condition = subjects.c.uid == wanted
    else:
        condition = subjects.c.uid.startswith(wanted, autoescape=True)
    return list(conn.execute(select(subjects.c.id).where(condition).limit(MAX_RESULTS)).scalars())


def _row(conn: Connection, subject_id: int, how: list[str], connector: str | None) -> dict[str, Any]:
    row = conn.execute(select(subjects).where(subjects.c.id == subject_id)).one()
    emails = list(
        conn.execute(
            select(subject_identifiers.c.value)
            .where(subject_identifiers.c.subject_id == subject_id, subject_identifiers.c.kind == "email")
            .order_by(subject_identifiers.c.value)
        ).scalars()
    )
    links = select(crm_links).where(crm_links.c.subject_id == subject_id).order_by(crm_links.c.id)
    if connector:
        links = links.where(crm_links.c.connector == connector)
    return {
        "subject": row.uid,
        "matched_by": ", ".join(how),
        "emails": emails,
        "created_at": iso(row.created_at),
        "erased": row.erased_at is not None,
        "restricted": bool(row.restricted),
        "crm_records": [
            {
                "connector": link.connector,
                "object": link.object_type,
                "record_id": link.record_id,
                "status": "live" if link.gone_at is None else ("merged" if link.merged_into else "gone"),
            }
            for link in conn.execute(links)
        ],
    }
