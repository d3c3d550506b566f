"""Two syncs write the ledger at once (the daemon runs connectors side by side) and meet the same
people, each CRM listing them in its own order. Every page commits (no deadlock), and every
person's stored state is the fold of all the evidence both recorded: neither run stores a state
folded without what the other committed meanwhile."""

from __future__ import annotations

import copy
import sqlite3
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
import yaml
from psycopg.errors import DeadlockDetected, LockNotAvailable
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from consentsync import exit_codes
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.engine import WRITER_WAIT, beside_writers
from consentsync.ledger.identity import CrmLink, Identity
from consentsync.ledger.problems import ledger_problem
from consentsync.ledger.schema import consent_events, consent_states
from consentsync.ledger.service import Ledger, RecordRequest, _event_evidence
from consentsync.reconcile import Summary, summarise
from consentsync.sync.heartbeat import Heartbeat
from consentsync.sync.lease import Lease

PEOPLE = 120
PAGE = 20
ROUNDS = 3


def _page(ledger: Ledger, connector: str, people: list[int], round_: int) -> list[RecordRequest]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    requests = []
    for person in people:
        # The two CRMs disagree, and say so at different times: withdrawals and grants interleave.
        withdrawn = (person + round_ + (connector == "crm-b")) % 2 == 0
        requests.append(
            RecordRequest(
                Identity(
                    email=f"person{person}@example.org",
                    link=CrmLink(connector, "Contact", f"{connector}-{person}"),
                ),
                Evidence(
                    purpose="email_marketing",
                    channel="email",
                    status=ConsentStatus.WITHDRAWN if withdrawn else ConsentStatus.GRANTED,
                    basis=LawfulBasis.CONSENT,
                    event_time=start + timedelta(minutes=person, seconds=round_ * 7 + (connector == "crm-b")),
                    observed_at=ledger.clock(),
                    source=connector,
                    origin=Origin.CRM,
                ),
            )
        )
    return requests


def _sync(ledger: Ledger, connector: str, order: list[int], errors: list[BaseException]) -> None:
    """A sync run's page transactions: link the page's people, then record their evidence."""
    try:
        for round_ in range(ROUNDS):
            for at in range(0, len(order), PAGE):
                page = _page(ledger, connector, order[at : at + PAGE], round_)
                with ledger.engine.begin() as conn:
                    subject_ids, _ = ledger.link_in(conn, [r.identity for r in page])
                    ledger.record_in(
                        conn,
                        [
                            RecordRequest(Identity(subject_id=s), r.evidence)
                            for r, s in zip(page, subject_ids, strict=True)
                        ],
                    )
    except BaseException as error:
        errors.append(error)


def _assert_states_are_the_fold_of_the_events(ledger: Ledger) -> dict[tuple[int, str, str], list[Evidence]]:
    """Every stored state is the fold of all the evidence recorded for its key; returns the
    evidence by key."""
    with ledger.engine.connect() as conn:
        events: dict[tuple[int, str, str], list[Evidence]] = {}
        for row in conn.execute(select(consent_events)):
            events.setdefault((row.subject_id, row.purpose, row.channel), []).append(_event_evidence(row))
        stored = {
            (row.subject_id, row.purpose, row.channel): orjson.loads(row.summary)
            for row in conn.execute(select(consent_states))
        }
    assert events
    for key, items in events.items():
        assert Summary.from_json(stored[key]) == summarise(items, ledger.policy), key
    return events


def test_two_syncs_meeting_the_same_people_commit_and_keep_every_state_whole(ledger: Ledger) -> None:
    errors: list[BaseException] = []
    forward = list(range(PEOPLE))
    runs = [
        threading.Thread(target=_sync, args=(ledger, "crm-a", forward, errors)),
        threading.Thread(target=_sync, args=(ledger, "crm-b", forward[::-1], errors)),
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=300)
    assert errors == []
    assert not any(run.is_alive() for run in runs)

    events = _assert_states_are_the_fold_of_the_events(ledger)
    # One person per address, whichever run met them first; each with both runs' evidence.
    assert len(events) == PEOPLE
    assert {len(items) for items in events.values()} == {2 * ROUNDS}


def test_a_rolled_back_or_timed_out_writer_is_named_for_what_it_is() -> None:
    """A transaction PostgreSQL rolled back (deadlock, serialization failure) or a writer that
    waited too long for the lock is not "the database cannot be reached"."""
    url = "postgresql://ledger@db.example:5432/consent"
    deadlock = ledger_problem(OperationalError("UPDATE", {}, DeadlockDetected("deadlock detected")), url)
    assert deadlock is not None and deadlock.exit_code == exit_codes.UNAVAILABLE
    assert deadlock.message.startswith("the ledger database at db.example:5432/consent rolled a")
    waited = ledger_problem(OperationalError("SELECT", {}, LockNotAvailable("lock timeout")), url)
    assert waited is not None and f"held by another writer for longer than {WRITER_WAIT}" in waited.message
    gone = ledger_problem(OperationalError("SELECT", {}, psycopg.OperationalError("connection refused")), url)
    assert gone is not None and "cannot be reached now" in gone.message


@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_leases_and_heartbeats_are_renewed_while_a_long_transaction_holds_the_writer_lock(
    ledger: Ledger,
) -> None:
    """A plan holds the writer lock for as long as it reads its CRM; the other runs' leases and
    the daemon's heartbeat must still be renewed meanwhile, or those runs would lose their
    connectors to a takeover. (On SQLite every write transaction waits for the one writer.)"""
    lease = Lease(ledger.engine, "crm-a", "run-1", ledger.clock, ttl=timedelta(seconds=30))
    lease.acquire()
    heartbeat = Heartbeat(ledger.engine, ledger.clock)
    done: list[str] = []

    def renew() -> None:
        with beside_writers(ledger.engine) as conn:
            lease.check(conn)
        heartbeat.beat()
        done.append("renewed")

    with ledger.engine.begin() as plan:  # the writer lock, held as a plan holds it
        plan.execute(select(consent_states.c.subject_id).limit(1)).all()
        renewer = threading.Thread(target=renew)
        renewer.start()
        renewer.join(timeout=20)
        assert done == ["renewed"], "the lease waited for the writer lock"

        # A ledger writer, by contrast, waits for it.
        def write() -> None:
            with ledger.engine.begin():
                done.append("wrote")

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=1)
        assert done == ["renewed"]
    writer.join(timeout=20)
    assert done == ["renewed", "wrote"]


def test_a_sqlite_ledger_held_too_long_by_another_writer_is_named_for_what_it_is() -> None:
    locked = sqlite3.OperationalError("database is locked")
    problem = ledger_problem(OperationalError("BEGIN IMMEDIATE", {}, locked), "sqlite:////srv/ledger.db")
    assert problem is not None and problem.exit_code == exit_codes.UNAVAILABLE
    assert problem.message.startswith("the ledger file /srv/ledger.db was held by another writer"), problem


@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_two_sync_processes_meeting_the_same_people_both_commit_every_page(
    ledger: Ledger, ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case CI once met in the daemon, with real processes: two `consentsync sync` runs of two
    CRMs holding the same people, pages of 25, side by side on one PostgreSQL ledger, twice
    over. Every run succeeds and every state is the fold of all the evidence recorded."""
    from consentsync_salesforce.sandbox import SalesforceSandbox

    from consentsync.demo import find_mappings
    from consentsync.sdk import crashtest
    from tests.integration.crash_config import write_config

    with SalesforceSandbox() as eu, SalesforceSandbox() as us:
        eu.org.seed(150, seed=7)
        us.org.seed(150, seed=7)  # the same people, each org its own records and ids
        monkeypatch.setenv("CRASHTEST_SF_SECRET", eu.credentials.client_secret)
        monkeypatch.setenv("CRASHTEST_SF2_SECRET", us.credentials.client_secret)
        config = write_config(tmp_path / "cfg", eu, find_mappings(), ledger_url)
        data = yaml.safe_load(config.read_text())
        second = copy.deepcopy(data["connectors"][0])
        (tmp_path / "cfg" / "us-ca.pem").write_bytes(Path(us.ca_cert_path).read_bytes())
        second["name"] = "sf2"
        second["settings"].update(
            login_url=us.login_url,
            client_secret="${CRASHTEST_SF2_SECRET}",
            ca_bundle=str(tmp_path / "cfg" / "us-ca.pem"),
        )
        data["connectors"].append(second)
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        for _ in range(2):
            runs = [
                subprocess.Popen(
                    crashtest.sync_command(config, name), stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
                for name in ("sf", "sf2")
            ]
            outcomes = [run.communicate(timeout=180) for run in runs]
            # Succeeded (0), or succeeded with records quarantined (4): no run failed.
            assert [run.returncode in (0, 4) for run in runs] == [True, True], outcomes
            # Before the second round, people change their minds in one CRM.
            for contact in eu.org.records("Contact")[:20]:
                eu.org.update(contact["Id"], HasOptedOutOfEmail=not contact["HasOptedOutOfEmail"])
    _assert_states_are_the_fold_of_the_events(ledger)
