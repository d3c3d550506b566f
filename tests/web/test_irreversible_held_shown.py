"""The console tells ops of writes a run held back as irreversible (F8): the run's page says how
many, why (a restriction, an expiry or no consent on record never unsubscribes or deletes), that
the CRM still shows those records as before, and where to read what to do; the runs list marks
the run. A run that held none says nothing of it."""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import insert

from consentsync.domain import canonical_json
from consentsync.ledger.schema import sync_runs
from consentsync.sync.runs import RunCounts
from tests.web.conftest import World


def _run(world: World, irreversible_held: int) -> str:
    run_id = str(uuid.uuid4())
    started = datetime.now(UTC) + timedelta(seconds=5)
    with world.ledger.engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(
                id=run_id,
                connector="sf",
                started_at=started,
                finished_at=started + timedelta(seconds=2),
                status="succeeded",
                full_load=False,
                counts=canonical_json(asdict(RunCounts(read=1, irreversible_held=irreversible_held))),
                error=None,
            )
        )
    return run_id


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_run_page_says_how_many_irreversible_writes_were_held_and_why(
    world: World, viewer: TestClient
) -> None:
    run_id = _run(world, irreversible_held=2)
    page = viewer.get(f"/runs/{run_id}")
    assert page.status_code == 200
    text = _text(page.text)
    assert "Irreversible writes held (2)" in text, text
    assert "left out 2 write(s) that sf could never undo" in text
    assert "a restriction (Art. 18), an expiry or no consent on record" in text
    assert "sf still shows those records as before" in text
    assert 'docs/adoption.md , "Irreversible writes held"' in text
    assert 'id="irreversible"' in page.text


def test_the_runs_list_marks_a_run_that_held_irreversible_writes(world: World, viewer: TestClient) -> None:
    run_id = _run(world, irreversible_held=3)
    page = viewer.get("/runs?connector=sf")
    assert page.status_code == 200
    assert f'href="/runs/{run_id}#irreversible"' in page.text
    assert "3 irreversible held" in _text(page.text)


def test_a_run_that_held_none_says_nothing_of_irreversible_writes(world: World, viewer: TestClient) -> None:
    run_id = _run(world, irreversible_held=0)
    page = viewer.get(f"/runs/{run_id}")
    assert page.status_code == 200
    assert "Irreversible writes held" not in page.text
    assert 'id="irreversible"' not in page.text
    assert "irreversible held" not in viewer.get("/runs?connector=sf").text
