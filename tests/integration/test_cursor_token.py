"""The engine's handling of an opaque cursor token (a delta link): kept from the start of a read
until the change set is read to its end, then stored with the last page in the same transaction,
and never advanced when the run breaks off mid-way.

The connector here is a scripted stand-in for the engine's counterpart (the Dynamics connector's
tests do the same over HTTPS against its sandbox): each read returns a change set and the token
to hand over at its end, and may break off after some records as a network failure would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from consentsync.ledger.schema import sync_cursors
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sdk import Action, Connector, ConnectorError, CrmRecord, Cursor, ErrorRule, Fault
from consentsync.sdk.connector import FieldInfo, RecordUpdate, WriteResult
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.integration.helpers import mapping_text

CONSENTS = """\
  - purpose: email_marketing
    channel: email
    status: {field: optout, pull: {true: withdrawn, false: null}}
"""
MAPPING = mapping_text("scripted", "thing", ("id", "modifiedon", "email"), CONSENTS)


def test_cursor_json_is_backwards_compatible() -> None:
    stamp = datetime(2026, 11, 1, 3, 4, 5, tzinfo=UTC)
    old = Cursor(stamp, "a1")
    assert old.to_json() == {"modstamp": stamp.isoformat(), "record_id": "a1"}  # as stored before
    assert Cursor.from_json({"modstamp": stamp.isoformat(), "record_id": "a1"}) == old
    with_token = Cursor(stamp, "a1", "https://x/contacts?$deltatoken=1%212")
    assert Cursor.from_json(with_token.to_json()) == with_token
    assert Cursor.from_json({"token": "t"}) == Cursor(token="t")
    assert Cursor.from_json(None) == Cursor()


class Scripted(Connector):
    vendor = "scripted"

    def __init__(
        self, changes: list[list[dict[str, Any]]], tokens: list[str], break_after: int | None = None
    ):
        super().__init__("scripted", {})
        self.changes, self.tokens, self.break_after = changes, tokens, break_after
        self.seen: list[Cursor] = []

    def check(self) -> None:
        pass

    def describe(self, object_type: str) -> dict[str, FieldInfo]:
        return {}

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        self.seen.append(since)
        rows, token = self.changes.pop(0), self.tokens.pop(0)
        for index, row in enumerate(rows):
            if self.break_after is not None and index == self.break_after:
                raise ConnectorError("connection reset", ErrorRule(Action.FAIL, Fault.TRANSIENT, "reset"))
            yield CrmRecord(object_type, row["id"], row["modifiedon"], row)
        self.completed_cursor = Cursor(token=token)

    def write(self, updates: Sequence[RecordUpdate]) -> list[WriteResult]:
        return [WriteResult(u.record_id, True) for u in updates]


def _rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        {
            "id": f"r{i:04d}",
            "modifiedon": base + timedelta(seconds=i // 3),
            "email": f"p{i}@x.test",
            "optout": i % 2 == 0,
        }
        for i in range(start, start + count)
    ]


def _stored(ledger: Ledger) -> Cursor:
    with ledger.engine.connect() as conn:
        raw = conn.execute(
            select(sync_cursors.c.cursor).where(sync_cursors.c.object_type == "thing")
        ).scalar()
    return Cursor.from_json(orjson.loads(raw)) if raw else Cursor()


def _engine(ledger: Ledger, config_path: Path, connector: Scripted, batch: int) -> SyncEngine:
    mapping = parse_mapping(MAPPING, config_path.parent / "thing.yaml")
    return SyncEngine(ledger, connector, [mapping], SyncOptions(batch_size=batch, signpost_lag_seconds=0))


@pytest.mark.parametrize("batch", [7, 10])  # the change set ends inside a page / on a page boundary
def test_new_token_is_stored_only_once_the_change_set_is_committed(
    ledger: Ledger, config_path: Path, batch: int
) -> None:
    connector = Scripted([_rows(20), _rows(5, 20), []], ["T1", "T2", "T3"])
    assert _engine(ledger, config_path, connector, batch).run().status == "succeeded"
    assert _stored(ledger).token == "T1"
    assert _engine(ledger, config_path, connector, batch).run().status == "succeeded"
    assert connector.seen[1].token == "T1"
    assert _stored(ledger).token == "T2"
    # An empty change set still moves the token on (a quiet org's token would otherwise expire).
    report = _engine(ledger, config_path, connector, batch).run()
    assert report.status == "succeeded" and report.counts.read == 0
    assert connector.seen[2].token == "T2"
    assert _stored(ledger).token == "T3"


def test_a_read_broken_off_mid_way_keeps_the_old_token(ledger: Ledger, config_path: Path) -> None:
    first = Scripted([_rows(20)], ["T1"])
    assert _engine(ledger, config_path, first, 7).run().status == "succeeded"
    broken = Scripted([_rows(20, 20)], ["T2"], break_after=15)
    report = _engine(ledger, config_path, broken, 7).run()
    assert report.status == "failed"
    stored = _stored(ledger)
    assert stored.token == "T1"  # the next run reads the whole change set again
    # Every record read before the break was committed (two pages and the page it broke off),
    # under the old token.
    assert stored.record_id == "r0034"
    again = Scripted([_rows(20, 20)], ["T2"])
    assert _engine(ledger, config_path, again, 7).run().status == "succeeded"
    assert again.seen[0].token == "T1"
    assert _stored(ledger).token == "T2"
