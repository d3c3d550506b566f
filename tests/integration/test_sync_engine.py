"""The sync engine against the Salesforce sandbox, on SQLite and PostgreSQL: interrupted runs
resume to the same end state, pages cut through shared seconds, pushes wait in the outbox until
acknowledged, and nothing is recorded twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import func, select

from consentsync import audit
from consentsync.config import load_config
from consentsync.ledger.schema import audit_entries, consent_events, crm_links, outbox, subjects
from consentsync.ledger.service import Ledger, utcnow
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.integration.helpers import sandbox_engine, shipped_mappings

MAPPINGS = ["contact.yaml", "lead.yaml", "individual.yaml", "contact_point_type_consent.yaml"]


@pytest.fixture
def sandbox() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as server:
        server.org.seed(120, seed=11)
        yield server


def _engine(
    ledger: Ledger,
    config_path: Path,
    sandbox: SalesforceSandbox,
    options: SyncOptions | None = None,
    **settings: Any,
) -> SyncEngine:
    settings = {
        "login_url": sandbox.login_url,
        "auth": "client_credentials",
        "client_id": sandbox.credentials.client_id,
        "client_secret": sandbox.credentials.client_secret,
        "ca_bundle": str(sandbox.ca_cert_path),
        "query_batch_size": 200,
        "max_attempts": 3,
        **settings,
    }
    connector = {"name": "sf", "vendor": "salesforce", "mappings": shipped_mappings("salesforce", *MAPPINGS)}
    options = options or SyncOptions(batch_size=37, signpost_lag_seconds=0)
    return sandbox_engine(ledger, config_path, {**connector, "settings": settings}, options)


def _count(ledger: Ledger, table: Any) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def _org_flags(sandbox: SalesforceSandbox) -> dict[str, Any]:
    return {
        r["Id"]: (r.get("HasOptedOutOfEmail"), r.get("DoNotCall"))
        for kind in ("Contact", "Lead")
        for r in sandbox.org.records(kind)
    }


def test_full_sync_then_nothing_to_do(ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox) -> None:
    first = _engine(ledger, config_path, sandbox).run(full=True)
    assert first.status == "succeeded", first.error
    total = sum(
        sandbox.org.count(kind) for kind in ("Contact", "Lead", "Individual", "ContactPointTypeConsent")
    )
    assert first.counts.read == total
    # A person's records come on several pages (contact, lead, consent records): what to push to
    # them is decided once, after the pages, never enqueued and then superseded within the run.
    assert 0 < first.counts.pushed == first.counts.pushes_enqueued
    with ledger.engine.connect() as conn:
        assert not conn.execute(select(outbox.c.id).where(outbox.c.status == "pending")).first()
    events, entries = _count(ledger, consent_events), _count(ledger, audit_entries)
    # Our own writes come back on the next read: they are neither evidence nor a reason to push.
    second = _engine(ledger, config_path, sandbox).run()
    assert second.status == "succeeded"
    assert (second.counts.evidence_recorded, second.counts.pushes_enqueued) == (0, 0)
    third = _engine(ledger, config_path, sandbox).run()
    # The look-back window is read again: every record in it is recognised as already seen.
    assert third.counts.read == third.counts.unchanged_records
    assert (third.counts.evidence_recorded, third.counts.pushes_enqueued) == (0, 0)
    assert _count(ledger, consent_events) == events
    assert _count(ledger, audit_entries) == entries
    with ledger.engine.connect() as conn:
        assert audit.verify(conn).ok


def test_interrupted_runs_resume_to_the_state_of_an_uninterrupted_one(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox, tmp_path: Path
) -> None:
    baseline = _flags_after_clean_run(tmp_path, config_path)
    sandbox.faults.update(request_limit_after=9)
    stopped = _engine(ledger, config_path, sandbox).run(full=True)
    assert stopped.status == "stopped"
    assert "REQUEST_LIMIT_EXCEEDED" in (stopped.error or "")
    sandbox.faults.reset()
    runs = 0
    while True:
        runs += 1
        report = _engine(ledger, config_path, sandbox).run()
        assert report.status == "succeeded", report.error
        if report.counts.read == report.counts.unchanged_records and report.counts.pushes_enqueued == 0:
            break
        assert runs < 5
    assert _org_flags(sandbox) == baseline
    with ledger.engine.connect() as conn:
        assert audit.verify(conn).ok
        linked = conn.execute(select(func.count(func.distinct(crm_links.c.record_id)))).scalar_one()
    assert linked == sum(
        sandbox.org.count(k) for k in ("Contact", "Lead", "Individual", "ContactPointTypeConsent")
    )


def _flags_after_clean_run(tmp_path: Path, config_path: Path) -> dict[str, Any]:
    """The org's flags after one uninterrupted sync of an identical org into a fresh ledger."""
    from consentsync.app import open_ledger
    from consentsync.config import write_starter

    with SalesforceSandbox() as twin:
        twin.org.seed(120, seed=11)
        clean_config = tmp_path / "clean" / "consentsync.yaml"
        write_starter(clean_config, f"sqlite:///{tmp_path / 'clean' / 'ledger.db'}")
        clean_ledger = open_ledger(load_config(clean_config), migrate=True)
        report = _engine(clean_ledger, clean_config, twin).run(full=True)
        assert report.status == "succeeded"
        _engine(clean_ledger, clean_config, twin).run()
        clean_ledger.engine.dispose()
        return _org_flags(twin)


def test_server_errors_resets_and_session_expiry_are_survived(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    sandbox.faults.update(error_rate=0.15, reset_rate=0.05, session_expiry_after=6, seed=5)
    report = _engine(ledger, config_path, sandbox, max_attempts=8).run(full=True)
    assert report.status == "succeeded", report.error
    assert sum(sandbox.faults_injected.values()) > 0
    assert report.counts.read == sum(
        sandbox.org.count(k) for k in ("Contact", "Lead", "Individual", "ContactPointTypeConsent")
    )


def test_locked_rows_wait_in_the_outbox_until_the_crm_takes_them(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    contacts = [r["Id"] for r in sandbox.org.records("Contact")]
    sandbox.faults.lock_records(*contacts[:5])
    first = _engine(ledger, config_path, sandbox, lock_retries=0).run(full=True)
    assert first.status == "succeeded"
    with ledger.engine.connect() as conn:
        pending = conn.execute(select(outbox.c.record_id).where(outbox.c.status == "pending")).scalars().all()
    locked_and_pending = set(pending) & set(contacts[:5])
    assert locked_and_pending, "some locked contact needed a push"
    sandbox.faults.unlock_records()
    second = _engine(ledger, config_path, sandbox).run()
    assert second.counts.pushed >= len(locked_and_pending)
    with ledger.engine.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.status == "pending")
            ).scalar()
            == 0
        )


def test_dry_run_changes_nothing_anywhere(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    before_flags, before_entries = _org_flags(sandbox), _count(ledger, audit_entries)
    report = _engine(ledger, config_path, sandbox).run(full=True, dry_run=True)
    assert report.status == "dry_run"
    assert report.plan_changes and report.plan_pushes
    assert _org_flags(sandbox) == before_flags
    assert _count(ledger, audit_entries) == before_entries
    assert _count(ledger, subjects) == 0
    assert sandbox.calls["composite"] == 0


def test_large_pushes_go_through_bulk_api(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    # A threshold below the first run's Contact pushes (the evidenced withdrawals and objections of the
    # seeded org): those go as one Bulk API 2.0 job; objects with fewer changes use sObject Collections.
    report = _engine(ledger, config_path, sandbox, bulk_threshold=20, bulk_poll_interval=0.05).run(full=True)
    assert report.status == "succeeded", report.error
    assert report.counts.pushed > 20
    assert any(kind.startswith("bulk") for kind in sandbox.calls), sandbox.calls
    assert sandbox.calls["composite"] < 4  # at most one small batch per other object
    assert all(c["HasOptedOutOfEmail"] is not None for c in sandbox.org.records("Contact"))


def test_one_run_per_connector_at_a_time(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    from consentsync.sync.locks import RunInProgress, connector_lock

    engine = _engine(ledger, config_path, sandbox)
    with connector_lock(ledger.engine, "sf"):  # as another process would hold it
        with pytest.raises(RunInProgress, match="'sf'"):
            engine.run()
        with connector_lock(ledger.engine, "other-connector"):
            pass  # other connectors are not held up
    assert engine.run().status == "succeeded"


def test_refused_pushes_are_dead_lettered_and_can_be_retried(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    from consentsync.sync import outbox as outbox_rows

    contacts = [r["Id"] for r in sandbox.org.records("Contact")]
    sandbox.faults.lock_records(*contacts)  # every contact write fails with UNABLE_TO_LOCK_ROW
    engine = _engine(ledger, config_path, sandbox, lock_retries=0)
    engine.options = SyncOptions(batch_size=37, signpost_lag_seconds=0, max_push_attempts=2)
    engine.run(full=True)
    assert outbox_rows.list_rows(ledger.engine, dead=True) == []  # one attempt so far
    engine.run()
    dead = outbox_rows.list_rows(ledger.engine, dead=True)
    assert dead and all(row["last_error"].startswith("UNABLE_TO_LOCK_ROW") for row in dead)
    assert all(row["object"] == "Contact" and row["attempts"] == 2 for row in dead)
    sandbox.faults.unlock_records()
    engine.run()
    assert outbox_rows.list_rows(ledger.engine, dead=True) == dead  # dead rows wait for ops
    assert outbox_rows.retry(ledger.engine, None, actor="ops-anna", now=utcnow()) == len(dead)
    report = engine.run()
    assert report.counts.pushed >= len(dead)
    assert outbox_rows.list_rows(ledger.engine, dead=True) == []
    with ledger.engine.connect() as conn:
        retried = list(audit.entries(conn, action="outbox.retried"))
        assert audit.verify(conn).ok
    assert len(retried) == len(dead) and retried[0]["actor"] == "ops-anna"


# The database server going away mid-run is a PostgreSQL failure mode: only that variant runs.
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_ledger_lost_mid_page_fails_cleanly_and_the_next_run_completes(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ledger.engine.dialect.name == "postgresql"
    from sqlalchemy import create_engine, text

    admin = create_engine(ledger.engine.url.set(query={}))
    calls = {"n": 0}
    record_in = ledger.record_in

    def dying_record_in(conn: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # inside the third page's transaction: every ledger session is cut
            with admin.connect() as killer:
                killer.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = :ledger "
                        "AND pid <> pg_backend_pid()"
                    ),
                    {"ledger": ledger.engine.url.query["application_name"]},
                )
        return record_in(conn, *args, **kwargs)

    monkeypatch.setattr(ledger, "record_in", dying_record_in)
    report = _engine(ledger, config_path, sandbox).run(full=True)
    assert report.status == "failed"
    assert (report.error or "").startswith("ledger:")
    monkeypatch.setattr(ledger, "record_in", record_in)
    events_after_failure = _count(ledger, consent_events)
    assert events_after_failure > 0  # the first two pages stayed committed
    resumed = _engine(ledger, config_path, sandbox).run()
    assert resumed.status == "succeeded", resumed.error
    _engine(ledger, config_path, sandbox).run()
    with ledger.engine.connect() as conn:
        assert audit.verify(conn).ok
        linked = conn.execute(select(func.count(func.distinct(crm_links.c.record_id)))).scalar_one()
    assert linked == sum(
        sandbox.org.count(k) for k in ("Contact", "Lead", "Individual", "ContactPointTypeConsent")
    )
    admin.dispose()


def test_a_record_read_again_unchanged_is_skipped_but_an_address_change_alone_is_not(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    """Records read again exactly as last seen are recognised by their snapshot and the keyed
    hash of their identity, without resolving who they are again; a record whose address alone
    changed (no consent field moved) is still taken through identity resolution."""
    from sqlalchemy import event

    from consentsync.ledger.schema import crm_snapshots, subject_identifiers

    assert _engine(ledger, config_path, sandbox).run(full=True).status == "succeeded"
    contact = next(r for r in sandbox.org.records("Contact") if r.get("Email"))
    new_address = "moved.person@example.test"
    sandbox.org.update(contact["Id"], Email=new_address)
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        statements.append(sql)

    event.listen(ledger.engine, "before_cursor_execute", capture)
    try:
        again = _engine(ledger, config_path, sandbox).run(full=True)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", capture)
    assert again.status == "succeeded", again.error
    assert again.counts.unchanged_records == again.counts.read  # no consent value moved
    assert (again.counts.evidence_recorded, again.counts.pushes_enqueued) == (0, 0)
    # Only the moved contact went through identity resolution (one page of one object).
    lookups = [
        sql for sql in statements if "subject_identifiers" in sql and sql.lstrip().startswith("SELECT")
    ]
    assert len(lookups) <= 2, lookups
    assert ledger.subject_uids_for_email(new_address), "the new address was not linked"
    with ledger.engine.connect() as conn:
        digests = conn.execute(select(crm_snapshots.c.identity)).scalars().all()
        addresses = conn.execute(select(subject_identifiers.c.value)).scalars().all()
    assert all(digest and len(digest) == 64 for digest in digests)
    assert not set(digests) & set(addresses), "an address is stored in the snapshots"


def test_a_write_by_another_connection_between_pages_is_seen_by_the_next_page(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox
) -> None:
    """A run keeps what its committed pages knew about their people (sync/writer.py). A person
    erased by another process while the run reads (after their contact's page, before their
    consent records) must be reconciled as erased by every later page: every state row written
    after the erasure is the erasure's suppression."""
    from consentsync.ledger.schema import consent_states

    consents = sandbox.org.records("ContactPointTypeConsent")
    granted = {r["PartyId"] for r in consents if r.get("PrivacyConsentStatus") == "OptIn"}
    person = next(
        r for r in sandbox.org.records("Contact") if r.get("Email") and r.get("IndividualId") in granted
    )
    erased: dict[str, Any] = {}

    def erase_once_contacts_are_in(report: Any) -> None:
        if not erased and report.stage.startswith("reading") and "Contact" not in report.stage:
            erased.update(ledger.erase(person["Email"], reason="Art. 17 request, ticket 4711"))
            erased["at"] = utcnow()

    engine = _engine(ledger, config_path, sandbox)
    engine.progress = erase_once_contacts_are_in
    report = engine.run(full=True)
    assert report.status == "succeeded", report.error
    assert erased, "the run never got past its contacts"
    with ledger.engine.connect() as conn:
        subject_id = conn.execute(
            select(crm_links.c.subject_id).where(crm_links.c.record_id == person["Id"])
        ).scalar_one()
        rows = conn.execute(
            select(consent_states.c.suppressed, consent_states.c.rule, consent_states.c.updated_at).where(
                consent_states.c.subject_id == subject_id
            )
        ).all()
    later = [row for row in rows if row.updated_at.replace(tzinfo=erased["at"].tzinfo) > erased["at"]]
    assert later, "no page wrote this person's states after the erasure"
    assert all(row.suppressed and row.rule == "erasure_suppression" for row in later), later


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)  # the run's own writer: SQLite's
def test_batches_behind_the_reads_commit_together_and_no_read_holds_the_write_lock(
    ledger: Ledger, config_path: Path
) -> None:
    """Batches already read commit together (sync/writer.py), but the ledger's write lock is
    never held while the run waits for the CRM's next page: another writer (a capture, an
    erasure) waits for a batch at most, not for a read. Every query page takes 1.2 s here, so a
    lock held across a read makes another writer wait about that long, while a batch's commit
    took up to 0.54 s on two loaded cores (five test workers)."""
    import sqlite3
    import threading
    import time

    from sqlalchemy import event

    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(500, seed=3)  # several query pages of 200 for the contacts
        sandbox.faults.update(delay=1.2, delay_kinds=("query", "queryMore"))
        engine = _engine(ledger, config_path, sandbox)
        pulling, batches, commits = [False], [0], [0]
        pull, commit_page = engine._pull, engine._commit_read_page

        def counted_pull(*args: Any, **kwargs: Any) -> None:
            pulling[0] = True
            try:
                pull(*args, **kwargs)
            finally:
                pulling[0] = False

        def counted_page(*args: Any, **kwargs: Any) -> None:
            batches[0] += 1
            commit_page(*args, **kwargs)

        engine._pull, engine._commit_read_page = counted_pull, counted_page  # type: ignore[method-assign]
        event.listen(ledger.engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + pulling[0]))
        waits: list[float] = []
        done = threading.Event()

        def other_writer() -> None:
            db = sqlite3.connect(str(ledger.engine.url.database), timeout=30, isolation_level=None)
            while not done.is_set():
                started = time.monotonic()
                db.execute("BEGIN IMMEDIATE")
                waits.append(time.monotonic() - started)
                db.execute("ROLLBACK")
                time.sleep(0.02)
            db.close()

        thread = threading.Thread(target=other_writer)
        thread.start()
        try:
            report = engine.run(full=True)
        finally:
            done.set()
            thread.join()
    assert report.status == "succeeded", report.error
    assert commits[0] < batches[0], f"{commits[0]} commits for {batches[0]} batches: none went together"
    assert len(waits) > 20 and max(waits) < 1.0, f"another writer waited {max(waits):.2f} s for the lock"


def test_a_row_put_back_while_a_run_pushes_is_examined_again_not_sent_over_a_newer_choice(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`outbox retry` while a run is past its examination: the run's push stage used to send the
    dead-lettered row as it was decided weeks ago, over the person's newer choice. It is examined
    again before the next batch is chosen, and superseded where the newer state no longer asks it."""
    from datetime import timedelta

    from consentsync.domain import ConsentStatus
    from consentsync.ledger.identity import Identity
    from consentsync.sync import outbox as outbox_rows
    from tests.integration.helpers import consent_value

    contact = next(
        r for r in sandbox.org.records("Contact") if r.get("Email") and r.get("HasOptedOutOfEmail") is False
    )
    options = SyncOptions(batch_size=37, signpost_lag_seconds=0, max_push_attempts=1)
    assert _engine(ledger, config_path, sandbox, options, lock_retries=0).run(full=True).status == "succeeded"
    # The person withdraws; the CRM refuses the opt-out for good: it is dead-lettered.
    withdrew = utcnow() - timedelta(seconds=30)
    ledger.record(
        Identity(email=contact["Email"]), consent_value(ConsentStatus.WITHDRAWN, withdrew, withdrew)
    )
    sandbox.faults.lock_records(contact["Id"])
    _engine(ledger, config_path, sandbox, options, lock_retries=0).run()
    [dead] = [
        row for row in outbox_rows.list_rows(ledger.engine, dead=True) if row["record_id"] == contact["Id"]
    ]
    assert dead["fields"]["HasOptedOutOfEmail"] is True
    sandbox.faults.unlock_records()
    # Later they opt in again, evidenced (a withdrawal is lifted by nothing less): the CRM
    # already shows what they want, nothing is to be pushed.
    granted = withdrew + timedelta(seconds=10)
    ledger.record(
        Identity(email=contact["Email"]),
        consent_value(ConsentStatus.GRANTED, granted, granted, notice_version="v1"),
    )
    engine = _engine(ledger, config_path, sandbox, options, lock_retries=0)
    # As ops would, from another shell, once the run has examined its people.
    _before_pushing(
        engine,
        monkeypatch,
        lambda: outbox_rows.retry(ledger.engine, [dead["id"]], actor="ops-anna", now=utcnow()),
    )
    assert engine.run().status == "succeeded"
    shown = next(r for r in sandbox.org.records("Contact") if r["Id"] == contact["Id"])
    assert shown["HasOptedOutOfEmail"] is False, "the stale opt-out was sent over the newer opt-in"
    with ledger.engine.connect() as conn:
        status = conn.execute(select(outbox.c.status).where(outbox.c.id == dead["id"])).scalar_one()
    assert status == "superseded"


def test_a_withdrawal_captured_while_a_run_pushes_reaches_the_crm_in_that_run(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consentsync.domain import ConsentStatus
    from consentsync.ledger.identity import Identity
    from tests.integration.helpers import consent_value

    contact = next(
        r for r in sandbox.org.records("Contact") if r.get("Email") and r.get("HasOptedOutOfEmail") is False
    )

    def withdraws() -> None:  # on the preference page, while the run is past its examination
        now = utcnow()
        ledger.record(Identity(email=contact["Email"]), consent_value(ConsentStatus.WITHDRAWN, now, now))

    engine = _engine(ledger, config_path, sandbox)
    _before_pushing(engine, monkeypatch, withdraws)
    assert engine.run(full=True).status == "succeeded"
    shown = next(r for r in sandbox.org.records("Contact") if r["Id"] == contact["Id"])
    assert shown["HasOptedOutOfEmail"] is True, "the withdrawal waited for the next run"


def _before_pushing(engine: SyncEngine, monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """``action`` happens once the run has examined its people, before its push stage."""
    push = engine._push

    def acted_first(report: Any) -> None:
        action()
        push(report)

    monkeypatch.setattr(engine, "_push", acted_first)


def test_under_a_guard_a_change_after_its_count_waits_for_the_next_run(
    ledger: Ledger, config_path: Path, sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The push guard counts what a run may push before its push stage: people whose state
    changes after that (a bulk import in another process, a row put back by `outbox retry`) are
    not examined and sent in the push stage, where the guard would never count them: the next
    run examines them, and is held."""
    from consentsync.domain import ConsentStatus
    from consentsync.ledger.identity import Identity
    from tests.integration.helpers import consent_value

    assert _engine(ledger, config_path, sandbox).run(full=True).status == "succeeded"
    contacts = [
        r for r in sandbox.org.records("Contact") if r.get("Email") and r["HasOptedOutOfEmail"] is False
    ]
    assert len(contacts) > 6
    guarded = SyncOptions(batch_size=37, signpost_lag_seconds=0, guard_max_records=5)
    engine = _engine(ledger, config_path, sandbox, guarded)
    held = engine._held

    def counted_then_imported(report: Any) -> bool:
        answer = held(report)
        now = utcnow()
        for contact in contacts:
            ledger.record(Identity(email=contact["Email"]), consent_value(ConsentStatus.WITHDRAWN, now, now))
        return answer

    monkeypatch.setattr(engine, "_held", counted_then_imported)
    assert engine.run().status == "succeeded"
    ids = {contact["Id"] for contact in contacts}
    opted_out = [r for r in sandbox.org.records("Contact") if r["Id"] in ids and r["HasOptedOutOfEmail"]]
    assert opted_out == [], f"{len(opted_out)} records pushed past a guard of 5"
    assert _engine(ledger, config_path, sandbox, guarded).run().status == "held"
