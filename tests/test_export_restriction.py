"""An Art. 15 export of a person whose processing is restricted (Art. 18) says when the
restriction was placed, by whom and why, and the same for every restriction lifted: the audit log
holds it, the export used to say only ``restricted: true``. Existing keys and columns stay as they
were (the restriction's are added)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.export import (
    HISTORY_COLUMNS,
    LINK_COLUMNS,
    OBJECTION_COLUMNS,
    STATE_COLUMNS,
    with_restrictions,
    write_export,
)
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from tests.conftest import Clock

EMAIL = "restricted.person@example.com"
PLACED = ("accuracy contested by the person", "dpo.anna", "2026-06-01T12:00:00Z")
LIFTED = ("accuracy confirmed", "dpo.ben", "2026-06-01T12:01:00Z")
PLACED_AGAIN = ("legal claim pending", "dpo.cara", "2026-06-01T12:02:00Z")


def _granted(ledger: Ledger, clock: Clock, email: str) -> None:
    evidence = Evidence(
        purpose="email_marketing",
        channel="email",
        status=ConsentStatus.GRANTED,
        basis=LawfulBasis.CONSENT,
        event_time=datetime(2026, 3, 1, tzinfo=UTC),
        observed_at=clock(),
        source="web_form",
        origin=Origin.CAPTURE,
        notice_version="v2",
    )
    ledger.record(Identity(email=email), evidence)


def _person(ledger: Ledger, clock: Clock, *, lift_last: bool = False) -> dict[str, Any]:
    """A person restricted, lifted, then restricted again, a minute apart each; their view."""
    _granted(ledger, clock, EMAIL)
    for index, (reason, actor, _at) in enumerate((PLACED, LIFTED, PLACED_AGAIN)):
        ledger.restrict(EMAIL, restricted=index != 1, reason=reason, actor=actor)
        clock.advance(minutes=1)
    if lift_last:
        ledger.restrict(EMAIL, restricted=False, reason="claim settled", actor="dpo.dan")
    return with_restrictions(ledger, ledger.subject_view(EMAIL))


def test_the_view_says_when_by_whom_and_why_each_restriction_was_placed_and_lifted(
    ledger: Ledger, clock: Clock
) -> None:
    view = _person(ledger, clock)
    assert view["restricted"] is True
    assert (view["restriction_reason"], view["restricted_by"], view["restricted_since"]) == PLACED_AGAIN
    assert [
        (item["change"], item["restricted"], item["reason"], item["actor"], item["changed_at"])
        for item in view["restrictions"]
    ] == [
        ("placed", True, *PLACED),
        ("lifted", False, *LIFTED),
        ("placed", True, *PLACED_AGAIN),
    ]
    assert {item["source"] for item in view["restrictions"]} == {"ops"}


def test_a_lifted_restriction_is_history_not_the_current_one(ledger: Ledger, clock: Clock) -> None:
    view = _person(ledger, clock, lift_last=True)
    assert view["restricted"] is False
    assert (view["restricted_since"], view["restricted_by"], view["restriction_reason"]) == (None, None, None)
    assert [item["change"] for item in view["restrictions"]] == ["placed", "lifted", "placed", "lifted"]
    assert view["restrictions"][-1]["reason"] == "claim settled"


def test_a_person_never_restricted_has_no_restrictions(ledger: Ledger, clock: Clock) -> None:
    _granted(ledger, clock, "free@example.com")
    view = with_restrictions(ledger, ledger.subject_view("free@example.com"))
    assert view["restrictions"] == [] and view["restricted_since"] is None


@pytest.mark.parametrize("fmt", ["json", "csv", "xlsx"])
def test_every_format_carries_the_restrictions_and_keeps_the_existing_keys(
    ledger: Ledger, clock: Clock, tmp_path: Path, fmt: str
) -> None:
    view = _person(ledger, clock)
    path = tmp_path / f"subject.{fmt}"
    write_export(view, fmt, path)
    if fmt == "json":
        data = json.loads(path.read_text(encoding="utf-8"))
        for key in ("subject", "email", "created_at", "suppressed_by_erasure", "restricted", "as_of",
                    "purposes", "history", "objections", "crm_records"):  # fmt: skip
            assert key in data
        assert data["restriction_reason"] == "legal claim pending"
        assert [item["actor"] for item in data["restrictions"]] == ["dpo.anna", "dpo.ben", "dpo.cara"]
    elif fmt == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or []
        before = list(dict.fromkeys(STATE_COLUMNS + HISTORY_COLUMNS + OBJECTION_COLUMNS + LINK_COLUMNS))
        assert header[: 2 + len(before)] == ["record_type", "subject", *before]  # only added after
        restrictions = [row for row in rows if row["record_type"] == "restriction"]
        assert [(r["change"], r["reason"], r["actor"], r["changed_at"]) for r in restrictions] == [
            ("placed", *PLACED),
            ("lifted", *LIFTED),
            ("placed", *PLACED_AGAIN),
        ]
    else:
        book = load_workbook(path)
        assert book.sheetnames[:5] == ["Subject", "Effective state", "History", "Objections", "CRM records"]
        summary = {row[0].value: row[1].value for row in book["Subject"].iter_rows()}
        assert summary["restricted"] is True
        assert summary["restricted_by"] == "dpo.cara"
        assert summary["restriction_reason"] == "legal claim pending"
        assert summary["restricted_since"] == datetime(2026, 6, 1, 12, 2)  # an Excel date-time, UTC
        sheet = book["Restrictions"]
        header = [cell.value for cell in sheet[1]]
        rows = [dict(zip(header, (c.value for c in row), strict=True)) for row in sheet.iter_rows(min_row=2)]
        assert [(r["change"], r["actor"], r["reason"]) for r in rows] == [
            ("placed", "dpo.anna", PLACED[0]),
            ("lifted", "dpo.ben", LIFTED[0]),
            ("placed", "dpo.cara", PLACED_AGAIN[0]),
        ]
