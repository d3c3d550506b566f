"""The hub's fixtures: a configuration with a double opt-in purpose and a GPC purpose, a real
SMTP server (aiosmtpd, in this process, on a port of its own) that keeps what it receives, and
the capture API served by FastAPI's test client."""

from __future__ import annotations

import email
import email.policy
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.hub import keys, notices
from consentsync.hub.api import create_app
from consentsync.hub.capture import Hub
from consentsync.ledger.service import Ledger
from tests.conftest import Clock

# A real SMTP server for the double opt-in mails (the test extra installs it).
Controller = pytest.importorskip(
    "aiosmtpd.controller", reason="aiosmtpd (the test extra) is not installed"
).Controller

NEWSLETTER_NOTICE = "We send our newsletter about once a month. Unsubscribe at any time."
# Since when the notices the worlds register were shown: long before the times tests date their
# grants at (a grant dated before its notice was in effect is refused, hub/notices.py).
NOTICE_IN_EFFECT = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass
class Inbox:
    """What the SMTP server received."""

    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"

    def text(self, index: int = -1) -> str:
        part = self.messages[index].get_body(("plain",))
        assert part is not None, "the mail has no text part"
        return str(part.get_content())

    def link(self, path: str, index: int = -1) -> str:
        """The link to ``path`` in a mail, without its query (``?lang=``: the page's language)."""
        found = re.search(r"https?://\S+" + re.escape(path) + r"[^\s?]+", self.text(index))
        assert found, f"no {path} link in: {self.text(index)}"
        return found.group(0)

    def full_link(self, path: str, index: int = -1) -> str:
        """The link to ``path`` in a mail as it was sent, with its query."""
        found = re.search(r"https?://\S+" + re.escape(path) + r"\S+", self.text(index))
        assert found, f"no {path} link in: {self.text(index)}"
        return found.group(0)


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    # A free port found first: aiosmtpd's start() connects to the port it was given to check
    # that the server is up, so it cannot be 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def hub_config(config_path: Path, smtp_port: int) -> None:
    """The starter config, plus: a newsletter purpose (consent, no double opt-in), double opt-in
    on email marketing, GPC opting out of profiling, and the local SMTP server."""
    data = yaml.safe_load(config_path.read_text())
    for purpose in data["purposes"]:
        if purpose["key"] == "email_marketing":
            purpose["double_opt_in"] = True
            purpose["description"] = "Offers and news by email, about twice a month."
    data["purposes"].append(
        {"key": "newsletter", "name": "Newsletter", "default_basis": "consent", "channels": ["email"],
         "description": "Our monthly newsletter.", "validity_days": 365, "renewal_days_before": 30}
    )  # fmt: skip
    data["hub"] = {
        "public_url": "https://prefs.example.test",
        "gpc_purposes": ["profiling"],
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "sender": "privacy@example.test"},
        "branding": {"name": "Globex privacy"},
    }
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def info_logs() -> None:
    """Log lines at INFO reach the handlers and ``structlog.testing.capture_logs``: another test
    in the same worker may have configured a higher level, and the level filters a line before
    any processor (capture_logs' included) sees it."""
    from consentsync.logs import configure

    configure("INFO")


def in_german(ledger: Ledger, purpose: str) -> None:
    """A German text of the worlds' notice version, in effect as long as the English one: a
    capture in German needs one (a grant in a language its notice has no text in is refused)."""
    german = "Wir senden unseren Newsletter etwa einmal im Monat. Abbestellen jederzeit."
    notices.add(ledger, purpose, "2026-05", german, language="de", in_effect_from=NOTICE_IN_EFFECT)


@dataclass
class HubWorld:
    hub: Hub
    ledger: Ledger
    client: TestClient
    inbox: Inbox
    clock: Clock
    secret: str

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.secret}"}

    def post(self, path: str, body: Any, secret: str | None = None, **headers: str) -> Any:
        return self.client.post(path, json=body, headers={**self.auth(secret), **headers})


@pytest.fixture
def world(config_path: Path, clock: Clock, inbox: tuple[Inbox, int]) -> Iterator[HubWorld]:
    handler, port = inbox
    hub_config(config_path, port)
    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    ledger.clock = clock
    ledger.sync_purposes()
    for purpose in ("newsletter", "email_marketing", "profiling"):
        notices.add(ledger, purpose, "2026-05", NEWSLETTER_NOTICE, in_effect_from=NOTICE_IN_EFFECT)
    _key, secret = keys.create(ledger, "website", source="web_form", purposes=["*"], actions=["*"])
    hub = Hub(config, ledger)
    with TestClient(create_app(hub)) as client:
        yield HubWorld(hub, ledger, client, handler, clock, secret)
    ledger.engine.dispose()
