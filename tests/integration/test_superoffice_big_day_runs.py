"""The sync engine against the SuperOffice sandbox, through a day holding more changes than a run
gets through (a bulk import): each run is cut inside that day, by its call budget or by SIGKILL
(a timeout, a crash), and the next goes on from where it stopped, so a withdrawal made after the
bulk reaches the ledger. Before, a day's rows were handed on only once the whole day was read: a
run cut inside the day committed nothing, and every run stopped at the same place for good."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from consentsync_superoffice.sandbox.archive import ArchiveQuery
from consentsync_superoffice.sandbox.harness import SuperOfficeHarness
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox
from consentsync_superoffice.sandbox.tenant import SuperOfficeTenant

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.ledger.service import Ledger, NotFound
from consentsync.sdk.crashtest import sync_command
from consentsync.sdk.harness import write_sync_config
from consentsync.sync.engine import SyncOptions
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import shipped_engine

BULK_DAY = dt.datetime.now(dt.UTC).replace(hour=10, minute=0, second=0, microsecond=0) - dt.timedelta(days=2)


def _withdrawn(ledger: Ledger, email: str) -> bool:
    try:
        view = ledger.subject_view(email)
    except NotFound:
        return False
    return any(p["purpose"] == "email_marketing" and p["status"] == "withdrawn" for p in view["purposes"])


@pytest.fixture
def so() -> Iterator[SuperOfficeSandbox]:
    with SuperOfficeSandbox(SuperOfficeTenant(default_legal_base=None)) as server:
        yield server


def _bulk_day(tenant: Any, count: int, prefix: str) -> list[Any]:
    """``count`` people given a consent on BULK_DAY by an import, a second apart."""
    people = []
    for i in range(count):
        person = tenant.create_person("Bulk", f"{prefix}{i}", f"{prefix}{i}@example.test", at=BULK_DAY)
        tenant.set_consent(
            person.id, "EMARKETING", "IMPORT", "CONSENT", at=BULK_DAY + dt.timedelta(seconds=i)
        )
        people.append(person)
    return people


@SQLITE_ONLY  # the connector's rules; the ledger's SQL runs on PostgreSQL elsewhere
def test_a_bulk_day_beyond_the_run_budget_is_read_over_several_runs(
    ledger: Ledger, config_path: Path, so: SuperOfficeSandbox
) -> None:
    # 40 consents in one day, pages of 3: 14 page calls, a budget of 12 calls a run, and the
    # engine's batches (25) larger than what a run reads.
    tenant = so.tenant
    people = _bulk_day(tenant, 40, "bulk")
    # The first of them withdraws today (its consent keeps its id, the lowest of the bulk), a
    # second ago: a read hands on only whole seconds, and the runs may all fall in this one.
    withdrawn_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    tenant.set_consent(people[0].id, "EMARKETING", "EMAIL", "WITHDRAWN", at=withdrawn_at)
    email = people[0].email
    assert email
    options = SyncOptions(batch_size=25, signpost_lag_seconds=0)
    settings = {"page_size": 3, "budget": {"per_run": 12}}
    statuses = []
    for _run in range(12):
        report = shipped_engine(
            ledger, config_path, so, "so", "superoffice", ["person.yaml"], settings, options
        ).run()
        statuses.append(report.status)
        assert report.status in ("succeeded", "stopped"), report.error
        if _withdrawn(ledger, email):
            break
    assert _withdrawn(ledger, email), f"the withdrawal never reached the ledger: {statuses}"
    assert all(ledger.subject_view(p.email or "")["purposes"] for p in people), "a bulk consent was lost"


def _killing(harness: SuperOfficeHarness, after_pages: int) -> dict[str, Any]:
    """Each sync process started (``state["process"]``) is SIGKILLed when the sandbox has served
    it ``after_pages`` archive pages: inside the bulk day's walk (a run timeout, a crash). The
    kill waits a moment, as the run waits for the page: what it handed over is committed."""
    state: dict[str, Any] = {"process": None, "pages": 0, "kills": 0}
    lock = threading.Lock()

    def hook(_query: ArchiveQuery) -> None:
        with lock:
            state["pages"] += 1
            process = state["process"]
            if process is None or state["pages"] != after_pages or process.poll() is not None:
                return
        time.sleep(0.5)
        os.kill(process.pid, signal.SIGKILL)
        state["kills"] += 1

    harness.sandbox.after_archive_page = hook
    return state


def test_runs_killed_inside_a_bulk_day_each_go_on_from_where_the_last_stopped(tmp_path: Path) -> None:
    harness = SuperOfficeHarness()
    harness.start()
    try:
        tenant = harness.tenant
        _bulk_day(tenant, 45, "kill")
        # Someone new withdraws today: read only once the runs are through the bulk day.
        late = tenant.create_person("New", "w", "withdrew@example.test")
        tenant.set_consent(late.id, "EMARKETING", "FORM", "WITHDRAWN")
        config = write_sync_config(harness, tmp_path, name="crm", batch_size=2)
        data = yaml.safe_load(config.read_text())
        data["connectors"][0]["settings"]["page_size"] = 1  # 90 rows: 90 page calls that day
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        open_ledger(load_config(config), migrate=True).engine.dispose()
        env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
        state = _killing(harness, after_pages=30)
        email = "withdrew@example.test"
        withdrawn = False
        runs: list[tuple[int, int]] = []  # (archive pages served, exit code) of each run
        for _run in range(10):
            state["pages"] = 0
            process = subprocess.Popen(
                sync_command(config, "crm"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            state["process"] = process
            process.wait(timeout=120)
            state["process"] = None
            ledger = open_ledger(load_config(config))
            try:
                withdrawn = _withdrawn(ledger, email)
            finally:
                ledger.engine.dispose()
            runs.append((state["pages"], process.returncode))
            if withdrawn:
                break
        assert state["kills"] >= 2, (
            f"{runs}: the runs were not killed inside the day: the test proved nothing"
        )
        assert withdrawn, f"after {state['kills']} runs killed inside the bulk day the withdrawal is not read"
    finally:
        harness.stop()
