"""Pushes decided under rules an admin changed since are decided again before anything is sent
(src/consentsync/sync/push_rules.py): a connector that observed queued its pushes under the
mappings and mode of then; switched to push, it sends what the rules of now decide, not what
waited. Against the Salesforce sandbox, on both databases (a release that decides otherwise:
against the HubSpot sandbox, whose hs_legal_basis is where version 2 decides otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from click.testing import CliRunner
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select

from consentsync.cli import main
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import outbox, subjects
from consentsync.ledger.service import Ledger
from consentsync.mapping import load_mapping
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from consentsync.sync import cursors, push_rules
from consentsync.sync import outbox as outbox_commands
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.integration.helpers import outbox_row, sandbox_engine, seeded_org, shipped_mappings

CONTACT = Path(shipped_mappings("salesforce", "contact.yaml")[0])


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(60, seed=51)


def _engine(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox, mapping: Path, mode: str
) -> SyncEngine:
    connector = {
        "name": "sf",
        "vendor": "salesforce",
        "mappings": [str(mapping)],
        "settings": org.connection_settings(),
    }
    return sandbox_engine(ledger, config_path, connector, SyncOptions(mode=mode))


def _waiting_fields(ledger: Ledger) -> set[str]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.fields).where(outbox.c.status == "pending")).scalars()
        return {name for fields in rows for name in orjson.loads(fields)}


def _pull_only(tmp_path: Path, field: str) -> Path:
    """The shipped Contact mapping with ``field`` read, never written."""
    text = CONTACT.read_text()
    at = text.index(f"field: {field}\n")
    end = text.index("\n\n", at)
    entry = text[at:end].replace("direction: both", "direction: pull")
    entry = "\n".join(line for line in entry.split("\n") if "push:" not in line)
    path = tmp_path / "contact-pull.yaml"
    path.write_text(text[:at] + entry + text[end:])
    return path


def test_a_field_turned_to_pull_is_not_written_from_pushes_that_waited(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox, tmp_path: Path
) -> None:
    """Observed first: the pushes wait, DoNotCall among them. The admin then makes DoNotCall
    pull-only and lets the connector push: not one DoNotCall is written."""
    first = _engine(ledger, config_path, org, CONTACT, "observe").run(full=True)
    assert first.status == "succeeded", first.error
    assert "DoNotCall" in _waiting_fields(ledger), "the seeded org needs DoNotCall pushes for this test"
    before = {r["Id"]: r["DoNotCall"] for r in org.org.records("Contact")}

    report = _engine(ledger, config_path, org, _pull_only(tmp_path, "DoNotCall"), "two_way").run()
    assert report.status == "succeeded", report.error
    assert {r["Id"]: r["DoNotCall"] for r in org.org.records("Contact")} == before
    with ledger.engine.connect() as conn:
        sent = conn.execute(select(outbox.c.fields).where(outbox.c.status == "done")).scalars().all()
    assert sent, "the other fields' pushes still go"
    assert not any("DoNotCall" in fields for fields in sent)


def _grant_through_a_form(ledger: Ledger, email: str) -> None:
    """A proven consent to email marketing, captured now."""
    now = ledger.clock()
    grant = Evidence(
        purpose="email_marketing",
        channel="email",
        status=ConsentStatus.GRANTED,
        basis=LawfulBasis.CONSENT,
        event_time=now,
        observed_at=now,
        source="web_form",
        origin=Origin.CAPTURE,
        notice_version="v2",
    )
    ledger.record(Identity(email=email), grant)


def test_suppress_only_sends_no_waiting_push_that_lifts_a_suppression(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    """A contact opted out in the CRM gives a proven consent through a form: observing, the
    connector queues the opt-out's clearing. Switched to suppress_only, which pushes only what
    restricts processing, it never sends that clearing."""
    contact = next(c for c in org.org.records("Contact") if c["Email"] and c["HasOptedOutOfEmail"])
    assert _engine(ledger, config_path, org, CONTACT, "observe").run(full=True).status == "succeeded"
    assert ledger.subject_uids_for_email(contact["Email"]), "the contact's person is held"
    _grant_through_a_form(ledger, contact["Email"])
    assert _engine(ledger, config_path, org, CONTACT, "observe").run().status == "succeeded"
    assert _waiting(ledger, contact["Id"]) == [{"HasOptedOutOfEmail": False}], "the clearing waits"

    report = _engine(ledger, config_path, org, CONTACT, "suppress_only").run()
    assert report.status == "succeeded", report.error
    assert org.org.get(contact["Id"])["HasOptedOutOfEmail"] is True
    assert _waiting(ledger, contact["Id"]) == []


def test_a_grant_suppress_only_never_pushed_is_pushed_once_the_connector_may_clear_opt_outs(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    """suppress_only from the start: the proven consent of a contact opted out in the CRM is
    never pushed, and nothing waits for it. The admin then lets the connector push both ways: the
    person's records were decided under the old mode, so the first run of the new one decides
    them again and clears the opt-out, though no record and no state of theirs changed."""
    contact = next(c for c in org.org.records("Contact") if c["Email"] and c["HasOptedOutOfEmail"])
    assert _engine(ledger, config_path, org, CONTACT, "suppress_only").run(full=True).status == "succeeded"
    _grant_through_a_form(ledger, contact["Email"])
    assert _engine(ledger, config_path, org, CONTACT, "suppress_only").run().status == "succeeded"
    assert org.org.get(contact["Id"])["HasOptedOutOfEmail"] is True
    assert _waiting(ledger, contact["Id"]) == [], "suppress_only keeps no clearing waiting"

    report = _engine(ledger, config_path, org, CONTACT, "two_way").run()
    assert report.status == "succeeded", report.error
    assert org.org.get(contact["Id"])["HasOptedOutOfEmail"] is False
    # Decided again once: the next run of the same rules examines nobody it did not read.
    again = _engine(ledger, config_path, org, CONTACT, "two_way").run()
    assert again.status == "succeeded", again.error
    assert again.counts.pushes_enqueued == 0


def _waiting(ledger: Ledger, record_id: str) -> list[dict[str, object]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.fields).where(outbox.c.status == "pending", outbox.c.record_id == record_id)
        ).scalars()
        return [orjson.loads(fields) for fields in rows]


def test_unchanged_rules_keep_the_waiting_rows_and_state_show_lists_only_cursors(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    """Rules as they were: the waiting rows stay as they are (ids, attempts), and the digest is no
    cursor an admin sees or moves."""
    assert _engine(ledger, config_path, org, CONTACT, "observe").run(full=True).status == "succeeded"
    with ledger.engine.connect() as conn:
        before = conn.execute(select(outbox.c.id).where(outbox.c.status == "pending")).scalars().all()
    assert _engine(ledger, config_path, org, CONTACT, "observe").run().status == "succeeded"
    with ledger.engine.connect() as conn:
        after = conn.execute(select(outbox.c.id).where(outbox.c.status == "pending")).scalars().all()
    assert after == before
    assert all(not row["object"].startswith("~") for row in cursors.show(ledger.engine, "sf"))
    moved = CliRunner().invoke(main, ["--config", str(config_path), "state", "reset", "sf", "~push-rules"])
    assert moved.exit_code == 2 and "~push-rules" not in moved.stderr.split("accepted")[-1]


def test_a_dead_lettered_push_retried_after_a_newer_decision_is_not_sent_over_it(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    """A push that clears an opt-out was dead-lettered while the person still consented; they
    have withdrawn since (the CRM shows the opt-out). `outbox retry` puts the old row back: the
    next run decides it again and does not untick the opt-out."""
    contact = next(c for c in org.org.records("Contact") if c["Email"] and c["HasOptedOutOfEmail"])
    engine = _engine(ledger, config_path, org, CONTACT, "two_way")
    assert engine.run(full=True).status == "succeeded"
    (uid,) = ledger.subject_uids_for_email(contact["Email"])
    with ledger.engine.connect() as conn:
        subject_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar_one()
    dead = outbox_row(
        ledger,
        subject_id,
        connector="sf",
        record_id=contact["Id"],
        fields='{"HasOptedOutOfEmail":false}',
        suppression=False,
        rule="latest_event_time",
        status="dead",
        attempts=10,
    )
    assert outbox_commands.retry(ledger.engine, [dead], actor="ops", now=ledger.clock()) == 1

    report = _engine(ledger, config_path, org, CONTACT, "two_way").run()
    assert report.status == "succeeded", report.error
    assert org.org.get(contact["Id"])["HasOptedOutOfEmail"] is True
    with ledger.engine.connect() as conn:
        status = conn.execute(select(outbox.c.status).where(outbox.c.id == dead)).scalar_one()
    assert status == "superseded"


def test_a_release_that_decides_pushes_otherwise_has_the_waiting_ones_decided_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pushes decided the older way and waiting (an observing connector, a held run) were sent as
    # decided: the digest named the mappings and options only, not how the code decides from them
    # (version 2 leaves a value the field's own pull table reads as the one to write). What the
    # waiting pushes then come to: the HubSpot test below.
    mappings = [load_mapping(path) for path in shipped_mappings("salesforce", "contact.yaml", "lead.yaml")]
    options = SyncOptions(mode="two_way")
    now = push_rules.push_rules_digest(mappings, options)
    assert push_rules.push_rules_digest(mappings, options) == now
    monkeypatch.setattr(push_rules, "PUSH_DECISIONS_VERSION", push_rules.PUSH_DECISIONS_VERSION - 1)
    assert push_rules.push_rules_digest(mappings, options) != now


# Of the shipped mappings, HubSpot's hs_legal_basis is where version 2 decides otherwise: it reads
# three "Legitimate interest" options as legitimate_interests and pushes back one of them.
PROSPECT = "Legitimate interest \u2013 prospect/lead"
CUSTOMER = "Legitimate interest \u2013 existing customer"


def _observed(hubspot: HubSpotHarness, tmp_path: Path) -> Path:
    config = write_sync_config(hubspot, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["mode"] = "observe"  # the pushes wait
    config.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return config


def _observe(config: Path) -> Ledger:
    engine = open_sync_engine(config)
    report = engine.run()
    engine.connector.close()
    assert report.status == "succeeded", report.error
    return engine.ledger


def _status(ledger: Ledger, row: int) -> str:
    with ledger.engine.connect() as conn:
        return str(conn.execute(select(outbox.c.status).where(outbox.c.id == row)).scalar_one())


def test_a_push_the_older_decisions_made_and_the_current_ones_do_not_is_superseded_after_the_release(
    hubspot: HubSpotHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A contact on "prospect/lead": version 1 decided to relabel it "existing customer" (the
    value pushed for legitimate_interests), and that push waited while the connector observed.
    Version 2 leaves a value the field's own pull table reads as the basis to write: the first
    run of the release decides the waiting push again and supersedes it; under the older
    version's rules (its digest stored) it waited on, to be sent as decided."""
    contact = hubspot.sandbox.portal.create(
        {"email": "li@example.test", "lastname": "Person", "hs_legal_basis": PROSPECT}
    )
    config = _observed(hubspot, tmp_path)
    current = push_rules.PUSH_DECISIONS_VERSION
    monkeypatch.setattr(push_rules, "PUSH_DECISIONS_VERSION", current - 1)
    ledger = _observe(config)  # the older release's run: its digest is stored
    with ledger.engine.connect() as conn:
        queued = conn.execute(select(outbox.c.fields).where(outbox.c.status == "pending")).scalars().all()
    assert not any("hs_legal_basis" in fields for fields in queued), "version 2 decides no relabel"
    (uid,) = ledger.subject_uids_for_email("li@example.test")
    with ledger.engine.connect() as conn:
        subject_id = conn.execute(select(subjects.c.id).where(subjects.c.uid == uid)).scalar_one()
    # The push version 1 decided for the contact, waiting.
    relabel = outbox_row(
        ledger,
        subject_id,
        connector="contract",
        object_type="contacts",
        record_id=contact,
        fields=orjson.dumps({"hs_legal_basis": CUSTOMER}).decode(),
        suppression=False,
        rule="latest_event_time",
    )
    ledger.engine.dispose()

    # Still the older release: its rules are the stored ones, the push waits as it was decided.
    _observe(config).engine.dispose()
    assert _status(ledger, relabel) == "pending"

    # The release that decides otherwise: the waiting push is decided again, and superseded.
    monkeypatch.setattr(push_rules, "PUSH_DECISIONS_VERSION", current)
    ledger = _observe(config)
    assert _status(ledger, relabel) == "superseded"
    assert hubspot.sandbox.portal.get(contact)["hs_legal_basis"] == PROSPECT
    ledger.engine.dispose()
