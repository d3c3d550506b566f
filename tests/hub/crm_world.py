"""A hub beside a Salesforce sandbox that the real sync engine reads (``cli sync sf``), with a
real SMTP inbox: for tests of what a CRM's change of a person's address means to the hub."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.hub import keys, notices
from consentsync.hub.api import create_app
from consentsync.hub.capture import Hub
from consentsync.ledger.schema import subjects
from consentsync.ledger.service import Ledger
from tests.conftest import Cli
from tests.hub.conftest import NEWSLETTER_NOTICE, NOTICE_IN_EFFECT, Inbox
from tests.hub.people_world import mounted
from tests.integration.test_cli_sync import connect_sandbox

PURPOSE, CHANNEL = "email_marketing", "email"  # the Contact's Email Opt Out


@dataclass
class CrmHub:
    cli: Cli
    sandbox: SalesforceSandbox
    ledger: Ledger
    hub: Hub
    client: TestClient
    pages: TestClient
    inbox: Inbox
    secret: str

    def capture(self, email: str, status: str) -> dict[str, Any]:
        body = {"email": email, "purpose": PURPOSE, "channel": CHANNEL, "status": status}
        if status == "granted":
            body |= {"notice_version": "2026-05", "evidence_ref": "form:signup"}
        response = self.client.post(
            "/consents", json=body, headers={"Authorization": f"Bearer {self.secret}"}
        )
        assert response.status_code == 201, response.text
        (result,) = response.json()["results"]
        return dict(result)

    def opted_out(self, contact: str) -> bool:
        self.cli.ok("sync", "sf")
        return bool(self.sandbox.org.get(contact)["HasOptedOutOfEmail"])

    def state(self, email: str) -> tuple[str | None, bool, str]:
        uid, state = self.ledger.decision_for(email, PURPOSE, CHANNEL)
        return uid, state.suppressed, state.rule

    def uid(self, email: str) -> str:
        uid = self.state(email)[0]
        assert uid is not None
        return uid

    def people(self) -> int:
        with self.ledger.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(subjects)).scalar_one())

    def events(self, uid: str) -> int:
        return len(self.ledger.subject_view(self.ledger.email_of(uid) or "")["history"])

    def recipients(self) -> list[str]:
        return [str(message["To"]) for message in self.inbox.messages]

    def mailed(self, path: str, to: str) -> str:
        """The path of the newest link to ``path`` in a mail to ``to``."""
        for index in range(len(self.inbox.messages) - 1, -1, -1):
            if self.inbox.messages[index]["To"] == to and path in self.inbox.text(index):
                return urlsplit(self.inbox.link(path, index)).path
        raise AssertionError(f"no mail to {to} with a {path} link")


@contextmanager
def crm_hub(
    cli: Cli,
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inbox: tuple[Inbox, int],
    *,
    double_opt_in: bool = False,
) -> Iterator[CrmHub]:
    """The world of a test; ``double_opt_in``: PURPOSE asks for it (a sign-up's link mailed)."""
    handler, port = inbox
    with SalesforceSandbox() as sandbox:
        connect_sandbox(sandbox, config_path, monkeypatch)
        data = yaml.safe_load(config_path.read_text())
        for purpose in data["purposes"]:
            if purpose["key"] == PURPOSE and double_opt_in:
                purpose["double_opt_in"] = True
        data["hub"] = {
            "public_url": "https://prefs.example.test",
            "smtp": {"host": "127.0.0.1", "port": port, "sender": "privacy@example.test"},
        }
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        config = load_config(config_path)
        ledger = open_ledger(config, migrate=True)
        notices.add(ledger, PURPOSE, "2026-05", NEWSLETTER_NOTICE, in_effect_from=NOTICE_IN_EFFECT)
        _key, secret = keys.create(ledger, "website", source="web_form", purposes=["*"], actions=["*"])
        hub = Hub(config, ledger)
        with TestClient(create_app(hub)) as client, TestClient(mounted(hub)) as pages:
            yield CrmHub(cli, sandbox, ledger, hub, client, pages, handler, secret)
        ledger.engine.dispose()
