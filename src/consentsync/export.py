"""A subject's record as a file: JSON (everything), CSV (one table) or XLSX (a sheet per part).

This is what a subject access request (Art. 15) or a regulator asks for.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.utils import get_column_letter

FORMATS = ("json", "csv", "xlsx")

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
        path.write_text(json.dumps(view, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    elif fmt == "csv":
        _write_csv(view, path)
    elif fmt == "xlsx":
        _write_xlsx(view, path)
    else:
        raise ValueError(f"unknown export format {fmt!r}: accepted are {', '.join(FORMATS)}")


def _write_csv(view: dict[str, Any], path: Path) -> None:
    """One table: a ``record_type`` column says which part of the record each row belongs to."""
    columns = ["record_type", "subject", *dict.fromkeys(c for *_, cols in _SECTIONS for c in cols)]
    with path.open("w", newline="", encoding="utf-8") as handle:
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
        summary.append([field, _cell(view.get(field))])
    for _type, title, key, columns in _SECTIONS:
        sheet = book.create_sheet(title)
        sheet.append(columns)
        for item in view[key]:
            sheet.append([_cell(item.get(column)) for column in columns])
        for index, column in enumerate(columns, start=1):
            sheet.column_dimensions[get_column_letter(index)].width = max(12, len(column) + 2)
        sheet.freeze_panes = "A2"
    book.save(path)


def _cells(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _cell(value) for key, value in item.items()}


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        # A value a spreadsheet would run as a formula (CSV/formula injection) is kept as text.
        return "'" + value
    return value
