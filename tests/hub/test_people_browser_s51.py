"""Session 51's walk in a real headless Chromium: a person asked for consent reads the notice on
the page that asks (and it passes axe-core's WCAG 2 A/AA checks); a person whose page is open
while a new notice is registered agrees, and what is recorded is the text they read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from consentsync.hub import notices
from consentsync.hub.outreach import Outreacher
from consentsync.web.server import WebServer
from tests.hub.conftest import NEWSLETTER_NOTICE, HubWorld
from tests.hub.people_world import EMAIL, mailed, seed, served_pages, token_of
from tests.hub.test_outreach import someone
from tests.hub.test_people_browser import accessible, status_text
from tests.web import test_browser as console_browser
from tests.web.test_browser import CHROMIUM, Shots, follow

pytest.importorskip("axe_playwright_python.sync_playwright", reason="axe-playwright-python is not installed")

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
    pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True),
]

browser = console_browser.browser
NEW_NOTICE = "From June we also share your address with our delivery partner, Acme Post Ltd."


@pytest.fixture
def site(world: HubWorld) -> Iterator[WebServer]:
    yield from served_pages(world, WebServer)


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path / "screenshots")


def test_a_consent_request_is_read_before_it_is_agreed_to_in_a_browser(
    world: HubWorld, site: WebServer, browser: Any, shots: Shots
) -> None:
    someone(world, EMAIL)
    world.inbox.messages.clear()
    assert Outreacher(world.hub, sleep=lambda _s: None).request_consent("newsletter").sent == 1
    page = browser.new_page()
    page.goto(site.url + urlsplit(world.inbox.link("/p/confirm/")).path)
    assert NEWSLETTER_NOTICE in page.locator("main .notice").inner_text()
    assert "Notice version 2026-05" in page.locator("main .notice").inner_text()
    accessible(page, shots, "request-with-notice")
    follow(page, "main form button[type=submit]")
    assert "Thank you: you agreed to Newsletter (Email)." in status_text(page)
    history = world.ledger.subject_view(EMAIL)["history"]
    assert (history[-1]["status"], history[-1]["notice_version"]) == ("granted", "2026-05")


def test_a_notice_registered_while_the_page_is_open_is_shown_not_recorded_unseen(
    world: HubWorld, site: WebServer, browser: Any, shots: Shots
) -> None:
    token = token_of(world, seed(world))
    page = browser.new_page()
    page.goto(f"{site.url}/p/preferences/{token}")
    world.clock.advance(minutes=1)
    follow(page, "#purpose-newsletter ~ ul button[value=withdraw]")
    assert "I agree" in page.locator("#purpose-newsletter ~ ul").inner_text()
    world.clock.advance(minutes=1)
    notices.add(world.ledger, "newsletter", "2026-06", NEW_NOTICE)  # ops, while the page is open
    world.clock.advance(minutes=1)
    follow(page, "#purpose-newsletter ~ ul button[value=grant]")
    assert "changed while your page was open" in status_text(page)
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].status.value == "withdrawn"
    assert NEW_NOTICE in page.locator("#purpose-newsletter ~ .notice").inner_text()
    accessible(page, shots, "notice-changed")
    world.clock.advance(minutes=1)
    follow(page, "#purpose-newsletter ~ ul button[value=grant]")
    # Over the withdrawal: recorded once the mailed link is confirmed (docs/hub.md).
    assert "We sent you a mail" in status_text(page)
    page.goto(site.url + mailed(world, "/p/confirm/"))
    follow(page, "main form button")
    state = world.ledger.subject_view(EMAIL)["history"][-1]
    assert (state["status"], state["notice_version"]) == ("granted", "2026-06")
