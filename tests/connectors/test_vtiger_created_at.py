"""Vtiger hands each record's ``createdtime`` over as ``CrmRecord.created_at``: wall-clock text
in the install's ``$default_timezone``, read as ``modifiedtime`` is (the later pass of a repeated
autumn hour), read alongside and left out of the values unless the mapping reads it; a converted
lead listed as gone carries it too (``retrieve`` answers it)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox

from consentsync.sdk import Cursor
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_vtiger_against_sandbox import connector_for

ZONE = "America/Los_Angeles"
FIELDS = ["email", "emailoptout"]


@pytest.fixture
def sandbox() -> Iterator[VtigerSandbox]:
    with VtigerSandbox(VtigerCrm(timezone=ZONE)) as server:
        yield server


def test_createdtime_is_read_in_the_installs_zone(sandbox: VtigerSandbox) -> None:
    crm = sandbox.crm
    made = dt.datetime(2026, 7, 1, 9, 30, 5, tzinfo=dt.UTC)
    contact = crm.create("Contacts", lastname="Early", email="early@example.test", at=made)
    crm.revise(contact, emailoptout="1")
    connector = connector_for(sandbox, server_timezone=ZONE)
    (record,) = [r for r in connector.read_changes("Contacts", FIELDS, Cursor(), read_until())]
    assert crm.get(contact)["createdtime"] == "2026-07-01 02:30:05"  # stored as Pacific wall clock
    assert record.created_at == made and record.modstamp > made
    assert "createdtime" not in record.fields


def test_a_repeated_autumn_hour_is_read_as_its_later_pass(sandbox: VtigerSandbox) -> None:
    # 2026-11-01 01:30 happens twice in Los Angeles: 08:30 UTC (PDT), then 09:30 UTC (PST).
    first_pass = dt.datetime(2026, 11, 1, 8, 30, tzinfo=dt.UTC)
    assert first_pass.astimezone(ZoneInfo(ZONE)).strftime("%H:%M") == "01:30"
    contact = sandbox.crm.create("Contacts", lastname="Autumn", email="autumn@example.test", at=first_pass)
    connector = connector_for(sandbox, server_timezone=ZONE)
    (record,) = [r for r in connector.read_changes("Contacts", FIELDS, Cursor(), read_until())]
    assert record.record_id == contact
    assert record.created_at == record.modstamp == first_pass + dt.timedelta(hours=1)


def test_a_mapping_reading_createdtime_gets_it_as_utc(sandbox: VtigerSandbox) -> None:
    made = dt.datetime(2026, 7, 1, 9, 30, 5, tzinfo=dt.UTC)
    sandbox.crm.create("Contacts", lastname="Mapped", email="mapped@example.test", at=made)
    connector = connector_for(sandbox, server_timezone=ZONE)
    (record,) = list(connector.read_changes("Contacts", [*FIELDS, "createdtime"], Cursor(), read_until()))
    assert record.fields["createdtime"] == "2026-07-01T09:30:05Z" and record.created_at == made


def test_a_converted_lead_says_when_it_was_created(sandbox: VtigerSandbox) -> None:
    crm = sandbox.crm
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    lead = crm.create("Leads", lastname="Silva", email="ana.silva@example.test")
    created = crm.parse_time(crm.get(lead)["createdtime"])
    crm.convert_lead(lead)
    connector = connector_for(sandbox, server_timezone=ZONE, read_deletions=True, sync_type="user")
    (gone,) = list(connector.read_deletions("Leads", Cursor(start), read_until(), fields=FIELDS))
    assert gone.record_id == lead and gone.merged_into_object == "Contacts"
    assert gone.created_at == created and "createdtime" not in gone.fields
