"""Write paths against the sandboxes where the real CRM's behaviour was easy to get wrong: a Bulk
API 2.0 cell that must clear a field, a Vtiger delete whose answer was lost after Vtiger applied
it, and text Vtiger's stock 3-byte ``utf8`` tables cannot keep, read back as our own write."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce.sandbox import SalesforceSandbox
from consentsync_vtiger import VtigerConnector
from consentsync_vtiger.sandbox.server import VtigerSandbox

from consentsync.sdk import Cursor, RecordUpdate, WriteAction
from tests.connectors.against_sandbox import connector_settings, lose_answers, read_until
from tests.sandbox.serving import serve_seeded

# -- Salesforce ----------------------------------------------------------------------------------


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    yield from serve_seeded(SalesforceSandbox(), lambda server: server.org.seed(80, seed=3))


def test_salesforce_bulk_job_clears_a_field_pushed_as_empty_text(salesforce: SalesforceSandbox) -> None:
    """Bulk API 2.0: an empty cell leaves the field unchanged, ``#N/A`` sets it to null
    (crm-apis.md). An anonymise that clears a name with "" must clear it on the Bulk path as on
    the Collections path, not be answered saved while the name stays."""
    settings = connector_settings(
        salesforce.connection_settings(), {"bulk_threshold": 50, "bulk_poll_interval": 0.05}
    )
    connector = SalesforceConnector("sf-s48", settings)
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:60]]
    assert all(salesforce.org.get(i)["FirstName"] for i in ids)
    updates = [RecordUpdate("Contact", i, {"FirstName": "", "LastName": "Erased"}) for i in ids]
    (answers,) = list(connector.write_batches(updates))
    assert salesforce.calls["bulk_create"] == 1
    assert all(result.ok for result in answers.values())
    still_named = [i for i in ids if salesforce.org.get(i)["FirstName"]]
    assert still_named == [], "answered saved, but the Bulk job left FirstName as it was"
    assert all(salesforce.org.get(i)["LastName"] == "Erased" for i in ids)


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ("upload", lambda r: r.method == "PUT" and "/batches" in r.url),
        ("close", lambda r: r.method == "PATCH" and "/jobs/ingest/" in r.url),
    ],
)
def test_salesforce_bulk_step_whose_answer_was_lost_goes_on(
    salesforce: SalesforceSandbox, step: str, match: Callable[[Any], bool]
) -> None:
    """A Bulk API 2.0 job takes one upload and one close; a repeat is refused InvalidJobState.
    When the answer to the upload or the close is lost after Salesforce took it, the retry's
    refusal means the step was done: the job goes on and every record is answered, instead of
    the run failing while the job applies the records unanswered (or never closes)."""
    settings = connector_settings(
        salesforce.connection_settings(), {"bulk_threshold": 50, "bulk_poll_interval": 0.05}
    )
    connector = SalesforceConnector("sf-s48", settings)
    connector.check()
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:60]]
    lost = lose_answers(connector.session, match)
    (answers,) = list(
        connector.write_batches([RecordUpdate("Contact", i, {"Title": f"bulk {step}"}) for i in ids])
    )
    assert lost, f"no {step} answer was lost"
    assert sorted(answers) == list(range(60)) and all(result.ok for result in answers.values())
    assert all(salesforce.org.get(i)["Title"] == f"bulk {step}" for i in ids)
    assert salesforce.calls["bulk_create"] == 1


# -- Vtiger --------------------------------------------------------------------------------------


@pytest.fixture
def vtiger() -> Iterator[VtigerSandbox]:
    with VtigerSandbox() as server:
        yield server


def _vtiger_connector(sandbox: VtigerSandbox, **extra: Any) -> VtigerConnector:
    return VtigerConnector("vt-s48", connector_settings(sandbox.connection_settings(), {"timeout": 5}, extra))


def _is_delete(request: Any) -> bool:
    body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
    return request.method == "POST" and b"operation=delete" in body


def test_vtiger_delete_whose_answer_was_lost_is_done_not_dead_lettered(vtiger: VtigerSandbox) -> None:
    """The delete reached Vtiger and deleted the record, the answer was lost; the retry is then
    answered ACCESS_DENIED (Vtiger's answer for a deleted id, crm-apis.md). The erasure happened:
    it must be answered done, not refused for good (dead-lettered, the link never marked gone)."""
    gone, kept = (
        vtiger.crm.create("Contacts", lastname=f"Erase {i}", email=f"erase{i}@example.test") for i in range(2)
    )
    connector = _vtiger_connector(vtiger)
    connector.check()
    lost = lose_answers(connector.client.http, _is_delete)
    (result,) = connector.write([RecordUpdate("Contacts", gone, {}, WriteAction.DELETE)])
    assert lost, "no answer was lost"
    assert [r["id"] for r in vtiger.crm.records("Contacts")] == [kept]
    assert result.ok, f"an applied delete answered {result.error_code}"
    # Sent again (another process, which cannot know of the lost answer): the record is not
    # there, so the delete is done, not refused.
    (again,) = connector.write([RecordUpdate("Contacts", gone, {}, WriteAction.DELETE)])
    assert again.ok and again.message == "already deleted"


def test_vtiger_delete_refused_after_a_lost_answer_stays_refused_while_the_record_is_there(
    vtiger: VtigerSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost answer followed by ACCESS_DENIED is no proof of a deletion when the record can
    still be read (a profile without Delete): that stays a refusal."""
    record = vtiger.crm.create("Contacts", lastname="Kept", email="kept@example.test")
    connector = _vtiger_connector(vtiger)
    connector.check()
    from consentsync_vtiger.sandbox import server

    def denied(self: Any, params: Any) -> dict[str, str]:
        self._user(params)
        raise server._denied()

    monkeypatch.setattr(server.VtigerSandbox, "_op_delete", denied, raising=False)
    lost = lose_answers(connector.client.http, _is_delete)
    (result,) = connector.write([RecordUpdate("Contacts", record, {}, WriteAction.DELETE)])
    assert lost and vtiger.crm.get(record) is not None
    assert not result.ok and result.error_code == "ACCESS_DENIED"


def test_vtiger_text_beyond_the_bmp_reads_back_as_our_own_write(vtiger: VtigerSandbox) -> None:
    """The stock install's 3-byte ``utf8`` stores an emoji as ``?`` (crm-apis.md): what the
    connector says a write reads back as must be what the read gives, or the engine takes its
    own write for an edit (and writes it again every run)."""
    record = vtiger.crm.create("Contacts", lastname="Plain", email="utf8@example.test")
    connector = _vtiger_connector(vtiger)
    update = RecordUpdate("Contacts", record, {"lastname": "Zo\u00eb \U0001f600 \u4e2d"})
    (result,) = connector.write([update])
    assert result.ok
    (read,) = [
        r
        for r in connector.read_changes("Contacts", ["lastname"], Cursor(), read_until())
        if r.record_id == record
    ]
    assert read.fields["lastname"] == "Zo\u00eb ? \u4e2d"
    assert connector.as_read_back(update) == {"lastname": read.fields["lastname"]}
    # An install converted to utf8mb4 keeps the text: the setting says so.
    wide = _vtiger_connector(vtiger, database_charset="utf8mb4")
    assert wide.as_read_back(update) == dict(update.fields)


# -- HubSpot -------------------------------------------------------------------------------------


def test_hubspot_update_refused_its_resubscribe_writes_none_of_its_properties() -> None:
    """HubSpot's v3 never resubscribes a contact who unsubscribed (crm-apis.md): the update is
    answered refused for good. Its properties must then not have been written: the engine takes
    only acknowledged writes for its own, so a legal basis written under a failed answer would be
    read back as the person's (or a CRM user's) own choice."""
    from consentsync_hubspot import HubSpotConnector
    from consentsync_hubspot.connector import REFUSES_RESUBSCRIBE
    from consentsync_hubspot.sandbox.harness import HubSpotHarness

    harness = HubSpotHarness()
    harness.start()
    try:
        refused, fresh = harness.seed(2)
        portal = harness.sandbox.portal
        portal.set_status(portal.get(refused)["email"], "1001", "UNSUBSCRIBED")
        basis = "Freely given consent from contact"
        results = HubSpotConnector("hs-s48", harness.connector_settings()).write(
            [
                RecordUpdate(
                    "contacts", refused, {"hs_legal_basis": basis, "subscription_1001": "SUBSCRIBED"}
                ),
                RecordUpdate("contacts", fresh, {"hs_legal_basis": basis, "subscription_1001": "SUBSCRIBED"}),
            ]
        )
        assert results[0].error_code == REFUSES_RESUBSCRIBE and not results[0].retryable
        assert portal.get(refused).get("hs_legal_basis") != basis, "written under a refused answer"
        assert results[1].ok and portal.get(fresh)["hs_legal_basis"] == basis
        assert portal.status(portal.get(fresh)["email"], "1001").status == "SUBSCRIBED"
    finally:
        harness.stop()


# -- Dynamics ------------------------------------------------------------------------------------


def test_dynamics_text_over_max_length_in_utf16_units_is_refused_for_its_row_only() -> None:
    """Dataverse stores text as SQL Server nvarchar(n), whose n counts UTF-16 byte-pairs: an
    emoji takes two. A value of max-length characters holding one is refused with 0x80044331,
    for its row only: quarantined (not retried), the rest of the $batch written."""
    from consentsync_dynamics import DynamicsConnector
    from consentsync_dynamics.sandbox.server import DynamicsSandbox

    with DynamicsSandbox() as dv:
        dv.environment.seed(3, seed=4)
        settings = connector_settings(dv.connection_settings(), {"batch_size": 25})
        connector = DynamicsConnector("dyn-s48", settings)
        ids = [r["contactid"] for r in dv.environment.records("contact")]
        fits = "\u00e9" * 48 + "\U0001f600"  # 49 characters, 50 UTF-16 units: firstname is 50
        over = "\u00e9" * 49 + "\U0001f600"  # 50 characters, 51 units
        results = connector.write(
            [
                RecordUpdate("contact", ids[0], {"firstname": fits}),
                RecordUpdate("contact", ids[1], {"firstname": over}),
                RecordUpdate("contact", ids[2], {"donotemail": True}),
            ]
        )
        assert results[0].ok and dv.environment.get("contact", ids[0])["firstname"] == fits
        assert (results[1].ok, results[1].error_code, results[1].retryable) == (False, "0x80044331", False)
        assert dv.environment.get("contact", ids[1])["firstname"] != over
        assert results[2].ok and dv.environment.get("contact", ids[2])["donotemail"] is True
