"""Two daemons racing for one connector on PostgreSQL, the first paused (a frozen VM, SIGSTOP, a
host asleep) right after it marked a push batch sent and before the CRM saw it. Its lock session
is gone and its lease runs out; a second daemon takes the connector over, pushes the batch, and
then the person's later choice. When the first wakes, it must not send its stale batch: the CRM
would hold the old value, and the next run would read it back as the person's."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import text, update

from consentsync import audit
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, Evidence
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import connector_leases
from consentsync.ledger.service import utcnow
from tests.integration.crash_config import CONNECTOR, sync_command
from tests.integration.helpers import holding_env, migrated_crash_config, seeded_org, wait_until_held

# The connector's lease (a third of the default), and a pause longer than half of it: a
# run that saw its lease current no later than a heartbeat (a third of it) before the pause
# cannot know it still owns the connector.
LEASE_SECONDS = 20
PAUSE_SECONDS = 11


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(30, seed=3)


@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_a_run_paused_past_its_lease_sends_nothing_stale_when_it_wakes(
    tmp_path: Path, ledger_url: str, org: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = migrated_crash_config(tmp_path / "run", org, ledger_url, monkeypatch)
    data = yaml.safe_load(config.read_text())
    data["connectors"][0]["lease_seconds"] = LEASE_SECONDS
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    application = ledger_url.rsplit("application_name=", 1)[1]
    env = {**os.environ}
    env.pop("CONSENTSYNC_CONFIG", None)
    command = sync_command(config)
    first_sync = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first_sync.returncode == 0, first_sync.stderr[-800:]
    contact = next(c for c in org.org.records("Contact") if c.get("Email") and not c["HasOptedOutOfEmail"])
    email, record = contact["Email"], contact["Id"]
    ledger = open_ledger(load_config(config))
    try:
        now = utcnow()
        ledger.record(
            Identity(email=email),
            Evidence.from_web_form(ConsentStatus.WITHDRAWN, now - timedelta(seconds=5), now),
        )
        held = tmp_path / "failpoints"
        paused = subprocess.Popen(
            command,
            env=holding_env(held, "sync.push.sent=hold@1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        marker = held / "sync.push.sent.held"
        wait_until_held(paused, marker, "its first push batch marked sent")
        os.kill(paused.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            # Its run lock's session is cut (a proxy's idle timeout) and its lease runs out.
            with ledger.engine.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
                        "JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' "
                        "WHERE a.application_name = :name AND a.pid <> pg_backend_pid()"
                    ),
                    {"name": application},
                )
                conn.commit()
            with ledger.engine.begin() as conn:
                conn.execute(
                    update(connector_leases)
                    .where(connector_leases.c.connector == CONNECTOR)
                    .values(expires_at=utcnow() - timedelta(seconds=1))
                )
            took_over = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            assert took_over.returncode == 0, took_over.stderr[-800:]
            assert org.org.get(record)["HasOptedOutOfEmail"] is True
            # The person opts in again, confirmed by double opt-in; the new owner pushes it.
            later = utcnow()
            ledger.record(
                Identity(email=email),
                Evidence.from_web_form(
                    ConsentStatus.GRANTED, later, later, notice_version="v2", double_opt_in_at=later
                ),
            )
            pushed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            assert pushed.returncode == 0, pushed.stderr[-800:]
            assert org.org.get(record)["HasOptedOutOfEmail"] is False
            time.sleep(max(0.0, PAUSE_SECONDS - (time.monotonic() - stopped_at)))
        finally:
            marker.unlink(missing_ok=True)
            os.kill(paused.pid, signal.SIGCONT)
        _, woke_said = paused.communicate(timeout=300)
        assert paused.returncode == 75 and "lease lost" in woke_said, woke_said[-800:]
        assert org.org.get(record)["HasOptedOutOfEmail"] is False, "the woken run sent its stale opt-out"
        for _ in range(2):
            clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            assert clean.returncode == 0, clean.stderr[-800:]
        assert org.org.get(record)["HasOptedOutOfEmail"] is False
        state = {(p["purpose"], p["channel"]): p["status"] for p in ledger.subject_view(email)["purposes"]}
        assert state[("email_marketing", "email")] == "granted", "the ledger took a stale push for the person"
        with ledger.engine.connect() as conn:
            entries = list(audit.entries(conn, action="crm.pushed"))
            assert audit.verify(conn).ok
        twice = [key for key, n in Counter(e["what"]["outbox"] for e in entries).items() if n > 1]
        assert twice == []
    finally:
        ledger.engine.dispose()


def test_a_crm_call_after_a_pause_past_half_the_lease_checks_it_first(
    tmp_path: Path, ledger_url: str, org: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rule on either ledger, in one process: a run's CRM calls (a ``Prefetch`` built in
    the run's context) are begun only while its lease is known current; after a pause longer
    than half its time to live the lease is checked first, and a lease taken over meanwhile
    stops the calls before the first is made."""
    import consentsync.sync.lease as lease_module
    from consentsync.sync.lease import Lease, LeaseLost
    from consentsync.sync.prefetch import Prefetch

    config = migrated_crash_config(tmp_path / "run", org, ledger_url, monkeypatch)
    ledger = open_ledger(load_config(config))
    made: list[int] = []

    def calls() -> Iterator[int]:
        for number in range(3):
            made.append(number)  # the CRM call
            yield number

    try:
        lease = Lease(ledger.engine, CONNECTOR, "run-1", ledger.clock, ttl=timedelta(seconds=60))
        lease.acquire()
        try:
            # Fresh: the calls go, and nothing more is asked of the ledger.
            assert [item for item, _ in Prefetch(calls())] == [0, 1, 2]
            # Paused for 31 s, during which another daemon took the connector over.
            paused = lease_module._elapsed() + 31
            monkeypatch.setattr(lease_module, "_elapsed", lambda: paused)
            with ledger.engine.begin() as conn:
                conn.execute(update(connector_leases).values(token=connector_leases.c.token + 1))
            made.clear()
            with pytest.raises(LeaseLost):
                list(Prefetch(calls()))
            assert made == [], "a CRM call was made after the lease was lost"
            assert lease.lost.is_set()
        finally:
            lease.release()
        # Outside a run's lease (a tool, a dry run) nothing is fenced.
        assert [item for item, _ in Prefetch(calls())] == [0, 1, 2]
    finally:
        ledger.engine.dispose()
