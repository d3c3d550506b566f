"""bb64 dynfix item 1 (privacy): Customer Insights - Journeys may send a contact's email to any
recipient field its audience configuration lists ("Select the audience source for journeys":
"add more recipient fields", several for a contact's email channel since the February 2024
release), and checks consent per address. The connector created the Opted out row a person's
no needs for ``emailaddress1`` only: Journeys went on emailing their other address. The
recipient fields are a setting (``journeys_email_fields``); the view reads, and a no creates, the
rows of every address the contact holds there.

The sandbox models the audience configuration (``DataverseEnvironment.journeys_email_fields``)
and whom Journeys may email (``journeys_recipients``: each such address without an Opted out row,
for a purpose whose enforcement model is non-restrictive)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_dynamics import DynamicsConnector, journeys
from consentsync_dynamics.sandbox.server import DynamicsSandbox
from consentsync_dynamics.settings import DynamicsSettings
from pydantic import ValidationError

from consentsync.domain import ConsentStatus
from consentsync.ledger.service import Ledger
from consentsync.sdk import Cursor, RecordUpdate, WriteAction
from consentsync.sync.engine import SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.connectors.against_sandbox import connector_settings, read_until
from tests.integration.helpers import shipped_engine
from tests.integration.test_dynamics_journeys_rows import _said
from tests.sandbox.serving import serve_seeded

CONSENTS = "msdynmkt_contactpointconsent4"
EMAIL_MARKETING = "6f0b1c7e-0d6a-4c1e-9a51-000000000001"
FIELD = journeys.field_for(EMAIL_MARKETING)
RECIPIENTS = ["emailaddress1", "emailaddress2"]
OWN_ROWS_SECRET = "own-rows~stable~key~0123456789abcdef"


@pytest.fixture
def dv() -> Iterator[DynamicsSandbox]:
    def configure(server: DynamicsSandbox) -> None:
        server.environment.journeys_email_fields = tuple(RECIPIENTS)  # Audience configuration

    yield from serve_seeded(DynamicsSandbox(), configure)


def _connector(dv: DynamicsSandbox, **extra: Any) -> DynamicsConnector:
    tuned = {
        "page_size": 40,
        "own_rows_secret": OWN_ROWS_SECRET,
        "journeys_email_fields": RECIPIENTS,
        **extra,
    }
    return DynamicsConnector("dyn", connector_settings(dv.connection_settings(), tuned))


def _contact(dv: DynamicsSandbox, work: str, home: str | None) -> str:
    values = {"lastname": "Invented", "emailaddress1": work, **({"emailaddress2": home} if home else {})}
    return dv.environment.create("contact", values)


def _opted_out(dv: DynamicsSandbox) -> list[str]:
    return sorted(
        str(row["msdynmkt_contactpointvalue"])
        for row in dv.environment.records(CONSENTS)
        if row["_msdynmkt_purposeid_value"] == EMAIL_MARKETING and row["msdynmkt_value"] == journeys.OPTED_OUT
    )


def _view(connector: DynamicsConnector) -> dict[str, Any]:
    connector.completed_cursor = None
    records = connector.read_changes(
        journeys.JOURNEYS_CONTACT, ["emailaddress1", FIELD], Cursor(), read_until()
    )
    return {record.record_id: record.fields[FIELD] for record in records}


def test_a_no_reaches_every_address_journeys_may_send_to(dv: DynamicsSandbox) -> None:
    cid = _contact(dv, "work.addr@example.test", "Home.Addr@example.test")
    assert dv.environment.journeys_recipients(cid, EMAIL_MARKETING) == [
        "work.addr@example.test",
        "Home.Addr@example.test",
    ]
    connector = _connector(dv)
    assert _view(connector)[cid] is None  # neither address has a row
    answers: dict[int, Any] = {}
    for answered in connector.write_batches(
        [RecordUpdate(journeys.JOURNEYS_CONTACT, cid, {FIELD: True}, WriteAction.UPDATE)]
    ):
        answers.update(answered)
    assert answers[0].ok
    assert _opted_out(dv) == ["Home.Addr@example.test", "work.addr@example.test"]  # as the contact holds them
    assert dv.environment.journeys_recipients(cid, EMAIL_MARKETING) == []  # Journeys emails neither
    assert _view(connector)[cid] is True


def test_an_address_without_its_row_leaves_the_purpose_empty(dv: DynamicsSandbox) -> None:
    """A row at the work address (any value) and none at home: the view says the purpose has no
    row, so that a no creates the home one; the existing row is left as it is."""
    cid = _contact(dv, "work2@example.test", "home2@example.test")
    dv.environment.create(
        CONSENTS,
        {
            "msdynmkt_contactpointvalue": "work2@example.test",
            "msdynmkt_contactpointtype": journeys.EMAIL_POINT,
            "msdynmkt_value": journeys.OPTED_OUT,
            "_msdynmkt_purposeid_value": EMAIL_MARKETING,
        },
    )
    connector = _connector(dv)
    assert _view(connector)[cid] is None
    for _answered in connector.write_batches(
        [RecordUpdate(journeys.JOURNEYS_CONTACT, cid, {FIELD: True}, WriteAction.UPDATE)]
    ):
        pass
    assert _opted_out(dv) == ["home2@example.test", "work2@example.test"]
    assert len(dv.environment.records(CONSENTS)) == 2  # the work address's row was not made twice
    # Only the configured fields count: an address in emailaddress3 is none of Journeys' here.
    other = dv.environment.create("contact", {"lastname": "Invented", "emailaddress3": "third@example.test"})
    assert _view(connector)[other] is True


def test_the_recipient_fields_default_to_the_primary_address_and_are_logical_names() -> None:
    base = {
        "environment_url": "https://org.crm4.dynamics.com",
        "token_url": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
        "client_id": "c",
        "client_secret": "s",
    }
    assert DynamicsSettings(**base).journeys_email_fields == ["emailaddress1"]
    both = DynamicsSettings(**base, journeys_email_fields=["emailaddress2", "emailaddress1", "emailaddress2"])
    assert both.journeys_email_fields == ["emailaddress2", "emailaddress1"]
    for bad in (["EmailAddress2"], ["emailaddress2\n"], ["emailaddress2 or true"], []):
        with pytest.raises(ValidationError):
            DynamicsSettings(**base, journeys_email_fields=bad)


@SQLITE_ONLY
def test_a_no_in_the_ledger_creates_a_row_per_address_once(
    ledger: Ledger, config_path: Path, dv: DynamicsSandbox
) -> None:
    cid = _contact(dv, "engine.work@example.test", "engine.home@example.test")
    options = SyncOptions(batch_size=50, signpost_lag_seconds=0)
    settings = {"page_size": 40, "own_rows_secret": OWN_ROWS_SECRET, "journeys_email_fields": RECIPIENTS}
    mappings = ["contact.yaml", "contact_point_consent.yaml", "journeys_contact.yaml"]

    def run(**kwargs: Any) -> Any:
        engine = shipped_engine(ledger, config_path, dv, "dyn", "dynamics", mappings, settings, options)
        report = engine.run(**kwargs)
        assert report.status == "succeeded", report.error
        return report

    run(full=True)
    assert _opted_out(dv) == []
    _said(ledger, "engine.work@example.test", ConsentStatus.WITHDRAWN)
    run()
    assert _opted_out(dv) == ["engine.home@example.test", "engine.work@example.test"]
    assert dv.environment.journeys_recipients(cid, EMAIL_MARKETING) == []
    again = run()
    assert (again.counts.evidence_recorded, again.counts.pushes_enqueued) == (0, 0)
    # The home address's row deleted in Dynamics: a check of every contact finds it missing and
    # the no creates it again.
    (home,) = [
        r
        for r in dv.environment.records(CONSENTS)
        if r["msdynmkt_contactpointvalue"] == "engine.home@example.test"
    ]
    dv.environment.delete(CONSENTS, str(home["msdynmkt_contactpointconsent4id"]))
    run()
    run()
    assert _opted_out(dv) == ["engine.home@example.test", "engine.work@example.test"]
