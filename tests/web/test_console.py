"""The console through HTTP (FastAPI's TestClient), on SQLite and PostgreSQL: who may see and do
what, CSRF, cookies, throttling, the audit of logins and decisions, and what each action leaves in
the ledger."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from openpyxl import load_workbook
from sqlalchemy import select

from consentsync import audit
from consentsync.accounts import FREE_FAILURES
from consentsync.cli import main
from consentsync.ledger.schema import quarantine, sync_cursors
from tests.conftest import SQLITE_ONLY, Cli
from tests.web.conftest import PASSWORDS, World, api_login, log_in, login_csrf, page_csrf, synced

PAGES = ["/", "/runs", "/audit", "/subjects", "/objections", "/config", "/users"]


def entries(world: World, **filters: Any) -> list[dict[str, Any]]:
    with world.ledger.engine.connect() as conn:
        return list(audit.entries(conn, **filters))


@SQLITE_ONLY
def test_anonymous_requests_are_sent_to_the_login_page_and_the_api_answers_401(
    app: Any, world: World
) -> None:
    client = TestClient(app)
    for path in [*PAGES, f"/runs/{world.run_id}", f"/objections/{world.objection_id}"]:
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")
    for method, path in [
        ("GET", "/api/overview"),
        ("GET", "/api/runs"),
        ("POST", "/api/audit/search"),
        ("POST", f"/api/objections/{world.objection_id}/decision"),
        ("GET", "/api/users"),
    ]:
        assert client.request(method, path, json={}).status_code == 401, path
    assert client.post("/quarantine/1/retry", follow_redirects=False).status_code == 303


@SQLITE_ONLY
def test_session_cookie_is_httponly_samesite_and_secure_over_https(app: Any) -> None:
    plain = TestClient(app)
    log_in(plain, "vic")
    cookie = plain.cookies.jar
    (session,) = [c for c in cookie if c.name == "consentsync_session"]
    assert session.has_nonstandard_attr("HttpOnly")
    assert not session.secure
    response = TestClient(app, base_url="https://testserver").post(
        "/api/session", json={"name": "vic", "password": PASSWORDS["vic"]}
    )
    header = response.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header and "secure" in header
    assert response.headers["strict-transport-security"]


def test_every_page_renders_for_a_viewer_with_security_headers(viewer: TestClient, world: World) -> None:
    for path in [p for p in PAGES if p != "/users"] + [
        f"/runs/{world.run_id}",
        f"/objections/{world.objection_id}",
    ]:
        response = viewer.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert "<time datetime=" in response.text or path in ("/subjects", "/config")


@SQLITE_ONLY
def test_a_viewer_reads_but_cannot_decide_nor_retry(app: Any, world: World) -> None:
    client = TestClient(app)
    csrf = api_login(client, "vic")
    decided = client.post(
        f"/api/objections/{world.objection_id}/decision",
        json={"decision": "reject", "reason": "grounds"},
        headers={"X-CSRF-Token": csrf},
    )
    assert decided.status_code == 403
    assert "reviewer" in decided.json()["detail"]
    (held,) = _odd_rows(client, world)
    assert (
        client.post(f"/api/quarantine/{held['id']}/retry", headers={"X-CSRF-Token": csrf}).status_code == 403
    )
    page = client.get(f"/objections/{world.objection_id}").text
    assert "Record decision" not in page and "needs the reviewer role" in page
    assert client.get(f"/api/objections/{world.objection_id}").json()["objection"]["status"] == "pending"


@SQLITE_ONLY
def test_a_reviewer_cannot_manage_accounts_but_an_admin_can(app: Any, world: World) -> None:
    client = TestClient(app)
    csrf = api_login(client, "rex")
    assert client.get("/api/users").status_code == 403
    new = {"name": "eve", "role": "admin", "password": "eve-password-123"}
    assert client.post("/api/users", json=new, headers={"X-CSRF-Token": csrf}).status_code == 403
    assert client.get("/users").status_code == 403
    assert "Accounts" not in client.get("/").text.split("<main>")[0]

    admin = TestClient(app)
    admin_csrf = api_login(admin, "ada")
    added = admin.post("/api/users", json=new, headers={"X-CSRF-Token": admin_csrf})
    assert added.status_code == 201, added.text
    assert added.json()["role"] == "admin"
    names = {e["what"]["user"] for e in entries(world, action="user.added")}
    assert names == {"ada", "rex", "vic", "eve"}


@SQLITE_ONLY
def test_forms_and_api_calls_without_the_csrf_token_are_refused(app: Any, world: World) -> None:
    client = log_in(TestClient(app), "rex")
    form = client.post(
        f"/objections/{world.objection_id}/decide", data={"decision": "reject", "reason": "grounds"}
    )
    assert form.status_code == 403
    wrong = client.post(
        f"/objections/{world.objection_id}/decide",
        data={"decision": "reject", "reason": "grounds", "csrf_token": "forged"},
    )
    assert wrong.status_code == 403
    api = client.post(
        f"/api/objections/{world.objection_id}/decision", json={"decision": "reject", "reason": "x"}
    )
    assert api.status_code == 403
    assert client.get(f"/api/objections/{world.objection_id}").json()["objection"]["status"] == "pending"
    # A login form posted without its token logs nobody in.
    anonymous = TestClient(app)
    response = anonymous.post(
        "/login",
        data={"name": "rex", "password": PASSWORDS["rex"], "csrf_token": "x"},
        follow_redirects=False,
    )
    assert response.status_code == 400 and "This login form had expired" in response.text
    assert "consentsync_session" not in anonymous.cookies


def test_logins_and_failed_logins_are_audited_and_throttled(app: Any, world: World) -> None:
    client = TestClient(app)
    assert client.post("/api/session", json={"name": "rex", "password": "wrong-password"}).status_code == 401
    assert (
        client.post("/api/session", json={"name": "nobody", "password": "whatever-1234"}).status_code == 401
    )
    api_login(client, "rex")
    failed = entries(world, action="login.failed")
    assert [e["what"].get("user") for e in failed] == ["rex", None]
    assert "nobody" not in json.dumps(failed)  # a mistyped name may be a password: only its digest
    # ... and a keyed one: a bare SHA-256 of a name (or an address) is reversed by a list of them.
    assert failed[1]["what"]["name_hmac"] == world.ledger.keyed_hasher()("nobody")
    assert hashlib.sha256(b"nobody").hexdigest() not in json.dumps(failed)
    assert [e["actor"] for e in entries(world, action="login.succeeded")] == ["rex"]

    for _ in range(FREE_FAILURES):
        client.post("/api/session", json={"name": "vic", "password": "wrong-password"})
    throttled = client.post("/api/session", json={"name": "vic", "password": PASSWORDS["vic"]})
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) > 0
    page = TestClient(app)
    form = page.post(
        "/login",
        data={"name": "vic", "password": PASSWORDS["vic"], "csrf_token": login_csrf(page)},
        follow_redirects=False,
    )
    assert form.status_code == 429
    later = datetime.now(UTC) + timedelta(minutes=16)  # the window has passed
    world.ledger.clock = lambda: later
    assert client.post("/api/session", json={"name": "vic", "password": PASSWORDS["vic"]}).status_code == 200


def test_a_new_password_ends_the_old_sessions(app: Any, cli: Cli) -> None:
    client = TestClient(app)
    api_login(client, "vic")
    assert client.get("/api/overview").status_code == 200
    result = cli.runner.invoke(
        main,
        ["--config", str(cli.config_path), "user", "passwd", "vic", "--password-stdin"],
        input="vic-new-password-123\n",
    )
    assert result.exit_code == 0, result.output
    assert client.get("/api/overview").status_code == 401


def _odd_rows(client: TestClient, world: World) -> list[dict[str, Any]]:
    run = client.get(f"/api/runs/{world.run_id}").json()
    return [q for q in run["quarantined_records"] if q["record_id"] == world.odd_record]


def test_retrying_a_quarantined_record_rereads_it_by_id_without_moving_the_cursor(
    reviewer: TestClient, world: World, cli: Cli
) -> None:
    (held,) = _odd_rows(reviewer, world)
    assert held["stage"] == "pull" and held["resolved_at"] is None
    page = reviewer.get(f"/runs/{world.run_id}").text
    retried = reviewer.post(
        f"/quarantine/{held['id']}/retry", data={"csrf_token": page_csrf(page)}, follow_redirects=False
    )
    assert retried.status_code == 303
    (asked,) = _odd_rows(reviewer, world)
    assert asked["retry_requested_by"] == "rex" and asked["resolved_at"] is None
    (entry,) = entries(world, action="quarantine.retried")
    assert entry["actor"] == "rex" and entry["what"]["record"] == world.odd_record

    with world.ledger.engine.connect() as conn:
        cursors_before = dict(conn.execute(select(sync_cursors.c.object_type, sync_cursors.c.cursor)).all())
    report = synced(cli)
    assert report["status"] == "succeeded", report["error"]
    with world.ledger.engine.connect() as conn:
        cursors_after = dict(conn.execute(select(sync_cursors.c.object_type, sync_cursors.c.cursor)).all())
        rows = conn.execute(
            select(quarantine.c.run_id, quarantine.c.resolved_at).where(
                quarantine.c.record_id == world.odd_record
            )
        ).all()
    # Nothing else changed among the consent records: their cursor stays where it was (the
    # record is far behind it), and yet the record was read again, by its id. It still names an
    # unmapped purpose, so the old row is resolved and it is quarantined again in the new run.
    # (The cursor keeps the new read's upper bound, read_until: its position is what must hold.)
    position = {"modstamp", "record_id", "token"}
    after, before = (
        {k: v for k, v in json.loads(c["ContactPointTypeConsent"]).items() if k in position}
        for c in (cursors_after, cursors_before)
    )
    assert after == before
    assert {r.run_id for r in rows if r.resolved_at is not None} == {world.run_id}
    assert {r.run_id for r in rows if r.resolved_at is None} == {report["run_id"]}


def test_retrying_twice_or_a_resolved_record_is_answered_clearly(app: Any, world: World, cli: Cli) -> None:
    client = TestClient(app)
    csrf = api_login(client, "rex")
    (held,) = _odd_rows(client, world)
    first = client.post(f"/api/quarantine/{held['id']}/retry", headers={"X-CSRF-Token": csrf})
    again = client.post(f"/api/quarantine/{held['id']}/retry", headers={"X-CSRF-Token": csrf})
    assert first.status_code == again.status_code == 200
    assert len(entries(world, action="quarantine.retried")) == 1
    synced(cli)
    resolved = client.post(f"/api/quarantine/{held['id']}/retry", headers={"X-CSRF-Token": csrf})
    assert resolved.status_code == 400 and "resolved" in resolved.json()["detail"]
    assert client.post("/api/quarantine/999999/retry", headers={"X-CSRF-Token": csrf}).status_code == 404


def test_rejecting_an_objection_needs_a_reason_is_audited_and_reaches_the_crm(
    reviewer: TestClient, world: World, cli: Cli
) -> None:
    page = reviewer.get(f"/objections/{world.objection_id}")
    assert str(escape(world.objector)) in page.text  # the subject's context, escaped
    csrf = page_csrf(page.text)
    empty = reviewer.post(
        f"/objections/{world.objection_id}/decide",
        data={"decision": "reject", "reason": " ", "csrf_token": csrf},
    )
    assert empty.status_code == 400 and "reason is required" in empty.text
    done = reviewer.post(
        f"/objections/{world.objection_id}/decide",
        data={"decision": "reject", "reason": "compelling fraud-prevention grounds", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert done.status_code == 303
    (decided,) = entries(world, action="objection.decided")
    assert (decided["actor"], decided["old"], decided["new"]) == ("rex", "pending", "rejected")
    assert decided["details"] == {"reason": "compelling fraud-prevention grounds"}
    # The decision enters the change feed: the next run looks at every record of the person.
    report = synced(cli)
    assert report["status"] == "succeeded"
    again = reviewer.post(
        f"/objections/{world.objection_id}/decide",
        data={"decision": "uphold", "reason": "x", "csrf_token": csrf},
    )
    assert again.status_code == 400 and "already rejected" in again.text


@SQLITE_ONLY
def test_audit_search_by_email_keeps_the_address_out_of_urls(viewer: TestClient, world: World) -> None:
    csrf = page_csrf(viewer.get("/audit").text)
    response = viewer.post(
        "/audit", data={"email": world.objector.upper(), "csrf_token": csrf}, follow_redirects=False
    )
    location = response.headers["location"]
    assert "@" not in location and "subject=" in location
    page = viewer.get(location)
    assert "objection.raised" in page.text
    shown = {int(seq) for seq in re.findall(r'<td data-label="#">(\d+)</td>', page.text)}
    uids = world.ledger.subject_uids_for_email(world.objector)
    assert shown == {e["seq"] for e in entries(world, subject_uids=uids)}
    by_rule = viewer.get("/audit?rule=purpose_manual_review").text
    assert "objection.raised" in by_rule
    by_connector = viewer.get("/audit?connector=sf").text
    assert "crm.pushed" in by_connector
    verified = viewer.post("/audit/verify", data={"csrf_token": csrf})
    assert "Chain verified" in verified.text


def test_lists_are_paginated(app: Any, world: World) -> None:
    client = TestClient(app)
    api_login(client, "vic")
    with world.ledger.engine.connect() as conn:
        total = audit.count(conn)
    assert total > 25
    first = client.post("/api/audit/search", json={"per_page": 10}, headers={"X-CSRF-Token": "x"})
    assert first.status_code == 403  # searches are POSTs: they need the token too
    csrf = api_login(client, "vic")
    search = {"per_page": 10}
    pages = []
    for n in (1, 2):  # paged on where the first page stood (each read is written down: audit.viewed)
        pages.append(
            client.post(
                "/api/audit/search", json={**search, "page": n}, headers={"X-CSRF-Token": csrf}
            ).json()
        )
        search["through"] = pages[0]["through"]
    assert pages[0]["total"] == total + 1  # and the second login of this test
    seqs = [e["seq"] for page in pages for e in page["items"]]
    assert len(seqs) == len(set(seqs)) == 20 and seqs == sorted(seqs, reverse=True)
    html = log_in(TestClient(app), "vic").get("/audit?page=2").text
    assert "page 2 of" in html and 'rel="prev"' in html


def test_subject_exports_open_as_what_they_claim(app: Any, world: World) -> None:
    client = TestClient(app)
    api_login(client, "vic")
    csrf = api_login(client, "vic")
    view = client.post(
        "/api/subjects/lookup", json={"email": world.objector}, headers={"X-CSRF-Token": csrf}
    ).json()
    uid = view["subject"]
    assert view["crm_records"] and view["objections"]
    xlsx = client.get(f"/api/subjects/{uid}/export", params={"format": "xlsx"})
    book = load_workbook(BytesIO(xlsx.content))
    assert book["Subject"]["B1"].value == uid
    assert (
        client.get(f"/api/subjects/{uid}/export", params={"format": "json"}).json()["email"] == world.objector
    )
    assert client.get(f"/api/subjects/{uid}/export", params={"format": "csv"}).text.startswith("record_type,")
    assert client.get("/api/subjects/no-such-subject").status_code == 404


def test_overview_and_configuration_show_the_connector(app: Any, world: World) -> None:
    client = TestClient(app)
    api_login(client, "vic")
    overview = client.get("/api/overview").json()
    (row,) = overview["connectors"]
    assert row["connector"] == "sf" and row["quarantined_open"] >= 1
    assert row["last_run"]["id"] == world.run_id and row["lag_seconds"] >= 0
    assert overview["pending_objections"] == 1
    config = client.get("/api/config").json()
    (connector,) = config["connectors"]
    assert connector["settings"]["client_secret"] == "(hidden)"
    assert {m["object"] for m in connector["mappings"]} >= {"Contact", "Lead"}


@SQLITE_ONLY
@pytest.mark.parametrize("path", ["/runs?result=bogus", "/runs?since=yesterday", "/objections?status=x"])
def test_bad_filters_get_a_clear_400(viewer: TestClient, path: str) -> None:
    response = viewer.get(path)
    assert response.status_code == 400
    assert "accepted" in response.text or "expected" in response.text


def test_retrying_a_refused_push_puts_it_back_in_the_queue_and_the_next_run_delivers_it(
    app: Any, world: World, cli: Cli
) -> None:
    import yaml

    data = yaml.safe_load(world.config_path.read_text())
    data["connectors"][0]["max_push_attempts"] = 1  # dead-lettered at the first refusal
    world.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    contact = next(
        r for r in world.sandbox.org.records("Contact") if r.get("Email") and not r["HasOptedOutOfEmail"]
    )
    world.sandbox.faults.fail_records(contact["Id"])
    email = str(contact["Email"]).lower()
    cli.ok("objection", "raise", "--email", email, "--purpose", "email_marketing", "--direct-marketing")
    refused = synced(cli)
    assert refused["counts"]["push_failed"] >= 1
    client = TestClient(app)
    csrf = api_login(client, "rex")
    held = [
        q
        for q in client.get(f"/api/runs/{refused['run_id']}").json()["quarantined_records"]
        if q["record_id"] == contact["Id"]
    ]
    assert [q["stage"] for q in held] == ["push"]
    retried = client.post(f"/api/quarantine/{held[0]['id']}/retry", headers={"X-CSRF-Token": csrf}).json()
    assert retried["resolved_at"] and retried["retry_requested_by"] == "rex"
    (entry,) = entries(world, action="quarantine.retried")
    assert (entry["old"], entry["new"], entry["actor"]) == ("dead", "pending", "rex")
    assert entry["what"]["outbox"]

    world.sandbox.faults.release_records(contact["Id"])
    delivered = synced(cli)
    assert delivered["status"] == "succeeded" and delivered["counts"]["push_failed"] == 0
    assert world.sandbox.org.get(contact["Id"])["HasOptedOutOfEmail"] is True
