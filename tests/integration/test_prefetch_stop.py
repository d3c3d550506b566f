"""A stop is prompt while the CRM is slow: `consentsync sync` sent SIGTERM while a query page is
outstanding (the sandbox holds it for a minute, and the connector waits that long) exits
75 within seconds, the page left unread, and the runs after it end exactly where an uninterrupted
one does (the crash-safety trials' comparison: ledger, outbox, audit chain and CRM). Real
processes, against the Salesforce sandbox through its harness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from consentsync_salesforce.sandbox.harness import SalesforceHarness
from sqlalchemy import create_engine, select

from consentsync.ledger.schema import sync_runs
from consentsync.sdk.crashtest import Trial, compare, configured, end_state, quiesce, sync_command

# Contacts seeded (with the seed's duplicates: two pages of 200, the second one a `queryMore`).
PEOPLE = 250
# How long the sandbox holds the outstanding page: longer than the bound below and than the
# connector's own timeout, so that only a stop that does not wait for it passes.
PAGE_HELD = 60.0
STOP_BOUND = 5.0  # seconds from the signal to the exit (the stop itself takes about one)
SEEDED_AT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)  # both orgs alike


def _org() -> tuple[SalesforceHarness, list[str]]:
    harness = SalesforceHarness()
    harness.start()
    harness.sandbox.org.seed(PEOPLE, seed=3, now=SEEDED_AT)
    emails = sorted({str(r["Email"]).lower() for r in harness.sandbox.org.records("Contact") if r["Email"]})
    return harness, emails


def test_a_sync_stopped_while_a_page_is_outstanding_exits_at_once_and_resumes_like_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
    reference_org, people = _org()
    try:
        since = datetime.now(UTC)
        config = configured(reference_org, tmp_path / "reference", people)
        reference = Trial()
        quiesce(config, env, reference)
        assert reference.problems == []
        expected = end_state(config, reference_org, since)
    finally:
        reference_org.stop()

    org, people = _org()
    try:
        since = datetime.now(UTC)
        config = configured(org, tmp_path / "stopped", people)
        # The harness's connector gives up on a call after 2 s; this one waits as a production
        # connector may (its default is 30 s, then it retries), here longer than the page is held.
        data = yaml.safe_load(config.read_text())
        data["connectors"][0]["settings"]["timeout"] = PAGE_HELD * 2
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        # The first `queryMore` (the Contacts' second page) is held; every other call answers.
        org.sandbox.faults.update(delay=PAGE_HELD, delay_kinds=("queryMore",), delay_calls=1)
        process = subprocess.Popen(
            [*sync_command(config), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while org.sandbox.faults_injected["delay"] < 1:  # the page is asked for and outstanding
            assert process.poll() is None, process.communicate()[1][-600:]
            assert time.monotonic() < deadline, "the held page was never asked for"
            time.sleep(0.05)
        time.sleep(0.3)  # the reader thread is well inside the call
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=STOP_BOUND + 5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail("the stop waited for the outstanding page")
        took = time.monotonic() - sent
        assert process.returncode == 75, (process.returncode, err[-600:])  # exit_codes.STOPPED
        assert took < STOP_BOUND, f"the stop took {took:.1f} s"
        assert "Traceback" not in err
        report = json.loads(out)
        assert report["status"] == "stopped"
        ledger = create_engine(f"sqlite:///{tmp_path / 'stopped' / 'ledger.db'}")
        with ledger.connect() as conn:
            assert conn.execute(select(sync_runs.c.status)).scalars().all() == ["stopped"]
        ledger.dispose()

        # The sandbox answers at once from here on: the next runs resume and settle.
        org.sandbox.faults.update(delay=0.0)
        resumed = Trial()
        quiesce(config, env, resumed)
        assert resumed.problems == []
        assert compare(expected, end_state(config, org, since)) == []
    finally:
        org.stop()
