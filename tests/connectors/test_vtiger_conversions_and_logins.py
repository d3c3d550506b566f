"""The Vtiger connector against the sandbox where Vtiger's PHP source says more than its manual:
a lead converted (*Convert Lead*) vanishes from every query and is listed by sync as deleted,
yet retrieve still answers it; a login refused for an inactive user or for a challenge that
expired; and values that pass ``vtws_getParameter``'s addslashes and ``handleType``'s
stripslashes unchanged."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_vtiger.sandbox.server import VtigerSandbox

from consentsync import exit_codes
from consentsync.sdk import Action, ConnectorError, Cursor, Fault, RecordUpdate
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_vtiger_against_sandbox import connector_for

LEAD_FIELDS = ["email", "emailoptout", "firstname"]


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


# -- lead conversion -----------------------------------------------------------------------------


def test_a_converted_lead_is_listed_as_gone_with_its_last_values_a_deleted_one_bare(
    sandbox: VtigerSandbox,
) -> None:
    """vtws_convertlead marks the lead converted and moves its modifiedtime; every Leads query
    then leaves it out (EntityMeta::getEntityDeletedQuery) and sync lists it under `deleted`, but
    retrieve still answers it: the deletion listing hands it over with the values it had, so an
    opt-out ticked just before the conversion is not lost. A lead deleted for real comes bare."""
    crm = sandbox.crm
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    converted = crm.create("Leads", firstname="Ana", lastname="Silva", email="ana.silva@example.test")
    crm.revise(converted, emailoptout="1")  # the person says no ...
    contact = crm.convert_lead(converted)  # ... and a salesperson converts the lead, same interval
    deleted = crm.create("Leads", lastname="Gone", email="gone@example.test", emailoptout="1")
    crm.delete(deleted)
    connector = connector_for(sandbox, read_deletions=True, sync_type="user")

    live = {r.record_id for r in connector.read_changes("Leads", LEAD_FIELDS, Cursor(start), read_until())}
    assert converted not in live and deleted not in live  # no query answers either any more
    gone = {
        r.record_id: r
        for r in connector.read_deletions("Leads", Cursor(start), read_until(), fields=LEAD_FIELDS)
    }
    assert set(gone) == {converted, deleted}
    last = gone[converted]
    # Gone into a contact Vtiger does not name, and kept by Vtiger: an erasure still reaches it.
    assert last.deleted and last.merged_into is None and last.merged_into_object == "Contacts"
    assert (last.fields["emailoptout"], last.fields["email"], last.fields["id"]) == (
        "1",
        "ana.silva@example.test",
        converted,
    )
    assert "modifiedtime" in last.fields
    assert gone[deleted].fields == {}  # retrieve refuses a deleted id: nothing to hand over
    assert gone[deleted].merged_into_object is None  # and nothing is left of it in Vtiger
    assert sandbox.calls["retrieve"] == 2  # one per lead listed

    # The contact made from it carries the lead's address, not its opt-out (the stock mapping).
    made = crm.get(contact)
    assert made is not None
    assert (made["email"], made["emailoptout"], made["isconvertedfromlead"]) == (
        "ana.silva@example.test",
        "",
        "1",
    )


def test_deletions_of_other_modules_are_not_retrieved(sandbox: VtigerSandbox) -> None:
    """Only Leads have a deleted query beyond the recycle bin: a contact listed as deleted is
    deleted, and costs no retrieve."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    contact = sandbox.crm.create("Contacts", lastname="Gone", email="gone@example.test")
    sandbox.crm.delete(contact)
    connector = connector_for(sandbox, read_deletions=True, sync_type="user")
    gone = list(connector.read_deletions("Contacts", Cursor(start), read_until(), fields=LEAD_FIELDS))
    assert [(r.record_id, r.fields) for r in gone] == [(contact, {})]
    assert sandbox.calls["retrieve"] == 0


def test_a_first_deletion_listing_never_asks_sync_from_zero(sandbox: VtigerSandbox) -> None:
    """webservice.php takes a parameter "0" as not given (vtws_getParameter, handleType: PHP
    reads "0" as false) and vtws_sync with no time lists nothing: a first listing (no cursor
    yet) asked from 0 would find nothing, keep no position, and so never start."""
    contact = sandbox.crm.create("Contacts", lastname="Gone", email="gone@example.test")
    sandbox.crm.delete(contact)
    connector = connector_for(sandbox, read_deletions=True, sync_type="user")
    assert [r.record_id for r in connector.read_deletions("Contacts", Cursor(), read_until())] == [contact]


def _converted_one_a_second(crm: Any, count: int, start: dt.datetime) -> list[str]:
    """``count`` leads opted out and converted one a second from ``start``: sync's batches (the
    100 oldest changes) then hold 100 of them each."""
    leads = [
        crm.create("Leads", lastname=f"Gone {i}", email=f"g{i}@example.test", emailoptout="1", at=start)
        for i in range(count)
    ]
    for number, lead in enumerate(leads):
        crm.convert_lead(lead, at=start + dt.timedelta(seconds=number))
    return leads


def _cursor_after(records: list[Any]) -> Cursor:
    """Where the engine's cursor stands after a listing that handed ``records`` over and set no
    completed cursor: at the last of them."""
    last = records[-1]
    return Cursor(last.modstamp, last.record_id, read_until=read_until())


def test_a_first_deletion_listing_retrieves_the_leads_gone_before_it_up_to_the_cap(
    sandbox: VtigerSandbox,
) -> None:
    """A first listing asks sync from 1, so it lists every lead the install ever deleted or
    converted; it is also what a listing is when read_deletions is turned on after the connector
    ran for a while (or on a ledger whose earlier version stored no listing position), so a lead
    opted out and converted since the last read is among them: each lead is retrieved all the
    same. ``conversion_checks_per_run`` bounds what one run retrieves: the listing stops before
    the sync batch that would pass it, hands over no completed cursor (the engine's cursor stays
    at the last lead handed over), and the next listing, resuming there, checks the rest."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    history = [
        crm.create("Leads", lastname=f"Gone {i}", email=f"gone{i}@example.test", at=past) for i in range(250)
    ]
    for number, lead in enumerate(history):
        crm.delete(lead, at=past + dt.timedelta(seconds=number))
    old = crm.create("Leads", lastname="Old", email="old@example.test", emailoptout="1", at=past)
    crm.convert_lead(old, at=past + dt.timedelta(seconds=260))
    connector = connector_for(sandbox, read_deletions=True, sync_type="user", conversion_checks_per_run=200)

    first = list(connector.read_deletions("Leads", Cursor(), read_until(), fields=LEAD_FIELDS))
    # Two batches of 100 taken (a third would pass 200): each lead listed was retrieved.
    assert sandbox.calls["retrieve"] == len(first) == 200
    assert {r.record_id for r in first} == set(history[:200])
    assert all(r.deleted and r.fields == {} for r in first)  # retrieve refused them: deleted
    kept = connector.completed_cursor  # the end of the last batch taken: not past the leads left
    assert kept is not None and kept.record_id is None
    assert all(not kept.is_before(r.modstamp, r.record_id) for r in first)

    connector = connector_for(sandbox, read_deletions=True, sync_type="user", conversion_checks_per_run=200)
    since = connector.resume_from(kept)
    rest = {
        r.record_id: r for r in connector.read_deletions("Leads", since, read_until(), fields=LEAD_FIELDS)
    }
    # Sync is asked from the end of the last batch taken: none is listed again.
    assert set(rest) == {*history[200:], old}
    assert rest[old].fields["emailoptout"] == "1", "the converted lead's no was lost"
    assert sandbox.calls["retrieve"] == 200 + len(rest)  # every lead listed was retrieved


def test_an_empty_first_deletion_listing_keeps_where_it_ended(sandbox: VtigerSandbox) -> None:
    """A first listing with nothing to list still hands over where it ended: without a stored
    position every later listing would be a first one and retrieve no lead, and a no given on a
    lead just before its conversion would be lost."""
    connector = connector_for(sandbox, read_deletions=True, sync_type="user")
    assert list(connector.read_deletions("Leads", Cursor(), read_until(), fields=LEAD_FIELDS)) == []
    kept = connector.completed_cursor
    assert kept is not None and kept.modstamp is not None
    lead = sandbox.crm.create("Leads", lastname="Silva", email="ana.silva@example.test", emailoptout="1")
    sandbox.crm.convert_lead(lead)
    gone = list(
        connector.read_deletions("Leads", connector.resume_from(kept), read_until(), fields=LEAD_FIELDS)
    )
    assert [(r.record_id, r.fields["emailoptout"]) for r in gone] == [(lead, "1")]
    assert sandbox.calls["retrieve"] == 1


def test_a_listing_stops_at_the_cap_and_the_next_one_goes_on(sandbox: VtigerSandbox) -> None:
    """A mass conversion between two runs: a listing retrieves at most about
    ``conversion_checks_per_run`` leads and stops before the sync batch that would pass it,
    handing none over unchecked; the next listings go on from the last lead handed over until
    every lead is listed with its no."""
    crm = sandbox.crm
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    leads = _converted_one_a_second(crm, 250, start)
    stored = Cursor(start - dt.timedelta(minutes=10), "10x0", read_until=start - dt.timedelta(minutes=10))
    seen: dict[str, Any] = {}
    spent: list[int] = []
    for _ in range(5):
        connector = connector_for(
            sandbox, read_deletions=True, sync_type="user", conversion_checks_per_run=120
        )
        before = sandbox.calls["retrieve"]
        got = list(
            connector.read_deletions("Leads", connector.resume_from(stored), read_until(), LEAD_FIELDS)
        )
        spent.append(sandbox.calls["retrieve"] - before)
        assert spent[-1] == len(got)  # each lead handed over was retrieved, none more
        assert all(r.fields.get("emailoptout") == "1" for r in got), "a lead handed over bare"
        order = [(r.modstamp, r.record_id) for r in got]
        assert order == sorted(order)  # the order the engine's cursor keeps
        seen.update((r.record_id, r) for r in got)
        if connector.completed_cursor is not None:  # as the engine keeps it
            stored = connector.completed_cursor
        elif got:
            stored = _cursor_after(got)
        if set(seen) == set(leads):
            break
    # A batch of 100 a run (a second would pass 120), going on from where the last one ended.
    assert spent == [100, 100, 50]
    assert set(seen) == set(leads)


def test_a_listing_moves_on_when_its_look_back_window_alone_passes_the_cap(sandbox: VtigerSandbox) -> None:
    """An incremental listing starts the look-back window behind the stored position, and lists
    the leads handed over there again: were they to spend the cap, the listing would stop before
    its position each run and never move on. It goes on to the first batch past the window."""
    crm = sandbox.crm
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    leads = _converted_one_a_second(crm, 300, start)
    # The last run ended with the 150th lead (its batch stamped then); 150 more came after it.
    position = Cursor(start + dt.timedelta(seconds=149), leads[149], read_until=None)
    connector = connector_for(sandbox, read_deletions=True, sync_type="user", conversion_checks_per_run=50)
    since = connector.resume_from(position)
    assert since.record_id is None and since.modstamp is not None and since.modstamp < position.modstamp
    got = list(connector.read_deletions("Leads", since, read_until(), fields=LEAD_FIELDS))
    assert all(r.fields.get("emailoptout") == "1" for r in got)
    assert sandbox.calls["retrieve"] == len(got) == 200  # the window's batch and the next one
    kept = connector.completed_cursor
    assert kept is not None and position.is_before(kept.modstamp, ""), "the cursor would not move on"


# -- logging in ------------------------------------------------------------------------------------


def test_an_inactive_user_fails_as_the_credentials_at_once(sandbox: VtigerSandbox) -> None:
    """vtws_login answers AUTHENTICATION_REQUIRED "Given user is inactive" once the key matched:
    not a session to log in to again (five logins, then a session error), but the credentials'
    (exit 77), naming the user."""
    sandbox.crm.deactivate_user("integration")
    connector = connector_for(sandbox)
    with pytest.raises(ConnectorError) as refused:
        connector.check()
    error = refused.value
    assert error.rule.credentials and error.action is Action.FAIL and error.rule.fault is Fault.CONFIG
    assert exit_codes.for_connector_error(error.rule) == exit_codes.CREDENTIALS
    message = str(error)
    assert "'integration'" in message and "inactive" in message and "\n" not in message
    assert connector.usage.per_endpoint["login"] == 1


def test_a_challenge_expired_before_the_login_is_tried_again_with_a_fresh_one(
    sandbox: VtigerSandbox,
) -> None:
    """A challenge lives 300 s; one that expired before the login reached Vtiger (a stalled
    process) is answered INVALID_AUTH_TOKEN: a fresh challenge logs in, even with no retries
    configured, and the right key is never reported as the credentials'."""
    connector = connector_for(sandbox, max_attempts=1)
    original = connector.client.request
    stalled: list[str] = []

    def request(operation: str, params: Any, **kwargs: Any) -> Any:
        answer = original(operation, params, **kwargs)
        if operation == "getchallenge" and not stalled:
            stalled.append(operation)
            sandbox.expire_challenges()  # the process stalls past the token's life
        return answer

    connector.client.request = request  # type: ignore[method-assign]
    connector.check()
    assert stalled
    assert connector.usage.per_endpoint["getchallenge"] == connector.usage.per_endpoint["login"] == 2


def test_a_challenge_refused_every_time_is_the_credentials_after_three_fresh_ones(
    sandbox: VtigerSandbox,
) -> None:
    """Refused with a fresh challenge each time (an install that hands an unknown username a
    challenge), the login fails as the credentials' after three, and is not retried again."""
    sandbox.challenge_ttl = 0.0  # every challenge has expired when its login arrives
    connector = connector_for(sandbox, max_attempts=4)
    with pytest.raises(ConnectorError) as refused:
        connector.check()
    error = refused.value
    assert error.rule.credentials and error.action is Action.FAIL
    assert "INVALID_AUTH_TOKEN" in str(error) and "check the username" in str(error)
    assert connector.usage.per_endpoint["getchallenge"] == connector.usage.per_endpoint["login"] == 3


# -- values on the wire -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ['O"Brien \\ 中', "line one\nline two", "back\\\\slashes \\n \\u4e2d", "it's \"quoted\" \\'"],
)
def test_values_with_quotes_backslashes_and_newlines_round_trip_exactly(
    sandbox: VtigerSandbox, value: str
) -> None:
    """webservice.php passes every declared parameter through vtws_getParameter (addslashes)
    and OperationManager::handleType (stripslashes): the pair cancels out, so the element is
    sent as plain JSON, with no escaping of our own, and is stored as written."""
    record_id = sandbox.crm.create("Contacts", lastname="Quote", email="quote@example.test")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    connector = connector_for(sandbox)
    (result,) = connector.write(
        [RecordUpdate("Contacts", record_id, {"firstname": value, "lastname": value})]
    )
    assert result.ok, result
    stored = sandbox.crm.get(record_id)
    assert stored is not None and (stored["firstname"], stored["lastname"]) == (value, value)
    (read,) = [
        r
        for r in connector.read_changes("Contacts", ["firstname"], Cursor(start), read_until())
        if r.record_id == record_id
    ]
    assert read.fields["firstname"] == value


def test_a_lead_converted_after_a_listing_is_listed_whatever_its_id(sandbox: VtigerSandbox) -> None:
    """A listing's records are stamped with the start of their sync batch, and one that took its
    last batch whole hands over the second after that batch's end: the next listing asks sync
    from there, so a lead converted after the listing comes in a batch of its own, stamped past
    the cursor, even where its id sorts before every id listed before (none is skipped as
    handed over already)."""
    crm = sandbox.crm
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    early = crm.create("Leads", lastname="Early", email="early@example.test", at=past)
    later = crm.create("Leads", lastname="Later", email="later@example.test", at=past)
    crm.delete(later, at=past + dt.timedelta(seconds=5))
    connector = connector_for(sandbox, read_deletions=True, sync_type="user")
    first = list(connector.read_deletions("Leads", Cursor(), read_until(), fields=LEAD_FIELDS))
    assert [r.record_id for r in first] == [later]
    kept = connector.completed_cursor
    assert kept is not None and kept.record_id is None and kept.modstamp is not None
    crm.revise(early, emailoptout="1")
    crm.convert_lead(early)
    connector = connector_for(sandbox, read_deletions=True, sync_type="user")
    stored = Cursor(kept.modstamp, kept.record_id, read_until=kept.read_until)
    gone = list(connector.read_deletions("Leads", connector.resume_from(stored), read_until(), LEAD_FIELDS))
    assert [(r.record_id, r.fields["emailoptout"]) for r in gone] == [(early, "1")]
    assert all(stored.is_before(r.modstamp, r.record_id) for r in gone)
