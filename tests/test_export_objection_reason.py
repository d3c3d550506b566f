"""Why an objection was rejected (or upheld) on review, ``objection decide --reason``, reaches the
person: ``subject show`` and the Art. 15 export (JSON, CSV, XLSX) carry each objection's
``decision_reason`` from the audit log, as they carry a restriction's reason (Art. 12(4): the
person is told why their request was not acted on). Policy-decided objections have none; the CSV's
older columns keep their places."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from openpyxl import load_workbook

from consentsync.export import HISTORY_COLUMNS, LINK_COLUMNS, OBJECTION_COLUMNS, STATE_COLUMNS
from tests.conftest import Cli

EMAIL = "objector@example.com"
REASON = "fraud prevention outweighs it for twelve months"


def test_a_decided_objections_reason_is_shown_and_exported(cli: Cli, tmp_path: Path) -> None:
    reviewed = cli.json("objection", "raise", "--email", EMAIL, "--purpose", "profiling")
    cli.ok("objection", "decide", str(reviewed["id"]), "--reject", "--by", "dpo", "--reason", REASON)
    by_policy = cli.json("objection", "raise", "--email", EMAIL, "--purpose", "email_marketing")
    expected = {reviewed["id"]: REASON, by_policy["id"]: None}

    shown = cli.json("subject", "show", EMAIL)["objections"]
    assert {o["id"]: o["decision_reason"] for o in shown} == expected
    assert REASON in cli.ok("subject", "show", EMAIL).stdout

    for fmt in ("json", "csv", "xlsx"):
        cli.ok("subject", "export", EMAIL, "--format", fmt, "-o", str(tmp_path / f"record.{fmt}"))
    exported = json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))["objections"]
    assert {o["id"]: o["decision_reason"] for o in exported} == expected

    with (tmp_path / "record.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if row["record_type"] == "objection"]
        header = reader.fieldnames or []
    assert {int(row["id"]): row["decision_reason"] or None for row in rows} == expected
    older = list(dict.fromkeys(STATE_COLUMNS + HISTORY_COLUMNS + OBJECTION_COLUMNS + LINK_COLUMNS))
    assert header[: 2 + len(older)] == ["record_type", "subject", *older]  # added after, only

    sheet = load_workbook(tmp_path / "record.xlsx")["Objections"]
    titles = [cell.value for cell in sheet[1]]
    assert titles[: len(OBJECTION_COLUMNS)] == OBJECTION_COLUMNS
    found = {
        row[0]: row[titles.index("decision_reason")] for row in sheet.iter_rows(min_row=2, values_only=True)
    }
    assert found == expected
