"""SuperOffice hands each person's registration time over as ``CrmRecord.created_at``: the
ConsentPurpose archive's ``consentPerson/person/personRegisteredDate`` ("Registered date: The
date/time the data was registered in UTC"), read with each archive row (no call more), to the
second as the updated times; a person restored from the recycle bin carries its PersonEntity's
``CreatedDate``. ``column_person_registered: null`` reads none."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
from consentsync_superoffice.sandbox.archive import ArchiveQuery
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox

from consentsync.sdk import Cursor, RecordUpdate, WriteAction
from tests.connectors.against_sandbox import read_until
from tests.connectors.test_superoffice_against_sandbox import FIELDS, connector_for
from tests.connectors.test_superoffice_s64_restore import connector_for as restoring_connector


@pytest.fixture
def so() -> Iterator[SuperOfficeSandbox]:
    with SuperOfficeSandbox() as server:
        yield server


def test_a_person_says_when_it_was_registered_not_when_its_consent_changed(so: SuperOfficeSandbox) -> None:
    registered = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=3, hours=5)
    person = so.tenant.create_person("Ada", "Early", "ada@example.test", at=registered)
    so.tenant.set_consent(person.id, "EMARKETING", "MANUAL", "CONSENT", "")
    asked: list[ArchiveQuery] = []
    so.after_archive_page = asked.append
    connector = connector_for(so)
    records = list(connector.read_changes("Person", FIELDS, Cursor(), read_until()))
    assert {r.record_id for r in records} == {str(person.id)}
    assert all(r.created_at == registered for r in records) and records[-1].modstamp > registered
    assert asked and all("consentPerson/person/personRegisteredDate" in query.select for query in asked)
    assert so.calls.get("person_get", 0) == 0, "the registration came with the archive rows"


def test_no_registered_column_reads_no_creation_time(so: SuperOfficeSandbox) -> None:
    so.tenant.create_person("Ada", "Early", "ada@example.test")
    connector = connector_for(so, column_person_registered=None)
    (record,) = list(connector.read_changes("Person", FIELDS, Cursor(), read_until()))
    assert record.created_at is None


def test_a_restored_person_carries_its_created_date(so: SuperOfficeSandbox) -> None:
    registered = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    person = so.tenant.create_person("Ada", "Early", "ada@example.test", at=registered)
    connector = restoring_connector(so)
    list(connector.read_changes("Person", FIELDS, Cursor(), read_until()))
    cursor = connector.completed_cursor or Cursor()
    [result] = connector.write([RecordUpdate("Person", str(person.id), {}, WriteAction.DELETE)])
    assert result.ok
    so.tenant.restore_person(person.id)
    time.sleep(1.1)
    again = restoring_connector(so)
    records = list(again.read_changes("Person", FIELDS, again.resume_from(cursor), read_until()))
    (restored,) = [r for r in records if r.record_id == str(person.id)]
    assert restored.created_at == registered
