"""Writes held back as irreversible are told to ops (F8): an Art. 18 restriction never unsubscribes a
HubSpot contact (an unsubscribe cannot be undone, a restriction is lifted one day), so HubSpot
keeps mailing them; the run's summary, `sync --all`'s table, `runs show` and `status` say how many
writes were held, why, and where to read what to do. Counts and ids only: never an address."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner, Result
from consentsync_hubspot.sandbox.harness import HubSpotHarness

from consentsync.cli import main
from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.integration.helpers import consent_value

RESTRICTED = "restricted.person@example.test"
DOC = 'docs/adoption.md, "Irreversible writes held"'


def _consentsync(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_restriction_held_from_hubspot_is_told_by_the_run_runs_show_and_status(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    contact = hubspot.create_person(RESTRICTED)
    config = write_sync_config(hubspot, tmp_path)
    ledger = open_sync_engine(config).ledger
    now = datetime.now(UTC)
    # An evidenced opt-in, then restricted: every purpose suppressed, but no no of the person's own.
    granted = consent_value(ConsentStatus.GRANTED, now, now, notice_version="v1")
    ledger.record(Identity(email=RESTRICTED), granted)
    ledger.restrict(RESTRICTED, restricted=True, reason="accuracy contested")
    time.sleep(1.1)

    synced = _consentsync(config, "sync", "--all", "--full")
    assert synced.exit_code == 0, synced.output + synced.stderr
    assert not hubspot.read_opted_out(contact), "a restriction became an unsubscribe"
    out = _flat(synced.stdout)
    assert "irreversible writes held: " in out, synced.stdout
    assert "rests on a restriction (Art. 18)" in out and DOC in out
    assert "contract still shows those records as before" in out
    assert "IRREVERSIBLE_HELD" in synced.stdout.split("\n\n")[-1], synced.stdout  # the --all table

    runs = json.loads(_consentsync(config, "runs", "list", "--json").stdout)
    holding = runs[0]
    held = holding["counts"]["irreversible_held"]
    assert held >= 1
    assert f"irreversible writes held: {held} " in out
    assert f"consentsync runs show {holding['id']}" in out

    shown = _consentsync(config, "runs", "show", holding["id"])
    assert shown.exit_code == 0
    assert f"irreversible writes held: {held} " in _flat(shown.stdout) and DOC in _flat(shown.stdout)
    # Which records, by id, with the fields held (never the address): from the run's audit entries.
    records = json.loads(_consentsync(config, "runs", "show", holding["id"], "--json").stdout)
    kept_back = records["irreversible_held_records"]
    assert [(r["object"], r["record_id"]) for r in kept_back] == [("contacts", contact)], kept_back
    assert sum(len(r["fields"]) for r in kept_back) == held
    assert contact in shown.stdout and RESTRICTED not in shown.stdout
    logged = json.loads(_consentsync(config, "audit", "log", "--action", "crm.push_held", "--json").stdout)
    assert [entry["what"]["record"] for entry in logged] == [contact]
    assert _consentsync(config, "audit", "verify").exit_code == 0

    # A later run passes over the unchanged record and counts nothing: status still says it.
    again = _consentsync(config, "sync", "contract")
    assert again.exit_code == 0, again.output + again.stderr
    assert "irreversible" not in again.stdout
    status = _consentsync(config, "status")
    text = _flat(status.stdout)
    assert (
        f"held {held} irreversible write(s) left out by run {holding['id']} "
        f"(at {holding['started_at']}): contract kept the value those records showed then"
    ) in text, status.stdout
    assert DOC in text
    rows = json.loads(_consentsync(config, "status", "--json").stdout)
    assert rows[0]["irreversible_held"] == {
        "run": holding["id"],
        "started_at": holding["started_at"],
        "writes": held,
    }

    every_output = synced.output + shown.output + status.output + again.output
    assert "restricted.person" not in every_output  # counts and ids only, never an address
    assert "example.test" not in every_output


def test_status_says_nothing_of_irreversible_writes_when_no_run_held_any(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    hubspot.create_person(RESTRICTED)
    config = write_sync_config(hubspot, tmp_path)
    open_sync_engine(config)  # the ledger, migrated
    synced = _consentsync(config, "sync", "--all", "--full")
    assert synced.exit_code == 0, synced.output + synced.stderr
    assert "irreversible" not in synced.stdout  # neither the summary nor a column of zeros
    assert "irreversible" not in _consentsync(config, "status").stdout
    assert json.loads(_consentsync(config, "status", "--json").stdout)[0]["irreversible_held"] is None
