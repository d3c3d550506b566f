"""`consentsync web` serves the hub beside the console: the capture API at /v1 with API keys (no
console login), the preference centre at /p with its own headers, and no link token in the log."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from consentsync.web.server import build
from tests.conftest import SQLITE_ONLY
from tests.hub.conftest import HubWorld


@pytest.fixture
def served(world: HubWorld) -> TestClient:
    return TestClient(build(world.hub.config, world.ledger), base_url="http://localhost")


@pytest.mark.usefixtures("info_logs")
@SQLITE_ONLY
def test_the_capture_api_and_the_preference_centre_are_served(
    world: HubWorld, served: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    grant = {
        "email": "ada@example.test",
        "purpose": "newsletter",
        "status": "granted",
        "notice_version": "2026-05",
    }
    assert served.post("/v1/consents", json=grant).status_code == 401  # an API key, not a login
    recorded = served.post("/v1/consents", json=grant, headers=world.auth())
    assert recorded.status_code == 201
    assert served.get("/v1/openapi.json").json()["info"]["title"] == "consentsync capture API"
    link = world.hub.preference_link(recorded.json()["results"][0]["subject"])
    token = link.rsplit("/", 1)[1]
    page = served.get(link.replace("https://prefs.example.test", ""))
    assert page.status_code == 200 and "Newsletter" in page.text
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")  # no script at all
    # The console itself still wants a login.
    assert "/login" in served.get("/", follow_redirects=False).headers.get("location", "")
    captured = capsys.readouterr()
    # The product's own lines (the test's HTTP client logs the URLs it fetches, as a browser would).
    logged = "\n".join(line for line in (captured.out + captured.err).splitlines() if "consentsync" in line)
    assert token not in logged
    assert "/p/preferences/<token>" in logged
