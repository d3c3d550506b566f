"""Session 64: /v1/docs (docs/hub.md: it documents the capture API) was a blank page in a browser:
FastAPI's default Swagger page loads from cdn.jsdelivr.net and starts with an inline script, both
refused by the console's Content-Security-Policy. Served as the console's /api/docs is (the
vendored swagger-ui bundle, the inline script hashed in the CSP), it renders the API's
operations in a real headless Chromium (Debian's package), with no request leaving the console
and nothing refused by the CSP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consentsync.web.server import WebServer, build
from tests.conftest import SQLITE_ONLY
from tests.hub.conftest import HubWorld
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS, LAPTOP, NEEDS_CHROMIUM

pytestmark = [NEEDS_CHROMIUM, SQLITE_ONLY]

VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
    (event) => window.__csp.push(event.violatedDirective + " " + event.blockedURI));
"""


@pytest.fixture
def console(world: HubWorld) -> Iterator[WebServer]:
    with WebServer(build(world.hub.config, world.ledger)) as server:
        yield server


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=LAPTOP,
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


def test_the_capture_api_docs_render_offline(console: WebServer, browser: Any, tmp_path: Path) -> None:
    base = console.url
    requested: list[str] = []
    errors: list[str] = []
    page = browser.new_page()
    page.add_init_script(VIOLATIONS)
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(base + "/v1/docs")  # the capture API's docs want no console login (its keys do)
    page.wait_for_selector(".opblock", state="attached")
    summaries = [
        text.replace("\u200b", "") for text in page.locator(".opblock-summary-path").all_inner_texts()
    ]
    assert "/consents" in summaries, summaries
    assert page.locator(".opblock").count() >= 3
    assert "consentsync capture API" in page.inner_text("#swagger-ui")
    page.screenshot(path=str(tmp_path / "v1-docs.png"), full_page=True)

    assert page.evaluate("window.__csp") == []
    assert errors == []
    assert requested and all(url.startswith(base) or url.startswith("data:") for url in requested), requested
