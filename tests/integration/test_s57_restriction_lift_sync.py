"""Lifting a restriction (Art. 18) puts back what the restriction wrote to a CRM, and nothing a
CRM user or the person set: end to end against the Salesforce sandbox with the shipped Contact
mapping and the real engine, on SQLite and PostgreSQL.

The black-box defect: restricted, a contact's Do Not Call (service by phone, on its contract's
default basis) and Email Opt Out (email marketing, no consent on record) were ticked by
consentsync; lifted, the Do Not Call stayed ticked for good ("pushes 0", "plan: 0 records")
although the ledger no longer suppresses service by phone. The Email Opt Out stays, by rule:
email marketing is still suppressed (no consent on record), and clearing it would tell the CRM
the opposite. docs/policy.md, "Lifting a restriction puts back what it wrote".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import outbox
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from tests.conftest import SQLITE_ONLY, running_harness
from tests.integration.test_ledger_query_plans import _capture, _whole_table_reads

LIFTED = "lift@example.test"  # nothing ticked before the restriction
CRM_SET = "crm.set@example.test"  # Do Not Call ticked by a CRM user before the restriction
SAID_NO = "said.no@example.test"  # withdrew service calls elsewhere while restricted
PEOPLE = (LIFTED, CRM_SET, SAID_NO)


@pytest.fixture
def salesforce() -> Iterator[Any]:
    with running_harness("salesforce") as started:
        yield started


def _config(harness: Any, directory: Path, ledger_url: str) -> Path:
    path = write_sync_config(harness, directory)
    data = yaml.safe_load(path.read_text())
    data["ledger"]["url"] = ledger_url
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _run(config: Path, *, statements: list[Any] | None = None, **how: Any) -> Any:
    """A run of its own engine; with ``statements``, the SQL it executed is appended there with
    the ledger's whole-table reads of it (test_ledger_query_plans), as ("scans", [...])."""
    time.sleep(1.1)  # the sandbox stamps changes with the real time, to the second
    engine = open_sync_engine(config)
    captured = _capture(engine.ledger) if statements is not None else None
    try:
        report = engine.run(**how)
        if captured is not None and statements is not None:
            statements += [sql for sql, _ in [*captured, *captured.many]]
            statements.append(("scans", _whole_table_reads(engine.ledger, captured)))
    finally:
        engine.ledger.engine.dispose()
    assert report.status == ("dry_run" if how.get("dry_run") else "succeeded"), report.error
    return report


def _looked_up(statements: list[Any]) -> tuple[int, int]:
    """How many lookups of our own unanswered writes and of crm.pushed entries a run made."""
    texts = [" ".join(sql.replace('"', "").split()) for sql in statements if isinstance(sql, str)]
    unanswered = sum(
        sql.startswith("SELECT outbox.id, outbox.record_id, outbox.fields FROM outbox")
        and "sent_at IS NOT NULL" in sql
        for sql in texts
    )
    pushed = sum(sql.startswith("SELECT audit_entries.payload FROM audit_entries WHERE") for sql in texts)
    return unanswered, pushed


def _flags(harness: Any, record_id: str) -> tuple[bool, bool]:
    record = harness.sandbox.org.get(record_id)
    return bool(record["DoNotCall"]), bool(record["HasOptedOutOfEmail"])


def _plan(config: Path) -> dict[str, dict[str, Any]]:
    """What `consentsync plan` would push, by record id: the new values."""
    plan = _run(config, dry_run=True).plan
    assert plan is not None
    return {item["record_id"]: item["new"] for item in plan.to_json()["items"]}


def _restricted_and_lifted(harness: Any, config: Path) -> dict[str, str]:
    """The three contacts synced, restricted, synced (the ticks written), one of them told the
    ledger no to service calls meanwhile, and lifted. Returns their ids by address."""
    ids = {
        LIFTED: harness.create_named("Lift", LIFTED, DoNotCall=False, HasOptedOutOfEmail=False),
        CRM_SET: harness.create_named("CrmSet", CRM_SET, DoNotCall=True, HasOptedOutOfEmail=False),
        SAID_NO: harness.create_named("SaidNo", SAID_NO, DoNotCall=False, HasOptedOutOfEmail=False),
    }
    _run(config)
    engine = open_sync_engine(config)
    try:
        for email in PEOPLE:
            engine.ledger.restrict(email, restricted=True, reason="accuracy contested")
    finally:
        engine.ledger.engine.dispose()
    _run(config)
    assert {email: _flags(harness, ids[email]) for email in PEOPLE} == {
        LIFTED: (True, True),
        CRM_SET: (True, True),
        SAID_NO: (True, True),
    }, "the restriction did not reach the CRM"
    engine = open_sync_engine(config)
    try:
        now = datetime.now(UTC)
        engine.ledger.record(
            Identity(email=SAID_NO),
            Evidence(
                purpose="service",
                channel="phone",
                status=ConsentStatus.WITHDRAWN,
                basis=LawfulBasis.CONTRACT,
                event_time=now,
                observed_at=now,
                source="web_form",
                origin=Origin.CAPTURE,
            ),
        )
        for email in PEOPLE:
            engine.ledger.restrict(email, restricted=False, reason="resolved")
    finally:
        engine.ledger.engine.dispose()
    return ids


def test_lifting_a_restriction_puts_back_what_it_wrote_and_keeps_every_other_opt_out(
    salesforce: Any, tmp_path: Path, ledger_url: str
) -> None:
    config = _config(salesforce, tmp_path, ledger_url)
    ids = _restricted_and_lifted(salesforce, config)
    # The plan (and so the push guard, which counts the same rows) holds exactly the put-back:
    # LIFTED's Do Not Call, consentsync's own tick, service by phone no longer suppressed. Every
    # Email Opt Out stays: email marketing has no consent on record (suppressed, the ledger's no).
    # A CRM user's Do Not Call (read as a withdrawal) and the person's own no stay ticked.
    assert _plan(config) == {ids[LIFTED]: {"DoNotCall": False}}
    statements: list[Any] = []
    report = _run(config, statements=statements)
    assert report.counts.pushed == 1
    assert {email: _flags(salesforce, ids[email]) for email in PEOPLE} == {
        LIFTED: (False, True),
        CRM_SET: (True, True),
        SAID_NO: (True, True),
    }
    # Its own writes looked up once for the batch, through indexes (never a scan of the outbox
    # or the audit log, the ledger's largest tables).
    assert _looked_up(statements) == (1, 1)
    assert statements[-1] == ("scans", [])
    # Read back: its own writes, not the person's; settled, nothing more to push.
    assert _run(config).counts.pushed == 0
    assert _run(config, full=True).counts.pushed == 0
    assert _plan(config) == {}
    # A CRM user ticking the put-back contact's Do Not Call again is their choice: kept.
    salesforce.sandbox.org.update(ids[LIFTED], DoNotCall=True)
    _run(config)
    _run(config, full=True)
    assert _flags(salesforce, ids[LIFTED])[0] is True
    assert _plan(config) == {}


@SQLITE_ONLY  # the mapping's rule: its lookups run on PostgreSQL in the first test (CI time)
def test_an_opt_out_a_crm_user_or_the_person_set_survives_the_lift(
    salesforce: Any, tmp_path: Path, ledger_url: str
) -> None:
    """Whatever the engine learns of its own writes, a lift never clears a Do Not Call that was
    not consentsync's: a CRM user's from before the restriction, the person's own no given
    meanwhile; and the guard's and plan's counts never include one."""
    config = _config(salesforce, tmp_path, ledger_url)
    ids = _restricted_and_lifted(salesforce, config)
    planned = _plan(config)
    assert "DoNotCall" not in planned.get(ids[CRM_SET], {})
    assert "DoNotCall" not in planned.get(ids[SAID_NO], {})
    _run(config)
    _run(config, full=True)
    assert _flags(salesforce, ids[CRM_SET])[0] is True
    assert _flags(salesforce, ids[SAID_NO])[0] is True


def test_the_writes_are_looked_up_only_for_an_opt_out_that_could_be_put_back(
    salesforce: Any, tmp_path: Path, ledger_url: str
) -> None:
    """The cost of every sync: a run whose people are all restricted (or never were) looks up
    none of its own writes, however many records it decides pushes for."""
    config = _config(salesforce, tmp_path, ledger_url)
    ids = {
        email: salesforce.create_named("P", email, DoNotCall=False, HasOptedOutOfEmail=False)
        for email in PEOPLE
    }
    statements: list[Any] = []
    _run(config, statements=statements)
    engine = open_sync_engine(config)
    try:
        for email in PEOPLE:
            engine.ledger.restrict(email, restricted=True, reason="accuracy contested")
    finally:
        engine.ledger.engine.dispose()
    report = _run(config, statements=statements)
    assert report.counts.pushed == len(PEOPLE)
    assert all(_flags(salesforce, record_id) == (True, True) for record_id in ids.values())
    assert _looked_up(statements) == (0, 0)


FIELDS_PARTLY_SHOWN = '{"DoNotCall":true,"HasOptedOutOfEmail":false}'


@SQLITE_ONLY  # the mapping's rule: its lookups run on PostgreSQL in the first test (CI time)
def test_a_later_write_sent_and_never_acknowledged_keeps_the_opt_out(
    salesforce: Any, tmp_path: Path, ledger_url: str
) -> None:
    """A write of the field sent after consentsync's tick and never acknowledged (refused, given
    up, the CRM having applied part of it: the record shows its Do Not Call, not its Email Opt
    Out, so reading it back neither confirms it nor clears it) leaves what the field holds
    unknown: the tick stays."""
    config = _config(salesforce, tmp_path, ledger_url)
    ids = _restricted_and_lifted(salesforce, config)
    engine = open_sync_engine(config)
    try:
        with engine.ledger.engine.begin() as conn:
            done = (
                conn.execute(
                    outbox.select()
                    .where(outbox.c.record_id == ids[LIFTED], outbox.c.status == "done")
                    .order_by(outbox.c.id.desc())
                )
                .mappings()
                .first()
            )
            assert done is not None
            row = {k: v for k, v in done.items() if k != "id"}
            conn.execute(outbox.insert().values({**row, "status": "dead", "fields": FIELDS_PARTLY_SHOWN}))
    finally:
        engine.ledger.engine.dispose()
    assert ids[LIFTED] not in _plan(config)
    _run(config)
    assert _flags(salesforce, ids[LIFTED]) == (True, True)


@SQLITE_ONLY  # the mapping's rule: its lookups run on PostgreSQL in the first test (CI time)
def test_a_restriction_lifted_under_an_older_release_is_put_back_by_its_first_sync(
    salesforce: Any, tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The people lifted before this release (their ticks left behind): the first sync of this
    release examines them again (the push rules' version changed: sync/push_rules.py) and puts
    back what the restriction wrote, though nothing of theirs changed since."""
    from consentsync.sync import push_rules
    from consentsync.sync.engine import SyncEngine

    config = _config(salesforce, tmp_path, ledger_url)
    ids = _restricted_and_lifted(salesforce, config)
    with monkeypatch.context() as older:
        # The older release: nothing put back, under the push rules' previous version.
        older.setattr(SyncEngine, "_put_backs", lambda *_: {})
        older.setattr(push_rules, "PUSH_DECISIONS_VERSION", push_rules.PUSH_DECISIONS_VERSION - 1)
        _run(config)
        assert _flags(salesforce, ids[LIFTED]) == (True, True)
    _run(config)
    assert _flags(salesforce, ids[LIFTED]) == (False, True)
