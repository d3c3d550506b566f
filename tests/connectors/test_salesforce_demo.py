"""`consentsync demo` (Salesforce): after the withdrawal, every record linked to the person is
listed with what it says now, and each field the mappings keep in step for email marketing says
opted out, read from the sandbox's org, not from the ledger."""

from __future__ import annotations

import re
from pathlib import Path

from consentsync_salesforce.sandbox.demo import run_demo

from consentsync import audit
from consentsync.app import open_ledger
from consentsync.config import load_config


def test_the_withdrawal_is_shown_on_every_linked_record(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = run_demo(records=60, workdir=tmp_path, say=lines.append)
    assert summary["incremental"]["status"] == "succeeded"
    # Its first sync pushes, and it says why: a connector one adds observes first.
    assert summary["full"]["pushed"] > 0
    assert any("pushes from its first sync" in line and "observes first" in line for line in lines), lines[:4]

    headline = next(i for i, line in enumerate(lines) if "email_marketing/email is withdrawn" in line)
    count = int(re.search(r"across (\d+) Salesforce records", lines[headline]).group(1))  # type: ignore[union-attr]
    shown = lines[headline + 1 : headline + 1 + count]
    assert len(shown) == count and all(line.startswith("  ") for line in shown), lines[headline:]
    assert "(no consent field shown)" not in "\n".join(shown)
    objects = {line.split()[0] for line in shown}
    assert {"Contact", "Individual"} <= objects, shown
    # Each object's email-marketing field was pushed (the Individual's "Don't Solicit" too).
    flags = [line for line in shown if "HasOptedOut" in line]
    assert flags and all(line.endswith("=True") for line in flags), flags
    assert all("(for " in line for line in shown if line.split()[0] == "ContactPointTypeConsent")


def test_the_person_who_unsubscribes_was_allowed_email_marketing(tmp_path: Path) -> None:
    """The demo's withdrawal changes what the ledger decides: it is made by a person the ledger
    allowed email marketing after the first sync (an opt-in on record), not merely one whose box
    was left unticked (a box is left alone where the ledger holds no evidence)."""
    summary = run_demo(records=60, workdir=tmp_path, say=lambda _line: None)
    ledger = open_ledger(load_config(tmp_path / "consentsync.yaml"))
    email = summary["changes"]["withdrawn_email"]
    uid = ledger.subject_view(email)["subject"]
    with ledger.engine.connect() as conn:
        recorded = [
            entry
            for entry in audit.entries(conn, subject_uids=[uid], action="consent.recorded")
            if entry["what"].get("purpose") == "email_marketing"
        ]
    withdrawal = recorded[-1]
    assert withdrawal["what"]["status"] == "withdrawn"
    assert (withdrawal["old"]["status"], withdrawal["old"]["suppressed"]) == ("granted", False), withdrawal
