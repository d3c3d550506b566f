"""A CRM whose clock or time zone is off by hours dates every value of a record in the future.
A no so dated is still the person's no (docs/policy.md, "Event times and input limits"); a grant
so dated proves nothing and is held back for ops, but alone: the record's no on another purpose
is recorded all the same (held back with the grant, the person stayed opted in everywhere).
On SQLite and PostgreSQL, against a scripted CRM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from consentsync.ledger.schema import quarantine
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sdk import Connector, CrmRecord, Cursor
from consentsync.sdk.connector import FieldInfo, RecordUpdate, WriteResult
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.helpers import mapping_text

CONSENTS = """\
  - purpose: email_marketing
    channel: email
    status: {field: optout, direction: pull, pull: {true: withdrawn, false: null}}
    event_time: {field: optout_at}
  - purpose: profiling
    channel: email
    status: {field: profiled, direction: pull, pull: {true: granted, false: null}}
    event_time: {field: profiled_at}
"""
MAPPING = mapping_text("scripted", "thing", ("id", "modifiedon", "email"), CONSENTS)


class SkewedCrm(Connector):
    """A CRM whose every stamp is ``ahead`` of the real time; it reads back every record."""

    vendor = "scripted"
    can_read_by_id = True

    def __init__(self, clock: Clock, ahead: timedelta) -> None:
        super().__init__("scripted", {})
        self.clock = clock
        self.ahead = ahead
        self.records: dict[str, dict[str, Any]] = {}

    def put(self, record_id: str, email: str, **values: Any) -> None:
        stamp = self.clock() + self.ahead
        self.records[record_id] = {"id": record_id, "modifiedon": self.clock(), "email": email, **values}
        for name in ("optout", "profiled"):
            if values.get(name):
                self.records[record_id][f"{name}_at"] = stamp.isoformat()

    def check(self) -> None:
        pass

    def describe(self, object_type: str) -> dict[str, FieldInfo]:
        return {}

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        changes = [CrmRecord(object_type, r["id"], r["modifiedon"], dict(r)) for r in self.records.values()]
        yield from sorted(changes, key=lambda record: (record.modstamp, record.record_id))

    def read_records(
        self, object_type: str, fields: Sequence[str], ids: Sequence[str]
    ) -> Iterator[CrmRecord]:
        for record_id in ids:
            r = self.records[record_id]
            yield CrmRecord(object_type, record_id, r["modifiedon"], dict(r))

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        return [WriteResult(update.record_id, True) for update in updates]


def _engine(ledger: Ledger, config_path: Path, crm: SkewedCrm) -> SyncEngine:
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    return SyncEngine(ledger, crm, [mapping], SyncOptions(signpost_lag_seconds=0))


def _status(ledger: Ledger, email: str, purpose: str) -> tuple[str, bool]:
    _uid, state = ledger.decision_for(email, purpose, "email")
    return state.status.value, state.suppressed


def _reasons(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as conn:
        open_rows = select(quarantine.c.reason).where(quarantine.c.resolved_at.is_(None))
        return list(conn.execute(open_rows).scalars())


def test_a_no_is_recorded_though_a_grant_on_the_same_record_is_dated_in_the_future(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    crm = SkewedCrm(clock, ahead=timedelta(hours=3))  # a server clock set three hours ahead
    crm.put("r1", "ng@example.com", optout=True, profiled=True)
    assert _engine(ledger, config_path, crm).run().status == "succeeded"
    # The no counts (from when it was read); the grant waits for ops, named in the quarantine.
    assert _status(ledger, "ng@example.com", "email_marketing") == ("withdrawn", True)
    assert _status(ledger, "ng@example.com", "profiling")[0] != "granted"
    reasons = _reasons(ledger)
    assert len(reasons) == 2 and all("event time" in reason for reason in reasons)


def test_a_held_back_grant_is_recorded_when_ops_retry_it_once_its_time_has_come(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    crm = SkewedCrm(clock, ahead=timedelta(hours=3))
    crm.put("r1", "ng@example.com", optout=True, profiled=True)
    assert _engine(ledger, config_path, crm).run().status == "succeeded"
    clock.advance(hours=4)  # the CRM's time is now in the past
    with ledger.engine.begin() as conn:
        conn.execute(quarantine.update().values(retry_requested_at=clock.now))
    assert _engine(ledger, config_path, crm).run().status == "succeeded"
    assert _status(ledger, "ng@example.com", "profiling") == ("granted", False)
    assert _status(ledger, "ng@example.com", "email_marketing") == ("withdrawn", True)


def test_a_record_whose_only_value_is_a_grant_dated_in_the_future_waits_whole(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    crm = SkewedCrm(clock, ahead=timedelta(hours=3))
    crm.put("r1", "ng@example.com", profiled=True)
    assert _engine(ledger, config_path, crm).run().status == "succeeded"
    assert _status(ledger, "ng@example.com", "profiling")[0] != "granted"
    assert len(_reasons(ledger)) == 1
