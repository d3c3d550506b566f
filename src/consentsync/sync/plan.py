"""What a run would push, as a plan an admin reviews before anything is written to a CRM.

A plan lists, per CRM record, the fields a push would change (old -> new), the rule that decided
it and a masked identifier the admin can recognise (``jo***@ex***.com``); its digest covers
everything a push depends on (record, action, old and new values, rule), so that ``apply`` can
refuse a plan that the ledger or the CRM has changed underneath.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, select

from consentsync.domain import canonical_json
from consentsync.ledger.schema import crm_links, crm_snapshots, subject_identifiers
from consentsync.mapping import Mapping

__all__ = ["Plan", "PlanItem", "mask_email", "restricting"]


@dataclass(frozen=True, slots=True)
class PlanItem:
    object_type: str
    record_id: str
    who: str  # a masked email address, never the address itself
    action: str  # update or delete
    old: dict[str, Any]
    new: dict[str, Any]
    rule: str | None
    outbox_id: int = field(default=0, compare=False)

    def key(self) -> list[Any]:
        """What the push depends on (not the outbox row id, which a re-plan renumbers)."""
        return [self.object_type, self.record_id, self.action, self.old, self.new, self.rule]


@dataclass(slots=True)
class Plan:
    connector: str
    items: list[PlanItem]

    @property
    def digest(self) -> str:
        keys = sorted((item.key() for item in self.items), key=canonical_json)
        return hashlib.sha256(
            canonical_json({"connector": self.connector, "items": keys}).encode()
        ).hexdigest()

    def changes(self) -> list[dict[str, Any]]:
        """Counts per object, field and new value (the adoption report)."""
        counted: Counter[tuple[str, str, str]] = Counter()
        for item in self.items:
            if item.action == "delete":
                counted[(item.object_type, "(record)", "deleted")] += 1
            for name, value in item.new.items():
                counted[(item.object_type, name, canonical_json(value))] += 1
        return [
            {"object": obj, "field": name, "new": value, "records": n}
            for (obj, name, value), n in sorted(counted.items())
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "connector": self.connector,
            "digest": self.digest,
            "records": len(self.items),
            "changes": self.changes(),
            "items": [{k: v for k, v in asdict(item).items() if k != "outbox_id"} for item in self.items],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        items = [
            PlanItem(
                str(item["object_type"]),
                str(item["record_id"]),
                str(item.get("who", "")),
                str(item.get("action", "update")),
                dict(item.get("old") or {}),
                dict(item.get("new") or {}),
                item.get("rule"),
            )
            for item in data["items"]
        ]
        return cls(str(data["connector"]), items)


# Shown for a field whose value before the push the ledger does not keep (personal data).
NOT_KEPT = "(not kept: personal data)"


def mask_email(email: str | None) -> str:
    """``jo***@ex***.com``: enough for an admin to recognise a person, not to learn an address."""
    if not email or "@" not in email:
        return "(no address)"
    local, _, domain = email.partition("@")
    host, dot, tld = domain.rpartition(".")
    if not dot:
        host, tld = domain, ""
    return f"{local[:2]}***@{host[:2]}***{'.' + tld if tld else ''}"


def plan_items(conn: Connection, connector: str, rows: list[Any]) -> list[PlanItem]:
    """Plan items for pending outbox rows: old values from the record's snapshot, the person's
    masked address."""
    if not rows:
        return []
    emails: dict[int, str] = {}
    for row in conn.execute(
        select(subject_identifiers.c.subject_id, subject_identifiers.c.value).where(
            subject_identifiers.c.kind == "email",
            subject_identifiers.c.subject_id.in_(sorted({r.subject_id for r in rows})),
        )
    ):
        emails.setdefault(row.subject_id, row.value)
    known: dict[tuple[str, str], dict[str, Any]] = {}
    for object_type in sorted({r.object_type for r in rows}):
        ids = sorted({r.record_id for r in rows if r.object_type == object_type})
        for link in conn.execute(
            select(crm_links.c.record_id, crm_snapshots.c.fields)
            .outerjoin(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
            .where(
                crm_links.c.connector == connector,
                crm_links.c.object_type == object_type,
                crm_links.c.record_id.in_(ids),
            )
        ):
            known[(object_type, link.record_id)] = orjson.loads(link.fields) if link.fields else {}
    items = []
    for row in rows:
        new = orjson.loads(row.fields)
        snapshot = known.get((row.object_type, row.record_id), {})
        items.append(
            PlanItem(
                row.object_type,
                row.record_id,
                mask_email(emails.get(row.subject_id)),
                row.action,
                # Only what the snapshot keeps: consent fields. A personal field an erasure
                # clears (an address, a name) was never kept, so its old value is not known here,
                # and None would read as "empty already" (NOT_KEPT where shown).
                {name: snapshot[name] for name in new if name in snapshot},
                new,
                row.rule,
                row.id,
            )
        )
    return items


def restricting(mapping: Mapping, updates: dict[str, Any]) -> dict[str, Any]:
    """The part of ``updates`` that restricts processing: status fields set to the value the
    mapping pushes for a suppressed (or withdrawn) person. Lawful bases and allowances are left
    out (``suppress_only`` mode)."""
    from consentsync.mapping import crm_key

    restricting_values: dict[str, set[Any]] = {}
    for consent in mapping.spec.consents:
        push = consent.status.push if consent.status.direction.pushes else None
        if not push:
            continue
        values = {crm_key(push[case]) for case in ("suppressed", "withdrawn") if case in push}
        if "allowed" in push:
            values.discard(crm_key(push["allowed"]))
        restricting_values.setdefault(consent.status.field, set()).update(values)
    return {
        name: value
        for name, value in updates.items()
        if crm_key(value) in restricting_values.get(name, set())
    }
