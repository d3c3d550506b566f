"""The console's ops flows (issue 16), on SQLite and PostgreSQL: date filters are days in the
viewer's time zone; the runs list shows error, duration, load, pushes and quarantined counts and
filters runs with open quarantined records, which the overview's count links to; a run's
quarantined records are paginated, retried in bulk (selected, by reason, all) and a retry returns
to where the user was; a run shows which records it re-read; the audit filters are choices and an
unknown address says so; the subject page shows consent evidence and pages its history; the API
audits only real account changes; a form sent after its session ended keeps what was typed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import insert, select, update

from consentsync.domain import ConsentStatus, Evidence, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import quarantine, sync_runs
from tests.conftest import SQLITE_ONLY, Cli
from tests.web.conftest import PASSWORDS, World, api_login, log_in, login_csrf, page_csrf, synced
from tests.web.test_console import entries

SYDNEY = "Australia/Sydney"


def _move_run(world: World, started: datetime, **values: Any) -> None:
    with world.ledger.engine.begin() as conn:
        conn.execute(
            update(sync_runs)
            .where(sync_runs.c.id == world.run_id)
            .values(started_at=started, finished_at=started + timedelta(seconds=83), **values)
        )


def test_date_filters_are_days_in_the_viewers_time_zone(app: Any, world: World) -> None:
    # 14:00 UTC on 2 December is 01:00 on 3 December in Sydney.
    _move_run(world, datetime(2026, 12, 2, 14, 0, tzinfo=UTC))
    client = log_in(TestClient(app), "vic")
    day = {"since": "2026-12-03", "until": "2026-12-03"}

    in_sydney = client.get("/runs", params={**day, "tz": SYDNEY}).text
    assert f'href="/runs/{world.run_id}"' in in_sydney
    assert f"Dates are days in {SYDNEY}, your time zone." in in_sydney

    # No zone sent (no JavaScript): UTC days, and the page says so.
    in_utc = client.get("/runs", params=day).text
    assert f'href="/runs/{world.run_id}"' not in in_utc and "No run matches." in in_utc
    assert "Dates are UTC days: your browser did not say its time zone" in in_utc
    # A zone this machine does not know is UTC too, said the same way.
    assert "Dates are UTC days" in client.get("/runs", params={**day, "tz": "Mars/Olympus"}).text

    # The cookie the page's script sets serves links without the field (the overview's counts).
    client.cookies.set("tz", SYDNEY)
    assert f'href="/runs/{world.run_id}"' in client.get("/runs", params=day).text
    client.cookies.delete("tz")

    # The API takes the zone as a parameter.
    api = TestClient(app)
    api_login(api, "vic")
    found = api.get("/api/runs", params={**day, "tz": SYDNEY}).json()
    assert [r["id"] for r in found["items"]] == [world.run_id]
    assert api.get("/api/runs", params=day).json()["total"] == 0

    # The audit trail's days too: the entries of the objection raised today, by the local day.
    now = datetime.now(UTC)
    local_day = now.astimezone(__import__("zoneinfo").ZoneInfo(SYDNEY)).date().isoformat()
    page = client.post(
        "/audit",
        data={
            "action": "objection.raised",
            "since": local_day,
            "until": local_day,
            "tz": SYDNEY,
            "csrf_token": page_csrf(client.get("/audit").text),
        },
    )
    assert page.status_code == 200 and "tz=Australia%2FSydney" in str(page.url)
    assert '<td data-label="Action"><code>objection.raised</code>' in page.text


def test_the_runs_list_shows_error_duration_load_pushes_and_quarantined_and_filters_open_ones(
    viewer: TestClient, world: World
) -> None:
    error = "connector: the CRM answered 503 Service Unavailable " + "x" * 120
    _move_run(world, datetime.now(UTC) - timedelta(hours=1), error=error, full_load=True)
    page = viewer.get("/runs").text
    row = next(r for r in page.split("<tr>") if f'href="/runs/{world.run_id}"' in r)
    assert 'data-label="Load">full<' in row
    assert 'data-label="Duration"><span data-seconds="83">' in row
    assert 'data-label="Pushed">' in row
    assert f'<a href="/runs/{world.run_id}?state=open#quarantined" class="tag warn">1 open</a>' in row
    shown = re.search(r'class="error" href="[^"]+#error"><span title="([^"]+)">([^<]+)</span>', row)
    assert shown, row
    assert shown.group(1) == str(escape(error)) and len(shown.group(2)) <= 61  # short, full on hover
    run_page = viewer.get(f"/runs/{world.run_id}").text
    assert f'id="error">{escape(error)}</dd>' in run_page  # the full text on the run page

    # The overview's quarantined count links to exactly the runs holding those records.
    overview = viewer.get("/").text
    link = re.search(
        r'<a href="(/runs\?[^"]+)" title="the runs holding them"><span class="tag warn">(\d+)<', overview
    )
    assert link, overview
    target = link.group(1).replace("&amp;", "&")
    assert parse_qs(urlsplit(target).query) == {"connector": ["sf"], "quarantine": ["open"]}
    listed = viewer.get(target).text
    held = re.search(r"(\d+) run\(s\) holding (\d+) open quarantined record\(s\) of sf", listed)
    assert held and held.group(2) == link.group(2)
    assert f'href="/runs/{world.run_id}"' in listed

    # Resolved, the run leaves the filtered list (and the overview shows no count).
    with world.ledger.engine.begin() as conn:
        conn.execute(update(quarantine).values(resolved_at=datetime.now(UTC)))
    assert "No run matches." in viewer.get(target).text
    assert 'title="the runs holding them"' not in viewer.get("/").text


def _quarantine_many(world: World, count: int) -> list[int]:
    """``count`` more open records quarantined in the world's run, under two reasons."""
    now = datetime.now(UTC)
    with world.ledger.engine.begin() as conn:
        for n in range(count):
            conn.execute(
                insert(quarantine).values(
                    run_id=world.run_id,
                    connector="sf",
                    object_type="ContactPointTypeConsent",
                    record_id=f"0ZW{n:015d}",
                    stage="pull",
                    reason="no email" if n % 3 == 0 else "purpose not in mapping",
                    created_at=now,
                )
            )
        return list(
            conn.execute(
                select(quarantine.c.id).where(quarantine.c.run_id == world.run_id).order_by(quarantine.c.id)
            ).scalars()
        )


def _requested(world: World) -> set[int]:
    with world.ledger.engine.connect() as conn:
        return set(
            conn.execute(
                select(quarantine.c.id).where(quarantine.c.retry_requested_at.is_not(None))
            ).scalars()
        )


def test_quarantined_records_are_paginated_retried_in_bulk_and_a_retry_returns_to_where_one_was(
    app: Any, world: World
) -> None:
    ids = _quarantine_many(world, 30)  # 31 with the world's odd record
    client = log_in(TestClient(app), "rex")
    first = client.get(f"/runs/{world.run_id}").text
    assert "Quarantined records (31)" in first and "page 1 of 2 (31 in all)" in first
    assert first.count('name="ids"') == 25
    assert f'href="/runs/{world.run_id}?page=2#quarantined"' in first
    second = client.get(f"/runs/{world.run_id}", params={"page": 2, "state": "open"}).text
    assert second.count('name="ids"') == 6
    back = f"/runs/{world.run_id}?state=open&page=2"

    # Two ticked on page 2: only they, and back to page 2 with its filter, at the list.
    chosen = ids[-2:]
    response = client.post(
        f"/runs/{world.run_id}/retry",
        data={
            "scope": "selected",
            "ids": [str(i) for i in chosen],
            "back": back,
            "csrf_token": page_csrf(second),
        },
        follow_redirects=False,
    )
    assert response.status_code == 303
    target = urlsplit(response.headers["location"])
    assert target.path == f"/runs/{world.run_id}" and target.fragment == "quarantined"
    assert parse_qs(target.query) == {"state": ["open"], "page": ["2"], "retried": ["2"]}
    assert _requested(world) == set(chosen)
    landed = client.get(response.headers["location"]).text
    assert "2 quarantined record(s) queued again" in landed
    assert landed.count("re-read requested") == 2
    audited = [e["what"]["quarantine"] for e in entries(world, action="quarantine.retried")]
    assert sorted(audited) == sorted(chosen)  # one audit entry per record, naming it

    # One reason: only the open records of that reason.
    no_email = {i for n, i in enumerate(ids[1:]) if n % 3 == 0}
    client.post(
        f"/runs/{world.run_id}/retry",
        data={"scope": "reason", "reason": "no email", "back": back, "csrf_token": page_csrf(second)},
    )
    assert _requested(world) == set(chosen) | no_email

    # A single retry returns to the same page, at its row.
    one = next(i for i in ids if i not in _requested(world))
    single = client.post(
        f"/quarantine/{one}/retry",
        data={"back": back, "csrf_token": page_csrf(second)},
        follow_redirects=False,
    )
    assert single.headers["location"].endswith(f"#q{one}")
    assert urlsplit(single.headers["location"]).query.startswith("state=open&page=2")

    # All the rest; a foreign "back" cannot send the user elsewhere.
    everything = client.post(
        f"/runs/{world.run_id}/retry",
        data={"scope": "all", "back": "https://evil.example/", "csrf_token": page_csrf(second)},
        follow_redirects=False,
    )
    assert everything.headers["location"].startswith(f"/runs/{world.run_id}?retried=")
    assert _requested(world) == set(ids)

    # Nothing left, or none ticked: back to the page, saying why; ids of another run are refused.
    for form, why in (
        ({"scope": "all"}, "no open quarantined record"),
        ({"scope": "selected"}, "no record ticked"),
    ):
        again = client.post(
            f"/runs/{world.run_id}/retry", data={**form, "back": back, "csrf_token": page_csrf(second)}
        )
        assert again.status_code == 200 and "page=2" in str(again.url)
        alert = again.text[again.text.index('role="alert"') :].split("</div>")[0]
        assert why in alert and "queued again" not in again.text
    foreign = client.post(
        f"/runs/{world.run_id}/retry",
        data={"scope": "selected", "ids": ["999999"], "csrf_token": page_csrf(second)},
    )
    assert "are not open records of run" in foreign.text

    # A viewer cannot retry.
    viewer = log_in(TestClient(app), "vic")
    page = viewer.get(f"/runs/{world.run_id}").text
    assert 'name="ids"' not in page and "Retry all open" not in page
    denied = viewer.post(f"/runs/{world.run_id}/retry", data={"scope": "all", "csrf_token": page_csrf(page)})
    assert denied.status_code == 403


@SQLITE_ONLY
def test_the_api_retries_in_bulk_and_pages_a_runs_quarantined_records(app: Any, world: World) -> None:
    ids = _quarantine_many(world, 4)
    client = TestClient(app)
    token = api_login(client, "rex")
    listed = client.get(f"/api/runs/{world.run_id}/quarantined", params={"per_page": 2, "page": 3}).json()
    assert listed["total"] == 5 and listed["pages"] == 3 and len(listed["items"]) == 1
    assert {r["reason"] for r in listed["reasons"]} >= {"no email", "purpose not in mapping"}
    done = client.post(
        f"/api/runs/{world.run_id}/retry",
        json={"scope": "selected", "ids": ids[:2]},
        headers={"X-CSRF-Token": token},
    ).json()
    assert done["retried"] == ids[:2] and done["refused"] == []
    assert _requested(world) == set(ids[:2])


def test_a_run_shows_the_records_it_reread(reviewer: TestClient, world: World, cli: Cli) -> None:
    page = reviewer.get(f"/runs/{world.run_id}").text
    odd = re.search(
        r'<tr id="q(\d+)">\s*<td data-label="Select"><input[^>]+>.*?' + world.odd_record, page, re.S
    )
    assert odd, page
    reviewer.post(f"/quarantine/{odd.group(1)}/retry", data={"csrf_token": page_csrf(page)})
    report = synced(cli)  # the next run re-reads it (and, still odd, quarantines it again)
    later = reviewer.get(f"/runs/{report['run_id']}").text
    assert "Re-read in this run (1)" in later
    reread = later[later.index('id="reread"') :]
    assert world.odd_record in reread and "quarantined again" in reread
    assert f'<a href="/runs/{world.run_id}">run {world.run_id[:8]}</a>' in reread
    earlier = reviewer.get(f"/runs/{world.run_id}").text
    row = earlier[earlier.index(f'<tr id="q{odd.group(1)}">') :].split("</tr>")[0]
    assert f're-read by <a href="/runs/{report["run_id"]}">' in row
    assert "Re-read in this run (0)" in earlier


def test_audit_filters_are_choices_an_unknown_address_says_so_and_detail_times_are_local(
    app: Any, world: World
) -> None:
    client = log_in(TestClient(app), "rex")
    page = client.get("/audit").text
    actions = re.search(r'<select name="action">(.*?)</select>', page, re.S)
    assert actions and "<option>objection.raised</option>" in actions.group(1)
    assert "<option>quarantine.retried</option>" not in actions.group(1)  # only what exists
    assert re.search(r'<select name="connector">.*?<option>sf</option>', page, re.S)
    rules = re.search(r'<select name="rule">(.*?)</select>', page, re.S)
    assert rules and len(re.findall("<option>", rules.group(1))) >= 1
    # A new action shows up (the choices keep up with the trail).
    held = client.get(f"/runs/{world.run_id}").text
    qid = re.search(r'action="/quarantine/(\d+)/retry"', held)
    assert qid
    client.post(f"/quarantine/{qid.group(1)}/retry", data={"csrf_token": page_csrf(held)})
    page = client.get("/audit").text
    assert "<option>quarantine.retried</option>" in page
    chosen = client.get("/audit", params={"action": "quarantine.retried"}).text
    assert "<option selected>quarantine.retried</option>" in chosen

    unknown = client.post("/audit", data={"email": "nobody-here@example.com", "csrf_token": page_csrf(page)})
    assert "No subject in the ledger has (or, erased, had) this address" in unknown.text
    assert "<table" not in unknown.text.split("<main>")[1]  # no empty table
    assert "nobody-here" not in str(unknown.url)

    # A time inside the details column is a <time> the page shows local.
    api = TestClient(app)
    api_login(api, "rex")
    decided_at = datetime.now(UTC).replace(microsecond=0)
    from consentsync import audit
    from consentsync.audit import AuditRecord

    with world.ledger.engine.begin() as conn:
        audit.append(
            conn,
            [AuditRecord("test.timed", {"due": decided_at.isoformat().replace("+00:00", "Z")}, source="ops")],
            decided_at,
        )
    timed = client.get("/audit", params={"action": "test.timed"}).text
    assert f'due=<time datetime="{decided_at.isoformat().replace("+00:00", "Z")}"' in timed


def test_the_subject_page_shows_consent_evidence_and_pages_its_history(
    viewer: TestClient, world: World
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    email = "evidence.person@example.com"
    for n in range(30):
        world.ledger.record(
            Identity(email=email),
            Evidence(
                purpose="email_marketing",
                channel="email",
                status=ConsentStatus.GRANTED if n % 2 else ConsentStatus.WITHDRAWN,
                basis=None,
                event_time=now - timedelta(days=40 - n),
                observed_at=now,
                source="web_form",
                origin=Origin.CAPTURE,
                notice_version=f"notice-v{n}",
                double_opt_in_at=now - timedelta(days=40 - n, minutes=-5) if n % 2 else None,
                evidence_ref=f"=form-{n}",
            ),
        )
    found = viewer.post(
        "/subjects", data={"email": email, "csrf_token": page_csrf(viewer.get("/subjects").text)}
    )
    page = found.text
    state = page[page.index("<h2>Effective state</h2>") : page.index('id="history"')]
    row = next(r for r in state.split("<tr>") if "email_marketing" in r)
    # The newest event's evidence, per purpose: notice, double opt-in, reference, where captured.
    assert "notice <strong>notice-v29</strong>" in row
    assert "double opt-in <time datetime=" in row
    assert 'ref <code class="id">=form-29</code>' in row  # shown exactly as held
    assert "captured via web_form" in row
    assert "History (30, newest first)" in page and "page 1 of 2 (30 in all)" in page
    history = page[page.index('id="history"') :]
    assert history.count("notice <strong>") == 25
    assert history.index("notice-v29") < history.index("notice-v28")
    older = viewer.get(str(found.url), params={"page": 2}).text
    assert "notice-v0<" in older and "notice-v29" not in older[older.index('id="history"') :]


@SQLITE_ONLY
def test_an_api_save_that_changes_nothing_writes_no_audit_entry(app: Any, world: World) -> None:
    client = TestClient(app)
    token = api_login(client, "ada")
    before = len(entries(world))
    same = client.post(
        "/api/users/vic", json={"role": "viewer", "disabled": False}, headers={"X-CSRF-Token": token}
    )
    assert same.status_code == 200 and same.json()["role"] == "viewer"
    assert len(entries(world)) == before
    changed = client.post("/api/users/vic", json={"role": "reviewer"}, headers={"X-CSRF-Token": token})
    assert changed.json()["role"] == "reviewer"
    assert [e["action"] for e in entries(world)[before:]] == ["user.role_changed"]


@SQLITE_ONLY
def test_a_login_form_left_open_keeps_the_name_and_says_why(app: Any, world: World) -> None:
    client = TestClient(app)
    login_csrf(client)
    client.cookies.delete("consentsync_login")  # its hour is over: the cookie is gone
    response = client.post(
        "/login",
        data={"name": "rex", "password": PASSWORDS["rex"], "csrf_token": "stale", "next": "/runs"},
        follow_redirects=False,
    )
    assert response.status_code == 400
    assert "This login form had expired" in response.text
    assert 'name="name" autocomplete="username" required value="rex"' in response.text
    assert PASSWORDS["rex"] not in response.text
    assert 'name="next" value="/runs"' in response.text
    again = client.post(
        "/login",
        data={
            "name": "rex",
            "password": PASSWORDS["rex"],
            "csrf_token": page_csrf(response.text),
            "next": "/runs",
        },
        follow_redirects=False,
    )
    assert again.status_code == 303 and again.headers["location"] == "/runs"


@SQLITE_ONLY
def test_a_form_sent_after_the_session_ended_returns_after_login_with_what_was_typed(
    app: Any, world: World
) -> None:
    client = log_in(TestClient(app), "rex")
    path = f"/objections/{world.objection_id}"
    form = client.get(path).text
    world_accounts = app.state.console.accounts
    world_accounts.end_sessions("rex", actor="ada")  # ended elsewhere while the form was open
    reason = "Compelling grounds: fraud case 17 <kept>"
    sent = client.post(
        f"{path}/decide",
        data={"decision": "reject", "reason": reason, "csrf_token": page_csrf(form)},
        headers={"referer": f"http://testserver{path}"},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    target = urlsplit(sent.headers["location"])
    assert target.path == "/login" and parse_qs(target.query) == {"next": [path], "expired": ["1"]}
    login_page = client.get(sent.headers["location"]).text
    assert "Your session ended before the form was sent, so nothing was done" in login_page
    assert 'autocomplete="username" required value="rex"' in login_page  # whose form it was
    assert reason not in sent.headers["location"] and "fraud" not in login_page
    assert world.ledger.list_objections()[0]["status"] == "pending"  # nothing was decided

    # Another account logging in on this browser does not get it.
    other = client.post(
        "/login",
        data={"name": "ada", "password": PASSWORDS["ada"], "csrf_token": page_csrf(login_page), "next": path},
        follow_redirects=True,
    )
    assert "fraud case 17" not in other.text
    client.post("/logout", data={"csrf_token": page_csrf(other.text)})

    back = client.post(
        "/login",
        data={"name": "rex", "password": PASSWORDS["rex"], "csrf_token": login_csrf(client), "next": path},
        follow_redirects=True,
    )
    assert urlsplit(str(back.url)).path == path
    assert f'<textarea name="reason" rows="3" required>{escape(reason)}</textarea>' in back.text
    assert 'value="reject" checked' in back.text
    assert "what you typed is filled in again" in back.text
    assert "fraud case 17" not in client.get(path).text  # once

    # A form whose CSRF token is not the ended session's own keeps nothing, and says so.
    world_accounts.end_sessions("rex", actor="ada")
    forged = client.post(
        f"{path}/decide",
        data={"decision": "reject", "reason": "x", "csrf_token": "forged"},
        follow_redirects=False,
    )
    assert parse_qs(urlsplit(forged.headers["location"]).query)["expired"] == ["lost"]
    assert "could not be kept" in client.get(forged.headers["location"]).text
    # Logging out of an ended session is no lost form.
    out = client.post("/logout", data={"csrf_token": "x"}, follow_redirects=False)
    assert out.headers["location"] == "/login"
