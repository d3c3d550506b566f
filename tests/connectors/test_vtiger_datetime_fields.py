"""Privacy Guard's consent times (``granted_on``) come as wall-clock text in the install's
``$default_timezone``, like ``modifiedtime``: the connector hands them over as UTC, so that the
mapping (which reads a time without an offset as UTC) neither moves a refusal hours into the
future (+05:30: refused as future-dated, the refusal lost) nor a consent hours into the past
(-08:00: sorted before what came after it, expiring early). Whole seconds, as Vtiger stamps."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from consentsync_vtiger import VtigerConnector
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox

from consentsync.domain import parse_timestamp
from consentsync.sdk import Cursor
from tests.connectors.against_sandbox import connector_settings, read_until

FIELDS = ["contact_id", "consent_name", "consent_status", "granted_on", "consent_source"]


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/Los_Angeles", "UTC"])
def test_granted_on_in_the_installs_zone_is_handed_over_as_the_same_moment_in_utc(zone: str) -> None:
    with VtigerSandbox(VtigerCrm(privacy_guard=True, timezone=zone)) as server:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        refused_at = now - dt.timedelta(minutes=20)  # in the last hour: +05:30 would make it future
        contact = server.crm.create("Contacts", lastname="Zone", email="zone@example.test", at=now)
        consent = server.crm.create(
            "Consents",
            consent_name="Email Marketing",
            contact_id=contact,
            consent_status="Not Granted",
            granted_on=server.crm.format_time(refused_at),
            consent_source="Webform",
            at=now - dt.timedelta(minutes=5),
        )
        served = server.crm.get(consent)["granted_on"]  # type: ignore[index]
        assert served == refused_at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")
        connector = VtigerConnector(
            "vt-zone",
            connector_settings(server.connection_settings(), {"timeout": 5}, {"server_timezone": zone}),
        )
        (record,) = connector.read_changes("Consents", FIELDS, Cursor(), read_until())
        assert parse_timestamp(record.fields["granted_on"]) == refused_at
        assert record.fields["consent_status"] == "Not Granted"
        # modifiedtime is left as Vtiger serves it (the record's snapshot does not move)
        assert record.fields["modifiedtime"] == server.crm.get(consent)["modifiedtime"]  # type: ignore[index]
