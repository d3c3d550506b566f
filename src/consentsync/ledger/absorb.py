"""One person, not two: a person the ledger knows only through CRM records that carry no address
is absorbed into the person holding an address, once a record ties the two (docs/policy.md, "A
person known only through records without an address").

A CRM record that carries no address (a record standing for the person, the consent records
pointing to it) makes a person of its own when no record the ledger knows points to it yet. Read
in another order (the record carrying the address first), the same records are the address
holder's. The ledger must not depend on that order: when a record ties the address-less person A
to the address holder P (a record pointing to A's record and carrying P's address; a record of P
newly pointing to A's record), A's records are P's, and so is what they said. This module finds
the pairs that may be absorbed and does the absorption's SQL: A's CRM links move to P, their
pending pushes with them, and one ``subject.absorbed`` entry on P's trail names A and the
records moved. A's consent events are handed back, as recorded, for the caller to record for P
(new events with their own ``consent.recorded`` entries: ``audit verify`` holds the events to
the chain by person, so the events themselves are never re-pointed); A's upheld objections and
restriction are the caller's to carry, as a merge carries them.

Never absorbed: a person holding an address (of any kind, or an erased one's hash: they are
someone), an erased person, one with an objection still pending review (its decision belongs to
them), and one the evidence ties to two address holders, or whose records were last read showing
an address other than the holder's (two people may then be pooled on a guess), or whose record
another person's records already point to (a record shared: ``SHARED_KEY``, sync/shared.py: an
Individual the Contacts of two addresses point to, read on two pages or runs); nor one tied only
by a record carrying an address its holder left (the sync leaves such ties out:
``engine._tied_through_left``). Nothing is read per record: the caller names the few pairs a
page's records tie, and only those are looked up. Nor is anyone absorbed into an erased person:
the erasure reaches A's records through the record tying them instead (``absorbable``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, bindparam, select, update

from consentsync import audit
from consentsync.audit import AuditRecord
from consentsync.domain import Evidence, ObjectionStatus, canonical_json, email_forms
from consentsync.ledger.bulk import one_of, upsert_rows
from consentsync.ledger.schema import (
    consent_events,
    crm_links,
    crm_snapshots,
    objections,
    outbox,
    subject_identifiers,
    subjects,
    sync_examine,
)
from consentsync.ledger.service import _event_evidence
from consentsync.ledger.shared_marker import sharing

log = structlog.get_logger("consentsync.ledger")


RULE = "one_person_proven"


@dataclass(frozen=True, slots=True)
class Absorption:
    """Person ``absorbed`` (no address) taken into person ``into`` (the address holder)."""

    absorbed: int
    into: int
    # The absorbed person's consent events as the evidence they recorded, oldest first: the
    # caller records them for ``into``.
    evidence: list[Evidence]


def no_address(hashed: Callable[[str], str]) -> str:
    """The snapshot identity of a record that shows no address (``_identity_digests``: a value
    that is no text, as its JSON text after a NUL)."""
    return hashed("\0" + canonical_json(None))


def absorbable(
    conn: Connection, ties: Iterable[tuple[int, int]], hashed: Callable[[str], str]
) -> dict[int, int]:
    """Of the pairs of people a page's records tie together (either order), the address-less
    people to absorb, each with the one address holder to absorb them into. ``hashed``: the
    ledger's keyed hash (``Ledger.keyed_hasher``), as the snapshots keep addresses."""
    pairs = {(a, b) for a, b in ties if a != b}
    if not pairs:
        return {}
    people = sorted({person for pair in pairs for person in pair})
    rows = {
        row.id: row
        for row in conn.execute(
            select(subjects.c.id, subjects.c.uid, subjects.c.erased_at, subjects.c.suppression_id).where(
                one_of(conn, subjects.c.id, people)
            )
        )
    }
    addresses: dict[int, set[str]] = {}
    for subject_id, value in conn.execute(
        select(subject_identifiers.c.subject_id, subject_identifiers.c.value).where(
            one_of(conn, subject_identifiers.c.subject_id, people)
        )
    ):
        addresses.setdefault(subject_id, set()).add(value)

    def someone(person: int) -> bool:
        # Known by an address: one held, or an erased one (its keyed hash, its erasure mark).
        row = rows[person]
        return person in addresses or row.erased_at is not None or row.suppression_id is not None

    holders: dict[int, set[int]] = {}
    for a, b in pairs:
        if someone(a) != someone(b):
            lone, holder = (b, a) if someone(a) else (a, b)
            holders.setdefault(lone, set()).add(holder)
    found: dict[int, int] = {}
    for lone, held_by in sorted(holders.items()):
        if len(held_by) > 1:
            # Two people known by an address: whose records these are is a guess, and two
            # people are never pooled on one. The records stay where they are, shared: their
            # person's nos reach each holder (sync/shared.py, engine._carry_the_nos).
            log.warning(
                "ledger.absorption_ambiguous",
                subject=rows[lone].uid,
                holders=sorted(rows[person].uid for person in held_by),
            )
            continue
        (holder,) = held_by
        # Only into a live address holder: an erased person's hash on a record is not them
        # coming back. The records stay where they are, shared with the erased person
        # (sync/shared.py), and the erasure reaches them as it would had they been read after
        # the erased person's record: their person, known by them alone, takes on the erasure
        # of everyone sharing them once all are erased, and the erasure's action reaches them
        # (engine._tell_the_erasures, engine._erased_sharers_reach).
        if holder in addresses and rows[holder].erased_at is None:
            found[lone] = holder
    if not found:
        return {}
    pending = set(
        conn.execute(
            select(objections.c.subject_id).where(
                one_of(conn, objections.c.subject_id, sorted(found)),
                objections.c.status == ObjectionStatus.PENDING.value,
            )
        ).scalars()
    )
    # The addresses each absorbed person's records were last read showing: none, or the holder's;
    # and the people whose records point to theirs: none, or the holder.
    shown: dict[int, set[str]] = {}
    shared_with: dict[int, set[int]] = {}
    for subject_id, identity, fields in conn.execute(
        select(crm_links.c.subject_id, crm_snapshots.c.identity, crm_snapshots.c.fields)
        .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
        .where(one_of(conn, crm_links.c.subject_id, sorted(found)))
    ):
        others = sharing(fields)
        if identity is not None or not others:  # one made only to name them shows nothing
            shown.setdefault(subject_id, set()).add(identity)
        shared_with.setdefault(subject_id, set()).update(others)
    blank = no_address(hashed)
    for lone, holder in sorted(found.items()):
        theirs = {blank} | {hashed(form) for value in addresses[holder] for form in email_forms(value)}
        reason = "objection_pending" if lone in pending else None
        if shown.get(lone, set()) - theirs:
            reason = "another_address"
        elif shared_with.get(lone, set()) - {holder}:
            reason = "shared"
        if reason is not None:
            log.warning(
                "ledger.absorption_refused", subject=rows[lone].uid, into=rows[holder].uid, reason=reason
            )
            del found[lone]
    return found


def absorb(
    conn: Connection, found: dict[int, int], now: datetime, *, run_id: str | None, source: str
) -> list[Absorption]:
    """Absorbs each person of ``found`` (``absorbable``) into theirs, in ``conn``'s transaction:
    their CRM links and pending pushes move, every connector holding a moved record examines the
    holder's pushes again, and the holder's trail says so (``subject.absorbed``, before the
    events the caller records for them). Returns what the caller records and carries."""
    if not found:
        return []
    absorbed = sorted(found)
    uids = dict(
        conn.execute(
            select(subjects.c.id, subjects.c.uid).where(
                one_of(conn, subjects.c.id, [*absorbed, *found.values()])
            )
        ).all()
    )
    links: dict[int, list[Any]] = {}
    for row in conn.execute(
        select(crm_links.c.subject_id, crm_links.c.connector, crm_links.c.object_type, crm_links.c.record_id)
        .where(one_of(conn, crm_links.c.subject_id, absorbed))
        .order_by(crm_links.c.id)
    ):
        links.setdefault(row.subject_id, []).append(row)
    evidence: dict[int, list[Evidence]] = {}
    for row in conn.execute(
        select(consent_events)
        .where(one_of(conn, consent_events.c.subject_id, absorbed))
        .order_by(consent_events.c.id)
    ):
        evidence.setdefault(row.subject_id, []).append(_event_evidence(row))
    records: list[AuditRecord] = []
    examine: set[tuple[str, int]] = set()
    done: list[Absorption] = []
    for lone in absorbed:
        holder = found[lone]
        conn.execute(update(crm_links).where(crm_links.c.subject_id == lone).values(subject_id=holder))
        moved = links.get(lone, [])
        if moved:
            # A push decided on the absorbed person's states and not sent yet is the holder's now:
            # the holder's examination supersedes it (or keeps it, where it is still what is
            # owed). By record, through the outbox's record index (it has none by person).
            conn.execute(
                update(outbox)
                .where(
                    outbox.c.connector == bindparam("link_connector"),
                    outbox.c.object_type == bindparam("link_object"),
                    outbox.c.record_id == bindparam("link_record"),
                    outbox.c.subject_id == lone,
                    outbox.c.status == "pending",
                )
                .values(subject_id=holder),
                [
                    {
                        "link_connector": row.connector,
                        "link_object": row.object_type,
                        "link_record": row.record_id,
                    }
                    for row in moved
                ],
            )
        examine |= {(row.connector, holder) for row in moved}
        items = evidence.get(lone, [])
        records.append(
            AuditRecord(
                "subject.absorbed",
                {
                    "absorbed": uids[lone],
                    "crm_records": [
                        {"connector": row.connector, "object": row.object_type, "id": row.record_id}
                        for row in moved
                    ],
                    # The statements recorded for the holder as the absorbed person's, by
                    # fingerprint: each has its own consent.recorded entry after this one.
                    "event_fingerprints": sorted({item.fingerprint() for item in items}),
                },
                old={"subject": uids[lone]},
                new={"subject": uids[holder]},
                rule=RULE,
                source=source,
                actor="consentsync",
                run_id=run_id,
                subject_uid=uids[holder],
                subject_id=holder,
            )
        )
        done.append(Absorption(lone, holder, items))
    upsert_rows(
        conn,
        sync_examine,
        ("connector", "subject_id"),
        ("connector", "subject_id"),
        sorted(examine),
        update=False,
    )
    audit.append(conn, records, now)
    log.info("ledger.subjects_absorbed", subjects=len(done), run_id=run_id)
    return done
