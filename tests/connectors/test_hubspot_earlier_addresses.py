"""HubSpot keys subscription statuses by address, not by contact (legacy docs "Update email
subscription status": "The subscription status is tied to the email address, and not a specific
contact record"). A person says no as a@, a user then changes the contact's address to b@ before
the next sync: every later read of the contact shows b@'s statuses. The connector reads the
contact's ``email`` history (batch read with ``propertiesWithHistory``), the statuses of the
addresses it had since the read's lower bound, and hands a no among them over as
``CrmRecord.earlier_values``, unless the contact shows a yes given after it under its new
address. Over HTTPS against the sandbox."""

from __future__ import annotations

import datetime as dt
from typing import Any

from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_hubspot.sandbox.server import HubSpotPortal, iso_ms

from consentsync.sdk import Cursor, RecordUpdate
from tests.connectors.against_sandbox import read_until

FIELDS = ["email", "subscription_1001", "subscription_1001_timestamp"]
BOTH = [*FIELDS, "subscription_1002", "subscription_1002_legal_basis"]
A, B = "a@example.test", "b@example.test"


def _connector(hubspot: HubSpotHarness, **extra: Any) -> HubSpotConnector:
    return HubSpotConnector("hs", hubspot.connector_settings(**extra))


def _subscribed(portal: HubSpotPortal, email: str, at: dt.datetime, sid: str = "1001") -> None:
    portal.set_status(
        email, sid, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", explanation="form", source="Form", at=at
    )


def _read(conn: HubSpotConnector, since: Cursor, fields: list[str] = FIELDS) -> dict[str, Any]:
    return {r.record_id: r for r in conn.read_changes("contacts", fields, since, read_until())}


def test_an_unsubscribe_followed_by_an_address_change_is_read(hubspot: HubSpotHarness) -> None:
    """The reviewer's repro: the no given as a@ reaches the read that shows b@, as an earlier
    value dated when it was given."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    contact = portal.create({"email": A}, at=base)
    _subscribed(portal, A, base)
    conn = _connector(hubspot)
    first = list(conn.read_changes("contacts", FIELDS, Cursor(), read_until()))
    assert [r.fields["subscription_1001"] for r in first] == ["SUBSCRIBED"]
    assert first[0].earlier_values is None
    cursor = Cursor(first[-1].modstamp, first[-1].record_id)

    said_no = base + dt.timedelta(minutes=10)
    portal.set_status(A, "1001", "UNSUBSCRIBED", at=said_no)
    portal.update(contact, {"email": B}, at=base + dt.timedelta(minutes=11))

    later = list(conn.read_changes("contacts", FIELDS, cursor, read_until()))
    assert [r.record_id for r in later] == [contact]
    assert later[0].fields["subscription_1001"] == "NOT_SPECIFIED"  # b@'s: nothing said
    assert later[0].earlier_values == {
        "subscription_1001": "UNSUBSCRIBED",
        "subscription_1001_legal_basis": None,  # the preferences page recorded none
        "subscription_1001_timestamp": iso_ms(said_no),
    }, "the withdrawal given as a@ was never read"


def test_a_later_yes_under_the_new_address_wins_and_only_there(hubspot: HubSpotHarness) -> None:
    """Three people say no under their old address, then a user changes it. One says yes under
    the new address afterwards: that yes is their latest word, and no earlier no comes with the
    contact (taken, it would have the engine unsubscribe the new address for good). One held a
    yes under the new address from before their no: the no is the latest word and comes. One
    gave the no after the contact had left the address (someone else's, on an address the
    contact no longer had): it is not the contact's."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    later_yes = portal.create({"email": "c@example.test"}, at=base)
    earlier_yes = portal.create({"email": "e@example.test"}, at=base)
    after_leaving = portal.create({"email": "g@example.test"}, at=base)
    since = Cursor(base + dt.timedelta(minutes=1))

    _subscribed(portal, "f@example.test", base + dt.timedelta(minutes=2))  # e@'s person's yes, before
    for old in ("c@example.test", "e@example.test"):
        portal.set_status(old, "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=10))
    portal.update(later_yes, {"email": "d@example.test"}, at=base + dt.timedelta(minutes=11))
    portal.update(earlier_yes, {"email": "f@example.test"}, at=base + dt.timedelta(minutes=11))
    portal.update(after_leaving, {"email": "h@example.test"}, at=base + dt.timedelta(minutes=11))
    _subscribed(portal, "d@example.test", base + dt.timedelta(minutes=12))  # the yes under d@
    portal.set_status("g@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=13))

    records = _read(_connector(hubspot), since)
    assert records[later_yes].fields["subscription_1001"] == "SUBSCRIBED"
    assert records[later_yes].earlier_values is None, "a no older than the yes under d@ was handed over"
    assert records[after_leaving].earlier_values is None, "a no given after the contact left g@"
    assert records[earlier_yes].fields["subscription_1001"] == "SUBSCRIBED"
    assert (records[earlier_yes].earlier_values or {}).get("subscription_1001") == "UNSUBSCRIBED"


def test_an_opt_out_of_all_email_under_the_old_address_is_a_no_for_every_subscription(
    hubspot: HubSpotHarness,
) -> None:
    """The person clicks "unsubscribe from all" as a@ (hs_email_optout, kept apart from the
    statuses), then the address changes: b@ reads no opt-out (the flag follows the address), and
    the opt-out comes as an earlier no for each subscription read, as of the opt-out."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    contact = portal.create({"email": A}, at=base)
    _subscribed(portal, A, base, sid="1002")
    opted_out = base + dt.timedelta(minutes=10)
    portal.unsubscribe_all(A, at=opted_out)
    assert hubspot.stored(contact)["hs_email_optout"] == "true"
    portal.update(contact, {"email": B}, at=base + dt.timedelta(minutes=11))
    assert hubspot.stored(contact)["hs_email_optout"] == "false", "the flag follows the address"

    before = hubspot.sandbox.calls["wide_status_batch_read"]
    (record,) = _read(_connector(hubspot), Cursor(base + dt.timedelta(minutes=1)), BOTH).values()
    assert record.fields["subscription_1001"] == record.fields["subscription_1002"] == "NOT_SPECIFIED"
    assert record.earlier_values == {
        "subscription_1001": "UNSUBSCRIBED",
        "subscription_1001_legal_basis": None,
        "subscription_1001_timestamp": iso_ms(opted_out),
        "subscription_1002": "UNSUBSCRIBED",
        "subscription_1002_legal_basis": "CONSENT_WITH_NOTICE",
        "subscription_1002_timestamp": iso_ms(opted_out),
    }
    assert hubspot.sandbox.calls["wide_status_batch_read"] == before + 1


def test_the_history_costs_one_batch_read_per_batch_and_nothing_more_without_a_change(
    hubspot: HubSpotHarness,
) -> None:
    """HubSpot's search answers no property history and no property says when ``email``
    changed, so each page's contacts are asked for theirs: one batch read per ``batch_size``
    contacts. A page where no address changed costs nothing beyond that (no status or opt-out
    read for earlier addresses); one where an address changed reads the old address in the
    page's own status read (no extra one) and asks the opt-out endpoint about it."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    ids = [
        portal.create({"email": f"p{n}@example.test"}, at=base + dt.timedelta(seconds=n)) for n in range(5)
    ]
    conn = _connector(hubspot, batch_size=2)
    calls = hubspot.sandbox.calls
    hubspot.sandbox.reset_counters()
    records = _read(conn, Cursor())
    assert all(r.earlier_values is None for r in records.values())
    assert (calls["search"], calls["batch_read"], calls["status_batch_read"]) == (1, 3, 1)
    assert calls["wide_status_batch_read"] == 0

    portal.set_status("p3@example.test", "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=10))
    portal.update(ids[3], {"email": "p3.new@example.test"}, at=base + dt.timedelta(minutes=11))
    hubspot.sandbox.reset_counters()
    records = _read(conn, Cursor(base + dt.timedelta(minutes=5)))
    assert list(records) == [ids[3]]
    assert (records[ids[3]].earlier_values or {}).get("subscription_1001") == "UNSUBSCRIBED"
    assert (calls["search"], calls["batch_read"], calls["status_batch_read"]) == (1, 1, 1)
    assert calls["wide_status_batch_read"] == 1


def test_an_address_left_before_the_reads_lower_bound_is_not_read_again(
    hubspot: HubSpotHarness,
) -> None:
    """The look-back is already in ``since``: an address the contact left before it was shown
    to an earlier read (its no read then, or never there), and is not asked about again. A full
    read (no lower bound) reads every address the contact ever had."""
    portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    contact = portal.create({"email": A}, at=base)
    portal.set_status(A, "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=1))
    portal.update(contact, {"email": B}, at=base + dt.timedelta(minutes=2))
    portal.update(contact, {"jobtitle": "moved on"}, at=base + dt.timedelta(minutes=20))
    conn = _connector(hubspot)
    (incremental,) = _read(conn, Cursor(base + dt.timedelta(minutes=10))).values()
    assert incremental.earlier_values is None
    (full,) = _read(conn, Cursor()).values()
    assert (full.earlier_values or {}).get("subscription_1001") == "UNSUBSCRIBED"


def test_a_merged_away_id_answers_the_merged_contact_and_lends_it_no_history(
    hubspot: HubSpotHarness,
) -> None:
    """HubSpot's changelog ("Updated merge functionality for contacts and companies"): "fetching
    any records using the original IDs will return the new merged record with the new ID". The
    connector keys what a batch read answers by the id answered: a merged-away id gets neither
    the merged contact's email history nor its address (no subscription change is sent there
    under the old id)."""
    harness_portal = hubspot.sandbox.portal
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    first = harness_portal.create({"email": A}, at=base)
    harness_portal.set_status(A, "1001", "UNSUBSCRIBED", at=base + dt.timedelta(minutes=1))
    harness_portal.update(first, {"email": B}, at=base + dt.timedelta(minutes=2))
    other = harness_portal.create({"email": "other@example.test"}, at=base)
    merged = hubspot.merge_into_new(first, other)

    session = hubspot.sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {hubspot.sandbox.credentials.access_token}"
    answer = session.post(
        f"{hubspot.sandbox.api_url}/crm/v3/objects/contacts/batch/read",
        json={
            "inputs": [{"id": first}, {"id": other}],
            "properties": ["email"],
            "propertiesWithHistory": ["email"],
        },
    ).json()
    assert [item["id"] for item in answer["results"]] == [merged]
    assert [v["value"] for v in answer["results"][0]["propertiesWithHistory"]["email"]] == [B, A]

    conn = _connector(hubspot)
    raw = {"id": first, "properties": {"email": B}}
    assert conn._earlier_addresses([raw], None) == {}
    before = hubspot.sandbox.calls["unsubscribe"]
    (result,) = conn.write([RecordUpdate("contacts", first, {"subscription_1002": "UNSUBSCRIBED"})])
    assert not result.ok
    assert hubspot.sandbox.calls["unsubscribe"] == before
    assert harness_portal.status(B, "1002") is None
