"""SuperOffice Online serves a tenant's API only on the cluster it runs on now, and moves it ("Check
tenant status": the endpoint "will change routinely to balance the load"; since 2023-11-17 a call
to the wrong public endpoint answers 421 "Wrong subdomain used to access tenant";
online.superoffice.com is for authentication only). The connector finds the tenant's endpoint
from its state API (or, where that cannot be asked, the id_token's webapi_url claim), finds it
again on a 421 and makes the call once more there, and reports a tenant that is not running as a
passing failure. An onsite base_url is used as it is."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from consentsync_superoffice import SuperOfficeConnector
from consentsync_superoffice.connector import TenantUnavailable
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from consentsync_superoffice.settings import SuperOfficeSettings
from pydantic import ValidationError

from consentsync.exit_codes import CONFIG, UNAVAILABLE, for_connector_error
from consentsync.sdk import BudgetExhausted, ConnectorError, Cursor, Fault, RecordUpdate
from tests.sandbox.serving import serve_seeded

FIELDS = ["Email", "LegalBase_EMARKETING", "LegalBase_STORE"]


@pytest.fixture
def so() -> Iterator[SuperOfficeSandbox]:
    yield from serve_seeded(SuperOfficeSandbox(), lambda server: server.tenant.seed(30, seed=64))


def online(so: SuperOfficeSandbox, **extra: Any) -> SuperOfficeConnector:
    """A connector configured as an Online tenant is: its Online address and state API."""
    settings = {
        "base_url": so.online_url,
        "state_url": so.state_url,
        "auth": "token",
        "access_token": so.issue_token(),
        "ca_bundle": str(so.ca_cert_path),
        "max_attempts": 2,
        **extra,
    }
    return SuperOfficeConnector("so-online", settings)


def read_all(connector: SuperOfficeConnector) -> list[str]:
    records = connector.read_changes("Person", FIELDS, Cursor(), dt.datetime.now(dt.UTC))
    return [record.record_id for record in records]


def test_the_online_address_answers_421_and_the_tenant_is_found_from_its_state_api(
    so: SuperOfficeSandbox,
) -> None:
    # The sandbox as Online is: the tenant's Online address is the authentication host's.
    response = so.requests_session().get(
        f"{so.online_url}/api/v1/Person/1", headers={"Authorization": f"Bearer {so.issue_token()}"}
    )
    assert response.status_code == 421 and "Wrong subdomain" in response.text
    connector = online(so)
    so.reset_counters()
    assert len(read_all(connector)) == 30
    assert so.calls["state"] == 1, "the state API is asked once, before the first call"
    assert so.calls["misdirected"] == 0, "a call went to the Online address"
    assert connector.usage.per_endpoint["state"] == 1


def test_a_tenant_moved_mid_run_is_found_again_and_the_call_made_once_more_there(
    so: SuperOfficeSandbox,
) -> None:
    connector = online(so)
    connector.check()
    person = sorted(so.tenant.persons)[0]
    so.move_tenant("online7")
    so.reset_counters()
    [result] = connector.write([RecordUpdate("Person", str(person), {"LegalBase_EMARKETING": "WITHDRAWN"})])
    assert result.ok, result
    row = so.tenant.consent(person, "EMARKETING")
    assert row is not None and row.legal_base.key == "WITHDRAWN"
    assert (so.calls["misdirected"], so.calls["state"], so.calls["set_consent"]) == (1, 1, 1)
    # Every later call goes to the new endpoint straight away.
    so.reset_counters()
    assert len(read_all(connector)) == 30
    assert so.calls["misdirected"] == 0 and so.calls["state"] == 0


def test_a_read_goes_on_across_a_move(so: SuperOfficeSandbox) -> None:
    """Moved between two pages of a read: the read goes on at the new endpoint, nothing lost."""
    connector = online(so, page_size=5)
    moved: list[str] = []

    def move(_query: Any) -> None:
        if not moved:
            moved.append("online2")
            so.move_tenant("online2")

    so.after_archive_page = move
    assert sorted(map(int, read_all(connector))) == sorted(so.tenant.persons)
    assert so.calls["misdirected"] == 1


def test_the_retry_after_a_move_is_counted_in_the_run_budget(so: SuperOfficeSandbox) -> None:
    connector = online(so, budget={"per_run": 3})
    connector.check()  # the state API and the purposes: two calls
    so.move_tenant("online9")
    with pytest.raises(BudgetExhausted):
        connector.check()  # 421 (3rd call), then the state API would be the 4th


def test_a_configured_endpoint_the_tenant_left_fails_naming_the_online_address(
    so: SuperOfficeSandbox,
) -> None:
    """Without the state API (base_url taken as it is, an onsite installation's way), a 421 is a
    configuration problem whose message says what to configure."""
    settings = {
        "base_url": so.tenant_url,
        "auth": "token",
        "access_token": so.issue_token(),
        "ca_bundle": str(so.ca_cert_path),
    }
    connector = SuperOfficeConnector("so-fixed", settings)
    connector.check()
    so.move_tenant("online3")
    with pytest.raises(ConnectorError) as raised:
        connector.check()
    error = raised.value
    assert error.rule.status == 421 and error.rule.fault is Fault.CONFIG
    assert "https://online.superoffice.com/CustNNNNN" in str(error)
    assert so.calls["state"] == 0


@pytest.mark.parametrize("state", ["OfflineMaintenance", "Provisioning", "Unknown"])
def test_a_tenant_not_running_is_a_passing_failure_with_a_clear_message(
    so: SuperOfficeSandbox, state: str
) -> None:
    so.tenant_state = state
    connector = online(so)
    so.reset_counters()
    with pytest.raises(TenantUnavailable) as raised:
        connector.check()
    error = raised.value
    assert error.rule.fault is Fault.TRANSIENT and for_connector_error(error.rule) == UNAVAILABLE
    assert "not running" in str(error) and state in str(error)
    assert so.calls["state"] == 1 and so.calls["archive"] == 0, "the tenant's API was called"


def test_a_suspended_tenant_needs_a_person(so: SuperOfficeSandbox) -> None:
    so.tenant_state = "Suspended"
    with pytest.raises(TenantUnavailable) as raised:
        online(so).check()
    assert raised.value.rule.fault is Fault.CONFIG and for_connector_error(raised.value.rule) == CONFIG


def test_a_tenant_offline_stops_a_write_rather_than_failing_its_records(so: SuperOfficeSandbox) -> None:
    """Found again after a 421 while the tenant is offline: the run stops, no record is answered
    as failed."""
    connector = online(so)
    connector.check()
    so.move_tenant("online4")
    so.tenant_state = "OfflineMaintenance"
    person = sorted(so.tenant.persons)[0]
    with pytest.raises(TenantUnavailable):
        connector.write([RecordUpdate("Person", str(person), {"LegalBase_EMARKETING": "WITHDRAWN"})])


def test_the_id_token_webapi_url_is_taken_where_the_state_api_cannot_be_asked(
    so: SuperOfficeSandbox,
) -> None:
    settings = {**so.online_settings(), "max_attempts": 1}
    so.faults.update(error_rate=1.0, error_status=503, error_kinds=["state"])
    connector = SuperOfficeConnector("so-claim", settings)
    assert len(read_all(connector)) == 30
    assert so.calls["token"] == 1 and so.calls["misdirected"] == 0
    # With a fixed access token there is no id_token: the run stops, as a passing failure.
    fixed = online(so, max_attempts=1)
    with pytest.raises(TenantUnavailable) as raised:
        fixed.check()
    assert raised.value.rule.fault is Fault.TRANSIENT


def test_an_endpoint_off_the_state_apis_domain_is_refused() -> None:
    connector = SuperOfficeConnector(
        "so-unit",
        {"base_url": "https://online.superoffice.com/Cust1", "auth": "token", "access_token": "t" * 20},
    )
    running = {"State": "Running", "IsRunning": True, "ValidUntil": "2020-10-05T09:52:01.9342965Z"}
    root, until = connector._running_root({**running, "Endpoint": "https://online3.superoffice.com/Cust1"})
    assert root == "https://online3.superoffice.com/Cust1" and until is not None
    root, _ = connector._running_root({**running, "Api": "https://online4.superoffice.com/Cust1/api"})
    assert root == "https://online4.superoffice.com/Cust1"
    for elsewhere in (
        "https://online3.superoffice.com.evil.test/Cust1",
        "http://online3.superoffice.com/Cust1",
    ):
        with pytest.raises(TenantUnavailable) as raised:
            connector._running_root({**running, "Endpoint": elsewhere})
        assert raised.value.rule.fault is Fault.CONFIG


def test_online_and_onsite_base_urls() -> None:
    token = {"auth": "token", "access_token": "t" * 20}
    for base in (
        "https://online.superoffice.com/Cust12345",
        "https://online3.superoffice.com/Cust12345/",
        "https://ONLINE.superoffice.com/Cust12345/api/v1",
    ):
        settings = SuperOfficeSettings.model_validate({"base_url": base, **token})
        assert settings.state_url == "https://online.superoffice.com/api/state/Cust12345", base
        assert settings.online
    sod = SuperOfficeSettings.model_validate({"base_url": "https://sod2.superoffice.com/Cust1", **token})
    assert sod.state_url == "https://sod.superoffice.com/api/state/Cust1"
    onsite = SuperOfficeSettings.model_validate({"base_url": "https://crm.example.com/SuperOffice", **token})
    assert onsite.state_url is None and not onsite.online
    with pytest.raises(ValidationError, match="names the tenant"):
        SuperOfficeSettings.model_validate({"base_url": "https://online.superoffice.com", **token})
