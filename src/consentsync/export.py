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
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.utils import get_column_letter

FORMATS = ("json", "csv", "xlsx")
XLSX_CELL_MAX = 32767  # Excel's limit on the characters of one cell
# What an XLSX (XML 1.0) cell cannot carry: C0 controls but tab, line feed and carriage return;
# lone surrogates; the noncharacters U+FFFE and U+FFFF.
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Spreadsheets run a cell starting with one of these as a formula (CSV/formula injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

STATE_COLUMNS = [
    "purpose",
    "channel",
    "status",
    "basis",
    "suppressed",
    "rule",
    "since",
    "expires_at",
    "evidenced",
    "detail",
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
LINK_COLUMNS = ["connector", "object", "record_id", "linked_at", "status", "gone_at", "merged_into"]

_SECTIONS = (
    ("state", "Effective state", "purposes", STATE_COLUMNS),
    ("event", "History", "history", HISTORY_COLUMNS),
    ("objection", "Objections", "objections", OBJECTION_COLUMNS),
    ("crm_record", "CRM records", "crm_records", LINK_COLUMNS),
)


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
    columns = ["record_type", "subject", *dict.fromkeys(c for *_, cols in _SECTIONS for c in cols)]
    with path.open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record_type, _title, key, _cols in _SECTIONS:
            for item in view[key]:
                writer.writerow({"record_type": record_type, "subject": view["subject"], **_cells(item)})


def _write_xlsx(view: dict[str, Any], path: Path) -> None:
    book = Workbook()
    summary = book.active
    assert summary is not None
    summary.title = "Subject"
    for field in ("subject", "email", "created_at", "suppressed_by_erasure", "restricted", "as_of"):
        summary.append([field, _xlsx_cell(view.get(field))])
    for _type, title, key, columns in _SECTIONS:
        sheet = book.create_sheet(title)
        sheet.append(columns)
        for item in view[key]:
            sheet.append([_xlsx_cell(item.get(column)) for column in columns])
        for index, column in enumerate(columns, start=1):
            sheet.column_dimensions[get_column_letter(index)].width = max(12, len(column) + 2)
        sheet.freeze_panes = "A2"
    book.save(path)


def _cells(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _cell(value) for key, value in item.items()}


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):  # nested values (a soft opt-in's conditions) as JSON
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str) and value[:1] in _FORMULA_START:
        # A value a spreadsheet would run as a formula (CSV/formula injection) is kept as text.
        return "'" + value
    return value


def _xlsx_cell(value: Any) -> Any:
    value = _cell(value)
    if not isinstance(value, str):
        return value
    value = _NOT_IN_XML.sub(_picture, value)
    if len(value) > XLSX_CELL_MAX:
        value = value[: XLSX_CELL_MAX - 1] + "\u2026"
    return value


def _picture(match: re.Match[str]) -> str:
    """A character XML cannot carry, made visible: C0 controls as their control pictures
    (U+2400 + code), anything else as the replacement character."""
    code = ord(match.group())
    return chr(0x2400 + code) if code < 0x20 else "\ufffd"
