"""A run owns its connector through a lease with a fencing token: a run that lost it can neither
commit nor push again, a second daemon cannot start while the owner lives (even when the owner's
database session, and with it the advisory lock, is gone), and a dead owner's run is recorded as
crashed."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import select, text, update

from consentsync import audit
from consentsync.app import open_ledger, open_sync
from consentsync.config import load_config
from consentsync.domain import as_utc
from consentsync.ledger.schema import connector_leases, crm_links, outbox, sync_runs
from consentsync.sync.lease import Lease, LeaseLost, RunInProgress
from tests.integration.crash_config import CONNECTOR, sync_command
from tests.integration.helpers import holding_env, migrated_crash_config, seeded_org, wait_until_held


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(120, seed=3)


@pytest.fixture
def sync_config(tmp_path: Path, ledger_url: str, org: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    return migrated_crash_config(tmp_path / "run", org, ledger_url, monkeypatch)


def _lease(config: Path, run_id: str, **kwargs: Any) -> Lease:
    ledger = open_ledger(load_config(config))
    return Lease(ledger.engine, CONNECTOR, run_id, ledger.clock, **kwargs)


def test_a_live_lease_refuses_a_second_owner_and_an_expired_one_is_taken_over(sync_config: Path) -> None:
    first = _lease(sync_config, "run-1", ttl=timedelta(seconds=30))
    assert first.acquire() == 1
    with pytest.raises(RunInProgress):
        _lease(sync_config, "run-2").acquire()
    # The owner's lease runs out (it hung): the next run takes over with a larger token, and the
    # first can commit nothing more.
    with first.engine.begin() as conn:
        conn.execute(update(connector_leases).values(expires_at=first.clock() - timedelta(seconds=1)))
    second = _lease(sync_config, "run-2")
    assert second.acquire() == 2
    with pytest.raises(LeaseLost), first.engine.begin() as conn:
        first.check(conn)
    with second.engine.begin() as conn:
        second.check(conn)


def test_the_heartbeat_writes_only_when_no_commit_renewed_the_lease(
    sync_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's page and push commits renew its lease (``check`` in their own transaction); the
    heartbeat then only reads. On SQLite a writer committing back to back can keep another
    connection's BEGIN IMMEDIATE waiting past its busy timeout: a heartbeat that always wrote
    logged lease.renewal_failed in a 1M-contact sync. Once the commits stop (the run waits on the
    CRM), the heartbeat renews the lease itself."""
    import consentsync.sync.lease as lease_module

    beats: list[float] = []
    write_beside = lease_module.beside_writers

    def counted(engine: Any) -> Any:
        beats.append(time.monotonic())
        return write_beside(engine)

    lease = _lease(sync_config, "run-1", ttl=timedelta(seconds=3))  # a beat every second
    lease.acquire()
    monkeypatch.setattr(lease_module, "beside_writers", counted)
    lease.start_heartbeat(on_lost=lambda: pytest.fail("the lease was lost"))
    try:
        committing_until = time.monotonic() + 3.5
        while time.monotonic() < committing_until:  # pages committed back to back
            with lease.engine.begin() as conn:
                lease.check(conn)
            time.sleep(0.05)
        assert beats == [], "the heartbeat wrote while the run's own commits kept the lease"
        time.sleep(3.5)  # waiting on the CRM: nothing commits
        assert beats, "nobody renewed the lease while the run committed nothing"
        with lease.engine.connect() as conn:
            expires_at = conn.execute(select(connector_leases.c.expires_at)).scalar_one()
        assert as_utc(expires_at) > lease.clock() + timedelta(seconds=1)
    finally:
        lease.release()
    assert not lease.lost.is_set()


def test_a_run_whose_lease_is_taken_over_stops_without_committing_more(sync_config: Path) -> None:
    config = load_config(sync_config)
    engine = open_sync(config, CONNECTOR)
    engine.options = type(engine.options)(batch_size=25, signpost_lag_seconds=0)
    # Progress is told after each commit (one commit may hold several batches: sync/writer.py).
    committed: list[tuple[int, int]] = []  # (records read, links) when progress was told

    def take_over_after_two_commits(report: Any) -> None:
        with engine.ledger.engine.connect() as conn:
            links = len(conn.execute(select(crm_links.c.id)).all())
        committed.append((report.counts.read, links))
        if len(committed) == 2:
            with engine.ledger.engine.begin() as conn:  # another daemon takes the connector over
                conn.execute(update(connector_leases).values(token=connector_leases.c.token + 1))

    engine.progress = take_over_after_two_commits
    report = engine.run(full=True)
    assert report.status == "stopped"
    assert report.error is not None and report.error.startswith("lease lost")
    with engine.ledger.engine.connect() as conn:
        linked = len(conn.execute(select(crm_links.c.id)).all())
        pushed = list(audit.entries(conn, action="crm.pushed"))
    read_then, linked_then = committed[1]
    assert linked_then > 0
    assert report.counts.read == read_then, "the run read on after it lost its lease"
    assert linked == linked_then, f"{linked} links against {linked_then}: committed after the lease was lost"
    assert pushed == [], "the run pushed after it lost its lease"


def test_a_dead_owners_run_is_recorded_as_crashed_and_its_connector_is_free(sync_config: Path) -> None:
    env = {**os.environ, "CONSENTSYNC_FAILPOINTS": "sync.page.read=kill@2"}
    env.pop("CONSENTSYNC_CONFIG", None)
    command = sync_command(sync_config)
    killed = subprocess.run([*command, "--full"], env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-400:]
    env.pop("CONSENTSYNC_FAILPOINTS")
    after = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert after.returncode == 0, after.stderr[-800:]
    ledger = open_ledger(load_config(sync_config))
    with ledger.engine.connect() as conn:
        runs = conn.execute(
            select(sync_runs.c.status, sync_runs.c.error).order_by(sync_runs.c.started_at)
        ).all()
    ledger.engine.dispose()
    assert [run.status for run in runs] == ["crashed", "succeeded"]
    assert "process died" in runs[0].error


# Advisory locks and session termination are PostgreSQL's: this test has no SQLite variant.
@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_a_lost_database_session_lets_no_second_daemon_push_twice(
    sync_config: Path, ledger_url: str, tmp_path: Path
) -> None:
    """The owner's lock session is terminated mid-run (its advisory lock goes with it) while the
    run goes on; a second daemon starts at once. Before leases, both ran and pushed the same
    records twice."""
    application = ledger_url.rsplit("application_name=", 1)[1]
    # The first run is held after its first page committed, so the second daemon starts while
    # the owner is alive and mid-run, however fast the run is.
    held = tmp_path / "failpoints"
    env = holding_env(held, "sync.page.read=hold@2")
    command = sync_command(sync_config)
    first = subprocess.Popen(
        [*command, "--full"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = held / "sync.page.read.held"
    wait_until_held(first, marker, "its second page")
    env.pop("CONSENTSYNC_FAILPOINTS")
    ledger = open_ledger(load_config(sync_config))
    with ledger.engine.connect() as conn:
        assert conn.execute(select(crm_links.c.id).limit(1)).first(), "no first page committed"
    with ledger.engine.connect() as conn:
        terminated = conn.execute(
            text(
                # The session holding the run's advisory lock: a proxy's idle timeout cuts the
                # idle one first, and the run goes on over its other connections.
                "SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a "
                "JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' "
                "WHERE a.application_name = :name AND a.state = 'idle' AND a.pid <> pg_backend_pid()"
            ),
            {"name": application},
        ).scalar_one()
    assert terminated >= 1
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    marker.unlink()
    first.wait(timeout=300)
    # Whatever each of them did, a clean run afterwards finishes the work.
    for _ in range(2):
        clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert clean.returncode == 0, clean.stderr[-800:]
    with ledger.engine.connect() as conn:
        entries = list(audit.entries(conn, action="crm.pushed"))
        done = conn.execute(select(outbox.c.id).where(outbox.c.status == "done")).all()
        verified = audit.verify(conn)
    ledger.engine.dispose()
    assert verified.ok
    twice = [key for key, n in Counter(e["what"]["outbox"] for e in entries).items() if n > 1]
    assert twice == [], f"outbox rows pushed and audited twice: {twice[:5]}"
    records = Counter((e["what"]["object"], e["what"]["record"], str(e["new"])) for e in entries)
    assert [key for key, n in records.items() if n > 1] == [], "the same write was pushed twice"
    assert len(entries) == len(done)
    assert first.returncode == 0, "the owner should have gone on after losing only its lock session"
    assert second.returncode == 75 and "is running connector" in second.stderr, second.stderr[-800:]
