"""bb64 dynfix item 4: every update went with ``If-Match: *``, never the row's ETag: a change made
in Dynamics between a run's read and its write (a person's opt-out taken by an agent, an opt-in
in Journeys' preference center) was overwritten by the push, and the next read showed the push,
so the ledger never learnt of it. An update now goes with the ETag its row was read with ("Perform
conditional operations using the Web API", Apply optimistic concurrency); a 412 is the CRM's
change since the read: not overwritten, answered worth another try but kept for the next run,
whose read hands the change over first (the engine then decides again on it).

The sandbox answers rows with ``@odata.etag`` and a stale ``If-Match`` with 412."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox
from sqlalchemy import select

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import consent_events
from consentsync.ledger.service import Ledger
from consentsync.sdk import Cursor, RecordUpdate, WriteAction
from consentsync.sync.engine import SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.integration.helpers import consent_value, shipped_engine
from tests.sandbox.serving import serve_seeded

FIELDS = ["emailaddress1", "donotbulkemail"]
CHANGED_SINCE_READ = "CHANGED_SINCE_READ"  # connector.CHANGED_SINCE_READ
CONSENTS = "msdynmkt_contactpointconsent4"
EMAIL_MARKETING = "6f0b1c7e-0d6a-4c1e-9a51-000000000001"
NOT_SET, OPTED_IN, OPTED_OUT = 534120000, 534120001, 534120002
PREFERENCE_CENTER = 534120004  # msdynmkt_source


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    yield from serve_seeded(DynamicsSandbox(), lambda server: None)


def _connector(dv: DynamicsSandbox) -> DynamicsConnector:
    return DynamicsConnector("dyn", connector_settings(dv.connection_settings(), {"page_size": 40}))


def _write(connector: DynamicsConnector, update: RecordUpdate) -> Any:
    answers: dict[int, Any] = {}
    for answered in connector.write_batches([update]):
        answers.update(answered)
    return answers[0]


def test_a_change_made_since_the_read_is_not_overwritten_and_is_read_next(dv: DynamicsSandbox) -> None:
    env = dv.environment
    cid = env.create(
        "contact", {"lastname": "Invented", "emailaddress1": "p@example.test", "donotbulkemail": True}
    )
    connector = _connector(dv)
    list(connector.read_changes("contact", FIELDS, Cursor(), read_until()))
    cursor = connector.completed_cursor
    # The engine decides "allowed" from the read; meanwhile an agent clears the tick and ticks
    # it again (the person phoned to opt out): the row is not the one that was read.
    env.update("contact", cid, {"donotbulkemail": False})
    env.update("contact", cid, {"donotbulkemail": True})
    sent = dv.batch_requests
    result = _write(connector, RecordUpdate("contact", cid, {"donotbulkemail": False}, WriteAction.UPDATE))
    assert not result.ok and result.error_code == CHANGED_SINCE_READ
    assert result.retryable  # pending for the next run, never dead-lettered for it
    assert env.get("contact", cid)["donotbulkemail"] is True  # the agent's tick stands
    # Not sent again in this run (write_retries): it would be refused again, or, sent with
    # If-Match: *, overwrite the tick. One PATCH, one GET of the row's values.
    assert dv.batch_requests - sent == 2
    connector.completed_cursor = None
    assert cursor is not None
    after = list(connector.read_changes("contact", FIELDS, cursor, read_until()))
    assert [record.fields["donotbulkemail"] for record in after] == [True]  # read by the next run
    # That read's ETag is the row's: the write decided again on it goes through.
    result = _write(connector, RecordUpdate("contact", cid, {"donotbulkemail": False}, WriteAction.UPDATE))
    assert result.ok and env.get("contact", cid)["donotbulkemail"] is False


def test_a_row_that_already_holds_the_values_written_is_done(dv: DynamicsSandbox) -> None:
    env = dv.environment
    cid = env.create("contact", {"lastname": "Invented", "emailaddress1": "q@example.test"})
    connector = _connector(dv)
    list(connector.read_changes("contact", FIELDS, Cursor(), read_until()))
    env.update("contact", cid, {"donotbulkemail": True})  # the same no, ticked by an agent
    result = _write(connector, RecordUpdate("contact", cid, {"donotbulkemail": True}, WriteAction.UPDATE))
    assert result.ok


def test_a_row_not_read_in_this_run_is_written_as_before(dv: DynamicsSandbox) -> None:
    """No ETag from a read: If-Match: * (update only), as for a table without optimistic
    concurrency."""
    env = dv.environment
    cid = env.create("contact", {"lastname": "Invented", "emailaddress1": "r@example.test"})
    result = _write(
        _connector(dv), RecordUpdate("contact", cid, {"donotbulkemail": True}, WriteAction.UPDATE)
    )
    assert result.ok and env.get("contact", cid)["donotbulkemail"] is True


def test_the_sandbox_refuses_a_stale_etag(dv: DynamicsSandbox) -> None:
    env = dv.environment
    cid = env.create("contact", {"lastname": "Invented"})
    session = dv.requests_session()
    token = session.post(dv.token_url, data=dv.client_credentials_form()).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    url = f"{dv.api_url()}/contacts({cid})"
    etag = session.get(url, headers=headers).json()["@odata.etag"]
    env.update("contact", cid, {"firstname": "Changed"})
    stale = session.patch(url, json={"donotemail": True}, headers={**headers, "If-Match": etag})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "0x80060882"
    fresh = session.get(url, headers=headers).json()["@odata.etag"]
    assert (
        session.patch(url, json={"donotemail": True}, headers={**headers, "If-Match": fresh}).status_code
        == 204
    )


@SQLITE_ONLY
def test_an_opt_in_made_in_journeys_between_the_read_and_the_push_is_read_by_the_ledger(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run reads the person's consent row (Not set), the ledger holds their no (the web
    form) and pushes Opted out to it. Between that read and the push the person opts in in
    Journeys' preference center: the push must not overwrite it (before, the next read showed
    the push, recognised as consentsync's own echo, and the opt-in never reached the ledger), and
    the next run reads it as the person's newer statement.

    That run then sends the held push again, with the ETag it has just read, and Opted out
    overwrites the opt-in (bb64 review3): by policy, not by a lost update. The ledger holds the
    person's evidenced withdrawal; an opt-in read from a CRM is no new consent and never lifts a
    withdrawal (docs/policy.md, ``sticky_withdrawal`` and "A new consent"), so the person's state
    stays withdrawn and every CRM is told so. The opt-in is recorded, in the ledger's history
    (docs/connectors/dynamics.md, "How it writes", If-Match)."""
    email = "between@example.test"
    env = dv.environment
    env.create("contact", {"lastname": "Invented", "emailaddress1": email})
    row = env.create(
        CONSENTS,
        {
            "msdynmkt_contactpointvalue": email,
            "msdynmkt_contactpointtype": 534120000,  # Email
            "msdynmkt_value": NOT_SET,
            "_msdynmkt_purposeid_value": EMAIL_MARKETING,
        },
    )
    # The run reads the row again (the look-back window holds it however slow the machine: a loaded
    # one took longer than the connector's window between the runs, read nothing, and wrote the row
    # it had not read this run with If-Match: *, as documented).
    options = SyncOptions(batch_size=50, signpost_lag_seconds=0, lookback_seconds=600)
    mappings = ["contact.yaml", "contact_point_consent.yaml"]

    def run(**kwargs: Any) -> Any:
        engine = shipped_engine(
            ledger, config_path, dv, "dyn", "dynamics", mappings, {"page_size": 40}, options
        )
        report = engine.run(**kwargs)
        assert report.status == "succeeded", report.error
        return report

    run(full=True)
    now = datetime.now(UTC)
    ledger.record(Identity(email=email), consent_value(ConsentStatus.WITHDRAWN, now, now))
    time.sleep(1.1)  # the opt-in is newer than the no, in whole seconds

    write = DynamicsConnector.write_batches

    def opted_in_first(self: DynamicsConnector, updates: Any) -> Any:
        if any(update.object_type == CONSENTS for update in updates):
            env.update(CONSENTS, row, {"msdynmkt_value": OPTED_IN, "msdynmkt_source": PREFERENCE_CENTER})
        yield from write(self, updates)

    monkeypatch.setattr(DynamicsConnector, "write_batches", opted_in_first)
    pushing = run()
    monkeypatch.setattr(DynamicsConnector, "write_batches", write)
    assert pushing.counts.push_failed >= 1
    assert env.get(CONSENTS, row)["msdynmkt_value"] == OPTED_IN  # not overwritten
    after = run()
    assert after.counts.evidence_recorded >= 1  # the opt-in, read as the person's statement
    with ledger.engine.connect() as conn:
        said = conn.execute(select(consent_events.c.status).where(consent_events.c.run_id == after.run_id))
        assert ConsentStatus.GRANTED.value in {str(status) for status in said.scalars()}
    # The same run sends the held Opted out again, with the fresh ETag: the withdrawal stands.
    _person, state = ledger.decision_for(email, "email_marketing", "email")
    assert (state.status, state.rule) == (ConsentStatus.WITHDRAWN, "sticky_withdrawal")
    assert after.counts.pushed >= 1
    assert env.get(CONSENTS, row)["msdynmkt_value"] == OPTED_OUT, "the opt-in outlived the withdrawal"
    # And it stays so: nothing more is pushed, nothing is read as new.
    settled = run()
    counts = settled.counts
    assert (counts.pushed, counts.pushes_enqueued, counts.evidence_recorded) == (0, 0, 0)
    assert env.get(CONSENTS, row)["msdynmkt_value"] == OPTED_OUT
