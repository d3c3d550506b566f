"""The console's test world, on SQLite and PostgreSQL: a ledger synced once from the Salesforce
sandbox with one record that does not translate (so a run has a quarantined record), an objection
waiting for review, and one account per role."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from fastapi.testclient import TestClient

from consentsync import exit_codes
from consentsync.accounts import Accounts
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.ledger.service import Ledger
from consentsync.web.server import build
from tests.conftest import Cli
from tests.integration.test_cli_sync import add_odd_consent, connect_sandbox

PASSWORDS = {
    "ada": "ada-admin-password-1",
    "rex": "rex-reviewer-password-1",
    "vic": "vic-viewer-password-1",
}
ROLES = {"ada": "admin", "rex": "reviewer", "vic": "viewer"}


@dataclass
class World:
    config_path: Path
    ledger: Ledger
    sandbox: SalesforceSandbox
    run_id: str
    odd_record: str
    objection_id: int
    objector: str


TEST_HOSTS = "web:\n  allowed_hosts: [testserver, localhost, 127.0.0.1]\n"


@pytest.fixture
def config_path(config_path: Path) -> Path:
    """The starter config, answering to TestClient's host name (``testserver``) too."""
    with config_path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + TEST_HOSTS)
    return config_path


ORG_SIZE = 40  # contacts in the seeded org: enough for duplicates, leads and paging, and quick


@pytest.fixture
def sf(cli: Cli, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(ORG_SIZE, seed=7)
        connect_sandbox(sandbox, config_path, monkeypatch)
        yield sandbox


def synced(cli: Cli, *codes: int) -> Any:
    """`sync sf --json`'s report; the run ends with one of ``codes`` (by default done, or done
    with records quarantined: the world's odd consent record is quarantined at every read)."""
    result = cli("sync", "sf", "--json")
    assert result.exit_code in (codes or (exit_codes.OK, exit_codes.QUARANTINED)), result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def world(cli: Cli, sf: SalesforceSandbox, config_path: Path) -> Iterator[World]:
    odd = add_odd_consent(sf)
    report = synced(cli, exit_codes.QUARANTINED)
    assert report["status"] == "succeeded", report["error"]
    assert report["counts"]["quarantined"] >= 1
    contact = next(r for r in sf.org.records("Contact") if r.get("Email"))
    objector = str(contact["Email"]).lower()
    raised = cli.json("objection", "raise", "--email", objector, "--purpose", "profiling")
    assert raised["status"] == "pending"
    ledger = open_ledger(load_config(config_path))
    accounts = Accounts(ledger.engine)
    for name, role in ROLES.items():
        accounts.add(name, role, PASSWORDS[name], actor="test")
    yield World(config_path, ledger, sf, report["run_id"], odd, raised["id"], objector)
    ledger.engine.dispose()


@pytest.fixture
def app(world: World) -> Any:
    return build(load_config(world.config_path), world.ledger)


def login_csrf(client: TestClient) -> str:
    page = client.get("/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def page_csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def log_in(client: TestClient, name: str) -> TestClient:
    response = client.post(
        "/login",
        data={"name": name, "password": PASSWORDS[name], "csrf_token": login_csrf(client), "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return client


@pytest.fixture
def reviewer(app: Any) -> TestClient:
    """The console signed in as rex, the reviewer (decides objections, retries records)."""
    return log_in(TestClient(app), "rex")


@pytest.fixture
def viewer(app: Any) -> TestClient:
    """The console signed in as vic, the viewer (reads every page, changes nothing)."""
    return log_in(TestClient(app), "vic")


def api_login(client: TestClient, name: str) -> str:
    response = client.post("/api/session", json={"name": name, "password": PASSWORDS[name]})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])
