"""The SOQL the Salesforce connector builds: cursor semantics, escaping, allow-listed names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from consentsync_salesforce.connector import SalesforceConnector, parse_sf_datetime

from consentsync.sdk import ConnectorError, Cursor, FieldInfo

SETTINGS = {"auth": "token", "access_token": "t0ken-for-tests", "instance_url": "https://127.0.0.1:1"}


@pytest.fixture
def connector() -> SalesforceConnector:
    made = SalesforceConnector("sf", SETTINGS)
    # describe() is an HTTP call; these tests are about the text of the query, so the answer
    # it would give is filled in directly.
    made._describes["Contact"] = {
        name: FieldInfo(name, "string", True)
        for name in ("Id", "SystemModstamp", "Email", "HasOptedOutOfEmail")
    }
    return made


UNTIL = datetime(2026, 11, 23, 10, 0, 0, 700_000, tzinfo=UTC)


def test_first_load_reads_everything_up_to_the_signpost(connector: SalesforceConnector) -> None:
    soql = connector.build_query("Contact", ["Email", "HasOptedOutOfEmail"], Cursor(), UNTIL)
    assert soql == (
        "SELECT Id, SystemModstamp, Email, HasOptedOutOfEmail FROM Contact "
        "WHERE SystemModstamp <= 2026-11-23T10:00:00+00:00 ORDER BY SystemModstamp, Id"
    )


def test_incremental_read_resumes_after_the_cursor_pair(connector: SalesforceConnector) -> None:
    since = Cursor(datetime(2026, 11, 23, 3, 21, 24, tzinfo=UTC), "003000000000001AAA")
    soql = connector.build_query("Contact", ["Email"], since, UNTIL)
    assert (
        "(SystemModstamp > 2026-11-23T03:21:24+00:00 OR (SystemModstamp = 2026-11-23T03:21:24+00:00 "
        "AND Id > '003000000000001AAA')) AND SystemModstamp <= 2026-11-23T10:00:00+00:00"
    ) in soql


def test_values_are_escaped_and_names_checked(connector: SalesforceConnector) -> None:
    hostile = Cursor(datetime(2026, 1, 1, tzinfo=UTC), "x' OR Name != '")
    soql = connector.build_query("Contact", ["Email"], hostile, UNTIL)
    assert "Id > 'x\\' OR Name != \\''" in soql
    with pytest.raises(ConnectorError, match="no field"):
        connector.build_query("Contact", ["Email, (SELECT Id FROM Cases)"], Cursor(), UNTIL)
    with pytest.raises(ConnectorError, match="not a Salesforce API name"):
        connector.build_query("Contact WHERE Id != null", ["Email"], Cursor(), UNTIL)


@pytest.mark.parametrize(
    "text",
    ["2026-11-23T03:21:24.000+0000", "2026-11-23T03:21:24Z", "2026-11-23T04:21:24.000+0100"],
)
def test_salesforce_timestamps_parse_to_utc(text: str) -> None:
    assert parse_sf_datetime(text) == datetime(2026, 11, 23, 3, 21, 24, tzinfo=UTC)


def test_settings_name_the_missing_credentials() -> None:
    with pytest.raises(ValueError, match="client_secret"):
        SalesforceConnector("sf", {"auth": "client_credentials", "client_id": "abc"})


def test_a_look_back_cursor_reads_its_whole_second(connector: SalesforceConnector) -> None:
    since = Cursor(datetime(2026, 11, 23, 3, 21, 24, tzinfo=UTC), None)
    soql = connector.build_query("Contact", ["Email"], since, UNTIL)
    assert "WHERE SystemModstamp >= 2026-11-23T03:21:24+00:00 AND SystemModstamp <=" in soql
    assert "Id >" not in soql


def test_resume_from_steps_back_ten_minutes_to_the_start_of_that_moment(
    connector: SalesforceConnector,
) -> None:
    stored = Cursor(datetime(2026, 11, 23, 3, 21, 24, tzinfo=UTC), "003000000000001AAA")
    assert connector.resume_from(stored) == Cursor(datetime(2026, 11, 23, 3, 11, 24, tzinfo=UTC), None)
    assert connector.resume_from(Cursor()) == Cursor()


def test_deletion_fields_are_read_where_the_object_has_them(connector: SalesforceConnector) -> None:
    connector._describes["Contact"].update(
        {name: FieldInfo(name, "boolean", False) for name in ("IsDeleted", "MasterRecordId")}
    )
    soql = connector.build_query("Contact", ["Email"], Cursor(), UNTIL)
    assert soql.startswith("SELECT Id, SystemModstamp, Email, IsDeleted, MasterRecordId FROM Contact ")
