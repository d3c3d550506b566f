"""The integration admin's walk, session 51c: a connector's address in plain ``http://`` (a
Salesforce ``login_url: http://login.salesforce.com``, a Vtiger install's ``url``) was accepted,
and the client secret, password or signed JWT, the access key's digest and then every bearer
token and person's consent would cross the network in clear. Every connector's address is now
``https://``; ``http://`` only to a loopback host (localhost, 127.0.0.0/8, ::1: a sandbox, a
test server), where nothing crosses a network. Refused when the config is read: one line naming
the file, line and setting and what is accepted, exit 2, never quoting the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from consentsync_dynamics.settings import DynamicsSettings
from consentsync_hubspot.settings import HubSpotSettings
from consentsync_salesforce.sandbox.harness import MAPPINGS as SALESFORCE_MAPPINGS
from consentsync_salesforce.settings import SalesforceSettings
from consentsync_superoffice.settings import SuperOfficeSettings
from consentsync_vtiger.settings import VtigerSettings
from pydantic import BaseModel, ValidationError

from consentsync import exit_codes
from consentsync.cli import main
from consentsync.config import write_starter
from tests.conftest import one_line_error

TOKEN = {"auth": "token", "access_token": "t0ken-for-tests", "instance_url": "https://127.0.0.1:1"}
REQUIRED: dict[type[BaseModel], dict[str, Any]] = {
    SalesforceSettings: TOKEN,
    HubSpotSettings: {"access_token": "t0ken-for-tests"},
    SuperOfficeSettings: {
        "base_url": "https://sod.superoffice.com/Cust1",
        "auth": "token",
        "access_token": "t",
    },
    VtigerSettings: {"url": "https://crm.example.com/vtigercrm", "username": "admin", "access_key": "k"},
    DynamicsSettings: {
        "environment_url": "https://org.crm4.dynamics.com",
        "token_url": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
        "client_id": "c",
        "client_secret": "s",
    },
}
# Every setting that names where a connector sends its credentials and people's data.
ADDRESSES = [
    (SalesforceSettings, "login_url"),
    (SalesforceSettings, "instance_url"),
    (HubSpotSettings, "api_url"),
    (SuperOfficeSettings, "base_url"),
    (SuperOfficeSettings, "token_url"),
    (VtigerSettings, "url"),
    (DynamicsSettings, "environment_url"),
    (DynamicsSettings, "token_url"),
]
IN_CLEAR = [
    "http://login.salesforce.com",
    "HTTP://user:Pw12345secret@crm.example.com/vtigercrm",
    "http://10.0.0.5:8080",  # a private network is still a network
    "http://0.0.0.0:8080",
    "http://127.0.0.1.nip.io",  # a name that only begins like a loopback address
    "http://localhost.attacker.example",
    "http://[2001:db8::1]:8080",
]
LOOPBACK = ["http://127.0.0.1:18799", "http://127.4.5.6", "http://localhost:8080", "http://[::1]:9000"]


@pytest.mark.parametrize(("model", "key"), ADDRESSES)
@pytest.mark.parametrize("value", IN_CLEAR)
def test_an_address_in_plain_http_to_another_host_is_refused_saying_what_is_accepted(
    model: type[BaseModel], key: str, value: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate({**REQUIRED[model], key: value})
    (error,) = raised.value.errors()
    assert error["loc"] == (key,)
    assert "https://" in error["msg"]
    if model is not DynamicsSettings:  # Dataverse: https:// only, loopback or not
        assert "http:// only to a loopback host" in error["msg"]
    assert value not in error["msg"] and "Pw12345secret" not in error["msg"]


@pytest.mark.parametrize(("model", "key"), [pair for pair in ADDRESSES if pair[0] is not DynamicsSettings])
@pytest.mark.parametrize("value", LOOPBACK)
def test_plain_http_to_a_loopback_host_is_still_taken_for_sandboxes(
    model: type[BaseModel], key: str, value: str
) -> None:
    settings = model.model_validate({**REQUIRED[model], key: value})
    assert getattr(settings, key) == value


@pytest.mark.parametrize(("model", "key"), ADDRESSES)
def test_https_to_any_host_is_taken(model: type[BaseModel], key: str) -> None:
    settings = model.model_validate({**REQUIRED[model], key: "https://crm.example.com/x/"})
    assert getattr(settings, key) in ("https://crm.example.com/x/", "https://crm.example.com/x")


# -- as the admin meets it: the command refuses the config ----------------------------------------


def _run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "consentsync.yaml"
    write_starter(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    assert _run(path, "init").exit_code == 0
    return path


def test_a_salesforce_login_url_in_plain_http_stops_the_sync_before_any_call(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_S51C_SECRET", "not-shown-anywhere-0123")
    data = yaml.safe_load(config.read_text())
    settings = {
        "login_url": "http://login.salesforce.com",
        "auth": "client_credentials",
        "client_id": "cid",
        "client_secret": "${SF_S51C_SECRET}",
    }
    mapping = str(SALESFORCE_MAPPINGS / "contact.yaml")
    data["connectors"] = [{"name": "sf", "vendor": "salesforce", "mappings": [mapping], "settings": settings}]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "login_url:" in text)
    message = one_line_error(
        _run(config, "sync", "sf"),
        exit_codes.CONFIG,
        f"{config}:{line}: connectors[0].settings.login_url",
        "https://",
        "http:// only to a loopback host",
    )
    assert "login.salesforce.com" not in message.split("such as")[0] and "not-shown" not in message
