"""The console end to end in a real headless Chromium (Debian's package, driven by Playwright),
served by uvicorn on a free port, on SQLite: a reviewer logs in, finds the run with
a quarantined record and retries it, rejects an objection with a reason, finds both in the audit
trail, exports a subject as XLSX and opens the file; a reviewer cannot manage accounts, a viewer
cannot decide, and an anonymous visitor is sent to the login page. Every page is saved as a
screenshot at laptop and phone widths under the test's temporary folder."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from consentsync.config import load_config
from consentsync.web.server import WebServer, build
from tests.conftest import Cli
from tests.web.conftest import PASSWORDS, World

CHROMIUM = os.environ.get("CONSENTSYNC_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a sandboxed machine with no network but loopback (see the CI machine's notes).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1366, "height": 860}
PHONE = {"width": 390, "height": 844}

NEEDS_CHROMIUM = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does) to run them",
)
# The browser tests run on SQLite: what a browser adds (pages, scripts, cookies, layout) does not
# depend on the database, and every console query behind them runs on both databases in the
# HTTP tests (test_console*.py). Keeps CI within its 15 minutes.
SQLITE_ONLY = pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
pytestmark = [NEEDS_CHROMIUM, SQLITE_ONLY]


@pytest.fixture
def console(world: World) -> Iterator[WebServer]:
    with WebServer(build(load_config(world.config_path), world.ledger)) as server:
        yield server


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile for every test
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=LAPTOP,
            accept_downloads=True,
            timezone_id="Europe/Berlin",
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


class Shots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []

    def take(self, page: Any, name: str) -> None:
        for label, size in (("laptop", LAPTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            path = self.folder / f"{name}-{label}.png"
            page.screenshot(path=str(path), full_page=True)
            print(f"screenshot: {path}")
        page.set_viewport_size(LAPTOP)
        self.names.append(name)


def log_in(page: Any, base: str, name: str, target: str = "/") -> None:
    page.goto(base + target)
    assert "/login" in page.url
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    follow(page, "button[type=submit]")
    page.wait_for_url(re.compile(re.escape(base + target) + r"(\?.*)?$"))


def follow(page: Any, selector: str) -> None:
    """Click something that loads a new page and wait until that page has loaded.

    A bare click returns once the navigation has started: reading the page straight
    after it can read the page being left (it did once in CI, on PostgreSQL)."""
    with page.expect_navigation():
        page.click(selector)


def log_out(page: Any) -> None:
    follow(page, "form.who button")
    page.wait_for_url(re.compile(r".*/login$"))


def test_the_console_in_a_browser(
    console: WebServer, browser: Any, world: World, cli: Cli, tmp_path: Path
) -> None:
    base = console.url
    shots = Shots(tmp_path / "screenshots")
    second = cli.json("objection", "raise", "--email", _another_person(world), "--purpose", "profiling")
    page = browser.new_page()

    # Anonymous: every page sends to the login form.
    page.goto(base + "/objections")
    assert "/login" in page.url
    shots.take(page, "login")
    log_in(page, base, "rex", "/objections")
    page.goto(base + "/")
    assert page.locator("h1").inner_text() == "Overview"
    assert page.locator("td[data-label=Connector]").first.inner_text().startswith("sf")
    # Times in the viewer's zone (Berlin here), with the UTC value on hover.
    stamp = page.locator("time").first
    assert stamp.get_attribute("title").startswith("UTC: ")
    assert "UTC" not in stamp.inner_text()
    shots.take(page, "overview")

    # Runs: the run with a quarantined record, and its retry.
    follow(page, "nav.main >> text=Runs")
    page.select_option("select[name=result]", "succeeded")
    follow(page, "form.filters button")
    shots.take(page, "runs")
    row = page.locator("tbody tr", has=page.locator("td[data-label=Quarantined] .tag"))
    with page.expect_navigation():
        row.first.locator("td[data-label=Started] a").click()
    assert world.run_id in page.url
    odd = page.locator("tr", has_text=world.odd_record)
    assert "ContactPointTypeConsent" in odd.inner_text()
    shots.take(page, "run")
    with page.expect_navigation():
        odd.locator("button", has_text="Retry").click()
    assert "queued again" in page.locator("p[role=status]").inner_text()
    assert "re-read requested" in page.locator("tr", has_text=world.odd_record).inner_text()

    # Objections: the queue, pending first and oldest first; reject one with a reason.
    follow(page, "nav.main >> text=Objections")
    queue = page.locator("tbody tr td[data-label='#']").all_inner_texts()
    assert queue == [str(world.objection_id), str(second["id"])]
    shots.take(page, "objections")
    follow(page, f"tbody a[href='/objections/{world.objection_id}']")
    assert world.objector in page.locator("main").inner_text()
    page.check("input[value=reject]")
    page.click("button:has-text('Record decision')")  # the reason is required: the form refuses
    assert "decided" not in page.url
    page.fill("textarea[name=reason]", "Fraud prevention outweighs the objection (case 17)")
    shots.take(page, "objection")
    page.once("dialog", lambda dialog: dialog.accept())  # a rejection asks first
    follow(page, "button:has-text('Record decision')")
    assert "Decision recorded" in page.locator("p[role=status]").inner_text()

    # The audit trail has both actions, by whom, with the reason; the chain verifies.
    follow(page, "nav.main >> text=Audit trail")
    follow(page, "button:has-text('Verify chain')")
    assert "Chain verified" in page.locator("p[role=status]").inner_text()
    page.select_option("select[name=action]", "objection.decided")
    follow(page, "form.filters button")
    decided = page.locator("table.audit tbody tr").first.inner_text()
    assert all(word in decided for word in ("rex", "Fraud prevention", "pending", "rejected"))
    page.select_option("select[name=action]", "quarantine.retried")
    page.fill("input[name=email]", "")
    follow(page, "form.filters button")
    retried = page.locator("table.audit tbody tr").first.inner_text()
    assert "rex" in retried and world.odd_record in retried
    page.select_option("select[name=action]", "")
    page.fill("input[name=email]", world.objector)
    follow(page, "form.filters button")
    assert "@" not in page.url
    assert "objection.decided" in page.locator("table.audit").inner_text()
    shots.take(page, "audit")

    # A subject, exported as XLSX and opened.
    follow(page, "nav.main >> text=Subject")
    page.fill("input[name=email]", world.objector)
    follow(page, "form.filters button")
    assert "Effective state" in page.locator("main").inner_text()
    shots.take(page, "subject")
    with page.expect_download() as download:
        page.click("a.button:has-text('XLSX')")
    saved = tmp_path / "subject.xlsx"
    download.value.save_as(saved)
    book = load_workbook(saved)
    assert {"Subject", "Objections", "CRM records"} <= set(book.sheetnames)
    summary = {row[0].value: row[1].value for row in book["Subject"].iter_rows()}
    assert summary["email"] == world.objector
    statuses = [row[3].value for row in book["Objections"].iter_rows(min_row=2)]
    assert "rejected" in statuses

    follow(page, "nav.main >> text=Configuration")
    assert "salesforce" in page.locator("main").inner_text()
    shots.take(page, "config")

    # A reviewer cannot manage accounts.
    assert page.locator("nav.main >> text=Accounts").count() == 0
    page.goto(base + "/users")
    assert "Not allowed" in page.locator("h1").inner_text()
    shots.take(page, "forbidden")
    log_out(page)

    # A viewer reads the second objection but cannot decide it.
    log_in(page, base, "vic", f"/objections/{second['id']}")
    assert page.locator("textarea[name=reason]").count() == 0
    assert "needs the reviewer role" in page.locator("main").inner_text()
    log_out(page)

    # An admin manages accounts.
    log_in(page, base, "ada", "/users")
    page.fill("form.stack input[name=name]", "olga")
    page.select_option("form.stack select[name=role]", "viewer")
    page.fill("form.stack input[name=password]", "olga-password-123")
    follow(page, "form.stack button")
    assert "olga" in page.locator("table").inner_text()
    shots.take(page, "accounts")
    log_out(page)
    page.goto(base + "/")
    assert "/login" in page.url

    print("pages screenshotted: " + ", ".join(shots.names))
    assert len(list(shots.folder.glob("*.png"))) == 2 * len(shots.names)


def _another_person(world: World) -> str:
    emails = [str(r["Email"]).lower() for r in world.sandbox.org.records("Contact") if r.get("Email")]
    return next(email for email in emails if email != world.objector)
