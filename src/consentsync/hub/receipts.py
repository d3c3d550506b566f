"""Consent receipts: what a person is given back for each grant, withdrawal or refusal made
through the capture API or the preference centre, mailed and downloadable.

The structure follows the consent record and receipt elements of ISO/IEC TS 27560:2023 (as the
W3C DPV community group's guide to it names them, in snake case): the receipt and record ids,
the PII principal (by uid, never the address), the controller, the notice presented (version,
language, content hash), the purposes with their legal basis, and the events with their time,
type, who acted and the resulting state. A receipt is made again from the ledger's event row on
request, so the one downloaded later is the one that was mailed (but for receipt_timestamp)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import select

from consentsync.domain import iso
from consentsync.ledger.schema import consent_events, subjects
from consentsync.ledger.service import Ledger, NotFound
from consentsync.notice_texts import Notice, text_shown, texts_of
from consentsync.reconcile import serves_direct_marketing

SCHEMA_VERSION = "ISO/IEC TS 27560:2023; consentsync receipt 1"
# Receipt ids are derived from the record they describe, so a receipt made again has the same id.
_NAMESPACE = uuid.UUID("7f1f3c9e-2b1d-4a57-9a3e-4d6a2f1c0b18")
# ISO/IEC TS 27560's event states, from the ledger's statuses.
EVENT_STATES = {
    "granted": "given",
    "withdrawn": "withdrawn",
    "refused": "refused",
    "requested": "requested",
    "expired": "expired",
}
RECEIPTED = ("granted", "withdrawn", "refused")


def receipt(
    ledger: Ledger,
    controller: dict[str, Any],
    uid: str,
    event: Any,
    notice: Notice | None,
    language: str = "en",
) -> dict[str, Any]:
    """The receipt of one ledger event row (``consent_events``)."""
    purpose = ledger.purposes.get(event.purpose)
    return {
        "schema_version": SCHEMA_VERSION,
        "receipt_id": str(uuid.uuid5(_NAMESPACE, f"{uid}/{event.fingerprint}")),
        "receipt_timestamp": iso(ledger.clock()),
        "language": language,
        "record_id": event.fingerprint,
        "pii_principal_id": uid,
        "pii_controller": controller,
        "notice": (
            {
                "notice_id": f"{notice.purpose}/{notice.version}",
                "version": notice.version,
                "language": notice.language,
                "content_sha256": notice.sha256,
            }
            if notice
            else (
                {"notice_id": f"{event.purpose}/{event.notice_version}", "version": event.notice_version}
                if event.notice_version
                else None
            )
        ),
        "purposes": [
            {
                "purpose_id": event.purpose,
                "purpose": purpose.name if purpose else event.purpose,
                "legal_basis": event.basis or (purpose.default_basis.value if purpose else None),
                "channel": event.channel,
                # As the ledger reads it (Art. 21(2)): marketing by electronic mail under the
                # ePrivacy rules and profiling for direct marketing are direct marketing too.
                "direct_marketing": serves_direct_marketing(purpose) if purpose else None,
            }
        ],
        "events": [
            {
                "event_time": iso(event.event_time or event.recorded_at),
                "event_type": "explicit" if event.status in ("granted", "requested") else event.status,
                "event_by": "pii_principal",
                "event_state": EVENT_STATES.get(event.status, event.status),
                "collection_method": event.source,
                "double_opt_in_at": iso(event.double_opt_in_at) if event.double_opt_in_at else None,
                "evidence_ref": event.evidence_ref,
            }
        ],
    }


def controller_of(branding: Any) -> dict[str, Any]:
    return {
        "name": branding.name,
        "contact": branding.contact_email,
        "privacy_policy": branding.privacy_policy_url,
    }


def find(ledger: Ledger, branding: Any, uid: str, record_id: str, language: str = "en") -> dict[str, Any]:
    """The receipt of the event ``record_id`` of person ``uid`` in ``language`` (raises
    ``NotFound``). The notice it names is the text shown by the event's time (``text_shown``:
    in the language the event recorded as shown, else the version's first text), the same in
    every language and in the DSAR export."""
    with ledger.engine.connect() as conn:
        event = conn.execute(
            select(consent_events)
            .join(subjects, subjects.c.id == consent_events.c.subject_id)
            .where(subjects.c.uid == uid, consent_events.c.fingerprint == record_id)
        ).first()
        if event is None:
            raise NotFound(f"no consent record {record_id!r} for this person")
        texts = texts_of(conn, event.purpose, event.notice_version) if event.notice_version else []
    # The text shown is the event's, never the reader's: ``language`` words the receipt only, and
    # a text registered after the event (in any language) is not what the person was shown.
    notice = text_shown(texts, event.event_time or event.recorded_at, event.notice_language)
    return receipt(ledger, controller_of(branding), uid, event, notice, language)


def as_attachment(document: dict[str, Any]) -> tuple[str, bytes, str]:
    name = f"consent-receipt-{document['receipt_id']}.json"
    return name, orjson.dumps(document, option=orjson.OPT_INDENT_2), "application/json"
