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
     "linked_at", "gone_at", "changed_at", "restricted_since"}
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
# Each restriction of processing (Art. 18) placed or lifted, from the audit log: when, by whom
# (the actor the ops command or console named), from where, and the reason given.
RESTRICTION_COLUMNS = ["change", "restricted", "changed_at", "actor", "source", "reason"]
_RESTRICTION_ACTIONS = {"subject.restricted": "placed", "subject.restriction_lifted": "lifted"}
# The current restriction, on the summary (JSON keys, XLSX "Subject" rows): None when not restricted.
RESTRICTION_SUMMARY = ("restricted_since", "restricted_by", "restriction_reason")
# Every address (and other identifier) the person is held under, the latest first: the view's
# ``email`` is only the one the export was asked by.
IDENTIFIER_COLUMNS = ["identifier_kind", "identifier"]

_SECTIONS = (
    ("state", "Effective state", "purposes", STATE_COLUMNS),
    ("event", "History", "history", HISTORY_COLUMNS),
    ("objection", "Objections", "objections", OBJECTION_COLUMNS + OBJECTION_DECISION_COLUMNS),
    ("crm_record", "CRM records", "crm_records", LINK_COLUMNS),
    ("restriction", "Restrictions", "restrictions", RESTRICTION_COLUMNS),
    ("identifier", "Identifiers", "identifiers", IDENTIFIER_COLUMNS),
)

# Columns added to a part after its first release: in the CSV they follow every older column, so
# that a reader going by position keeps working (the XLSX sheet and the JSON carry them in their
# part).
_ADDED_LATER = (*OBJECTION_DECISION_COLUMNS, *IDENTIFIER_COLUMNS)


def with_restrictions(ledger: Ledger, view: dict[str, Any]) -> dict[str, Any]:
    """``view`` (``Ledger.subject_view``) as exported, with what the audit log adds: the
    restrictions of processing (Art. 18; ``restrictions``, every one placed or lifted, oldest
    first, and the current one's ``restricted_since``, ``restricted_by`` and
    ``restriction_reason``) and each objection's ``decision_reason`` (``with_objection_reasons``).
    The export goes to the person (or to ops answering them): the reasons are theirs to see."""
    from consentsync.ledger.engine import reading  # the ledger only where it is read

    with reading(ledger.engine) as conn:
        trail = restriction_trail(conn, view["subject"])
        reasons = objection_reasons(conn, view["subject"])
    return add_objection_reasons(add_restrictions(view, trail), reasons)


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
