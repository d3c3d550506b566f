"""Two cases a review of session 50 found in the sync engine (each failed before its fix): a no
on a record the CRM deleted before any sync read it reaches the person held under another form
of the address (an older version kept an internationalised domain as punycode), looked up for
the page at once; and `apply` of a plan whose first apply was cut short pushes the rest of it,
exiting 0 only once none of its approved pushes is left (docs/admin-commands.md)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select, update

from consentsync import exit_codes
from consentsync.cli_sync import run_exit_code
from consentsync.ledger.schema import outbox, subject_identifiers, subjects
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sdk.connector import CrmRecord, RecordUpdate, WriteResult
from consentsync.sdk.errors import Action, ConnectorError, ErrorRule, Fault
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.test_policy_s49_sync import MAPPING, Org, _engine, _grant, _state

UNICODE = "a@bücher.example"
PUNYCODE = "a@xn--bcher-kva.example"


def _deleted(clock: Clock, record_id: str, email: str) -> CrmRecord:
    stamp = clock.now - timedelta(seconds=30)
    fields = {"id": record_id, "modifiedon": stamp, "email": email, "optout": True}
    return CrmRecord("thing", record_id, stamp, fields, deleted=True)


def test_a_no_on_a_deleted_record_reaches_the_person_held_under_another_form(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    _grant(ledger, UNICODE, clock.now - timedelta(days=30))
    with ledger.engine.begin() as conn:  # as an older version stored it: the domain in punycode
        conn.execute(
            update(subject_identifiers).where(subject_identifiers.c.value == UNICODE).values(value=PUNYCODE)
        )
    for n in range(3):
        _grant(ledger, f"p{n}@example.com", clock.now - timedelta(days=30))
    org = Org(clock)
    org.merges += [_deleted(clock, "r8", UNICODE)]
    org.merges += [_deleted(clock, f"r{n}", f"p{n}@example.com") for n in range(3)]
    looked_up: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "JOIN subject_identifiers" in statement and "erased_at IS NULL" in statement:
            looked_up.append(statement)

    event.listen(ledger.engine, "before_cursor_execute", count)
    try:
        report = _engine(ledger, config_path, org).run()
    finally:
        event.remove(ledger.engine, "before_cursor_execute", count)
    assert report.status == "succeeded", report.error
    # The person held under the punycode form took the no; nobody new was made for it.
    assert _state(ledger, UNICODE) == ("withdrawn", True)
    assert all(_state(ledger, f"p{n}@example.com") == ("withdrawn", True) for n in range(3))
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(subjects)).scalar_one() == 4
    assert len(looked_up) == 1  # one query for the page's four deleted records, not one each


class _Flaky(Org):
    """Refuses the writes to the records in ``refuse`` for now (retryable), applying the rest."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.refuse: set[str] = set()

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        ok = [u for u in updates if u.record_id not in self.refuse]
        done = {r.record_id: r for r in super().write(ok)}
        return [
            done.get(u.record_id) or WriteResult(u.record_id, False, "UNABLE_TO_LOCK_ROW", "busy", True)
            for u in updates
        ]


def _observing(ledger: Ledger, config_path: Path, org: Org) -> SyncEngine:
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    return SyncEngine(ledger, org, [mapping], SyncOptions(signpost_lag_seconds=0, mode="observe"))


def _pending(ledger: Ledger) -> set[str]:
    with ledger.engine.connect() as conn:
        return set(conn.execute(select(outbox.c.record_id).where(outbox.c.status == "pending")).scalars())


def test_applying_a_plan_again_after_an_interrupted_apply_pushes_the_rest(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _Flaky(clock)
    for n in range(3):
        org.put(f"r{n}", f"w{n}@example.com")
        ledger.erase(f"w{n}@example.com", reason="Art. 17 request")  # each plan row a suppression
    assert _observing(ledger, config_path, org).run().status == "succeeded"
    plan = _observing(ledger, config_path, org).run(dry_run=True).plan
    assert plan is not None and {item.record_id for item in plan.items} == {"r0", "r1", "r2"}

    # The first apply: r1 and r2 refused for now (a lock, a busy CRM); r0 goes through.
    org.refuse = {"r1", "r2"}
    clock.advance(minutes=1)
    first = _observing(ledger, config_path, org).run(apply_plan=plan)
    assert _pending(ledger) == {"r1", "r2"}
    assert run_exit_code(first) == exit_codes.STOPPED, (first.status, first.error)
    assert first.note is not None and "2 of the plan's 3" in first.note

    # Applied again while r2 is still refused: r1 goes; told that one is left, retry later.
    org.refuse = {"r2"}
    clock.advance(minutes=1)
    second = _observing(ledger, config_path, org).run(apply_plan=plan)
    assert _pending(ledger) == {"r2"}
    assert run_exit_code(second) == exit_codes.STOPPED, (second.status, second.error)
    assert second.note is not None and "1 of the plan's 2" in second.note and first.run_id in second.note
    assert second.counts.pushed == 1

    # And again once the CRM takes it: the whole plan is through, exit 0.
    org.refuse = set()
    clock.advance(minutes=1)
    third = _observing(ledger, config_path, org).run(apply_plan=plan)
    assert run_exit_code(third) == exit_codes.OK, (third.status, third.error)
    assert _pending(ledger) == set() and third.counts.pushed == 1
    assert sorted(u.record_id for u in org.written) == ["r0", "r1", "r2"]  # each once

    # Once more: nothing left, nothing pushed again.
    fourth = _observing(ledger, config_path, org).run(apply_plan=plan)
    assert run_exit_code(fourth) == exit_codes.OK and fourth.counts.pushed == 0
    assert fourth.note is not None and "already applied" in fourth.note
    assert sorted(u.record_id for u in org.written) == ["r0", "r1", "r2"]


class _Dropping(Org):
    """Answers the first write call, then drops the connection for the next ``drops`` calls."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.calls = 0
        self.drops = 0

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        self.calls += 1
        if self.calls > 1 and self.drops:
            self.drops -= 1
            raise ConnectorError("connection reset", ErrorRule(Action.FAIL, Fault.TRANSIENT, "reset"))
        return super().write(updates)


def test_an_apply_cut_off_after_its_first_batch_is_finished_by_the_next(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    org = _Dropping(clock)
    for n in range(3):
        org.put(f"r{n}", f"w{n}@example.com")
        ledger.erase(f"w{n}@example.com", reason="Art. 17 request")
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")

    def engine() -> SyncEngine:
        options = SyncOptions(signpost_lag_seconds=0, mode="observe", push_batch_size=1, push_concurrency=1)
        return SyncEngine(ledger, org, [mapping], options)

    assert engine().run().status == "succeeded"
    plan = engine().run(dry_run=True).plan
    assert plan is not None and len(plan.items) == 3
    org.drops = 1
    clock.advance(minutes=1)
    first = engine().run(apply_plan=plan)
    assert run_exit_code(first) == exit_codes.UNAVAILABLE, (first.status, first.error)
    assert len(_pending(ledger)) == 2 and first.note is not None and "2 of the plan's 3" in first.note
    clock.advance(minutes=1)
    again = engine().run(apply_plan=plan)
    assert run_exit_code(again) == exit_codes.OK, (again.status, again.error, again.note)
    assert _pending(ledger) == set() and again.counts.pushed == 2
    assert sorted(u.record_id for u in org.written) == ["r0", "r1", "r2"]
