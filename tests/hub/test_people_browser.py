"""The preference centre in a real headless Chromium (Debian's package, driven by Playwright),
served by uvicorn under /p as in production, on SQLite: a person grants, withdraws, objects,
downloads their record, asks for erasure and confirms it through the link the SMTP server
received; a changed and an old link are refused. axe-core checks every page against the WCAG 2
A and AA rules at laptop and phone widths, and every page is saved as a screenshot at both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from consentsync import audit
from consentsync.hub.confirmation_terms import CONFIRMATION_OPENED_ACTION
from consentsync.web.server import WebServer
from tests.hub.conftest import HubWorld
from tests.hub.people_world import EMAIL, mailed, seed, served_pages, soft_opt_in, token_of
from tests.web import test_browser as console_browser
from tests.web.test_browser import CHROMIUM, LAPTOP, PHONE, Shots, follow

axe_playwright = pytest.importorskip(
    "axe_playwright_python.sync_playwright", reason="axe-playwright-python (the test extra) is not installed"
)

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does) to run them",
    ),
    # A browser is slow and the pages' queries are the ones the page tests run on both.
    pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True),
]

browser = console_browser.browser  # Chromium with a fresh profile for every test
# The rules of WCAG 2.0, 2.1 and 2.2 at levels A and AA (axe-core's tags).
WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


@pytest.fixture
def site(world: HubWorld) -> Iterator[WebServer]:
    yield from served_pages(world, WebServer)


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path / "screenshots")


def accessible(page: Any, shots: Shots, name: str) -> None:
    """No WCAG 2 A/AA violation at either width; the page saved as screenshots."""
    axe = axe_playwright.Axe()
    options = {"runOnly": {"type": "tag", "values": WCAG_AA}, "resultTypes": ["violations"]}
    for size in (LAPTOP, PHONE):
        page.set_viewport_size(size)
        results = axe.run(page, options=options)
        assert results.violations_count == 0, f"{name} at {size['width']}px:\n{results.generate_report()}"
    page.set_viewport_size(LAPTOP)
    shots.take(page, name)


def status_text(page: Any) -> str:
    return str(page.locator("[role=status]").inner_text())


def test_choices_objection_and_download_in_a_browser(
    world: HubWorld, site: WebServer, browser: Any, shots: Shots, tmp_path: Path
) -> None:
    token = token_of(world, seed(world))
    page = browser.new_page()
    response = page.goto(f"{site.url}/p/preferences/{token}")
    assert response.status == 200 and response.headers["referrer-policy"] == "no-referrer"
    assert page.locator("h1").inner_text() == "Your privacy choices"
    accessible(page, shots, "preferences")
    newsletter = page.locator("section", has=page.locator("h2", has_text="Newsletter"))

    world.clock.advance(minutes=5)
    follow(page, "#purpose-newsletter ~ ul button[value=withdraw]")
    assert "you withdrew your consent to Newsletter (Email)" in status_text(page)
    assert "No: you withdrew your consent" in newsletter.inner_text()
    assert world.ledger.decision_for(EMAIL, "newsletter", "email")[1].suppressed
    accessible(page, shots, "withdrawn")
    with page.expect_download() as download:  # the receipt of the withdrawal
        page.click("[role=status] a[download]")
    receipt = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert download.value.suggested_filename.startswith("consent-receipt-")
    assert receipt["events"][0]["event_state"] and EMAIL not in json.dumps(receipt)

    world.clock.advance(minutes=5)
    follow(page, "#purpose-newsletter ~ ul button[value=grant]")
    # Over the withdrawal: confirmed through the link mailed to the person (docs/hub.md).
    assert "You had said no to Newsletter (Email). We sent you a mail" in status_text(page)
    assert world.ledger.subject_view(EMAIL)["history"][-1]["status"] == "withdrawn"
    preferences = page.url
    page.goto(site.url + mailed(world, "/p/confirm/"))
    follow(page, "main form button")
    event = world.ledger.subject_view(EMAIL)["history"][-1]
    assert (event["status"], event["source"], event["notice_version"]) == (
        "granted",
        "double_opt_in",
        "2026-05",
    )
    (uid,) = world.ledger.subject_uids_for_email(EMAIL)
    with world.ledger.engine.connect() as conn:  # who asked on the page: keyed hashes only
        opened = list(audit.entries(conn, subject_uids=[uid], action=CONFIRMATION_OPENED_ACTION))
    assert opened[-1]["new"]["kind"] == "double_opt_in"
    assert "client:" in opened[-1]["actor"] and "127.0.0.1" not in opened[-1]["actor"]
    page.goto(preferences)
    assert "Yes: you agreed" in newsletter.inner_text()

    follow(page, "form.object button")
    assert "We received your objection to Profiling and segmentation" in status_text(page)
    assert world.ledger.subject_view(EMAIL)["objections"][0]["status"] == "pending"
    assert page.locator("form.object").count() == 0
    accessible(page, shots, "objected")

    # The copy through the download link mailed to the person (docs/hub.md).
    follow(page, "form.export button")
    assert "We sent you a mail with a link to download a copy of your data" in status_text(page)
    page.goto(site.url + mailed(world, "/p/export/"))
    download_page = page.url
    with page.expect_download() as download:
        page.click("form.export button")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "my-data-2026-06-01.json"
    view = json.loads(saved.read_text(encoding="utf-8"))
    assert view["email"] == EMAIL and view["objections"][0]["purpose"] == "profiling"

    page.check("input[name=format][value=xlsx]")
    with page.expect_download() as download:
        page.click("form.export button")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".xlsx" and len(load_workbook(saved).sheetnames) > 1
    assert page.url == download_page  # still on the page

    # Marketed under the soft opt-in meanwhile: the page says so and stops it at once.
    world.clock.advance(minutes=5)
    soft_opt_in(world)
    page.goto(preferences)
    marketing = page.locator("section", has=page.locator("h2", has_text="Email marketing"))
    assert "(soft opt-in)" in marketing.inner_text()
    accessible(page, shots, "soft-opt-in")
    follow(page, "form.object.marketing button")
    assert "we stopped Email marketing for you at once" in status_text(page)
    stopped = world.ledger.decision_for(EMAIL, "email_marketing", "email")[1]
    assert stopped.rule == "objection_direct_marketing"
    assert "Stopped for you" in marketing.inner_text() and page.locator("form.object").count() == 0

    # The same page in German, by the language switch.
    follow(page, "nav.languages a[hreflang=de]")
    assert page.locator("html").get_attribute("lang") == "de"
    assert page.locator("h1").inner_text() == "Ihre Datenschutzeinstellungen"
    accessible(page, shots, "preferences-de")


def test_erasure_through_the_mailed_link_in_a_browser(
    world: HubWorld, site: WebServer, browser: Any, shots: Shots
) -> None:
    uid = seed(world)
    token = token_of(world, uid)
    page = browser.new_page()
    page.goto(f"{site.url}/p/preferences/{token}")
    follow(page, "form.erase button")
    assert "We sent you a mail." in status_text(page)
    accessible(page, shots, "erasure-asked")
    assert world.ledger.email_of(uid) == EMAIL

    page.goto(site.url + mailed(world, "/p/erase/"))
    assert page.locator("h1").inner_text() == "Erase your data?"
    accessible(page, shots, "erase-confirm")
    assert world.ledger.email_of(uid) == EMAIL  # opening the link erased nothing
    follow(page, "main form button")
    assert page.url == f"{site.url}/p/erased?lang=en"
    assert "We erased your data." in status_text(page)
    accessible(page, shots, "erased")
    assert world.ledger.email_of(uid) is None

    gone = page.goto(f"{site.url}/p/preferences/{token}")
    assert gone.status == 410 and page.locator("h1").inner_text() == "This link is no longer in use"
    assert "the record was erased." in page.locator("main").inner_text()


def test_double_opt_in_confirmed_in_a_browser(
    world: HubWorld, site: WebServer, browser: Any, shots: Shots
) -> None:
    seed(world)
    page = browser.new_page()
    page.goto(site.url + mailed(world, "/p/confirm/"))
    assert "Please confirm that it was you." in page.locator("main").inner_text()
    accessible(page, shots, "confirm")
    world.clock.advance(minutes=10)
    follow(page, "main form button")
    assert "you confirmed that you want to receive Email marketing (Email)" in status_text(page)
    accessible(page, shots, "confirmed")
    assert world.ledger.decision_for(EMAIL, "email_marketing", "email")[1].status.value == "granted"


def test_a_changed_and_an_old_link_are_refused_in_a_browser(
    world: HubWorld, site: WebServer, browser: Any, shots: Shots
) -> None:
    token = token_of(world, seed(world))
    page = browser.new_page()
    changed = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    response = page.goto(f"{site.url}/p/preferences/{changed}")
    assert response.status == 403
    assert page.locator("h1").inner_text() == "This link does not work"
    assert "it may have been cut or changed" in page.locator("main").inner_text()
    accessible(page, shots, "refused-changed")

    world.clock.advance(days=world.hub.settings.link_days + 1)
    response = page.goto(f"{site.url}/p/preferences/{token}")
    assert response.status == 410
    assert page.locator("h1").inner_text() == "This link has expired"
    accessible(page, shots, "refused-expired")
    # The page reads the language from the browser as everywhere else.
    page.set_extra_http_headers({"Accept-Language": "de"})
    page.goto(f"{site.url}/p/confirm/{changed}")
    assert page.locator("h1").inner_text() == "Dieser Link funktioniert nicht"
    accessible(page, shots, "refused-de")
    # The check sees what it should: under this CSP too, a page without a language fails.
    page.evaluate("document.documentElement.removeAttribute('lang')")
    found = axe_playwright.Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_AA}})
    assert "html-has-lang" in found.generate_report()
