"""HubSpot (session 57): which part of a contact's ``email`` history is read, and for whom.

A read of every contact again (after a mapping change) reads current state, not the history a
read already passed: an old address's no taken then (or superseded, or left out on purpose) is
not taken anew, as an unsubscribe HubSpot never undoes, on every re-addressed contact at once.
An archived contact's earlier addresses are read like a live one's: a user who changed the
address and then deleted the contact, both before the next sync, hides the old address's no
twice over. Over HTTPS against the sandbox."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import MAPPINGS, HubSpotHarness
from consentsync_hubspot.sandbox.server import HubSpotPortal, iso_ms
from sqlalchemy import select

from consentsync.ledger.schema import consent_events
from consentsync.sdk import Cursor
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.connectors.against_sandbox import read_until

FIELDS = ["email", "subscription_1001", "subscription_1001_timestamp"]
A, B = "a@example.test", "b@example.test"


def _minutes(portal: HubSpotPortal, hours_ago: int = 2) -> Callable[[int], dt.datetime]:
    base = (portal.now() - dt.timedelta(hours=hours_ago)).replace(microsecond=0)
    return lambda minutes: base + dt.timedelta(minutes=minutes)


def _readdressed(portal: HubSpotPortal, old: str, new: str, said_no: dt.datetime, moved: dt.datetime) -> str:
    """A contact that said no as ``old`` at ``said_no``; a user gave it ``new`` at ``moved``."""
    contact = portal.create({"email": old, "lastname": "Person"}, at=said_no - dt.timedelta(minutes=1))
    portal.set_status(old, "1001", "UNSUBSCRIBED", at=said_no)
    portal.update(contact, {"email": new}, at=moved)
    return contact


def test_a_read_of_every_contact_again_reads_no_history_an_earlier_read_passed(
    hubspot: HubSpotHarness,
) -> None:
    """``Cursor(read_until=...)`` without a position: every contact is read again (its current
    statuses), but an address left before that bound less the look-back window was in a read
    already: its no is not handed over again. One left inside the window, or after the bound,
    is. A read without any bound (a first read, ``sync --full``) reads the whole history."""
    portal = hubspot.sandbox.portal
    at = _minutes(portal)
    passed = _readdressed(portal, A, B, at(0), at(1))
    horizon = at(30)
    in_window = _readdressed(portal, "c@example.test", "d@example.test", at(25), at(27))
    after = _readdressed(portal, "e@example.test", "f@example.test", at(40), at(41))
    conn = HubSpotConnector("hs", hubspot.connector_settings())

    again = {
        r.record_id: r
        for r in conn.read_changes("contacts", FIELDS, Cursor(read_until=horizon), read_until())
    }
    assert set(again) == {passed, in_window, after}, "every contact is read again"
    assert again[passed].fields["subscription_1001"] == "NOT_SPECIFIED"  # b@'s own status
    assert again[passed].earlier_values is None, "a no a read already passed was handed over again"
    for contact, said_no in ((in_window, at(25)), (after, at(40))):
        assert again[contact].earlier_values == {
            "subscription_1001": "UNSUBSCRIBED",
            "subscription_1001_legal_basis": None,
            "subscription_1001_timestamp": iso_ms(said_no),
        }

    whole = {r.record_id: r for r in conn.read_changes("contacts", FIELDS, Cursor(), read_until())}
    assert all(whole[c].earlier_values for c in (passed, in_window, after)), "a first read reads it all"


def test_an_archived_contacts_earlier_address_is_read_with_its_last_values(hubspot: HubSpotHarness) -> None:
    """The person said no as a@; a user changed the address to b@ and deleted the contact before
    the next sync. Its last values show b@'s status (nothing said): the no comes among them,
    dated by when it was given, from the same batch read (no call more). An address it left
    before the listing's lower bound was read with the live contact: not again."""
    portal = hubspot.sandbox.portal
    at = _minutes(portal)
    hidden = _readdressed(portal, A, B, at(20), at(21))
    portal.archive(hidden, at=at(22))
    passed = _readdressed(portal, "c@example.test", "d@example.test", at(0), at(1))
    portal.archive(passed, at=at(22))
    conn = HubSpotConnector("hs", hubspot.connector_settings())

    hubspot.sandbox.reset_counters()
    gone = {
        r.record_id: r for r in conn.read_deletions("contacts", Cursor(at(10)), read_until(), fields=FIELDS)
    }
    assert hubspot.sandbox.calls["batch_read"] == 1
    record = gone[hidden]
    assert record.deleted
    assert record.fields["subscription_1001"] == "UNSUBSCRIBED", (
        "the no given as a@ was lost with the contact"
    )
    assert record.fields["subscription_1001_timestamp"] == iso_ms(at(20))
    assert record.earlier_given_at == dict.fromkeys(
        ["subscription_1001", "subscription_1001_legal_basis", "subscription_1001_timestamp"], at(20)
    )
    assert gone[passed].fields["subscription_1001"] == "NOT_SPECIFIED"
    assert gone[passed].earlier_given_at is None


def test_the_ledger_takes_the_no_of_a_deleted_contacts_earlier_address(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    """End to end: the contact is synced subscribed as a@; the person unsubscribes, a user
    changes the address to b@ and deletes the contact. The next run takes the no, as given
    then."""
    portal = hubspot.sandbox.portal
    contact = portal.create({"email": A, "lastname": "Person"})
    portal.set_status(A, "1001", "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", source="Form")
    config = write_sync_config(hubspot, tmp_path)
    first = open_sync_engine(config).run(full=True)
    assert first.status == "succeeded", first.error
    said_no = portal.now()
    portal.set_status(A, "1001", "UNSUBSCRIBED", at=said_no)
    portal.update(contact, {"email": B})
    portal.archive(contact)

    engine = open_sync_engine(config)
    report = engine.run()
    assert report.status == "succeeded", report.error
    assert report.counts.deleted_records == 1
    with engine.ledger.engine.connect() as conn:
        rows = conn.execute(
            select(consent_events.c.status, consent_events.c.event_time).where(
                consent_events.c.purpose == "email_marketing"
            )
        ).all()
    statuses: list[tuple[str, Any]] = [(str(status), when) for status, when in rows]
    assert any(status == "withdrawn" for status, _ in statuses), (
        "the no hidden by the address change was lost"
    )
    (when,) = [when for status, when in statuses if status == "withdrawn"]
    assert when is not None and abs(when.replace(tzinfo=dt.UTC) - said_no) < dt.timedelta(seconds=1)


def _change_the_mapping(config: Path, tmp: Path) -> None:
    """An admin's routine mapping change: one legal basis mapped where it was not."""
    text = (MAPPINGS / "contacts.yaml").read_text()
    assert "NON_GDPR: null" in text
    changed = tmp / "contacts-changed.yaml"
    changed.write_text(text.replace("NON_GDPR: null", "NON_GDPR: legitimate_interests"))
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["mappings"] = [str(changed)]
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_mapping_change_takes_no_old_address_history_a_planned_full_sync_does(
    hubspot: HubSpotHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five contacts said no under an old address before a user re-addressed them, and a read of
    the version before earlier addresses were read passed those noes by. A routine mapping change
    reads every contact again (the engine, sync/engine.py ``_reads``): it hands the connector the
    earlier read's end, so no old address's no becomes an unsubscribe then, on every
    re-addressed contact at once (HubSpot never undoes one). The planned ``sync --full`` takes
    all five, as documented."""
    portal = hubspot.sandbox.portal
    base = (portal.now() - dt.timedelta(hours=2)).replace(microsecond=0)
    contacts = [portal.create({"email": f"old{n}@example.test", "lastname": "P"}, at=base) for n in range(5)]
    config = write_sync_config(hubspot, tmp_path)
    assert open_sync_engine(config).run(full=True).status == "succeeded"
    for n, contact in enumerate(contacts):
        portal.set_status(f"old{n}@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(hours=1))
        portal.update(contact, {"email": f"new{n}@example.test"}, at=base + dt.timedelta(hours=1, minutes=1))
    with monkeypatch.context() as older:  # the version before earlier addresses were read
        older.setattr(HubSpotConnector, "_earlier_addresses", lambda self, batch, since: {})
        assert open_sync_engine(config).run().status == "succeeded"

    _change_the_mapping(config, tmp_path)
    before = hubspot.sandbox.calls["unsubscribe"]
    changed = open_sync_engine(config).run()
    assert changed.status == "succeeded", changed.error
    assert "reading every record again" in (changed.note or "")
    assert changed.counts.read >= 5, "every contact is read again"
    assert hubspot.sandbox.calls["unsubscribe"] == before, "a mapping change unsubscribed old history"

    full = open_sync_engine(config).run(full=True)
    assert full.status == "succeeded", full.error
    assert hubspot.sandbox.calls["unsubscribe"] - before == 5
