"""`consentsync erase` by an address its person left (docs/policy.md, "An address a person no
longer holds"): whoever asks from that mailbox may be its new owner, and an erasure cannot be
undone. The capture API mails a confirmation to the address held now instead of erasing; the CLI
refuses in one line (exit 2, nothing erased) until ops say they confirmed it (--left-address).
`subject show` and the export say which addresses were left, and when.

Through the real sync engine and the Salesforce sandbox (tests/hub/crm_world.py)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from consentsync.ledger.schema import subject_identifiers
from tests.conftest import Cli
from tests.hub.conftest import Inbox
from tests.hub.crm_world import CrmHub, crm_hub

OLD, NEW = "alex.old@example.com", "alex.new@example.com"


@pytest.fixture
def world(
    cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch, inbox: tuple[Inbox, int]
) -> Iterator[CrmHub]:
    with crm_hub(cli, config_path, monkeypatch, inbox) as setup:
        contact = setup.sandbox.org.create("Contact", LastName="Ames", Email=OLD, HasOptedOutOfEmail=False)
        setup.cli.ok("sync", "sf")
        setup.sandbox.org.update(contact, {"Email": NEW})
        setup.cli.ok("sync", "sf")
        yield setup


def test_an_erasure_by_a_left_address_is_refused_until_ops_confirm_it(world: CrmHub) -> None:
    alex = world.uid(NEW)
    assert world.uid(OLD) == alex

    refused = world.cli("erase", "--email", OLD, "--reason", "asked by letter", "--yes")
    assert refused.exit_code == 2
    message = refused.stderr.strip()
    assert "\n" not in message and "Traceback" not in refused.output + refused.stderr
    assert alex in message and "--left-address" in message
    assert world.uid(NEW) == alex, "nothing may be erased on a refusal"

    # By the address held now, or with the request confirmed, the erasure goes ahead.
    world.cli.ok(
        "erase", "--email", OLD, "--reason", "confirmed at the current address", "--yes", "--left-address"
    )
    assert world.cli("subject", "show", NEW).exit_code != 0


def test_an_erasure_by_the_address_held_now_needs_no_confirmation(world: CrmHub) -> None:
    world.cli.ok("erase", "--email", NEW, "--reason", "asked by mail", "--yes")
    assert world.cli("subject", "show", OLD).exit_code != 0


def test_subject_show_and_the_export_say_which_address_was_left(world: CrmHub, tmp_path: Path) -> None:
    shown = world.cli.ok("subject", "show", OLD).output
    assert f"left: they left {OLD} on " in shown
    assert f"also held under: {NEW}\n" in shown
    head = world.cli.ok("subject", "show", NEW).output.split("effective state")[0]
    assert "  left: " not in head and f"also held under: {OLD} (left 20" in head

    view = world.cli.json("subject", "show", OLD, "--json")
    left = {item["identifier"]: item["left_at"] for item in view["identifiers"]}
    assert left[NEW] is None and left[OLD] is not None

    world.cli.ok("subject", "export", NEW, "--format", "json", "-o", str(tmp_path / "alex.json"))
    exported = json.loads((tmp_path / "alex.json").read_text())
    rows = {row["identifier"]: row["left_at"] for row in exported["identifiers"]}
    assert rows[NEW] is None and rows[OLD] == left[OLD]


# The one-table CSV's header as released before left_at (session 63): a reader going by position
# must keep working, so a column added later follows every one of these.
RELEASED_CSV_HEADER = [
    "record_type", "subject", "purpose", "channel", "status", "basis", "suppressed", "rule", "since",
    "expires_at", "evidenced", "detail", "event_time", "recorded_at", "source", "origin", "actor",
    "notice_version", "notice_sha256", "double_opt_in_at", "evidence_ref", "soft_opt_in", "run_id", "id",
    "direct_marketing", "raised_at", "decided_by", "decided_at", "connector", "object", "record_id",
    "linked_at", "gone_at", "merged_into", "change", "restricted", "changed_at", "reason",
    "decision_reason", "identifier_kind", "identifier", "record_of", "request", "received_at", "ground",
    "status_at", "notice_language",
]  # fmt: skip


def test_the_csv_export_adds_left_at_after_every_released_column(world: CrmHub, tmp_path: Path) -> None:
    world.cli.ok("subject", "export", NEW, "--format", "csv", "-o", str(tmp_path / "alex.csv"))
    with (tmp_path / "alex.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if row["record_type"] == "identifier"]
        header = reader.fieldnames or []
    assert header[: len(RELEASED_CSV_HEADER)] == RELEASED_CSV_HEADER
    assert header[len(RELEASED_CSV_HEADER) :] == ["left_at", "clock_lag_ms"]  # then 0026's clock lag
    left = {row["identifier"]: row["left_at"] for row in rows}
    assert left[NEW] == "" and left[OLD].startswith("20")


def test_with_every_address_marked_left_the_one_left_last_is_held_as_the_hub_mails(world: CrmHub) -> None:
    # Rows edited outside consentsync (`audit verify` names them) leave every address marked left;
    # the hub then mails to the one left last, so ops are told the same: that one is held, the
    # other still left.
    with world.ledger.engine.begin() as conn:
        conn.execute(
            update(subject_identifiers)
            .where(subject_identifiers.c.left_at.is_(None))
            .values(left_at=datetime.now(UTC))
        )
    assert world.cli("erase", "--email", OLD, "--reason", "asked by letter", "--yes").exit_code == 2
    head = world.cli.ok("subject", "show", NEW).output.split("effective state")[0]
    assert "  left: " not in head and f"also held under: {OLD} (left 20" in head
