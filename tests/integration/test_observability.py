"""The daemon's monitoring endpoints: /metrics, /healthz, /readyz and the late-suppression check,
against a real ledger (SQLite, and PostgreSQL when configured) and a real HTTP server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from consentsync.ledger.schema import subjects, sync_runs
from consentsync.ledger.service import Ledger
from consentsync.observability import HealthServer, Metrics, late_suppressions, readiness
from consentsync.sync.engine import RunCounts, RunReport
from tests.integration.helpers import outbox_row


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # no proxy between the test and 127.0.0.1
    yield session
    session.close()


@pytest.fixture
def subject_id(ledger: Ledger) -> int:
    with ledger.engine.begin() as conn:
        return conn.execute(
            insert(subjects).values(uid=str(uuid.uuid4()), created_at=ledger.clock(), restricted=False)
        ).inserted_primary_key[0]


def _run_row(ledger: Ledger, connector: str, status: str, started_at: datetime) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(
                id=str(uuid.uuid4()),
                connector=connector,
                started_at=started_at,
                finished_at=started_at + timedelta(seconds=5),
                status=status,
                full_load=False,
                counts="{}",
                error="boom" if status == "failed" else None,
            )
        )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def server(ledger: Ledger) -> Iterator[HealthServer]:
    metrics = Metrics(ledger.engine, clock=ledger.clock)
    health = HealthServer(metrics, ledger.engine, host="127.0.0.1", port=0).start()
    yield health
    health.stop()


def test_metrics_from_runs_and_ledger(
    ledger: Ledger, subject_id: int, server: HealthServer, http: requests.Session
) -> None:
    now = ledger.clock()
    started = now - timedelta(seconds=42)
    server.metrics.observe_run(
        RunReport(
            "run-1",
            "salesforce",
            "succeeded",
            started,
            finished_at=now,
            counts=RunCounts(
                read=120,
                quarantined=2,
                state_changes=7,
                pushed=5,
                push_failed=1,
                api_calls=9,
                api_used=1000,
                api_limit=15000,
            ),
        )
    )
    server.metrics.observe_run(
        RunReport(
            "run-2",
            "salesforce",
            "failed",
            now,
            finished_at=now + timedelta(seconds=3),
            counts=RunCounts(read=3, api_calls=1),
        )
    )
    # A dry run changes nothing and is not counted.
    server.metrics.observe_run(RunReport("run-3", "salesforce", "dry_run", now, finished_at=now))

    outbox_row(ledger, subject_id, created_at=now - timedelta(minutes=30))  # oldest pending suppression
    outbox_row(ledger, subject_id, created_at=now - timedelta(minutes=5))
    outbox_row(ledger, subject_id, created_at=now - timedelta(hours=5), suppression=False)  # not suppression
    outbox_row(ledger, subject_id, created_at=now - timedelta(hours=9), status="done")
    outbox_row(ledger, subject_id, created_at=now - timedelta(hours=9), status="dead")
    outbox_row(ledger, subject_id, connector="hubspot", suppression=False)

    response = http.get(f"{server.url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = _samples(response.text)
    sf = {"connector": "salesforce"}
    assert _value(samples, "consentsync_records_read_total", **sf) == 123
    assert _value(samples, "consentsync_ledger_changes_total", **sf) == 7
    assert _value(samples, "consentsync_pushes_total", **sf, result="done") == 5
    assert _value(samples, "consentsync_pushes_total", **sf, result="failed") == 1
    assert _value(samples, "consentsync_api_calls_total", **sf) == 10
    assert _value(samples, "consentsync_quarantined_total", **sf) == 2
    assert _value(samples, "consentsync_api_budget_remaining", **sf) == 14000
    assert _value(samples, "consentsync_runs_total", **sf, status="succeeded") == 1
    assert _value(samples, "consentsync_runs_total", **sf, status="failed") == 1
    assert ("consentsync_runs_total", (("connector", "salesforce"), ("status", "dry_run"))) not in samples
    assert _value(samples, "consentsync_run_duration_seconds_count", **sf) == 2
    assert _value(samples, "consentsync_run_duration_seconds_sum", **sf) == 45
    assert _value(samples, "consentsync_last_success_timestamp_seconds", **sf) == now.timestamp()
    # Refreshed from the ledger on scrape.
    assert _value(samples, "consentsync_ledger_up") == 1
    assert _value(samples, "consentsync_outbox_pending", **sf) == 3
    assert _value(samples, "consentsync_outbox_dead", **sf) == 1
    assert _value(samples, "consentsync_oldest_pending_suppression_age_seconds", **sf) == 1800
    hubspot = {"connector": "hubspot"}
    assert _value(samples, "consentsync_outbox_pending", **hubspot) == 1
    assert _value(samples, "consentsync_outbox_dead", **hubspot) == 0
    assert _value(samples, "consentsync_oldest_pending_suppression_age_seconds", **hubspot) == 0

    # The next scrape sees the ledger as it is now: the suppressions went out.
    outbox_row(ledger, subject_id, connector="hubspot", created_at=now - timedelta(seconds=90))
    samples = _samples(http.get(f"{server.url}/metrics", timeout=5).text)
    assert _value(samples, "consentsync_outbox_pending", **hubspot) == 2
    assert _value(samples, "consentsync_oldest_pending_suppression_age_seconds", **hubspot) == 90


def test_metrics_registry_is_private(ledger: Ledger) -> None:
    # Two instances (a daemon restarted in-process, or tests) must not collide in a global registry.
    first, second = Metrics(ledger.engine), Metrics(ledger.engine)
    first.observe_run(RunReport("r", "salesforce", "succeeded", ledger.clock(), finished_at=ledger.clock()))
    assert b'consentsync_runs_total{connector="salesforce",status="succeeded"} 1.0' in first.exposition()
    assert b"consentsync_runs_total{" not in second.exposition()
    # With no run seen and no budget reported, the budget gauge has no sample at all.
    assert b"consentsync_api_budget_remaining{" not in first.exposition()


def test_healthz_readyz_and_not_found(ledger: Ledger, server: HealthServer, http: requests.Session) -> None:
    assert server.port != 0
    healthz = http.get(f"{server.url}/healthz", timeout=5)
    assert (healthz.status_code, healthz.text.strip()) == (200, "ok")
    assert http.get(f"{server.url}/nope", timeout=5).status_code == 404

    now = ledger.clock()
    # Two failures after a success: not yet past the threshold of 3.
    _run_row(ledger, "salesforce", "succeeded", now - timedelta(hours=4))
    _run_row(ledger, "salesforce", "failed", now - timedelta(hours=3))
    _run_row(ledger, "salesforce", "failed", now - timedelta(hours=2))
    _run_row(ledger, "hubspot", "failed", now - timedelta(hours=2))
    ready = http.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}

    _run_row(ledger, "salesforce", "failed", now - timedelta(hours=1))
    _run_row(ledger, "salesforce", "running", now)  # a run in progress neither fails nor clears it
    not_ready = http.get(f"{server.url}/readyz", timeout=5)
    assert not_ready.status_code == 503
    assert not_ready.headers["Content-Type"] == "application/json"
    body = not_ready.json()
    assert body["connectors"] == ["salesforce"]
    assert "boom" not in not_ready.text  # run errors stay out of the body

    # One success clears it.
    _run_row(ledger, "salesforce", "succeeded", now + timedelta(minutes=1))
    assert http.get(f"{server.url}/readyz", timeout=5).status_code == 200


def test_readyz_threshold_is_configurable(ledger: Ledger) -> None:
    _run_row(ledger, "salesforce", "failed", ledger.clock())
    assert readiness(ledger.engine, threshold=3)[0] is True
    ready, body = readiness(ledger.engine, threshold=1)
    assert ready is False
    assert body["connectors"] == ["salesforce"]


def test_readyz_when_the_ledger_is_unreachable(tmp_path: Any, http: requests.Session) -> None:
    from sqlalchemy import create_engine

    missing = create_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'ledger.db'}")
    with HealthServer(Metrics(missing), missing, port=0) as health:
        response = http.get(f"{health.url}/readyz", timeout=5)
        assert response.status_code == 503
        assert json.loads(response.text) == {"status": "not ready", "reason": "ledger unreachable"}
        assert str(tmp_path) not in response.text
        # /metrics still answers, and says the ledger is down.
        samples = _samples(http.get(f"{health.url}/metrics", timeout=5).text)
        assert _value(samples, "consentsync_ledger_up") == 0
        assert http.get(f"{health.url}/healthz", timeout=5).status_code == 200
    missing.dispose()


def test_late_suppressions(ledger: Ledger, subject_id: int) -> None:
    now = ledger.clock()
    late = outbox_row(ledger, subject_id, created_at=now - timedelta(hours=3), record_id="003LATE")
    later = outbox_row(ledger, subject_id, connector="hubspot", created_at=now - timedelta(hours=2))
    outbox_row(ledger, subject_id, created_at=now - timedelta(minutes=10))  # young
    outbox_row(ledger, subject_id, created_at=now - timedelta(hours=5), status="done")
    outbox_row(ledger, subject_id, created_at=now - timedelta(hours=5), status="dead")
    outbox_row(ledger, subject_id, created_at=now - timedelta(hours=5), suppression=False)

    found = late_suppressions(ledger.engine, timedelta(hours=1), now=now)
    assert [row["id"] for row in found] == [late, later]
    assert found[0] == {
        "id": late,
        "connector": "salesforce",
        "object": "Contact",
        "record_id": "003LATE",
        "age_seconds": 3 * 3600,
    }
    assert late_suppressions(ledger.engine, timedelta(hours=4), now=now) == []
