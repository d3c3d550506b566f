"""Salesforce hands each record's ``CreatedDate`` over as ``CrmRecord.created_at`` (UTC, whole
seconds, parsed as SystemModstamp is), read alongside where the object has it and left out of
the values handed over unless the mapping reads it; recycled rows from queryAll carry it too,
and so do reads by id."""

from __future__ import annotations

from datetime import timedelta

from consentsync_salesforce.connector import SalesforceConnector, parse_sf_datetime
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.sdk import Cursor, FieldInfo
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_salesforce_against_sandbox import FIELDS, connector_for, sandbox  # noqa: F401
from tests.connectors.test_salesforce_query import SETTINGS, UNTIL


def test_created_date_is_read_alongside_where_the_object_has_it() -> None:
    connector = SalesforceConnector("sf", SETTINGS)
    connector._describes["Contact"] = {
        name: FieldInfo(name, "string", True) for name in ("Id", "SystemModstamp", "Email", "CreatedDate")
    }
    soql = connector.build_query("Contact", ["Email"], Cursor(), UNTIL)
    assert soql.startswith("SELECT Id, SystemModstamp, Email, CreatedDate FROM Contact ")


def test_records_live_deleted_and_by_id_say_when_they_were_created(sandbox: SalesforceSandbox) -> None:  # noqa: F811
    connector = connector_for(sandbox)
    everything = list(connector.read_changes("Contact", FIELDS, Cursor(), read_until()))
    for record in everything:
        stored = sandbox.org.get(record.record_id)
        assert stored is not None and record.created_at == stored["CreatedDate"]
        assert record.created_at.tzinfo is not None and record.created_at <= record.modstamp
        assert "CreatedDate" not in record.fields
    last = everything[-1]
    deleted = everything[0].record_id
    sandbox.org.clock = lambda: last.modstamp + timedelta(seconds=30)
    sandbox.org.delete(deleted)
    (gone,) = connector.read_changes("Contact", FIELDS, Cursor(last.modstamp, last.record_id), read_until())
    assert gone.deleted and gone.created_at == everything[0].created_at
    (by_id,) = connector.read_records("Contact", FIELDS, [everything[1].record_id])
    assert by_id.created_at == everything[1].created_at and "CreatedDate" not in by_id.fields


def test_a_mapping_reading_created_date_keeps_it_among_its_values(sandbox: SalesforceSandbox) -> None:  # noqa: F811
    connector = connector_for(sandbox)
    records = list(connector.read_changes("Contact", [*FIELDS, "CreatedDate"], Cursor(), read_until()))
    assert records
    for record in records:
        assert record.created_at == parse_sf_datetime(record.fields["CreatedDate"])
