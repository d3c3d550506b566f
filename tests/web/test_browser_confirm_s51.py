"""Destructive actions ask first, in a real headless Chromium (session 51).

*End sessions* on the Accounts page (the account is signed out everywhere, at once) and
rejecting an objection (its purpose is no longer suppressed, every CRM is told at the next run,
and a decision is final) were sent on one click, while disabling an account already asked. Both
ask now; answering no sends nothing. Upholding an objection asks nothing.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from consentsync.accounts import Accounts
from consentsync.web.server import WebServer
from tests.web.conftest import PASSWORDS, World
from tests.web.test_browser import browser as browser
from tests.web.test_browser import console as console
from tests.web.test_browser import follow, log_in
from tests.web.test_browser import pytestmark as pytestmark  # skipped without Chromium
from tests.web.test_browser_s50c import actions


def _answer(page: Any, reply: bool, asked: list[str]) -> None:
    def handler(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept() if reply else dialog.dismiss()

    page.once("dialog", handler)


def test_ending_sessions_and_rejecting_an_objection_ask_first(
    console: WebServer, browser: Any, world: World
) -> None:
    # rex is signed in elsewhere (another client): a session for the admin to end.
    login = urllib.request.Request(
        console.url + "/api/session",
        data=json.dumps({"name": "rex", "password": PASSWORDS["rex"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(login, timeout=10) as answer:
        assert answer.status == 200
    accounts = Accounts(world.ledger.engine)
    assert len(accounts.sessions("rex")) == 1
    page = browser.new_page()
    asked: list[str] = []

    log_in(page, console.url, "ada", "/users")
    _answer(page, False, asked)
    page.click("form[action='/users/rex/end-sessions'] button")
    page.wait_for_timeout(300)  # a dismissed confirm loads nothing; give a wrong submit time to show
    assert asked and "End every session of rex?" in asked[-1]
    assert page.url.endswith("/users") and "user.sessions_ended" not in actions(world)
    assert len(accounts.sessions("rex")) == 1

    # Rejecting: no sends nothing, the objection stays pending.
    page.goto(f"{console.url}/objections/{world.objection_id}")
    page.check("input[value=reject]")
    page.fill("textarea[name=reason]", "Compelling legitimate grounds (case 17)")
    _answer(page, False, asked)
    page.click("button:has-text('Record decision')")
    page.wait_for_timeout(300)
    assert "Reject this objection?" in asked[-1]
    assert "decided" not in page.url and "objection.decided" not in actions(world)
    pending = {o["id"] for o in world.ledger.list_objections(pending_only=True)}
    assert world.objection_id in pending

    # Upholding asks nothing (a dialog left unanswered would stop the navigation).
    before = len(asked)
    page.check("input[value=uphold]")
    follow(page, "button:has-text('Record decision')")
    assert len(asked) == before and "decided=1" in page.url
    assert "objection.decided" in actions(world)
