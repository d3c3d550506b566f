"""Subject exports as a person receives them (issue 16): in XLSX a time is an Excel date-time
(sortable, formatted, UTC) and a text that looks like a formula is a string cell holding exactly
the ledger's value (no apostrophe added); CSV, which has no cell types, keeps the apostrophe."""

from __future__ import annotations

import csv
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from openpyxl import load_workbook

from consentsync.export import XLSX_TIME_FORMAT, write_export

FORMULA = '=HYPERLINK("http://evil.example","x")'


def _view() -> dict[str, Any]:
    return {
        "subject": "5f0c1e1a-0000-4000-8000-000000000001",
        "email": "+person@example.com",
        "created_at": "2026-12-01T09:30:00Z",
        "suppressed_by_erasure": False,
        "restricted": False,
        "as_of": "2026-12-03T12:00:00.123456Z",
        "purposes": [
            {
                "purpose": "email_marketing",
                "channel": "email",
                "status": "granted",
                "since": "2026-12-02T08:00:00Z",
            }
        ],
        "history": [
            {
                "purpose": "email_marketing",
                "channel": "email",
                "status": "granted",
                "event_time": "2026-12-02T08:00:00Z",
                "recorded_at": "2026-12-02T08:01:02Z",
                "double_opt_in_at": "2026-12-02T08:05:00Z",
                "evidence_ref": FORMULA,
                "notice_version": "-v2",
                "source": "@web",
            }
        ],
        "objections": [],
        "crm_records": [],
    }


def test_xlsx_times_are_excel_dates_and_formulas_are_string_cells_holding_the_value(tmp_path: Path) -> None:
    path = tmp_path / "subject.xlsx"
    write_export(_view(), "xlsx", path)
    book = load_workbook(path)
    history = book["History"]
    header = [cell.value for cell in history[1]]
    row = {name: history.cell(2, index + 1) for index, name in enumerate(header)}
    event = row["event_time"]
    assert event.data_type == "d" and event.value == datetime(2026, 12, 2, 8, 0)
    assert event.number_format == XLSX_TIME_FORMAT and "UTC" in XLSX_TIME_FORMAT
    assert row["double_opt_in_at"].value == datetime(2026, 12, 2, 8, 5)
    for name, value in (("evidence_ref", FORMULA), ("notice_version", "-v2"), ("source", "@web")):
        assert row[name].data_type == "s" and row[name].value == value  # exactly as held
    summary = {r[0].value: r[1] for r in book["Subject"].iter_rows()}
    assert summary["email"].value == "+person@example.com" and summary["email"].data_type == "s"
    assert summary["as_of"].value == datetime(2026, 12, 3, 12, 0, 0, 123000)  # Excel keeps milliseconds
    # In the file itself: no cell is a formula (<f>), the value is a string.
    with zipfile.ZipFile(path) as archive:
        sheets = [archive.read(n).decode() for n in archive.namelist() if n.startswith("xl/worksheets/")]
    assert not any("<f>" in sheet for sheet in sheets)


def test_csv_keeps_its_apostrophe_against_formula_injection(tmp_path: Path) -> None:
    path = tmp_path / "subject.csv"
    write_export(_view(), "csv", path)
    rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
    event = next(r for r in rows if r["record_type"] == "event")
    assert event["evidence_ref"] == "'" + FORMULA and event["source"] == "'@web"
    assert event["event_time"] == "2026-12-02T08:00:00Z"
