"""The API's documentation page in a real headless Chromium (Debian's package), on SQLite and
PostgreSQL: behind the login, it renders its operations from the Swagger UI shipped in the package,
with no request leaving the console and nothing refused by the page's Content-Security-Policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consentsync.web.server import WebServer
from tests.web.test_browser import (  # noqa: F401 (fixtures)
    NEEDS_CHROMIUM,
    SQLITE_ONLY,
    Shots,
    browser,
    console,
    log_in,
)

pytestmark = [NEEDS_CHROMIUM, SQLITE_ONLY]

VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
    (event) => window.__csp.push(event.violatedDirective + " " + event.blockedURI));
"""


@pytest.mark.usefixtures("console", "browser")
def test_api_docs_render_offline_behind_the_login(request: Any, tmp_path: Path) -> None:
    server: WebServer = request.getfixturevalue("console")
    context = request.getfixturevalue("browser")
    base = server.url
    requested: list[str] = []
    errors: list[str] = []
    page = context.new_page()
    page.add_init_script(VIOLATIONS)
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))

    log_in(page, base, "vic", "/api/docs")
    page.wait_for_selector(".opblock", state="attached")
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/runs" in [text.replace("\u200b", "") for text in summaries]
    assert page.locator(".opblock").count() >= 18
    Shots(tmp_path / "screenshots").take(page, "api-docs")

    assert page.evaluate("window.__csp") == []
    assert errors == []
    assert requested and all(url.startswith(base) or url.startswith("data:") for url in requested), requested
