"""The console in a real headless Chromium (session 50, third pass).

- An address whose local part is not ASCII (``zoë@...``, RFC 6531) could not be looked up: the
  subject and audit searches were ``type="email"`` fields, which a browser refuses to send with
  it; and an IDN domain was sent as punycode (``xn--...``), which is not how the ledger holds it,
  so the audit search said no subject had the address. Both are text fields now.
- Disabling an account (its sessions end for good) and resetting another account's password (every
session of it ends) were one click on the Accounts page, beside the everyday *Save* of a role: a
mis-chosen select and the account's owner was thrown out. The page now asks; answering no sends
nothing. Changing only a role asks nothing.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from consentsync.ledger.schema import audit_entries
from consentsync.web.server import WebServer
from tests.conftest import Cli, proof
from tests.web.conftest import World
from tests.web.test_browser import browser as browser
from tests.web.test_browser import console as console
from tests.web.test_browser import follow, log_in
from tests.web.test_browser import pytestmark as pytestmark  # skipped without Chromium


def actions(world: World) -> list[str]:
    with world.ledger.engine.connect() as conn:
        rows = conn.execute(select(audit_entries.c.action, audit_entries.c.payload)).all()
    return [row.action for row in rows if json.loads(row.payload).get("actor") == "ada"]


def test_disabling_an_account_or_resetting_its_password_asks_first(
    console: WebServer, browser: Any, world: World
) -> None:
    page = browser.new_page()
    log_in(page, console.url, "ada", "/users")
    asked: list[str] = []

    def answer(reply: bool) -> None:
        def handler(dialog: Any) -> None:
            asked.append(dialog.message)
            if reply:
                dialog.accept()
            else:
                dialog.dismiss()

        page.once("dialog", handler)

    save_vic = "form[action='/users/vic'][data-confirm-field] button"
    # No: nothing is sent, vic stays active.
    page.select_option("form[action='/users/vic'] select[name=disabled]", "yes")
    answer(False)
    page.click(save_vic)
    page.wait_for_timeout(300)  # a dismissed confirm loads nothing; give a wrong submit time to show
    assert asked and "Disable vic?" in asked[-1]
    assert page.url.endswith("/users") and "user.disabled" not in actions(world)

    # A role change alone asks nothing.
    page.goto(console.url + "/users")
    page.select_option("form[action='/users/vic'] select[name=role]", "reviewer")
    before = len(asked)
    follow(page, save_vic)
    assert len(asked) == before and "user.role_changed" in actions(world)

    # Yes: vic is disabled.
    page.select_option("form[action='/users/vic'] select[name=disabled]", "yes")
    answer(True)
    follow(page, save_vic)
    assert "user.disabled" in actions(world)
    assert "disabled" in page.locator("tr", has_text="vic").first.inner_text()

    # Resetting another account's password: no sends nothing.
    page.fill("form[action='/users/rex'] input[name=password]", "rex-reset-password-55")
    answer(False)
    page.click("form[action='/users/rex'] input[name=password] >> xpath=../../button")
    page.wait_for_timeout(300)
    assert "Reset the password of rex?" in asked[-1]
    assert "user.password_changed" not in actions(world)


UNICODE_ADDRESS = "zoë.😀@exämple.com"  # a non-ASCII local part (4-byte UTF-8) and an IDN domain


def test_an_address_with_a_non_ascii_local_part_or_an_idn_domain_is_found(
    console: WebServer, browser: Any, world: World, cli: Cli
) -> None:
    cli.ok("ledger", "record", "--email", UNICODE_ADDRESS, "--purpose", "profiling", "--status",
           "granted", "--source", "web_form", *proof())  # fmt: skip
    page = browser.new_page()
    log_in(page, console.url, "vic", "/subjects")
    page.fill("input[name=email]", UNICODE_ADDRESS.upper())
    follow(page, "form.filters button")
    assert "/subjects/" in page.url and page.url.rstrip("/") != console.url + "/subjects"
    assert UNICODE_ADDRESS in page.locator("main").inner_text()

    page.goto(console.url + "/audit")
    page.fill("form.filters input[name=email]", "someone@exämple.com")  # nobody: said so
    follow(page, "form.filters button")
    assert "No subject in the ledger has" in page.locator("main").inner_text()
    page.fill("form.filters input[name=email]", UNICODE_ADDRESS)
    follow(page, "form.filters button")
    shown = page.locator("main").inner_text()
    assert "No subject in the ledger has" not in shown and "consent.recorded" in shown, shown
