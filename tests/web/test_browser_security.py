"""The console's security points in a real headless Chromium (issue 16): a session copied to
another browser dies when its owner logs out, and when an admin ends it; a locked account is
unlocked by an admin's button; the password policy refuses a common password on the accounts
page; the API's description needs a login. (The client address for throttling cannot be set
from a browser on loopback: tests/web/test_sessions.py covers it over HTTP.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from consentsync import accounts
from consentsync.accounts import FREE_FAILURES
from consentsync.web.server import WebServer
from tests.web.conftest import PASSWORDS, World
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, LAPTOP, follow, log_in
from tests.web.test_browser import console as console
from tests.web.test_browser import pytestmark as pytestmark  # skipped without Chromium


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """A Chromium whose contexts are separate browsers (their own cookies)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def fresh(chromium: Any) -> Any:
    context = chromium.new_context(viewport=LAPTOP, timezone_id="Europe/Berlin")
    context.set_default_timeout(15_000)
    return context.new_page()


def copied(chromium: Any, page: Any) -> Any:
    """Another browser holding a copy of ``page``'s cookies (stolen, or a shared machine)."""
    other = fresh(chromium)
    other.context.add_cookies(page.context.cookies())
    return other


def test_sessions_end_on_logout_and_when_an_admin_ends_them(console: WebServer, chromium: Any) -> None:
    base = console.url
    owner = fresh(chromium)
    log_in(owner, base, "rex")
    thief = copied(chromium, owner)
    thief.goto(base + "/objections")
    assert "/login" not in thief.url  # the copy works while the session lives
    follow(owner, "form.who button")  # log out
    thief.goto(base + "/objections")
    assert "/login" in thief.url

    log_in(owner, base, "rex")
    admin = fresh(chromium)
    log_in(admin, base, "ada", "/users")
    admin.once("dialog", lambda dialog: dialog.accept())  # ending sessions asks first
    follow(admin, "form[action='/users/rex/end-sessions'] button")
    owner.goto(base + "/objections")
    assert "/login" in owner.url


def test_an_admin_unlocks_a_locked_account_with_a_button(
    console: WebServer, chromium: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first lock lasts a few seconds; a browser takes longer than that to reach the admin's
    # page, so the lock is made to last (the console runs in this process).
    monkeypatch.setattr(accounts, "BACKOFF_BASE", timedelta(minutes=5))
    base = console.url
    guesser = fresh(chromium)
    for attempt in range(FREE_FAILURES + 1):
        guesser.goto(base + "/login")
        guesser.fill("input[name=name]", "vic")
        guesser.fill("input[name=password]", f"wrong-guess-{attempt}")
        follow(guesser, "button[type=submit]")
    assert "try again" in guesser.locator("main").inner_text().lower()
    admin = fresh(chromium)
    log_in(admin, base, "ada", "/users")
    row = admin.locator("tr", has_text="vic")
    assert "locked" in row.inner_text() and "not locked" not in row.inner_text()
    follow(admin, "form[action='/users/vic/unlock'] button")
    assert "not locked" in admin.locator("tr", has_text="vic").inner_text()
    owner = fresh(chromium)
    log_in(owner, base, "vic")
    assert owner.locator("h1").inner_text() == "Overview"


def test_the_accounts_page_refuses_a_common_password_and_docs_need_a_login(
    console: WebServer, chromium: Any, world: World
) -> None:
    base = console.url
    stranger = fresh(chromium)
    stranger.goto(base + "/api/docs")
    assert "/login" in stranger.url
    admin = fresh(chromium)
    log_in(admin, base, "ada", "/users")
    admin.fill("form.stack input[name=name]", "olga")
    admin.select_option("form.stack select[name=role]", "viewer")
    admin.fill("form.stack input[name=password]", "password1234")
    follow(admin, "form.stack button")
    refusal = admin.locator("main").inner_text().lower()
    assert "common" in refusal, refusal
    admin.goto(base + "/users")
    assert "olga" not in admin.locator("table").first.inner_text()
    assert PASSWORDS["ada"] not in admin.content()
