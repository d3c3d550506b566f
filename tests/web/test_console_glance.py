"""Ops questions answered at a glance (issue 16), on SQLite and PostgreSQL: the overview says when
no daemon runs or a run is overdue, as of when, refreshes itself and links alerts to their runs;
objections show their decision, reason, decider and raiser; the accounts page audits only real
changes, shows last login and lock status, and lets an admin reset a password."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import update

from consentsync.ledger.schema import sync_runs
from consentsync.sync.heartbeat import Heartbeat
from tests.conftest import SQLITE_ONLY
from tests.web.conftest import PASSWORDS, World, log_in, login_csrf, page_csrf
from tests.web.test_console import entries


def test_the_overview_says_no_daemon_runs_or_a_run_is_overdue_as_of_when_and_refreshes(
    viewer: TestClient, world: World
) -> None:
    page = viewer.get("/").text
    assert '<meta http-equiv="refresh" content="60">' in page
    assert "As of <time datetime=" in page
    assert "no daemon running" in page
    assert "overdue" not in page

    # A daemon runs, and the connector's last run began and ended two days ago (its interval is
    # an hour).
    engine = world.ledger.engine
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    with engine.begin() as conn:
        conn.execute(
            update(sync_runs)
            .where(sync_runs.c.id == world.run_id)
            .values(started_at=two_days_ago, finished_at=two_days_ago + timedelta(seconds=5))
        )
    heartbeat = Heartbeat(engine, lambda: datetime.now(UTC))
    heartbeat.beat()
    try:
        page = viewer.get("/").text
    finally:
        heartbeat.stop()
    assert "no daemon running" not in page
    assert "its scheduled run is overdue" in page
    assert f'<a href="/runs/{world.run_id}">Run {world.run_id[:8]}</a>' in page
    assert "(due <time datetime=" in page


def test_objections_show_decision_reason_decider_and_raiser_in_list_and_detail(
    reviewer: TestClient, world: World
) -> None:
    detail = reviewer.get(f"/objections/{world.objection_id}")
    reason = "Compelling legitimate grounds: fraud prevention <checked>"
    decided = reviewer.post(
        f"/objections/{world.objection_id}/decide",
        data={"decision": "reject", "reason": reason, "csrf_token": page_csrf(detail.text)},
        follow_redirects=False,
    )
    assert decided.status_code == 303, decided.text
    (raised,) = entries(world, action="objection.raised")
    raiser = raised["actor"] or raised["source"]
    listing = reviewer.get("/objections?status=all").text
    row = next(r for r in listing.split("<tr>") if f'href="/objections/{world.objection_id}"' in r)
    assert "rejected" in row and ">rex<" in row
    assert str(escape(reason)) in row
    assert row.count("<time datetime=") == 2  # raised and decided, local like every time
    assert f'data-label="Raised by">{escape(raiser)}<' in row
    detail = reviewer.get(f"/objections/{world.objection_id}").text
    assert str(escape(reason)) in detail
    assert "<dt>Decided</dt><dd>by rex <time datetime=" in detail
    assert "<dt>Decision</dt>" in detail


def test_accounts_page_audits_only_changes_shows_last_login_and_lock_and_resets_passwords(
    app: Any, world: World
) -> None:
    log_in(TestClient(app), "vic")
    client = log_in(TestClient(app), "ada")
    page = client.get("/users").text
    assert "<th>Last login</th>" in page
    vic_row = next(r for r in page.split("<tr>") if 'data-label="Name">vic<' in r)
    assert 'data-label="Last login"><time datetime=' in vic_row
    assert "not locked" in vic_row
    rex_row = next(r for r in page.split("<tr>") if 'data-label="Name">rex<' in r)
    assert 'data-label="Last login"><span class="muted">never' in rex_row
    assert "Reset password" in vic_row

    before = len(entries(world))
    unchanged = {"role": "viewer", "disabled": "no", "csrf_token": page_csrf(page)}
    saved = client.post("/users/vic", data=unchanged, follow_redirects=False)
    assert saved.status_code == 303
    assert len(entries(world)) == before  # a save that changes nothing writes nothing
    changed = {**unchanged, "role": "reviewer"}
    assert client.post("/users/vic", data=changed, follow_redirects=False).status_code == 303
    assert [e["action"] for e in entries(world)[before:]] == ["user.role_changed"]

    new_password = "vic-new-password-after-reset-2"
    reset = client.post(
        "/users/vic", data={"password": new_password, "csrf_token": page_csrf(page)}, follow_redirects=True
    )
    assert "Password reset for vic" in reset.text
    assert entries(world)[-1]["action"] == "user.password_changed"
    other = TestClient(app)
    response = other.post(
        "/login",
        data={"name": "vic", "password": new_password, "csrf_token": login_csrf(other), "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert PASSWORDS["vic"] != new_password


@SQLITE_ONLY
def test_the_overview_outbox_and_dead_letter_numbers_link_to_what_they_count(
    viewer: TestClient, world: World
) -> None:
    from sqlalchemy import insert, select

    from consentsync.ledger.schema import outbox, subjects

    with world.ledger.engine.begin() as conn:
        subject_id = conn.execute(select(subjects.c.id).limit(1)).scalar_one()
        now = datetime.now(UTC)
        row = {"connector": "sf", "object_type": "Contact", "subject_id": subject_id, "suppression": True,
               "rule": "sticky_withdrawal", "run_id": world.run_id, "created_at": now, "attempts": 0,
               "fields": '{"HasOptedOutOfEmail": true}'}  # fmt: skip
        conn.execute(
            insert(outbox), [{**row, "record_id": f"003P{n}", "status": "pending"} for n in range(3)]
        )
        conn.execute(
            insert(outbox),
            [
                {
                    **row,
                    "record_id": "003DEAD",
                    "status": "dead",
                    "attempts": 5,
                    "last_error": "FIELD_INTEGRITY",
                }
            ],
        )
    overview = viewer.get("/").text
    assert '<a href="/connectors/sf/outbox?status=pending" title="the pushes waiting">3</a>' in overview
    assert '<a href="/connectors/sf/outbox?status=dead"' in overview
    pending = viewer.get("/connectors/sf/outbox?status=pending").text
    assert "3 push(es)." in pending and "003P0" in pending and "003DEAD" not in pending
    assert "HasOptedOutOfEmail" in pending and "true" not in pending.split("003P0", 1)[1].split("</tr>", 1)[0]
    dead = viewer.get("/connectors/sf/outbox?status=dead").text
    assert "1 push(es)." in dead and "003DEAD" in dead and "FIELD_INTEGRITY" in dead
    assert viewer.get("/connectors/nope/outbox").status_code == 404
    assert viewer.get("/connectors/sf/outbox?status=done").status_code in (400, 422)
