"""The console's pages when things go wrong (S48): a connector failing run after run says since when,
how many runs and when it last succeeded; a dead-lettered withdrawal is an alert; a crashed run is
marked as bad as a failed one; the dead-letter page says how to send its rows again."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from consentsync.ledger.schema import outbox, subjects, sync_runs
from tests.web.conftest import World


def _run(world: World, status: str, started: datetime) -> str:
    run_id = str(uuid.uuid4())
    with world.ledger.engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(
                id=run_id,
                connector="sf",
                started_at=started,
                finished_at=started + timedelta(seconds=2),
                status=status,
                full_load=False,
                counts="{}",
                error="credentials: login refused (400): invalid_client" if status == "failed" else None,
            )
        )
    return run_id


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_overview_says_since_when_and_how_many_runs_a_connector_fails(
    world: World, viewer: TestClient
) -> None:
    start = datetime.now(UTC) + timedelta(seconds=5)
    for minute in range(4):
        _run(world, "failed" if minute != 2 else "crashed", start + timedelta(minutes=minute))
    page = viewer.get("/")
    assert page.status_code == 200
    text = _text(page.text)
    assert "failing since" in text and "4 run(s) in a row" in text, text
    assert "last success:" in text
    assert f'href="/runs/{world.run_id}"' in page.text  # the last success, linked


def test_overview_alerts_on_a_dead_lettered_suppression(world: World, viewer: TestClient) -> None:
    assert "dead-lettered suppression" not in viewer.get("/").text
    with world.ledger.engine.begin() as conn:
        subject_id = conn.execute(select(subjects.c.id).limit(1)).scalar_one()
        conn.execute(
            insert(outbox).values(
                connector="sf",
                object_type="Contact",
                record_id="003DEADLETTER0001",
                subject_id=subject_id,
                fields='{"HasOptedOutOfEmail":true}',
                suppression=True,
                rule="objection_direct_marketing",
                created_at=datetime.now(UTC),
                status="dead",
                attempts=10,
            )
        )
    page = viewer.get("/")
    text = _text(page.text)
    assert "No alerts" not in text
    assert "dead-lettered suppression" in text and "sf: 1 withdrawal(s)" in text, text
    assert 'href="/connectors/sf/outbox?status=dead"' in page.text


def test_a_crashed_run_is_marked_bad_in_the_runs_list(world: World, viewer: TestClient) -> None:
    _run(world, "crashed", datetime.now(UTC) + timedelta(seconds=5))
    page = viewer.get("/runs?connector=sf&result=crashed")
    assert page.status_code == 200
    assert re.search(r'<span class="tag bad">crashed</span>', page.text), page.text


def test_the_dead_letter_page_says_how_to_send_them_again(viewer: TestClient) -> None:
    text = _text(viewer.get("/connectors/sf/outbox?status=dead").text)
    assert "consentsync outbox retry ID" in text and "Retry" in text
    assert "they are not retried" not in text
