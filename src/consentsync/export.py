"""A subject's record as a file: JSON (everything), CSV (one table) or XLSX (a sheet per part).

This is what a subject access request (Art. 15) or a regulator asks for. Every file opens for
any value the ledger holds (rule 8), older data included: JSON and CSV carry the text as it is
(a character UTF-8 cannot carry is written as its backslash escape), XLSX shows each character
XML 1.0 cannot carry as its visible Unicode control picture (U+0001 as U+2401), and no cell is
longer than a spreadsheet accepts.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consentsync.domain import EffectiveState

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Connection

    from consentsync.ledger.service import Ledger

FORMATS = ("json", "csv", "xlsx")
XLSX_CELL_MAX = 32767  # Excel's limit on the characters of one cell
# What an XLSX (XML 1.0) cell cannot carry: C0 controls but tab, line feed and carriage return;
# lone surrogates; the noncharacters U+FFFE and U+FFFF.
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# A time as the ledger writes it (domain.iso): UTC, with a Z.
_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")
XLSX_TIME_FORMAT = 'yyyy-mm-dd hh:mm:ss "UTC"'  # Excel has no zones: the format says it
TIME_COLUMNS = frozenset(
    {"since", "expires_at", "event_time", "recorded_at", "double_opt_in_at", "raised_at", "decided_at",
     "linked_at", "gone_at", "changed_at", "restricted_since", "received_at", "status_at"}
)  # fmt: skip
# Spreadsheets run a cell starting with one of these as a formula (CSV/formula injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

# A person's effective states as the subject view shows them (EffectiveState.as_dict): every field
# but what the evidence alone says and whether it stated the basis, which only the engine reads.
STATE_COLUMNS = [
    field.name for field in fields(EffectiveState) if field.name not in ("evidence_status", "basis_stated")
]
HISTORY_COLUMNS = [
    "purpose",
    "channel",
    "status",
    "basis",
    "event_time",
    "recorded_at",
    "source",
    "origin",
    "actor",
    "notice_version",
    "notice_sha256",  # the text shown, from the hub's notice registry (empty when unregistered)
    "double_opt_in_at",
    "evidence_ref",
    "soft_opt_in",  # the PECR / ePrivacy soft opt-in's conditions, as JSON (empty for others)
    "run_id",
]
# The language of the text notice_sha256 names (the one recorded as shown, migration 0021; for
# an event recorded without one, the version's first text's).
HISTORY_LANGUAGE_COLUMNS = ["notice_language"]
# How far the CRM clock that stamped the event may have run behind ours when it was read (whole
# milliseconds, migration 0026; empty where not known to run behind): a no counts up to that much
# after its event_time, which is why it can outrank a consent stamped a little later.
HISTORY_CLOCK_COLUMNS = ["clock_lag_ms"]
OBJECTION_COLUMNS = [
    "id",
    "purpose",
    "direct_marketing",
    "status",
    "raised_at",
    "source",
    "decided_by",
    "decided_at",
]
# Why an objection was upheld or rejected on review (``objection decide --reason``), from the audit
# log: the person is owed the reasons for not acting on their objection (Art. 12(4), Art. 21(1)).
# None for one the policy decided (Art. 21(2), auto_uphold), one pending, and once the details
# were erased (Art. 17).
OBJECTION_DECISION_COLUMNS = ["decision_reason"]
LINK_COLUMNS = ["connector", "object", "record_id", "linked_at", "status", "gone_at", "merged_into"]
# Whose each CRM record is: the person's own, or another person's record last read showing one of
# the person's addresses (edited in the CRM to hold it). The ledger takes such a record for one
# holding the person's data (their erasure and restriction reach it), so the person is told of
# it (Art. 15(1)); of the other person's record, only which one it is (connector, object, id).
LINK_HOLDER_COLUMNS = ["record_of"]
OWN_RECORD = "this person"
ANOTHER_PERSONS_RECORD = "another person, showing this person's address"
# Each restriction of processing (Art. 18) placed or lifted, from the audit log: when, by whom
# (the actor the ops command or console named), from where, and the reason given.
RESTRICTION_COLUMNS = ["change", "restricted", "changed_at", "actor", "source", "reason"]
_RESTRICTION_ACTIONS = {"subject.restricted": "placed", "subject.restriction_lifted": "lifted"}
# The current restriction, on the summary (JSON keys, XLSX "Subject" rows): None when not restricted.
RESTRICTION_SUMMARY = ("restricted_since", "restricted_by", "restriction_reason")
# Every address (and other identifier) the person is held under, the latest first: the view's
# ``email`` is only the one the export was asked by.
IDENTIFIER_COLUMNS = ["identifier_kind", "identifier"]
# When the person left the address (a CRM record of theirs took another; empty: held).
IDENTIFIER_LEFT_COLUMNS = ["left_at"]
# Every request the person made of their rights that the ledger holds, oldest first (Art. 15, and
# Art. 12(3): when each came and how it was answered): ``request`` access (a copy downloaded from
# the preference page), erasure, restriction (asked for on the preference page, each to be
# confirmed by a mailed link), objection (as in the Objections part). ``ground`` as recorded (a
# restriction's Art. 18(1) ground; whether an objection is one to direct marketing), ``reason``
# the one ops gave deciding an objection on review. ``status``, as of the export: pending
# (waiting for the person's confirmation, or an objection for review), done (confirmed; an
# objection upheld; an access answered), rejected (an objection), expired (the mailed link was
# not followed in time: nothing done), not_sent (the confirmation mail could not be sent: nothing
# done); ``status_at`` when it became so.
REQUEST_COLUMNS = ["request", "purpose", "received_at", "ground", "status", "status_at", "source", "reason"]
# The requests confirmed by a mailed link: the preference page's (hub/preferences.py).
_CONFIRMED_REQUESTS = ("erasure", "restriction")
_OBJECTION_STATUS = {"pending": "pending", "upheld": "done", "rejected": "rejected"}

_SECTIONS = (
    ("state", "Effective state", "purposes", STATE_COLUMNS),
    ("event", "History", "history", HISTORY_COLUMNS + HISTORY_LANGUAGE_COLUMNS + HISTORY_CLOCK_COLUMNS),
    ("objection", "Objections", "objections", OBJECTION_COLUMNS + OBJECTION_DECISION_COLUMNS),
    ("crm_record", "CRM records", "crm_records", LINK_COLUMNS + LINK_HOLDER_COLUMNS),
    ("restriction", "Restrictions", "restrictions", RESTRICTION_COLUMNS),
    ("identifier", "Identifiers", "identifiers", IDENTIFIER_COLUMNS + IDENTIFIER_LEFT_COLUMNS),
    ("request", "Requests", "requests", REQUEST_COLUMNS),
)

# Columns added to a part after its first release: in the CSV they follow every older column, so
# that a reader going by position keeps working (the XLSX sheet and the JSON carry them in their
# part).
_ADDED_LATER = (
    *OBJECTION_DECISION_COLUMNS,
    *IDENTIFIER_COLUMNS,
    *LINK_HOLDER_COLUMNS,
    # the requests' own (purpose, status, source and reason are older columns, shared)
    "request",
    "received_at",
    "ground",
    "status_at",
    *HISTORY_LANGUAGE_COLUMNS,
    *IDENTIFIER_LEFT_COLUMNS,
    *HISTORY_CLOCK_COLUMNS,
)


def with_restrictions(ledger: Ledger, view: dict[str, Any]) -> dict[str, Any]:
    """``view`` (``Ledger.subject_view``) as exported (every export: the CLI's, the console's,
    the preference page's), with what the audit log and the hub's tables add: the restrictions
    of processing (Art. 18; ``restrictions``, every one placed or lifted, oldest first, and the
    current one's ``restricted_since``, ``restricted_by`` and ``restriction_reason``), each
    objection's ``decision_reason`` (``with_objection_reasons``), the person's requests
    (``requests``, ``person_requests``) and, among the CRM records, the other people's records
    last read showing one of the person's addresses (``records_showing``). The export goes to the
    person (or to ops answering them): the reasons are theirs to see."""
    from consentsync.ledger.engine import reading  # the ledger only where it is read

    with reading(ledger.engine) as conn:
        trail = restriction_trail(conn, view["subject"])
        reasons = objection_reasons(conn, view["subject"])
        asked = person_requests(conn, view["subject"], ledger.clock())
        elsewhere = records_showing(conn, view, ledger.keyed_hasher())
    exported = add_objection_reasons(add_restrictions(view, trail), reasons)
    own = [{**link, "record_of": OWN_RECORD} for link in exported["crm_records"]]
    return {
        **exported,
        "crm_records": own + elsewhere,
        "requests": _oldest_first(asked + _objection_requests(exported["objections"])),
    }


def person_requests(conn: Connection, subject_uid: str, now: datetime) -> list[dict[str, Any]]:
    """The requests one person made of the ledger outside their objections (``REQUEST_COLUMNS``):
    each erasure and restriction asked for on the preference page, from the row its mailed link
    confirms (kept with the request's audit entry, ``subject.erasure_requested`` or
    ``subject.restriction_requested``, in one transaction: the row also says what became of it),
    and each copy of their record they downloaded there (``subject.exported`` by the data
    subject: an access request, answered at once). An export ops made is not listed: the ledger
    does not say who asked for it."""
    from sqlalchemy import select

    from consentsync import audit
    from consentsync.domain import iso
    from consentsync.ledger.schema import confirmations, subjects

    found: list[dict[str, Any]] = []
    rows = conn.execute(
        select(confirmations)
        .join(subjects, subjects.c.id == confirmations.c.subject_id)
        .where(subjects.c.uid == subject_uid, confirmations.c.kind.in_(_CONFIRMED_REQUESTS))
        .order_by(confirmations.c.id)
    )
    for row in rows:
        status, status_at = _confirmation_status(row, now)
        found.append(
            {
                "request": row.kind,
                "purpose": None,
                "received_at": iso(row.requested_at),
                # A restriction's ground is kept in the row's channel column (hub/preferences.py)
                "ground": row.channel if row.kind == "restriction" else None,
                "status": status,
                "status_at": iso(status_at),
                "source": row.source,
                "reason": None,
            }
        )
    for entry in audit.entries(conn, subject_uids=[subject_uid], action="subject.exported"):
        if entry.get("actor") != "data subject":  # ops' reads: the person's own only
            continue
        found.append(
            {
                "request": "access",
                "purpose": None,
                "received_at": entry.get("at"),
                "ground": None,
                "status": "done",
                "status_at": entry.get("at"),
                "source": entry.get("source"),
                "reason": None,
            }
        )
    return found


def _confirmation_status(row: Any, now: datetime) -> tuple[str, datetime | None]:
    """What became of a request confirmed by a mailed link, as of ``now``, and since when. A row
    closed (``lapsed_at``) before its link's expiry is one whose mail did not go (the preference
    centre's ``_unsent``); the hub's upkeep closes the others at or after it."""
    from consentsync.domain import as_utc

    expires = as_utc(row.expires_at)
    if row.confirmed_at is not None:
        return "done", as_utc(row.confirmed_at)
    if row.lapsed_at is not None and as_utc(row.lapsed_at) < expires:
        return "not_sent", as_utc(row.lapsed_at)
    if row.lapsed_at is not None or expires <= now:
        return "expired", expires
    return "pending", None


def _objection_requests(objections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each objection (``with_objection_reasons``'s) as a request: one the person raised, by
    whatever way it came (the preference page, the capture API, ops entering it)."""
    return [
        {
            "request": "objection",
            "purpose": item["purpose"],
            "received_at": item["raised_at"],
            "ground": "direct marketing (Art. 21(2))" if item["direct_marketing"] else "Art. 21(1)",
            "status": _OBJECTION_STATUS.get(item["status"], item["status"]),
            "status_at": item["decided_at"],
            "source": item["source"],
            "reason": item.get("decision_reason"),
        }
        for item in objections
    ]


def _oldest_first(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``requests`` by when each came (as times: an ISO text with a fraction sorts before the
    same second without one)."""

    def received(item: dict[str, Any]) -> datetime:
        moment = _utc_time(item["received_at"])
        return moment if moment is not None else datetime.min

    return sorted(requests, key=received)


def records_showing(
    conn: Connection, view: dict[str, Any], hashed: Callable[[str], str]
) -> list[dict[str, Any]]:
    """The live CRM records of other people last read showing one of the addresses ``view``'s
    person holds, in any of its forms (``email_forms``), by the keyed hash their snapshot keeps
    of the address as read (``crm_snapshots.identity``: the sync hashes it as an erasure does,
    ``hashed`` is the erasure key's HMAC), as ``Ledger._holders`` finds them for an erasure or a
    restriction. Of each, which record it is and nothing else of its person's."""
    from sqlalchemy import select

    from consentsync.domain import email_forms
    from consentsync.ledger.schema import crm_links, crm_snapshots, subjects

    digests = sorted(
        {
            hashed(form)
            for item in view["identifiers"]
            if item["identifier_kind"] == "email"
            for form in email_forms(item["identifier"])
        }
    )
    if not digests:
        return []
    rows = conn.execute(
        select(crm_links.c.connector, crm_links.c.object_type, crm_links.c.record_id)
        .join(crm_snapshots, crm_snapshots.c.link_id == crm_links.c.id)
        .join(subjects, subjects.c.id == crm_links.c.subject_id)
        .where(
            crm_snapshots.c.identity.in_(digests),
            crm_links.c.gone_at.is_(None),
            subjects.c.uid != view["subject"],
        )
        .order_by(crm_links.c.id)
    )
    return [
        {"connector": row.connector, "object": row.object_type, "record_id": row.record_id,
         "record_of": ANOTHER_PERSONS_RECORD}
        for row in rows
    ]  # fmt: skip


def with_objection_reasons(ledger: Ledger, view: dict[str, Any]) -> dict[str, Any]:
    """``view`` with each objection's ``decision_reason``: the reason ops gave when they upheld
    or rejected it on review (``objection decide --reason``), which only the audit log keeps."""
    from consentsync.ledger.engine import reading

    with reading(ledger.engine) as conn:
        return add_objection_reasons(view, objection_reasons(conn, view["subject"]))


def objection_reasons(conn: Connection, subject_uid: str) -> dict[int, str | None]:
    """The reason given for each of one person's objections decided on review, by objection id
    (the latest decision's; None once the details were erased, Art. 17)."""
    from consentsync import audit

    found: dict[int, str | None] = {}
    for entry in audit.entries(conn, subject_uids=[subject_uid], action="objection.decided"):
        objection_id = (entry.get("what") or {}).get("objection")
        if isinstance(objection_id, int):
            found[objection_id] = (entry.get("details") or {}).get("reason")
    return found


def add_objection_reasons(view: dict[str, Any], reasons: dict[int, str | None]) -> dict[str, Any]:
    """``view`` with ``decision_reason`` on each of its objections (None where none was given)."""
    objections = [{**item, "decision_reason": reasons.get(item["id"])} for item in view["objections"]]
    return {**view, "objections": objections}


def restriction_trail(conn: Connection, subject_uid: str) -> list[dict[str, Any]]:
    """Every restriction placed on or lifted from one person, oldest first, from the audit log."""
    from consentsync import audit

    found: list[tuple[int, dict[str, Any]]] = []
    for action, change in _RESTRICTION_ACTIONS.items():
        for entry in audit.entries(conn, subject_uids=[subject_uid], action=action):
            details = entry.get("details") or {}
            found.append(
                (
                    entry["seq"],
                    {
                        "change": change,
                        "restricted": change == "placed",
                        "changed_at": entry.get("at"),
                        "actor": entry.get("actor"),
                        "source": entry.get("source"),
                        # None once the details were erased (Art. 17): the chain keeps the digest
                        "reason": details.get("reason"),
                    },
                )
            )
    return [item for _seq, item in sorted(found, key=lambda pair: pair[0])]


def add_restrictions(view: dict[str, Any], trail: list[dict[str, Any]]) -> dict[str, Any]:
    """``view`` with ``trail`` (``restriction_trail``) and the current restriction's summary: the
    last one placed, when the person is restricted now and no lift came after it."""
    current = trail[-1] if view.get("restricted") and trail and trail[-1]["restricted"] else None
    return {
        **view,
        "restricted_since": current["changed_at"] if current else None,
        "restricted_by": current["actor"] if current else None,
        "restriction_reason": current["reason"] if current else None,
        "restrictions": trail,
    }


def write_export(view: dict[str, Any], fmt: str, path: Path) -> None:
    if fmt == "json":
        text = json.dumps(view, indent=2, ensure_ascii=False) + "\n"
        path.write_text(text, encoding="utf-8", errors="backslashreplace")
    elif fmt == "csv":
        _write_csv(view, path)
    elif fmt == "xlsx":
        _write_xlsx(view, path)
    else:
        raise ValueError(f"unknown export format {fmt!r}: accepted are {', '.join(FORMATS)}")


def _write_csv(view: dict[str, Any], path: Path) -> None:
    """One table: a ``record_type`` column says which part of the record each row belongs to."""
    older = [c for *_, cols in _SECTIONS for c in cols if c not in _ADDED_LATER]
    columns = ["record_type", "subject", *dict.fromkeys([*older, *_ADDED_LATER])]
    with path.open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record_type, _title, key, _cols in _SECTIONS:
            for item in view.get(key) or []:  # a view without restrictions added has none
                writer.writerow({"record_type": record_type, "subject": view["subject"], **_cells(item)})


def _write_xlsx(view: dict[str, Any], path: Path) -> None:
    """A sheet per part. Times are Excel date-times (UTC, formatted), so that they sort and
    compute; every text is a string cell, so that a value starting with ``=`` is shown exactly as
    the ledger holds it and never runs as a formula (no apostrophe added to what the person gets)."""
    from openpyxl import Workbook  # slow to import: only for an XLSX
    from openpyxl.utils import get_column_letter

    book = Workbook()
    summary = book.active
    assert summary is not None
    summary.title = "Subject"
    for row, field in enumerate(
        ("subject", "email", "created_at", "suppressed_by_erasure", "restricted", "as_of")
        + (RESTRICTION_SUMMARY if "restrictions" in view else ()),
        start=1,
    ):
        _put(summary, row, 1, field)
        _put(summary, row, 2, view.get(field))
    summary.column_dimensions["A"].width = 24
    summary.column_dimensions["B"].width = 40
    for _type, title, key, columns in _SECTIONS:
        sheet = book.create_sheet(title)
        for index, column in enumerate(columns, start=1):
            _put(sheet, 1, index, column)
        for row, item in enumerate(view.get(key) or [], start=2):
            for index, column in enumerate(columns, start=1):
                _put(sheet, row, index, item.get(column))
        for index, column in enumerate(columns, start=1):
            wide = 20 if column in TIME_COLUMNS else 12
            sheet.column_dimensions[get_column_letter(index)].width = max(wide, len(column) + 2)
        sheet.freeze_panes = "A2"
    book.save(path)


def _put(sheet: Any, row: int, column: int, value: Any) -> None:
    """One cell, typed: a UTC time as an Excel date-time, a text as a string cell (data type
    ``s``: a spreadsheet never evaluates it), numbers and booleans as they are."""
    if isinstance(value, (dict, list)):  # nested values (a soft opt-in's conditions) as JSON
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    moment = _utc_time(value)
    cell = sheet.cell(row=row, column=column)
    if moment is not None:
        cell.value = moment
        cell.number_format = XLSX_TIME_FORMAT
    elif isinstance(value, str):
        text = _NOT_IN_XML.sub(_picture, value)
        if len(text) > XLSX_CELL_MAX:
            text = text[: XLSX_CELL_MAX - 1] + "\u2026"
        cell.value = text
        cell.data_type = "s"  # set after the value: openpyxl types "=..." as a formula otherwise
    else:
        cell.value = value


def _utc_time(value: Any) -> datetime | None:
    """A time the ledger wrote (``iso``: UTC, ending in Z) as a naive UTC datetime (Excel has no
    zones: the cell's number format says UTC); anything else None."""
    if not isinstance(value, str) or not _ISO_UTC.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value[:-1])
    except ValueError:
        return None


def _cells(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _cell(value) for key, value in item.items()}


def _cell(value: Any) -> Any:
    """A CSV field. CSV has no cell types: a spreadsheet opening the file decides itself what a
    field is and runs one starting with ``=``, ``+``, ``-`` or ``@`` as a formula (CSV/formula
    injection). The only defence that survives the file is the one OWASP recommends, a leading
    apostrophe, so CSV keeps it; XLSX does not need it (its cells are typed, see ``_put``)."""
    if isinstance(value, (dict, list)):  # nested values (a soft opt-in's conditions) as JSON
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str) and value[:1] in _FORMULA_START:
        return "'" + value
    return value


def _picture(match: re.Match[str]) -> str:
    """A character XML cannot carry, made visible: C0 controls as their control pictures
    (U+2400 + code), anything else as the replacement character."""
    code = ord(match.group())
    return chr(0x2400 + code) if code < 0x20 else "\ufffd"
