"""Session 49's walk in a real headless Chromium: a person whose address is beyond ASCII (3- and
4-byte UTF-8) signs up on a German form, opens the mail's link in a browser that prefers
English, says no to the sign-up, and asks for restriction of processing (Art. 18) and confirms
it through the mailed link. axe-core checks each page (WCAG 2 A/AA) at laptop and phone widths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from consentsync.web.server import WebServer
from tests.hub.conftest import HubWorld, in_german
from tests.hub.people_world import GRANT, mailed, seed, served_pages, token_of
from tests.hub.test_people_browser import accessible, status_text
from tests.web import test_browser as console_browser
from tests.web.test_browser import CHROMIUM, Shots, follow

pytest.importorskip("axe_playwright_python.sync_playwright", reason="axe-playwright-python is not installed")

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
    pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True),
]

browser = console_browser.browser
WIDE = "😀zoë@例子.广告"  # 4-, 2- and 3-byte UTF-8


@pytest.fixture
def site(world: HubWorld) -> Iterator[WebServer]:
    yield from served_pages(world, WebServer)


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path / "screenshots")


def test_a_wide_address_declines_a_german_sign_up_in_a_browser(
    world: HubWorld, site: WebServer, browser: Any, shots: Shots
) -> None:
    in_german(world.ledger, "email_marketing")
    signup = {**GRANT, "purpose": "email_marketing", "email": WIDE, "language": "de"}
    assert world.post("/consents", signup).json()["results"][0]["confirmation"] == "queued"
    assert world.inbox.messages[-1]["To"] == WIDE
    page = browser.new_page()
    page.set_extra_http_headers({"Accept-Language": "en"})
    preferences = urlsplit(world.inbox.full_link("/p/preferences/"))
    page.goto(f"{site.url}{preferences.path}?{preferences.query}")
    assert page.locator("html").get_attribute("lang") == "de"  # the mail's language
    assert "😀•••@例子.广告" in page.locator("p.lead").inner_text()
    accessible(page, shots, "pending-de")
    world.clock.advance(minutes=4)
    follow(page, "#purpose-email_marketing ~ ul button[value=decline]")
    assert "Sie haben E-Mail-Werbung (E-Mail) abgelehnt." in status_text(page)
    assert page.locator("#purpose-email_marketing ~ ul button[value=decline]").count() == 0
    accessible(page, shots, "declined-de")
    state = world.ledger.decision_for(WIDE, "email_marketing", "email")[1]
    assert state.status.value == "refused"
    gone = page.goto(site.url + mailed(world, "/p/confirm/"))
    assert gone.status == 410 and page.locator("main form").count() == 0


def test_restriction_asked_and_confirmed_in_a_browser(
    world: HubWorld, site: WebServer, browser: Any, shots: Shots
) -> None:
    uid = seed(world)
    page = browser.new_page()
    page.goto(f"{site.url}/p/preferences/{token_of(world, uid)}")
    accessible(page, shots, "restriction-offered")
    # The ground is required: the browser does not send the form without one.
    page.click("form.restrict button")
    assert mailed_count(world) == 0
    page.check("input[name=ground][value=accuracy]")
    follow(page, "form.restrict button")
    assert "The processing of your data is restricted once you open the link" in status_text(page)
    accessible(page, shots, "restriction-asked")

    page.goto(site.url + mailed(world, "/p/restrict/"))
    assert page.locator("h1").inner_text() == "Restrict the processing of your data?"
    accessible(page, shots, "restriction-confirm")
    assert not world.ledger.subject_view("ada@example.test")["restricted"]
    follow(page, "main form button")
    assert page.locator("h1").inner_text() == "Processing restricted"
    accessible(page, shots, "restricted")
    assert world.ledger.subject_view("ada@example.test")["restricted"]
    page.goto(f"{site.url}/p/preferences/{token_of(world, uid)}")
    assert page.locator("form.restrict").count() == 0
    assert "is restricted" in page.locator(".restriction").inner_text()
    accessible(page, shots, "restricted-page")


def mailed_count(world: HubWorld) -> int:
    return sum("/p/restrict/" in world.inbox.text(i) for i in range(len(world.inbox.messages)))
