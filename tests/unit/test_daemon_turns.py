"""Daemons sharing a ledger take turns (one run of a connector per schedule period between them),
but only a turn the other daemon's run did: a peer whose runs fail (a wrong secret on its host,
no route to the CRM) must not keep a healthy daemon from syncing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, insert

from consentsync.ledger.schema import connector_leases, metadata, sync_runs
from consentsync.sync.daemon import Daemon
from consentsync.sync.settings import Schedule

PEER = "otherhost:4242"
NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "passed_over"),
    [
        ("running", True),
        ("succeeded", True),
        ("held", True),
        ("failed", False),
        ("crashed", False),
        ("stopped", False),
    ],
)
def test_a_turn_is_passed_over_only_for_a_peer_run_that_did_it(status: str, passed_over: bool) -> None:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    started = NOW - timedelta(seconds=300)  # half a period ago
    with engine.begin() as conn:
        # The peer daemon is alive (its heartbeat row) and took the connector's lease for a run.
        conn.execute(
            insert(connector_leases).values(
                connector="~daemon:" + PEER, token=0, run_id="0" * 36, holder=PEER,
                acquired_at=NOW, expires_at=NOW + timedelta(days=1),
            )
        )  # fmt: skip
        conn.execute(
            insert(connector_leases).values(
                connector="sf", token=1, run_id="run-1", holder=PEER,
                acquired_at=started, expires_at=started + timedelta(seconds=3),
            )
        )  # fmt: skip
        conn.execute(
            insert(sync_runs).values(
                id="run-1", connector="sf", status=status, started_at=started, full_load=False, counts="{}"
            )
        )
    daemon = SimpleNamespace(
        ledger=SimpleNamespace(engine=engine, clock=lambda: NOW),
        heartbeat=SimpleNamespace(holder="thishost:1"),
        config=SimpleNamespace(
            connector=lambda _name: SimpleNamespace(schedule=Schedule(interval_seconds=600))
        ),
    )
    assert Daemon._ran_by_another_daemon(daemon, "sf") is passed_over  # type: ignore[arg-type]
