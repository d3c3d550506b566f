"""HubSpot (session 57): which part of a contact's ``email`` history is read, and for whom.

A read of every contact again (after a mapping change) reads current state, not the history a
read already passed: an old address's no taken then (or superseded, or left out on purpose) is
not taken anew, as an unsubscribe HubSpot never undoes, on every re-addressed contact at once;
nor when that read is cut short and resumed, nor changed again meanwhile. What the reads before
passed is where an incremental read would resume (with the configured look-back): a no behind a
cut read's position, or inside the look-back window, which no read took, is not lost.
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
from consentsync.sync import failpoints
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
    """``Cursor(history_from=..., history_from_id=...)`` without a position: every contact is
    read again (its current statuses), but an address left before that bound, or at it by a
    contact whose id is not after the bound's, was in a read already: its no is not handed over
    again. One left at the bound by a contact after it, or after the bound, is. No look-back is
    taken off (the engine's bound has it). A position later than the bound is the horizon; a
    read without any bound (a first read, ``sync --full``) reads the whole history."""
    portal = hubspot.sandbox.portal
    at = _minutes(portal)
    passed = _readdressed(portal, A, B, at(0), at(1))
    horizon = at(30)
    at_bound = _readdressed(portal, "c@example.test", "d@example.test", at(25), horizon)
    at_bound_after = _readdressed(portal, "g@example.test", "h@example.test", at(26), horizon)
    after = _readdressed(portal, "e@example.test", "f@example.test", at(28), at(31))
    conn = HubSpotConnector("hs", hubspot.connector_settings())

    bound = Cursor(history_from=horizon, history_from_id=at_bound)
    again = {r.record_id: r for r in conn.read_changes("contacts", FIELDS, bound, read_until())}
    assert set(again) == {passed, at_bound, at_bound_after, after}, "every contact is read again"
    assert again[passed].fields["subscription_1001"] == "NOT_SPECIFIED"  # b@'s own status
    assert again[passed].earlier_values is None, "a no a read already passed was handed over again"
    assert again[at_bound].earlier_values is None, "a no the read before passed at its bound came again"
    for contact, said_no in ((at_bound_after, at(26)), (after, at(28))):
        assert again[contact].earlier_values == {
            "subscription_1001": "UNSUBSCRIBED",
            "subscription_1001_legal_basis": None,
            "subscription_1001_timestamp": iso_ms(said_no),
        }

    # A resumed read: the bound where it is later than the position, else the position.
    resumed = Cursor(at(20), history_from=horizon, history_from_id=at_bound)
    later = {r.record_id: r for r in conn.read_changes("contacts", FIELDS, resumed, read_until())}
    assert set(later) == {at_bound, at_bound_after, after}
    assert later[at_bound].earlier_values is None
    assert later[at_bound_after].earlier_values and later[after].earlier_values
    beyond = Cursor(at(30), at_bound_after, history_from=at(0))
    assert [r.record_id for r in conn.read_changes("contacts", FIELDS, beyond, read_until())] == [after]

    whole = {r.record_id: r for r in conn.read_changes("contacts", FIELDS, Cursor(), read_until())}
    assert all(whole[c].earlier_values for c in (passed, at_bound, at_bound_after, after)), (
        "a first read reads it all"
    )


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


def _change_the_mapping_again(tmp: Path) -> None:
    """A second change of the mapping ``_change_the_mapping`` wrote."""
    changed = tmp / "contacts-changed.yaml"
    text = changed.read_text()
    assert "PROCESS_AND_STORE: null" in text
    changed.write_text(text.replace("PROCESS_AND_STORE: null", "PROCESS_AND_STORE: legitimate_interests"))


def _cut_at_the_second_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next run dies after its first page is committed (a kill, the budget, a stop)."""
    monkeypatch.setattr(failpoints, "_POINTS", {"sync.page.read": ("raise", 2)})
    monkeypatch.setattr(failpoints, "_hits", failpoints.Counter())


def _passed_by_an_older_version(
    hubspot: HubSpotHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, list[str]]:
    """Four contacts nobody touched since (first in ``lastmodifieddate`` order: the first page
    of a read of every contact), and five that said no under an old address before a user
    re-addressed them, a change a read of the version before earlier addresses were read passed
    by. Pages of two."""
    portal = hubspot.sandbox.portal
    base = (portal.now() - dt.timedelta(hours=3)).replace(microsecond=0)
    for n in range(4):
        portal.create(
            {"email": f"quiet{n}@example.test", "lastname": "Q"}, at=base - dt.timedelta(minutes=30 - n)
        )
    contacts = [portal.create({"email": f"old{n}@example.test", "lastname": "P"}, at=base) for n in range(5)]
    config = write_sync_config(hubspot, tmp_path, batch_size=2)
    assert open_sync_engine(config, batch_size=2).run(full=True).status == "succeeded"
    for n, contact in enumerate(contacts):
        portal.set_status(f"old{n}@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(hours=1))
        portal.update(contact, {"email": f"new{n}@example.test"}, at=base + dt.timedelta(hours=1, minutes=1))
    with monkeypatch.context() as older:  # the version before earlier addresses were read
        older.setattr(HubSpotConnector, "_earlier_addresses", lambda self, batch, since: {})
        assert open_sync_engine(config, batch_size=2).run().status == "succeeded"
    return config, contacts


def test_a_mapping_change_reread_cut_short_takes_no_old_address_history_when_resumed(
    hubspot: HubSpotHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read of every contact after a mapping change dies after its first page (the quiet
    contacts). The run that resumes it goes on from that page's position, an old
    ``lastmodifieddate``: the bound of what the reads before passed is kept with the cursor and
    handed over again, so the five old addresses' noes a read passed are not taken then."""
    config, _contacts = _passed_by_an_older_version(hubspot, tmp_path, monkeypatch)
    _change_the_mapping(config, tmp_path)
    before = hubspot.sandbox.calls["unsubscribe"]
    _cut_at_the_second_page(monkeypatch)
    with pytest.raises(failpoints.FailpointHit):
        open_sync_engine(config, batch_size=2).run()
    monkeypatch.setattr(failpoints, "_POINTS", {})
    resumed = open_sync_engine(config, batch_size=2).run()
    assert resumed.status == "succeeded", resumed.error
    again = open_sync_engine(config, batch_size=2).run()
    assert again.status == "succeeded", again.error
    assert hubspot.sandbox.calls["unsubscribe"] == before, (
        "a mapping change's re-read, resumed after a cut, unsubscribed old history"
    )


def test_a_second_mapping_change_during_a_cut_reread_keeps_its_bound(
    hubspot: HubSpotHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-read after a mapping change is cut after its first page and the mapping changes
    again before the next run. The contacts after the cut's position were read by no read since
    the one before the first change: what that read passed is still the bound (the cut's
    position, or where a read would resume from it, would take the five noes again)."""
    config, _contacts = _passed_by_an_older_version(hubspot, tmp_path, monkeypatch)
    _change_the_mapping(config, tmp_path)
    before = hubspot.sandbox.calls["unsubscribe"]
    _cut_at_the_second_page(monkeypatch)
    with pytest.raises(failpoints.FailpointHit):
        open_sync_engine(config, batch_size=2).run()
    monkeypatch.setattr(failpoints, "_POINTS", {})
    _change_the_mapping_again(tmp_path)
    changed = open_sync_engine(config, batch_size=2).run()
    assert changed.status == "succeeded", changed.error
    assert "reading every record again" in (changed.note or "")
    assert hubspot.sandbox.calls["unsubscribe"] == before, (
        "a second mapping change during a cut re-read unsubscribed old history"
    )


def test_a_mapping_change_after_an_incremental_read_cut_short_takes_the_noes_it_never_read(
    hubspot: HubSpotHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incremental read is cut after its first page (a kill, the budget): its cursor keeps
    the run's bound, but the contacts after its position were never read. A mapping change
    before the next run must not hand the connector that bound as what the earlier read passed:
    the noes given under the old addresses of those contacts are taken (where an incremental
    read would resume)."""
    portal = hubspot.sandbox.portal
    base = (portal.now() - dt.timedelta(hours=3)).replace(microsecond=0)
    contacts = [portal.create({"email": f"old{n}@example.test", "lastname": "P"}, at=base) for n in range(5)]
    quiet = [portal.create({"email": f"quiet{n}@example.test", "lastname": "Q"}, at=base) for n in range(4)]
    config = write_sync_config(hubspot, tmp_path, batch_size=2)
    assert open_sync_engine(config, batch_size=2).run(full=True).status == "succeeded"
    for n, contact in enumerate(quiet):  # changed first: the first page of the next read
        portal.update(contact, {"lastname": f"R{n}"}, at=base + dt.timedelta(minutes=30 + n))
    for n, contact in enumerate(contacts):
        portal.set_status(f"old{n}@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(hours=1))
        portal.update(contact, {"email": f"new{n}@example.test"}, at=base + dt.timedelta(hours=1, minutes=1))
    _cut_at_the_second_page(monkeypatch)
    with pytest.raises(failpoints.FailpointHit):
        open_sync_engine(config, batch_size=2).run()
    monkeypatch.setattr(failpoints, "_POINTS", {})

    _change_the_mapping(config, tmp_path)
    before = hubspot.sandbox.calls["unsubscribe"]
    for _ in range(2):
        report = open_sync_engine(config, batch_size=2).run()
        assert report.status == "succeeded", report.error
    assert hubspot.sandbox.calls["unsubscribe"] - before == 5, "the noes no read took were lost"


def test_a_mapping_change_reads_the_history_inside_the_configured_look_back(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    """The connector's look-back is configured to an hour (HubSpot's search lagging writes
    that long). A contact re-addressed 20 minutes before a read, after it said no under the old
    address, is not yet in the search index: the read passes it by, and its position is 10
    minutes before its end. A mapping change before the next run reads every contact again: an
    incremental read would have gone back the hour and taken the no, so the re-read does too
    (the connector class's 5 minutes would have lost it)."""
    portal = hubspot.sandbox.portal
    now = portal.now().replace(microsecond=0)
    late = portal.create({"email": A, "lastname": "Late"}, at=now - dt.timedelta(hours=3))
    seen = portal.create({"email": "seen@example.test", "lastname": "Seen"}, at=now - dt.timedelta(hours=3))
    config = write_sync_config(hubspot, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["lookback_seconds"] = 3600
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    assert open_sync_engine(config).run(full=True).status == "succeeded"
    portal.set_status(A, "1001", "UNSUBSCRIBED", at=now - dt.timedelta(minutes=21))
    portal.update(late, {"email": B}, at=now - dt.timedelta(minutes=20))
    with portal.lock:  # the search index has not caught up with the change (begin_late's state)
        portal._unindexed.add(int(late))
    portal.update(seen, {"lastname": "Seen again"}, at=now - dt.timedelta(minutes=10))
    read = open_sync_engine(config).run()
    assert read.status == "succeeded", read.error
    portal.index(late)

    _change_the_mapping(config, tmp_path)
    before = hubspot.sandbox.calls["unsubscribe"]
    changed = open_sync_engine(config).run()
    assert changed.status == "succeeded", changed.error
    assert hubspot.sandbox.calls["unsubscribe"] - before == 1, "a no inside the look-back window was lost"
