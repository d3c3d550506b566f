"""Session 65 regulatory finding, in a real headless Chromium (as test_people_browser.py): a person
whose consent to email marketing was granted objects to direct marketing (Art. 21(2), raised by ops
from their letter). Their page showed "Stopped for you" in the green of a yes, with only "Withdraw
consent": nothing let them give the new consent that alone lifts the objection (Art. 21(3)). Now
the state reads as a no, "I agree" mails a confirmation link, and following it lifts the objection
for that purpose and channel. The pages pass axe-core's WCAG 2 A/AA rules on the way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consentsync.domain import ConsentStatus
from consentsync.web.server import WebServer
from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, mailed, served_pages
from tests.hub.test_people_browser import accessible, status_text
from tests.hub.test_s65_preferences_after_objection import _subscriber
from tests.web import test_browser as console_browser
from tests.web.test_browser import CHROMIUM, Shots, follow

pytest.importorskip(
    "axe_playwright_python.sync_playwright", reason="axe-playwright-python (the test extra) is not installed"
)

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does) to run them",
    ),
    pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True),
]

browser = console_browser.browser  # Chromium with a fresh profile for every test
MARKETING = "#purpose-email_marketing ~ ul"


@pytest.fixture
def site(world: HubWorld) -> Iterator[WebServer]:
    yield from served_pages(world, WebServer)


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path / "screenshots")


def test_a_person_who_objected_agrees_again_in_a_browser(
    world: HubWorld, site: WebServer, browser: Any, shots: Shots
) -> None:
    token = _subscriber(world)
    world.clock.advance(minutes=5)
    assert world.ledger.raise_objection(EMAIL, "email_marketing")["status"] == "upheld"
    page = browser.new_page()
    page.goto(f"{site.url}/p/preferences/{token}")
    preferences = page.url
    value = page.locator(f"{MARKETING} .value")
    assert value.inner_text() == "Stopped for you"
    assert value.get_attribute("class") == "value no"
    # Not in the green of a yes, as the newsletter's consent in force is.
    newsletter = page.locator("#purpose-newsletter ~ ul .value")
    assert newsletter.get_attribute("class") == "value yes"
    colour = "element => getComputedStyle(element).color"
    assert value.evaluate(colour) != newsletter.evaluate(colour)
    assert page.locator(f"{MARKETING} button[value=grant]").inner_text().startswith("I agree")
    assert page.locator(f"{MARKETING} button[value=withdraw]").count() == 1
    accessible(page, shots, "objected-consent")

    world.clock.advance(minutes=5)
    follow(page, f"{MARKETING} button[value=grant]")
    assert "You had said no to Email marketing (Email). We sent you a mail" in status_text(page)
    assert (
        world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].rule == "objection_direct_marketing"
    )
    page.goto(site.url + mailed(world, "/p/confirm/"))
    assert "Please confirm that it was you." in page.locator("main").inner_text()
    world.clock.advance(minutes=5)
    follow(page, "main form button")
    state = world.ledger.decision_for(EMAIL, "email_marketing", "email")[1]
    assert (state.status, state.suppressed) == (ConsentStatus.GRANTED, False)

    page.goto(preferences)
    assert value.inner_text() == "Yes: you agreed" and value.get_attribute("class") == "value yes"
    assert page.locator(f"{MARKETING} button[value=grant]").count() == 0
    accessible(page, shots, "objection-lifted")
