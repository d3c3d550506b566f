"""HubSpot as its documentation describes it (session 64 conformance check), over HTTPS against
the sandbox:

1. A no given under one of a contact's secondary addresses (``hs_additional_emails``: HubSpot's
   merge keeps the other contact's address there) is read, as an earlier address's no is.
2. On a GDPR-enabled portal an unsubscribe, like a subscribe, needs ``legalBasis`` and
   ``legalBasisExplanation`` (HubSpot's v3 spec, PublicUpdateSubscriptionStatusRequest:
   "required for GDPR enabled portals"): the connector sends both with every unsubscribe.
3. The v4 batch status reads need ``communication_preferences.statuses.batch.read`` (Marketing
   Hub Enterprise only): without it the connector reads each address on its own.
4. A v4 batch status read answering 207 with errors (or leaving an address unanswered) is read
   again; given up, the contact reads ``UNREAD`` and the engine quarantines it (never passed as
   NOT_SPECIFIED, never holding the page back).
5. The refused resubscribe is consentsync's own policy, and its reason says so.
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_hubspot import HubSpotConnector
from consentsync_hubspot.connector import REFUSES_RESUBSCRIBE, UNREAD
from consentsync_hubspot.sandbox.harness import HubSpotHarness
from consentsync_hubspot.sandbox.server import ALL_SCOPES, HubSpotCredentials, HubSpotPortal, iso_ms
from consentsync_hubspot.settings import HubSpotSettings

from consentsync.sandbox.server import json_response
from consentsync.sdk import Cursor, RecordUpdate
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_hubspot_s64b_unread import retry_all_pull_quarantines

FIELDS = ["email", "subscription_1001", "subscription_1001_timestamp"]
BOTH = [*FIELDS, "subscription_1002"]
BATCH_SCOPE = "communication_preferences.statuses.batch.read"


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Iterator[HubSpotHarness]:
    made = HubSpotHarness(**{"merges": "new", **getattr(request, "param", {})})
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _connector(harness: HubSpotHarness, **extra: Any) -> HubSpotConnector:
    return HubSpotConnector("hs", harness.connector_settings(**extra))


def _read(conn: HubSpotConnector, since: Cursor, fields: list[str] = FIELDS) -> dict[str, Any]:
    return {r.record_id: r for r in conn.read_changes("contacts", fields, since, read_until())}


def _subscribed(portal: HubSpotPortal, email: str, at: dt.datetime, sid: str = "1001", **basis: Any) -> None:
    portal.set_status(
        email,
        sid,
        "SUBSCRIBED",
        legal_basis=basis.get("legal_basis", "CONSENT_WITH_NOTICE"),
        explanation="form",
        source="Form",
        at=at,
    )


def _at(base: dt.datetime) -> Any:
    return lambda minutes: base + dt.timedelta(minutes=minutes)


def _base() -> dt.datetime:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(microsecond=0)


# -- 1. secondary addresses ------------------------------------------------------------------


def test_a_no_under_the_address_a_merge_kept_as_additional_is_read(harness: HubSpotHarness) -> None:
    """The conformance check's repro: two contacts of one person are merged (HubSpot now: a new
    contact, the other's address kept in hs_additional_emails); the person then clicks the
    unsubscribe link of an older email sent to that address, and opts out of all email there.
    Before, no read (not even a full one) ever read that address's statuses."""
    portal = harness.sandbox.portal
    at = _at(_base())
    first = portal.create({"email": "pat.a@example.test"}, at=at(0))
    second = portal.create({"email": "pat.b@example.test"}, at=at(0))
    _subscribed(portal, "pat.a@example.test", at(1))
    _subscribed(portal, "pat.b@example.test", at(1), sid="1002")
    merged = portal.merge(first, second, at=at(2))["hs_object_id"]
    assert portal.get(merged)["hs_additional_emails"] == "pat.b@example.test"
    portal.set_status("pat.b@example.test", "1001", "UNSUBSCRIBED", source="Unsubscribe link", at=at(10))
    portal.unsubscribe_all("pat.b@example.test", at=at(12))

    harness.sandbox.reset_counters()
    record = _read(_connector(harness), Cursor(), BOTH)[merged]
    assert record.fields["email"] == "pat.a@example.test"
    assert record.fields["subscription_1001"] == "SUBSCRIBED"  # pat.a@'s own
    assert record.earlier_values == {
        "subscription_1001": "UNSUBSCRIBED",
        "subscription_1001_legal_basis": None,
        "subscription_1001_timestamp": iso_ms(at(12)),  # the later of its two noes
        "subscription_1002": "UNSUBSCRIBED",
        "subscription_1002_legal_basis": "CONSENT_WITH_NOTICE",
        "subscription_1002_timestamp": iso_ms(at(12)),
    }, "the no given under the additional address was never read"
    assert set(record.earlier_given_at or {}) == set(record.earlier_values)
    # Read in the page's own batch reads: one status read, one opt-out-of-all read.
    calls = harness.sandbox.calls
    assert (calls["status_batch_read"], calls["wide_status_batch_read"], calls["batch_read"]) == (1, 1, 1)


def test_only_a_no_given_while_the_contact_had_the_secondary_address_is_its_own(
    harness: HubSpotHarness,
) -> None:
    """A user adds z@ to a contact as a secondary address: a no z@ showed before (a previous
    holder's) is not the contact's; one given after it is, and one given after the user removed
    it again is not. A later yes under the contact's own address outranks an older no."""
    portal = harness.sandbox.portal
    at = _at(_base())
    before = portal.create({"email": "x@example.test"}, at=at(0))
    portal.set_status("z@example.test", "1001", "UNSUBSCRIBED", at=at(5))
    portal.add_additional_email(before, "z@example.test", at=at(20))
    after = portal.create({"email": "y@example.test"}, at=at(0))
    portal.add_additional_email(after, "w@example.test", at=at(20))
    portal.set_status("w@example.test", "1001", "UNSUBSCRIBED", at=at(25))
    removed = portal.create({"email": "v@example.test"}, at=at(0))
    portal.add_additional_email(removed, "u@example.test", at=at(20))
    portal.remove_additional_email(removed, "u@example.test", at=at(22))
    portal.set_status("u@example.test", "1001", "UNSUBSCRIBED", at=at(25))
    outranked = portal.create({"email": "t@example.test"}, at=at(0))
    portal.add_additional_email(outranked, "s@example.test", at=at(20))
    portal.set_status("s@example.test", "1001", "UNSUBSCRIBED", at=at(25))
    _subscribed(portal, "t@example.test", at(30))

    records = _read(_connector(harness), Cursor())
    assert records[before].earlier_values is None, "a previous holder's no was taken as the contact's"
    assert records[removed].earlier_values is None, "a no given after the contact lost the address"
    assert records[outranked].earlier_values is None, "a later yes under its own address outranks it"
    assert records[after].earlier_values == {
        "subscription_1001": "UNSUBSCRIBED",
        "subscription_1001_legal_basis": None,
        "subscription_1001_timestamp": iso_ms(at(25)),
    }


def test_an_incremental_read_takes_it_when_the_contact_is_read_and_a_full_read_always(
    harness: HubSpotHarness,
) -> None:
    """The sandbox, as HubSpot may (it does not say), moves nothing on the contact when its
    secondary address says no: an incremental read finds the no when the contact is next read
    for another reason, a full read at once (docs/connectors/hubspot.md)."""
    portal = harness.sandbox.portal
    at = _at(_base())
    contact = portal.create({"email": "own@example.test"}, at=at(0))
    portal.add_additional_email(contact, "second@example.test", at=at(1))
    conn = _connector(harness)
    assert _read(conn, Cursor())[contact].earlier_values is None
    since = Cursor(at(2))
    portal.set_status("second@example.test", "1001", "UNSUBSCRIBED", at=at(10))
    assert _read(conn, since) == {}, "the no moved the contact (the sandbox assumes it does not)"
    assert (_read(conn, Cursor())[contact].earlier_values or {}).get("subscription_1001") == "UNSUBSCRIBED"
    portal.update(contact, {"jobtitle": "edited"}, at=at(20))
    (record,) = _read(conn, since).values()
    assert (record.earlier_values or {}).get("subscription_1001") == "UNSUBSCRIBED"


def test_the_engine_takes_the_no_under_a_secondary_address_as_the_persons(
    harness: HubSpotHarness, tmp_path: Path
) -> None:
    portal = harness.sandbox.portal
    at = _at(_base())
    contact = portal.create({"email": "own@example.test"}, at=at(0))
    _subscribed(portal, "own@example.test", at(1))
    portal.add_additional_email(contact, "second@example.test", at=at(2))
    portal.set_status("second@example.test", "1001", "UNSUBSCRIBED", source="Unsubscribe link", at=at(10))
    engine = open_sync_engine(write_sync_config(harness, tmp_path))
    report = engine.run(full=True)
    assert report.status == "succeeded", report.error
    _person, state = engine.ledger.decision_for("own@example.test", "email_marketing", "email")
    assert state.status.value == "withdrawn", "the person's no under their secondary address was lost"


# -- 2. a legal basis with every unsubscribe ---------------------------------------------------


def test_an_unsubscribe_on_a_gdpr_portal_carries_a_basis_and_an_explanation(harness: HubSpotHarness) -> None:
    """The mapping pushes no basis with the status (the shipped example: basis pull-only). The
    unsubscribe sends the basis HubSpot holds with the status (else default_legal_basis) and
    the unsubscribe explanation; before, it sent neither, and a GDPR portal refused it."""
    assert harness.sandbox.gdpr
    portal = harness.sandbox.portal
    at = _at(_base())
    held = portal.create({"email": "held@example.test"}, at=at(0))
    _subscribed(portal, "held@example.test", at(1), legal_basis="LEGITIMATE_INTEREST_CLIENT")
    bare = portal.create({"email": "bare@example.test"}, at=at(0))
    conn = _connector(harness)
    results = conn.write(
        [
            RecordUpdate("contacts", held, {"subscription_1001": "UNSUBSCRIBED"}),
            RecordUpdate("contacts", bare, {"subscription_1002": "UNSUBSCRIBED"}),
        ]
    )
    assert [(r.ok, r.error_code) for r in results] == [(True, None), (True, None)], results
    explanation = HubSpotSettings.model_fields["unsubscribe_explanation"].default
    assert "consentsync" in explanation and "@" not in explanation
    first = portal.status("held@example.test", "1001")
    assert (first.status, first.legal_basis, first.explanation) == (
        "UNSUBSCRIBED",
        "LEGITIMATE_INTEREST_CLIENT",
        explanation,
    ), "the basis the contact showed must stay"
    second = portal.status("bare@example.test", "1002")
    assert (second.status, second.legal_basis, second.explanation) == (
        "UNSUBSCRIBED",
        "CONSENT_WITH_NOTICE",
        explanation,
    )


@pytest.mark.parametrize("harness", [{"gdpr": False}, {}], indirect=True, ids=["no-gdpr", "gdpr"])
def test_the_sandbox_refuses_an_unsubscribe_without_a_basis_on_a_gdpr_portal(harness: HubSpotHarness) -> None:
    portal = harness.sandbox.portal
    portal.create({"email": "p@example.test"})
    _subscribed(portal, "p@example.test", portal.now(), legal_basis="PERFORMANCE_OF_CONTRACT")
    session = harness.sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {harness.sandbox.credentials.access_token}"
    answer = session.post(
        f"{harness.sandbox.api_url}/communication-preferences/v3/unsubscribe",
        json={"emailAddress": "p@example.test", "subscriptionId": "1001"},
    )
    if harness.sandbox.gdpr:
        assert answer.status_code == 400 and "legalBasis" in answer.json()["message"]
        assert portal.status("p@example.test", "1001").status == "SUBSCRIBED"
    else:
        assert answer.status_code == 200
        assert portal.status("p@example.test", "1001").legal_basis == "PERFORMANCE_OF_CONTRACT"


# -- 3. the batch scope (Marketing Hub Enterprise) ---------------------------------------------


def test_without_the_batch_scope_statuses_are_read_one_address_at_a_time(harness: HubSpotHarness) -> None:
    """A private app on a portal below Marketing Hub Enterprise cannot be granted the batch
    scope: the first batch read answers 403 MISSING_SCOPES, and for the rest of the run each
    address is read on its own (GET .../v4/statuses/{email}, communication_preferences.read),
    every call counted."""
    harness.sandbox.credentials = HubSpotCredentials(
        access_token=harness.sandbox.credentials.access_token, scopes=ALL_SCOPES - {BATCH_SCOPE}
    )
    portal = harness.sandbox.portal
    at = _at(_base())
    quiet = portal.create({"email": "quiet@example.test"}, at=at(0))
    said_no = portal.create({"email": "no@example.test"}, at=at(1))
    portal.set_status("no@example.test", "1001", "UNSUBSCRIBED", at=at(2))
    opted_out = portal.create({"email": "all@example.test"}, at=at(3))
    _subscribed(portal, "all@example.test", at(3), sid="1002")
    portal.unsubscribe_all("all@example.test", at=at(4))

    conn = _connector(harness)
    records = _read(conn, Cursor(), BOTH)
    assert records[quiet].fields["subscription_1001"] == "NOT_SPECIFIED"
    assert records[said_no].fields["subscription_1001"] == "UNSUBSCRIBED"
    assert records[opted_out].fields["subscription_1002"] == "UNSUBSCRIBED"
    assert records[opted_out].fields["subscription_1001_timestamp"] == iso_ms(at(4))
    used = conn.usage.per_endpoint
    assert used.get("status_batch_read") == 1, "one refused batch read, then none"
    assert used.get("status_read") == 3 and used.get("wide_status_read") == 1
    assert conn.usage.calls == sum(used.values())

    _read(conn, Cursor(), BOTH)
    assert conn.usage.per_endpoint["status_batch_read"] == 1, "the missing scope is remembered"
    assert conn.usage.per_endpoint["status_read"] == 6


def test_the_sandbox_asks_the_batch_scope_for_the_batch_reads(harness: HubSpotHarness) -> None:
    harness.sandbox.credentials = HubSpotCredentials(
        access_token=harness.sandbox.credentials.access_token,
        scopes=frozenset({"crm.objects.contacts.read", "communication_preferences.read"}),
    )
    session = harness.sandbox.requests_session()
    session.headers["Authorization"] = f"Bearer {harness.sandbox.credentials.access_token}"
    base = f"{harness.sandbox.api_url}/communication-preferences/v4/statuses"
    for path in ("batch/read", "batch/unsubscribe-all/read"):
        answer = session.post(
            f"{base}/{path}", params={"channel": "EMAIL"}, json={"inputs": ["a@example.test"]}
        )
        assert answer.status_code == 403, path
        assert answer.json()["errors"][0]["context"]["requiredGranularScopes"] == [BATCH_SCOPE]
    for path in ("a@example.test", "a@example.test/unsubscribe-all"):
        assert session.get(f"{base}/{path}", params={"channel": "EMAIL"}).status_code == 200, path


# -- 4. 207 answers ----------------------------------------------------------------------------

FAILED = "noah.partial@example.test"


def _partly_read(harness: HubSpotHarness) -> tuple[str, str]:
    portal = harness.sandbox.portal
    at = _at(_base())
    fine = portal.create({"email": "fine@example.test"}, at=at(0))
    failed = portal.create({"email": FAILED}, at=at(1))
    portal.set_status(FAILED, "1001", "UNSUBSCRIBED", source="Unsubscribe link", at=at(2))
    return fine, failed


@pytest.mark.parametrize("unanswered", [False, True], ids=["error-entry", "left-out"])
def test_an_address_a_status_read_never_answers_reads_unread_and_the_page_passes(
    harness: HubSpotHarness, unanswered: bool
) -> None:
    """Read again under the retry policy; given up, the address's contact reads ``UNREAD``
    (quarantined by the engine, never NOT_SPECIFIED) and the page's other contacts come
    (session 64 review: failing the page held every later no and every push back for good)."""
    fine, failed = _partly_read(harness)
    harness.sandbox.fail_status_reads(FAILED, times=-1, unanswered=unanswered)
    records = _read(_connector(harness, max_attempts=2), Cursor())
    assert records[failed].fields["subscription_1001"] == UNREAD
    assert records[fine].fields["subscription_1001"] == "NOT_SPECIFIED"
    assert harness.sandbox.calls["status_batch_read"] == 2, "read again under the retry policy"


def test_a_207_that_passes_is_read_again_and_the_no_is_read(harness: HubSpotHarness) -> None:
    _fine, failed = _partly_read(harness)
    harness.sandbox.fail_status_reads(FAILED, times=1)
    records = _read(_connector(harness), Cursor())
    assert records[failed].fields["subscription_1001"] == "UNSUBSCRIBED", "read NOT_SPECIFIED, the no lost"
    assert harness.sandbox.calls["status_batch_read"] == 2


def test_an_error_entry_of_the_opt_out_of_all_read_leaves_the_flag_to_say_no(harness: HubSpotHarness) -> None:
    """The opt-out-of-all read never answers the address: its contact's hs_email_optout still
    says no to every subscription (undated), so nothing is held back."""
    portal = harness.sandbox.portal
    contact = portal.create({"email": FAILED})
    portal.unsubscribe_all(FAILED)
    harness.sandbox.fail_status_reads(FAILED, times=-1, reads=("wide_status_batch_read",))
    record = _read(_connector(harness, max_attempts=1), Cursor())[contact]
    assert record.fields["subscription_1001"] == "UNSUBSCRIBED"
    assert record.fields["subscription_1001_timestamp"] is None


def test_statuses_are_matched_whatever_the_spelling_hubspot_echoes(
    harness: HubSpotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HubSpot's answer names each address in ``subscriberIdString``, not necessarily as it was
    asked (another case, another Unicode form): matched as asked, it read NOT_SPECIFIED."""
    address = "zoé.nakamura@example.test"
    portal = harness.sandbox.portal
    contact = portal.create({"email": address})
    portal.set_status(address, "1001", "UNSUBSCRIBED")
    read = harness.sandbox._h_status_batch_read

    def respelled(request: Any) -> Any:
        answer = read(request)
        body = json.loads(answer.body)
        for result in body["results"]:
            result["subscriberIdString"] = unicodedata.normalize("NFD", result["subscriberIdString"]).upper()
        return json_response(answer.status, body)

    monkeypatch.setattr(harness.sandbox, "_h_status_batch_read", respelled)
    (record,) = _read(_connector(harness), Cursor()).values()
    assert record.record_id == contact
    assert record.fields["subscription_1001"] == "UNSUBSCRIBED"


def test_the_engine_never_passes_a_contact_whose_statuses_were_not_read_unquarantined(
    harness: HubSpotHarness, tmp_path: Path
) -> None:
    """The page passes, the contact quarantined (by its id); retried once HubSpot answers, its
    no is read (tests/connectors/test_hubspot_s64b_unread.py covers the rest)."""
    _partly_read(harness)
    config = write_sync_config(harness, tmp_path)
    harness.sandbox.fail_status_reads(FAILED, times=-1)
    first = open_sync_engine(config).run()
    assert first.status == "succeeded" and first.counts.quarantined == 1, first.error
    harness.sandbox.fail_status_reads(FAILED, times=0)
    engine = open_sync_engine(config)
    retry_all_pull_quarantines(engine)
    report = engine.run()
    assert report.status == "succeeded", report.error
    _person, state = engine.ledger.decision_for(FAILED, "email_marketing", "email")
    assert state.status.value == "withdrawn", "the no of the quarantined contact was never read"


# -- 5. the resubscribe refusal is consentsync's policy ---------------------------------------


def test_the_refused_resubscribe_says_it_is_consentsyncs_policy(harness: HubSpotHarness) -> None:
    portal = harness.sandbox.portal
    contact = portal.create({"email": "gone@example.test"})
    portal.set_status("gone@example.test", "1001", "UNSUBSCRIBED", source="Unsubscribe link")
    (result,) = _connector(harness).write(
        [RecordUpdate("contacts", contact, {"subscription_1001": "SUBSCRIBED"})]
    )
    assert (result.ok, result.error_code, result.retryable) == (False, REFUSES_RESUBSCRIBE, False)
    message = result.message or ""
    assert "consentsync does not resubscribe" in message and "policy" in message
    assert "preferences page" in message and "HubSpot form" in message
    assert not message.startswith("HubSpot refuses"), message
    assert "gone@example.test" not in message
