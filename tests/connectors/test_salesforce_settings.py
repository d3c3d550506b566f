"""Settings refused when the config is read, not at the first call: a Salesforce ``api_version``
that is not one ("v59.0", "59", "abc" passed, then every call answered 404, said as an object that
does not exist), and every connector's free-form URL (login, API, token endpoint) that is not an
http(s) URL, said without quoting the value (a URL may carry a user and password)."""

from __future__ import annotations

from typing import Any

import pytest
from consentsync_dynamics.settings import DynamicsSettings
from consentsync_hubspot.settings import HubSpotSettings
from consentsync_salesforce.settings import SalesforceSettings
from consentsync_superoffice.settings import SuperOfficeSettings
from pydantic import BaseModel, ValidationError

TOKEN = {"auth": "token", "access_token": "t0ken-for-tests", "instance_url": "https://127.0.0.1:1"}


def test_an_api_version_as_salesforce_writes_it_is_taken() -> None:
    # YAML reads 59.0 unquoted as a number: the same version.
    for version in ("59.0", 59.0, "42.0", "62.0"):
        settings = SalesforceSettings.model_validate({**TOKEN, "api_version": version})
        assert settings.api_version == str(version)


@pytest.mark.parametrize("version", ["v59.0", "59", 59, "abc", "59.1", "", "41.0", "059.0", True])
def test_anything_else_is_refused_saying_what_is_accepted(version: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        SalesforceSettings.model_validate({**TOKEN, "api_version": version})
    (error,) = raised.value.errors()
    assert error["loc"] == ("api_version",)
    assert 'a Salesforce API version such as "59.0"' in error["msg"] and "42.0 or later" in error["msg"]


SECRET_URL = "ftp://user:Pw12345secret@crm.example.com"
NOT_URLS = ["login.salesforce.com", "https//login.salesforce.com", "https:///x", SECRET_URL, "https://h:0"]
REQUIRED: dict[type[BaseModel], dict[str, Any]] = {
    SalesforceSettings: TOKEN,
    HubSpotSettings: {"access_token": "t0ken-for-tests"},
    SuperOfficeSettings: {
        "base_url": "https://sod.superoffice.com/Cust1",
        "auth": "token",
        "access_token": "t",
    },
    DynamicsSettings: {
        "environment_url": "https://org.crm4.dynamics.com",
        "token_url": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
        "client_id": "c",
        "client_secret": "s",
    },
}


@pytest.mark.parametrize(
    ("model", "key"),
    [
        (SalesforceSettings, "login_url"),
        (SalesforceSettings, "instance_url"),
        (HubSpotSettings, "api_url"),
        (SuperOfficeSettings, "base_url"),
        (SuperOfficeSettings, "token_url"),
        (DynamicsSettings, "environment_url"),
        (DynamicsSettings, "token_url"),
    ],
)
@pytest.mark.parametrize("value", NOT_URLS)
def test_a_url_setting_that_is_not_an_http_url_is_refused_without_quoting_it(
    model: type[BaseModel], key: str, value: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate({**REQUIRED[model], key: value})
    (error,) = raised.value.errors()
    assert error["loc"] == (key,)
    assert "expected an" in error["msg"] and "https://" in error["msg"]
    assert value not in error["msg"] and "Pw12345secret" not in error["msg"]


def test_dataverse_wants_https_and_says_so_without_the_value() -> None:
    plain = "http://user:Pw12345secret@org.crm4.dynamics.com"
    with pytest.raises(ValidationError) as raised:
        DynamicsSettings.model_validate({**REQUIRED[DynamicsSettings], "environment_url": plain})
    (error,) = raised.value.errors()
    assert "expected an https:// URL" in error["msg"] and "Pw12345secret" not in error["msg"]


def test_a_url_with_a_user_and_password_is_still_a_url_and_refused_only_for_its_scheme() -> None:
    # Hidden wherever it is shown (sdk.errors.scrub), not refused.
    settings = SalesforceSettings.model_validate({**TOKEN, "login_url": "https://u:p@127.0.0.1:18799"})
    assert settings.login_url == "https://u:p@127.0.0.1:18799"
    with pytest.raises(ValidationError) as raised:
        SalesforceSettings.model_validate({**TOKEN, "login_url": "ftp://u:p@127.0.0.1:18799"})
    (error,) = raised.value.errors()
    assert "u:p@" not in error["msg"] and "expected an http:// or https:// URL" in error["msg"]


@pytest.mark.parametrize(
    ("model", "key"),
    [
        (SalesforceSettings, "login_url"),
        (HubSpotSettings, "api_url"),
        (SuperOfficeSettings, "token_url"),
        (DynamicsSettings, "environment_url"),
    ],
)
@pytest.mark.parametrize(
    "value", ["https://crm.example.com/?token=Pw12345secret", "https://crm.example.com/x#Pw12345secret"]
)
def test_a_url_setting_with_a_query_or_fragment_is_refused_without_quoting_it(
    model: type[BaseModel], key: str, value: str
) -> None:
    # The connector adds its paths to the address: after a query they went into it
    # ("?token=.../services/oauth2/token"), and the query's secret was shown in every error.
    with pytest.raises(ValidationError) as raised:
        model.model_validate({**REQUIRED[model], key: value})
    (error,) = raised.value.errors()
    assert error["loc"] == (key,)
    assert "without a query or fragment" in error["msg"], error["msg"]
    assert "Pw12345secret" not in error["msg"]
