"""The Salesforce connector against its sandbox when a lead has been converted: read as gone
(with its last values, not merged into the contact: that is another object), and a write that
Salesforce refuses with CANNOT_UPDATE_CONVERTED_LEAD sent once and answered as retryable (left
pending for the read that sees the conversion), through sObject Collections, Bulk API 2.0 and
deletes alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce.connector import ERRORS
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.sdk import Action, Cursor, RecordUpdate, WriteAction
from tests.connectors.against_sandbox import connector_settings, read_until

FIELDS = ["Email", "HasOptedOutOfEmail", "DoNotCall"]
CONVERTED = "CANNOT_UPDATE_CONVERTED_LEAD"


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as server:
        yield server


def _connector(salesforce: SalesforceSandbox, tmp_path: Path, **more: object) -> SalesforceConnector:
    settings = {"lock_retries": 2, "state_dir": str(tmp_path / "state"), **more}
    return SalesforceConnector("sf-converted", connector_settings(salesforce.connection_settings(), settings))


def _converted(salesforce: SalesforceSandbox) -> tuple[str, str, str]:
    """A converted lead that said no before it was converted, its contact, and a live lead."""
    org = salesforce.org
    lead = org.create("Lead", LastName="Lind", Company="Acme", Email="grete@example.test")
    org.update(lead, HasOptedOutOfEmail=True)
    contact = org.convert_lead(lead)["contactId"]
    live = org.create("Lead", LastName="Novak", Company="Globex", Email="novak@example.test")
    return lead, contact, live


def test_a_converted_lead_is_read_as_gone_with_its_last_values(
    salesforce: SalesforceSandbox, tmp_path: Path
) -> None:
    lead, contact, live = _converted(salesforce)
    connector = _connector(salesforce, tmp_path)
    read = {r.record_id: r for r in connector.read_changes("Lead", FIELDS, Cursor(), read_until())}
    gone = read[lead]
    # Gone into the contact it was converted into: a record of another object.
    assert gone.deleted is True and (gone.merged_into, gone.merged_into_object) == (contact, "Contact")
    assert gone.fields["HasOptedOutOfEmail"] is True and gone.fields["Email"] == "grete@example.test"
    assert "IsConverted" not in gone.fields
    assert gone.modstamp == salesforce.org.get(lead)["SystemModstamp"]  # type: ignore[index]
    assert read[live].deleted is False and "IsConverted" not in read[live].fields
    # By id too (a quarantined record read again).
    again = {r.record_id: r for r in connector.read_records("Lead", FIELDS, [lead, live])}
    assert again[lead].deleted is True and again[live].deleted is False
    # A mapping that reads IsConverted itself gets it, and the lead is still gone.
    (own,) = connector.read_records("Lead", [*FIELDS, "IsConverted"], [lead])
    assert own.deleted is True and own.fields["IsConverted"] is True


@pytest.mark.parametrize("bulk", [False, True], ids=["collections", "bulk"])
def test_a_write_refused_by_a_converted_lead_is_sent_once_and_left_pending(
    salesforce: SalesforceSandbox, tmp_path: Path, bulk: bool
) -> None:
    lead, _contact, live = _converted(salesforce)
    connector = _connector(salesforce, tmp_path, **({"bulk_threshold": 2} if bulk else {}))
    kind = "bulk_upload" if bulk else "composite"
    before = salesforce.calls[kind]
    answers: dict[int, object] = {}
    for batch in connector.write_batches(
        [RecordUpdate("Lead", lead, {"DoNotCall": True}), RecordUpdate("Lead", live, {"DoNotCall": True})]
    ):
        answers.update(batch)
    refused, saved = answers[0], answers[1]
    assert saved.ok is True  # type: ignore[attr-defined]
    assert refused.ok is False and refused.error_code == CONVERTED  # type: ignore[attr-defined]
    assert refused.retryable is True, "a converted lead's refusal would be dead-lettered"  # type: ignore[attr-defined]
    assert salesforce.calls[kind] - before == 1, "the converted lead was sent again in the run's passes"
    assert salesforce.org.get(lead)["DoNotCall"] is False  # type: ignore[index]


def test_a_delete_refused_by_a_converted_lead_is_dead_lettered_for_ops(
    salesforce: SalesforceSandbox, tmp_path: Path
) -> None:
    # An erasure's delete, which still reaches a converted lead (it keeps the person's data):
    # refused for good where the integration user may not delete converted leads, and said so.
    lead, _contact, _live = _converted(salesforce)
    connector = _connector(salesforce, tmp_path)
    ((result,),) = [
        list(batch.values())
        for batch in connector.write_batches([RecordUpdate("Lead", lead, {}, WriteAction.DELETE)])
    ]
    assert result.ok is False and result.error_code == CONVERTED and result.retryable is False
    assert salesforce.org.get(lead)["IsDeleted"] is False  # type: ignore[index]


def test_the_error_table_names_the_converted_lead() -> None:
    rule = ERRORS.classify(400, CONVERTED)
    assert rule.code == CONVERTED and rule.action is Action.SKIP
