"""A person holding two addresses (a CRM record that took a new one keeps the person, who then
holds both; docs/policy.md) is one person everywhere they are listed: each objection once in the
review queue, the view and the export (black-box finding bb61 F1), and the access export lists
every address the ledger holds for them, in each format (Art. 15(1), 15(3); bb61 F2)."""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox

from tests.conftest import Cli
from tests.integration.test_cli_sync import connect_sandbox

FIRST, SECOND = "bob@example.com", "bob.new@example.com"


@pytest.fixture
def two_addresses(cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """Bob's contact synced, his objection to profiling raised (pending review), then his address
    changed in the CRM and synced again: one person holding both addresses."""
    with SalesforceSandbox() as sandbox:
        connect_sandbox(sandbox, config_path, monkeypatch)
        contact = sandbox.org.create("Contact", LastName="Bob", Email=FIRST, HasOptedOutOfEmail=False)
        cli.ok("sync", "sf")
        cli.ok("objection", "raise", "--email", FIRST, "--purpose", "profiling")
        sandbox.org.update(contact, {"Email": SECOND})
        cli.ok("sync", "sf")
        yield cli


def test_each_objection_is_listed_once(two_addresses: Cli) -> None:
    cli = two_addresses
    listed = cli.json("objection", "list")
    assert [row["id"] for row in listed] == [1], listed
    view = cli.json("subject", "show", SECOND)
    assert [row["id"] for row in view["objections"]] == [1], view["objections"]
    shown = cli.ok("subject", "show", SECOND).stdout
    assert f"also held under: {FIRST}" in shown


def test_the_export_lists_every_address_in_each_format(two_addresses: Cli, tmp_path: Path) -> None:
    cli = two_addresses
    for fmt in ("json", "csv", "xlsx"):
        cli.ok("subject", "export", SECOND, "--format", fmt, "-o", str(tmp_path / f"bob.{fmt}"))
    exported = json.loads((tmp_path / "bob.json").read_text())
    assert [item["identifier"] for item in exported["identifiers"]] == [SECOND, FIRST]
    assert [row["id"] for row in exported["objections"]] == [1]
    with (tmp_path / "bob.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["identifier"] for row in rows if row["record_type"] == "identifier"} == {FIRST, SECOND}
    assert sum(row["record_type"] == "objection" for row in rows) == 1
    with zipfile.ZipFile(tmp_path / "bob.xlsx") as book:
        text = b"".join(book.read(name) for name in book.namelist())
    assert FIRST.encode() in text and SECOND.encode() in text


def test_a_request_to_chase_is_listed_once_at_the_latest_address(two_addresses: Cli) -> None:
    # The old mailbox may be someone else's now: the list of people to contact names the address
    # the person is known by now, once (bb61 F4).
    cli = two_addresses
    # A consent to another purpose of e-mail marketing: the ground on which a person may be chased
    # about email marketing (docs/policy.md rule 6).
    data = yaml.safe_load(cli.config_path.read_text(encoding="utf-8"))
    data["purposes"].append(
        {"key": "newsletter", "name": "Newsletter", "direct_marketing": True, "default_basis": "consent",
         "channels": ["email"]}
    )  # fmt: skip
    cli.config_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cli.ok(
        "ledger", "record", "--email", SECOND, "--purpose", "newsletter", "--status", "granted",
        "--source", "ops", "--at", "2026-09-01T00:00:00Z", "--evidence-ref", "form:1",
    )  # fmt: skip
    cli.ok(
        "ledger", "record", "--email", SECOND, "--purpose", "email_marketing", "--status", "requested",
        "--source", "ops", "--at", "2026-10-01T00:00:00Z",
    )  # fmt: skip
    rows = cli.json("ledger", "requested", "--older-than", "0")
    assert [row["email"] for row in rows] == [SECOND], rows
