"""The console's ops flows in a real headless Chromium (issue 16), on SQLite and PostgreSQL: a
viewer in Sydney filters today's runs (a run whose UTC day is yesterday); a reviewer retries
quarantined records in bulk from the second page and lands back there; a decided objection's
reason is read in the list and the detail; a form sent after the session ended comes back filled
in after logging in again. The pages the main browser test does not reach are screenshotted at
laptop and phone widths too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update

from consentsync.accounts import Accounts
from consentsync.ledger.schema import sync_runs
from consentsync.web.server import WebServer
from tests.web.conftest import World
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, LAPTOP, Shots, follow, log_in, log_out
from tests.web.test_browser import browser as browser
from tests.web.test_browser import console as console
from tests.web.test_browser import pytestmark as pytestmark  # skipped without Chromium
from tests.web.test_console_ops import _quarantine_many, _requested

SYDNEY = "Australia/Sydney"


@pytest.fixture
def sydney(tmp_path: Path) -> Iterator[Any]:
    """A browser whose clock reads Sydney's time."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=LAPTOP,
            timezone_id=SYDNEY,
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


def test_a_viewer_in_sydney_filters_todays_runs(
    console: WebServer, sydney: Any, world: World, tmp_path: Path
) -> None:
    # Ten past midnight today in Sydney: still yesterday in UTC.
    local_now = datetime.now(ZoneInfo(SYDNEY))
    started = local_now.replace(hour=0, minute=10, second=0, microsecond=0)
    if started > local_now:
        started -= timedelta(days=1)
    day = started.date().isoformat()
    assert started.astimezone(UTC).date() != started.date()
    with world.ledger.engine.begin() as conn:
        conn.execute(
            update(sync_runs)
            .where(sync_runs.c.id == world.run_id)
            .values(
                started_at=started.astimezone(UTC),
                finished_at=started.astimezone(UTC) + timedelta(seconds=42),
            )
        )
    shots = Shots(tmp_path / "screenshots")
    page = sydney.new_page()
    log_in(page, console.url, "vic", "/runs")
    assert page.locator("input[name=tz]").input_value() == SYDNEY  # the page's script said so
    page.fill("input[name=since]", day)
    page.fill("input[name=until]", day)
    follow(page, "form.filters button")
    assert f"since={day}" in page.url
    rows = page.locator("tbody tr")
    assert rows.count() == 1 and world.run_id in rows.first.locator("a").first.get_attribute("href")
    assert f"days in {SYDNEY}" in page.locator("[data-zone-note]").inner_text()
    assert "GMT+11" in rows.first.inner_text() or "AEDT" in rows.first.inner_text()
    shots.take(page, "runs-sydney")

    # The overview's quarantined count leads to exactly the runs holding them.
    page.goto(console.url + "/")
    follow(page, "a[title='the runs holding them']")
    assert "quarantine=open" in page.url
    assert "1 run(s) holding 1 open quarantined record(s) of sf" in page.locator("main").inner_text()
    shots.take(page, "runs-open-quarantine")


def test_a_reviewer_retries_quarantined_records_in_bulk_and_lands_where_they_were(
    console: WebServer, browser: Any, world: World, tmp_path: Path
) -> None:
    ids = _quarantine_many(world, 30)
    shots = Shots(tmp_path / "screenshots")
    page = browser.new_page()
    log_in(page, console.url, "rex", f"/runs/{world.run_id}")
    assert "page 1 of 2 (31 in all)" in page.locator(".pager").first.inner_text()
    follow(page, ".pager a[rel=next]")
    assert "page=2" in page.url
    boxes = page.locator("input[name=ids]")
    assert boxes.count() == 6
    boxes.nth(0).check()
    boxes.nth(1).check()
    chosen = {int(boxes.nth(n).get_attribute("value")) for n in (0, 1)}
    shots.take(page, "run-quarantine-page-2")
    follow(page, "button:has-text('Retry selected')")
    assert "page=2" in page.url and page.url.endswith("#quarantined")
    assert "2 quarantined record(s) queued again" in page.locator("p[role=status]").inner_text()
    assert _requested(world) == chosen
    for quarantine_id in chosen:
        assert "re-read requested" in page.locator(f"tr#q{quarantine_id}").inner_text()

    page.select_option("form#bulk select[name=reason]", "no email")
    follow(page, "button:has-text('Retry this reason')")
    assert "page=2" in page.url
    no_email = {i for n, i in enumerate(ids[1:]) if n % 3 == 0}
    assert _requested(world) == chosen | no_email
    follow(page, "button:has-text('Retry all open')")
    assert _requested(world) == set(ids)
    assert page.locator("form#bulk").count() == 0  # nothing open is left to retry
    shots.take(page, "run-after-bulk-retry")


def test_a_decided_objections_reason_and_a_form_that_outlived_its_session(
    console: WebServer, browser: Any, world: World, tmp_path: Path
) -> None:
    reason = "Legitimate interest in fraud prevention outweighs the objection (case 17)"
    world.ledger.decide_objection(world.objection_id, uphold=False, by="rex", reason=reason)
    shots = Shots(tmp_path / "screenshots")
    page = browser.new_page()
    log_in(page, console.url, "vic", "/objections?status=all")
    row = page.locator("tbody tr", has=page.locator(f"a[href='/objections/{world.objection_id}']"))
    listed = row.locator("td[data-label=Reason]").inner_text()
    assert listed.startswith("Legitimate interest in fraud prevention")
    assert "rejected" in row.inner_text()
    shots.take(page, "objections-all")
    follow(page, f"tbody a[href='/objections/{world.objection_id}']")
    assert page.locator("dd.reason").inner_text() == reason
    shots.take(page, "objection-decided")

    # Pages the main browser test does not reach.
    for path, name in (
        ("/requested", "requested"),
        ("/subjects", "subject-search"),
        ("/connectors/sf/plans", "plans"),
    ):
        page.goto(console.url + path)
        assert page.locator("h1").count() == 1, path
        shots.take(page, name)
    page.goto(console.url + "/audit")
    page.fill("input[name=email]", "nobody-here@example.com")
    follow(page, "form.filters button")
    assert "No subject in the ledger has" in page.locator("main").inner_text()
    shots.take(page, "audit-unknown-email")
    log_out(page)

    # A reviewer types a decision's reason; their session is ended meanwhile; they send it.
    log_in(page, console.url, "rex", "/subjects")
    page.fill("input[name=email]", world.objector)
    Accounts(world.ledger.engine).end_sessions("rex", actor="ada")
    follow(page, "form.filters button")
    assert "/login" in page.url and "expired=1" in page.url
    notice = page.locator("p[role=status]").inner_text()
    assert "Your session ended before the form was sent" in notice
    shots.take(page, "login-session-ended")
    assert page.locator("input[name=name]").input_value() == "rex"  # kept: only the password is asked
    page.fill("input[name=password]", "rex-reviewer-password-1")
    follow(page, "button[type=submit]")
    page.wait_for_url(re.compile(r".*/subjects$"))
    assert page.locator("input[name=email]").input_value() == world.objector
    assert "filled in again" in page.locator("p[role=status]").inner_text()
    shots.take(page, "subject-search-restored")
    follow(page, "form.filters button")
    assert "Consent evidence" in page.locator("main").inner_text()
    shots.take(page, "subject-evidence")
