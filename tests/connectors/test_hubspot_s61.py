"""HubSpot (session 61, black-box findings F1 and F2). Over HTTPS against the sandbox.

F1: a batch read carrying ``propertiesWithHistory`` takes at most 50 inputs; HubSpot answers more
with 400 VALIDATION_ERROR ("The maximum number of inputs supported in a batch request for
property histories is 50", quoted in https://github.com/activepieces/activepieces/pull/9359 and
https://github.com/PipedreamHQ/pipedream/pull/8462). The connector read a page's ``email``
history (and archived contacts' last values) 100 at a time, so every sync of a mapping naming a
subscription failed on its first page of more than 50 contacts, run after run; the sandbox
accepted 100.

F2: a v4 "wide" status is typed (https://developers.hubspot.com/docs/api-reference/legacy/
communication-preferences/status/batch/get-unsubscribed-batch): ``PORTAL_WIDE``, an opt-out of
all email, or ``BUSINESS_UNIT_WIDE`` with its ``businessUnitId``, an opt-out of all of that
unit's email only (each subscription definition names its unit: .../v3/get-subscription-
definitions). The connector took every one as an opt-out of all email: a person leaving one
brand's email was withdrawn from every purpose, which HubSpot never lets be undone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.sandbox.harness import MAPPINGS, HubSpotHarness
from consentsync_hubspot.sandbox.server import DEFAULT_SUBSCRIPTIONS, HubSpotPortal, iso_ms

from consentsync.sdk import Cursor
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.connectors.against_sandbox import read_until

FIELDS = ["email", "subscription_1001", "subscription_1001_timestamp"]
HISTORY_LIMIT_MESSAGE = (
    "The maximum number of inputs supported in a batch request for property histories is 50. "
    "Please reduce the number of items and try again"
)
#: A second brand: two subscription types of business unit 2.
BRAND_TWO = {"2001": ("Brand Two Newsletter", "Marketing"), "2002": ("Brand Two Offers", "Marketing")}
BRANDED_FIELDS = [
    "email",
    *(f"subscription_{sid}{part}" for sid in ("1001", "1002", "2001") for part in ("", "_timestamp")),
]


def _history_read(hubspot: HubSpotHarness, ids: list[str], *, history: bool) -> Any:
    session = hubspot.sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {hubspot.sandbox.credentials.access_token}"
    body: dict[str, Any] = {"properties": ["email"], "inputs": [{"id": i} for i in ids]}
    if history:
        body["propertiesWithHistory"] = ["email"]
    return session.post(f"{hubspot.sandbox.api_url}/crm/v3/objects/contacts/batch/read", json=body)


def _sizes_of_history_reads(hubspot: HubSpotHarness) -> list[int]:
    """Spy on the sandbox's batch reads: the inputs of each one carrying propertiesWithHistory."""
    sizes: list[int] = []
    original = hubspot.sandbox._h_batch_read

    def spy(request: Any) -> Any:
        body = request.json()
        if isinstance(body, dict) and body.get("propertiesWithHistory"):
            sizes.append(len(body.get("inputs") or []))
        return original(request)

    hubspot.sandbox._h_batch_read = spy  # type: ignore[method-assign]
    return sizes


def _readdressed(portal: HubSpotPortal, old: str, new: str) -> str:
    """A contact subscribed as ``old`` who then said no; a user then gave it ``new``."""
    contact = portal.create({"email": old, "lastname": "Person"})
    portal.set_status(old, "1001", "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", source="Form")
    portal.set_status(old, "1001", "UNSUBSCRIBED")
    portal.update(contact, {"email": new})
    return contact


# -- F1: at most 50 inputs a history read ----------------------------------------------------------


def test_the_sandbox_refuses_a_history_read_of_51_contacts_as_hubspot_does(hubspot: HubSpotHarness) -> None:
    ids = hubspot.seed(51)
    refused = _history_read(hubspot, ids, history=True)
    assert refused.status_code == 400, "the sandbox took more history inputs than HubSpot does"
    body = refused.json()
    assert body["status"] == "error" and body["category"] == "VALIDATION_ERROR"
    assert body["message"] == HISTORY_LIMIT_MESSAGE and body["correlationId"]
    assert _history_read(hubspot, ids, history=False).status_code == 200  # 100 without history
    answered = _history_read(hubspot, ids[:50], history=True)
    assert answered.status_code == 200 and len(answered.json()["results"]) == 50


def test_a_sync_of_a_page_of_60_contacts_with_a_subscription_mapped_succeeds(
    hubspot: HubSpotHarness, tmp_path: Path
) -> None:
    """The shipped mapping names subscriptions, so every page's ``email`` history is read: a
    page of 60 contacts is read 50 and 10 at a time, and the no hidden by an address change of
    a contact in the second read reaches the ledger."""
    portal = hubspot.sandbox.portal
    hubspot.seed(59)
    hidden = _readdressed(portal, "a@example.test", "b@example.test")  # the page's last contact
    sizes = _sizes_of_history_reads(hubspot)
    config = write_sync_config(hubspot, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["settings"]["page_size"] = 200  # one page of every contact
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    engine = open_sync_engine(config)
    report = engine.run(full=True)
    assert report.status == "succeeded", report.error
    assert sizes == [50, 10]
    assert hidden in portal.ids()
    history = engine.ledger.subject_view("b@example.test")["history"]
    assert ("email_marketing", "withdrawn") in {(e["purpose"], e["status"]) for e in history}, (
        "the no of the contact in the page's second history read was lost"
    )


def test_archived_contacts_are_read_with_their_last_values_50_at_a_time(hubspot: HubSpotHarness) -> None:
    """Archived contacts' last values carry their ``email`` history where subscriptions are
    read: 55 in the window are read in two calls, not refused in one."""
    portal = hubspot.sandbox.portal
    since = Cursor(portal.now() - dt.timedelta(seconds=1))
    ids = hubspot.seed(54)
    hidden = _readdressed(portal, "c@example.test", "d@example.test")
    for contact in [*ids, hidden]:
        portal.archive(contact)
    sizes = _sizes_of_history_reads(hubspot)
    conn = HubSpotConnector("hs", hubspot.connector_settings())
    gone = {r.record_id: r for r in conn.read_deletions("contacts", since, read_until(), fields=FIELDS)}
    assert sizes == [50, 5]
    assert set(gone) == {*ids, hidden} and all(r.deleted and r.fields for r in gone.values())
    assert gone[hidden].fields["subscription_1001"] == "UNSUBSCRIBED"


# -- F2: an opt-out of all of one business unit's email ---------------------------------------------


@pytest.fixture
def branded() -> Iterator[HubSpotHarness]:
    """A portal with the Business Units add-on: 1001-1003 in the default unit (0), 2001 and
    2002 in unit 2."""
    harness = HubSpotHarness(
        subscriptions={**DEFAULT_SUBSCRIPTIONS, **BRAND_TWO}, business_units=dict.fromkeys(BRAND_TWO, 2)
    )
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def _subscribed(portal: HubSpotPortal, email: str, *sids: str) -> None:
    for sid in sids:
        portal.set_status(email, sid, "SUBSCRIBED", legal_basis="CONSENT_WITH_NOTICE", source="Form")


def test_the_sandbox_holds_a_second_business_unit_and_its_opt_outs(branded: HubSpotHarness) -> None:
    """Definitions and statuses name their unit; a status read takes ``businessUnitId``; a
    unit's opt-out of all email is a BUSINESS_UNIT_WIDE status of that unit (not the flag), and
    v3 refuses to resubscribe the address to that unit's types only."""
    sandbox, portal = branded.sandbox, branded.sandbox.portal
    session = sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {sandbox.credentials.access_token}"
    base = f"{sandbox.api_url}/communication-preferences"
    definitions = session.get(f"{base}/v3/definitions").json()["subscriptionDefinitions"]
    assert {d["id"]: d["businessUnitId"] for d in definitions} == {
        "1001": 0,
        "1002": 0,
        "1003": 0,
        "2001": 2,
        "2002": 2,
    }
    contact = portal.create({"email": "a@example.test"})
    _subscribed(portal, "a@example.test", "1001", "2001")
    at = portal.now()
    portal.unsubscribe_all("a@example.test", business_unit=2, at=at)
    assert branded.stored(contact)["hs_email_optout"] != "true"

    def read(path: str, **params: Any) -> Any:
        answer = session.post(
            f"{base}/v4/statuses/batch/{path}",
            params={"channel": "EMAIL", **params},
            json={"inputs": ["a@example.test"]},
        )
        assert answer.status_code == 200
        return answer.json()["results"]

    (unit_two,) = read("read", businessUnitId=2)
    assert {s["subscriptionId"]: s["businessUnitId"] for s in unit_two["statuses"]} == {2001: 2, 2002: 2}
    (default,) = read("read")
    assert {s["subscriptionId"] for s in default["statuses"]} == {1001, 1002, 1003}
    assert read("unsubscribe-all/read") == []
    (wide,) = read("unsubscribe-all/read", businessUnitId=2)
    assert wide["wideStatuses"] == [
        {
            "channel": "EMAIL",
            "status": "UNSUBSCRIBED",
            "subscriberIdString": "a@example.test",
            "timestamp": iso_ms(at),
            "wideStatusType": "BUSINESS_UNIT_WIDE",
            "businessUnitId": 2,
        }
    ]
    body = {
        "emailAddress": "a@example.test",
        "legalBasis": "CONSENT_WITH_NOTICE",
        "legalBasisExplanation": "web form",
    }
    refused = session.post(f"{base}/v3/subscribe", json={**body, "subscriptionId": "2002"})
    assert refused.status_code == 400
    assert session.post(f"{base}/v3/subscribe", json={**body, "subscriptionId": "1002"}).status_code == 200


def test_an_opt_out_of_all_of_one_units_email_withdraws_only_that_units_subscriptions(
    branded: HubSpotHarness,
) -> None:
    """a@ opts out of all of brand two's email (unit 2): only 2001 reads UNSUBSCRIBED, as of the
    opt-out; b@ likewise, with ``hs_email_optout`` set as well (HubSpot does not say whether a
    unit's opt-out sets it): the flag is the account's own, so the default unit's types read
    UNSUBSCRIBED too (where they disagree, the no is kept). c@ opts out of all
    email: every subscription reads UNSUBSCRIBED. d@ unsubscribed from 2001 itself: read with
    unit 2's ``businessUnitId``."""
    portal = branded.sandbox.portal
    since = Cursor(portal.now() - dt.timedelta(seconds=1))
    contacts = {}
    for email in ("a@example.test", "b@example.test", "c@example.test", "d@example.test"):
        contacts[email] = portal.create({"email": email, "lastname": "Person"})
        _subscribed(portal, email, "1001", "2001")
    brand_two_out = portal.now()
    portal.unsubscribe_all("a@example.test", business_unit=2, at=brand_two_out)
    portal.unsubscribe_all("b@example.test", business_unit=2, at=brand_two_out)
    portal.update(contacts["b@example.test"], {"hs_email_optout": "true"})
    all_out = portal.now()
    portal.unsubscribe_all("c@example.test", at=all_out)
    portal.set_status("d@example.test", "2001", "UNSUBSCRIBED", at=all_out)

    conn = HubSpotConnector("hs", branded.connector_settings())
    read = {r.record_id: r.fields for r in conn.read_changes("contacts", BRANDED_FIELDS, since, read_until())}
    for email in ("a@example.test", "b@example.test"):
        fields = read[contacts[email]]
        assert fields["subscription_2001"] == "UNSUBSCRIBED", f"{email}'s opt-out of unit 2 was lost"
        assert fields["subscription_2001_timestamp"] == iso_ms(brand_two_out)
    brand_two_only = read[contacts["a@example.test"]]
    assert brand_two_only["subscription_1001"] == "SUBSCRIBED", (
        "an opt-out of one business unit withdrew another unit's subscription"
    )
    assert brand_two_only["subscription_1002"] == "NOT_SPECIFIED"
    flagged = read[contacts["b@example.test"]]
    assert (flagged["subscription_1001"], flagged["subscription_1002"]) == ("UNSUBSCRIBED", "UNSUBSCRIBED"), (
        "the account's own opt-out flag was dropped for the default unit"
    )
    everything = read[contacts["c@example.test"]]
    assert {everything[f"subscription_{sid}"] for sid in ("1001", "1002", "2001")} == {"UNSUBSCRIBED"}
    assert everything["subscription_2001_timestamp"] == iso_ms(all_out)
    own = read[contacts["d@example.test"]]
    assert (own["subscription_1001"], own["subscription_2001"]) == ("SUBSCRIBED", "UNSUBSCRIBED")


def test_an_earlier_addresss_opt_out_of_one_unit_is_an_earlier_no_for_that_units_types_only(
    branded: HubSpotHarness,
) -> None:
    """a@ opts out of all of unit 2's email, then a user gives the contact b@: the earlier no
    comes for 2001 alone, dated by the opt-out."""
    portal = branded.sandbox.portal
    since = Cursor(portal.now() - dt.timedelta(seconds=1))
    contact = portal.create({"email": "a@example.test", "lastname": "Person"})
    _subscribed(portal, "a@example.test", "1001", "2001")
    opted_out = portal.now()
    portal.unsubscribe_all("a@example.test", business_unit=2, at=opted_out)
    portal.update(contact, {"email": "b@example.test"}, at=opted_out + dt.timedelta(seconds=1))

    conn = HubSpotConnector("hs", branded.connector_settings())
    (record,) = conn.read_changes("contacts", BRANDED_FIELDS, since, read_until())
    assert record.earlier_values == {
        "subscription_2001": "UNSUBSCRIBED",
        "subscription_2001_legal_basis": "CONSENT_WITH_NOTICE",
        "subscription_2001_timestamp": iso_ms(opted_out),
    }


def test_the_ledger_takes_a_units_opt_out_for_that_units_purpose_only(
    branded: HubSpotHarness, tmp_path: Path
) -> None:
    """End to end, with the shipped mapping's service purpose on brand two's 2001: a@'s opt-out
    of all of unit 2's email withdraws service only; c@'s opt-out of all email withdraws both."""
    portal = branded.sandbox.portal
    for email in ("a@example.test", "c@example.test"):
        portal.create({"email": email, "lastname": "Person"})
        _subscribed(portal, email, "1001", "2001")
    mapping = tmp_path / "contacts-branded.yaml"
    mapping.write_text(
        (MAPPINGS / "contacts.yaml").read_text().replace("subscription_1002", "subscription_2001")
    )
    config = write_sync_config(branded, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["mappings"] = [str(mapping)]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    assert open_sync_engine(config).run(full=True).status == "succeeded"

    portal.unsubscribe_all("a@example.test", business_unit=2)
    portal.unsubscribe_all("c@example.test")
    engine = open_sync_engine(config)
    report = engine.run()
    assert report.status == "succeeded", report.error

    def withdrawn(email: str) -> set[str]:
        history = engine.ledger.subject_view(email)["history"]
        return {e["purpose"] for e in history if e["status"] == "withdrawn"}

    assert withdrawn("a@example.test") == {"service"}, "an opt-out of one brand withdrew every purpose"
    assert withdrawn("c@example.test") == {"email_marketing", "service"}
