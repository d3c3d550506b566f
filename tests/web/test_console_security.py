"""The console's security points (issue 16), on SQLite and PostgreSQL: the API's documentation
behind a login and served from the package under a CSP that allows exactly its own script; the
CSP's base-uri and the Host allow-list; credentials masked inside the configuration's values; and
every read of a person's record (page, API, export, CLI) in the audit log, which can be filtered
to them."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from consentsync import audit
from consentsync.config import load_config
from consentsync.ledger.schema import audit_entries
from consentsync.web.server import build
from tests.conftest import SQLITE_ONLY, Cli
from tests.web.conftest import World, api_login, log_in

SWAGGER_JS = "/static/swagger-ui/swagger-ui-bundle.js"


@SQLITE_ONLY
def test_docs_need_a_login_and_run_offline_hosts_are_checked_and_credentials_masked(
    app: Any, world: World
) -> None:
    anonymous = TestClient(app)
    assert anonymous.get("/api/openapi.json").status_code == 401
    docs = anonymous.get("/api/docs", follow_redirects=False)
    assert docs.status_code == 303 and docs.headers["location"] == "/login?next=/api/docs"

    client = log_in(TestClient(app), "vic")
    page = client.get("/api/docs")
    assert page.status_code == 200
    assert SWAGGER_JS in page.text and "/static/swagger-ui/swagger-ui.css" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    csp = page.headers["content-security-policy"]
    assert "http" not in csp and "unsafe" not in csp and "base-uri 'none'" in csp
    # The page's one inline script (the initialiser) is allowed by its hash, and nothing else.
    (inline,) = re.findall(r"<script>(.*?)</script>", page.text, re.S)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    (script_src,) = [part.strip() for part in csp.split(";") if part.strip().startswith("script-src")]
    assert script_src == f"script-src 'self' 'sha256-{digest}'"

    bundle = client.get(SWAGGER_JS)
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"]
    assert "SwaggerUIBundle" in bundle.text
    assert client.get("/static/swagger-ui/swagger-ui.css").status_code == 200
    schema = client.get("/api/openapi.json").json()
    assert "/api/runs" in schema["paths"] and "/api/docs" not in schema["paths"]

    # Every page forbids <base>; a name the console does not answer to gets 400.
    assert "base-uri 'none'" in client.get("/").headers["content-security-policy"]
    for base in ("http://attacker.example", "http://attacker.example:8080"):
        foreign = TestClient(app, base_url=base)
        assert foreign.get("/login").status_code == 400
        assert foreign.post("/api/session", json={"name": "vic", "password": "x"}).status_code == 400

    # By default: localhost and the address the console is bound to, nothing else.
    default = build(
        load_config(_config_without_test_hosts(world, "default.yaml")), world.ledger, host="10.9.8.7"
    )
    for base, status in [
        ("http://localhost:8080", 200),
        ("http://127.0.0.1", 200),
        ("http://[::1]:8080", 200),
        ("http://10.9.8.7:8080", 200),
        ("http://testserver", 400),
        ("http://10.9.8.7.attacker.example", 400),
    ]:
        response = TestClient(default, base_url=base).get("/login")
        assert response.status_code == status, (base, response.text[:200])
    listed = _config_without_test_hosts(world, "listed.yaml", {"allowed_hosts": ["*.example.org"]})
    named = build(load_config(listed), world.ledger, host="127.0.0.1")
    assert TestClient(named, base_url="https://console.example.org").get("/login").status_code == 200
    assert TestClient(named, base_url="https://localhost").get("/login").status_code == 400

    # The configuration page masks credentials wherever they are, inside URLs too.
    data = yaml.safe_load(world.config_path.read_text())
    data["ledger"]["url"] = "postgresql://ledger_app:LedgerPassw0rd@db.internal:5432/consent"
    settings = data["connectors"][0]["settings"]
    settings["login_url"] = "https://login.internal/services?token=QueryT0kenValue&lang=en"
    settings["proxy"] = {"url": "http://proxyuser:Pr0xyPassw0rd@proxy.internal:3128"}
    settings["api_key"] = "ApiKeyValue123"
    path = world.config_path.with_name("credentials.yaml")
    path.write_text(yaml.safe_dump(data))
    viewer = log_in(TestClient(build(load_config(path), world.ledger)), "vic")
    page = viewer.get("/config").text
    api_login(viewer, "vic")
    shown = viewer.get("/api/config").json()
    for text in (page, str(shown)):
        for secret in ("LedgerPassw0rd", "ledger_app", "QueryT0kenValue", "Pr0xyPassw0rd", "ApiKeyValue123"):
            assert secret not in text
        assert "db.internal" in text and "proxy.internal" in text and "lang=en" in text
    (connector,) = shown["connectors"]
    assert connector["settings"]["login_url"] == "https://login.internal/services?token=(hidden)&lang=en"
    assert connector["settings"]["proxy"] == {"url": "http://(hidden)@proxy.internal:3128"}
    assert shown["ledger"] == "postgresql://(hidden)@db.internal:5432/consent"


def _config_without_test_hosts(world: World, name: str, web: dict[str, Any] | None = None) -> Path:
    data = yaml.safe_load(world.config_path.read_text())
    data.pop("web")
    if web is not None:
        data["web"] = web
    path = world.config_path.with_name(name)
    path.write_text(yaml.safe_dump(data))
    return path


def _reads(world: World) -> list[dict[str, Any]]:
    with world.ledger.engine.connect() as conn:
        return [
            entry
            for action in ("subject.viewed", "subject.exported")
            for entry in audit.entries(conn, action=action)
        ]


@SQLITE_ONLY
def test_reads_of_a_persons_record_are_audited_and_can_be_filtered(
    app: Any, world: World, cli: Cli, tmp_path: Path
) -> None:
    client = log_in(TestClient(app), "vic")
    for path in ("/subjects", "/objections", "/requested", "/audit", "/runs"):
        assert client.get(path).status_code == 200
    assert _reads(world) == []  # list pages show no one's record: not audited

    api = TestClient(app)
    csrf = api_login(api, "rex")
    found = api.post("/api/subjects/lookup", json={"email": world.objector}, headers={"X-CSRF-Token": csrf})
    assert found.status_code == 200, found.text
    uid = found.json()["subject"]
    assert client.get(f"/subjects/{uid}").status_code == 200
    assert client.get(f"/subjects/{uid}/export.csv").status_code == 200
    assert api.get(f"/api/subjects/{uid}/export", params={"format": "xlsx"}).status_code == 200
    assert client.get(f"/objections/{world.objection_id}").status_code == 200
    assert cli.ok("subject", "show", world.objector)
    assert cli.ok("subject", "export", world.objector, "--format", "json", "-o", str(tmp_path / "s.json"))

    seen = [(e["action"], e["actor"], e["source"], e["subject"], e["what"]) for e in _reads(world)]
    cli_user = seen[-1][1]
    assert sorted(seen, key=str) == sorted(
        [
            ("subject.viewed", "rex", "api", uid, {"by": "email"}),
            ("subject.viewed", "vic", "console", uid, {}),
            ("subject.viewed", "vic", "console", uid, {"objection": world.objection_id}),
            ("subject.viewed", cli_user, "cli", uid, {}),
            ("subject.exported", "vic", "console", uid, {"format": "csv"}),
            ("subject.exported", "rex", "api", uid, {"format": "xlsx"}),
            ("subject.exported", cli_user, "cli", uid, {"format": "json"}),
        ],
        key=str,
    )
    with world.ledger.engine.connect() as conn:
        payloads = conn.execute(
            select(audit_entries.c.payload).where(audit_entries.c.action.like("subject.%"))
        ).scalars()
        assert not any(world.objector in text for text in payloads)  # the uid names them, not the address

    # The trail can be filtered to them: on the console's audit page and from the shell.
    filtered = client.get("/audit", params={"action": "subject.exported"}).text
    table = filtered[filtered.index('<table class="audit">') :]
    assert table.count("subject.exported") >= 3 and "consent.recorded" not in table
    logged = cli.json("audit", "log", "--action", "subject.viewed")
    assert [e["actor"] for e in logged] == ["rex", "vic", "vic", cli_user]
    assert cli.ok("audit", "verify")
