"""The harness kit's creation-time check (``check_created_at``) fails a connector whose records
say nothing, or the wrong thing, of when the CRM created them, and skips one that declares its
CRM keeps no creation time (``Connector.reports_created``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from consentsync.sdk import Connector, CrmRecord, Cursor, FieldInfo, WriteResult
from consentsync.sdk.harness import check_created_at


@dataclass
class _Store:
    """A CRM of a few records: id -> (created, modstamp)."""

    object_type: str = "Contact"
    read_fields: Sequence[str] = ("Email",)
    records: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)

    def create_with_text(self, text: str) -> str:
        now = datetime.now(UTC).replace(microsecond=0)
        record_id = f"r{len(self.records) + 1}"
        self.records[record_id] = (now, now)
        return record_id


class _Reader(Connector):
    vendor: ClassVar[str] = "fake"
    store: _Store
    created_at: Any = "stamp"  # "stamp": the store's; else this value for every record

    def check(self) -> None:
        pass

    def describe(self, object_type: str) -> dict[str, FieldInfo]:
        return {}

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        for record_id, (created, modstamp) in self.store.records.items():
            said = created if self.created_at == "stamp" else self.created_at
            yield CrmRecord(object_type, record_id, modstamp, {}, created_at=said)

    def write(self, updates: Sequence[Any]) -> list[WriteResult]:
        return []


def _reader(store: _Store, **attributes: Any) -> _Reader:
    reader = _Reader("fake", {})
    reader.store = store
    for name, value in attributes.items():
        setattr(reader, name, value)
    return reader


def test_a_record_carrying_its_creation_time_passes() -> None:
    store = _Store()
    assert check_created_at(store, _reader(store)) is None


def test_a_record_without_a_creation_time_fails() -> None:
    store = _Store()
    with pytest.raises(AssertionError, match="says nothing of when the CRM created it"):
        check_created_at(store, _reader(store, created_at=None))


def test_a_naive_creation_time_fails() -> None:
    store = _Store()
    naive = datetime.now(UTC).replace(tzinfo=None)
    with pytest.raises(AssertionError, match="aware"):
        check_created_at(store, _reader(store, created_at=naive))


def test_a_creation_time_hours_off_fails() -> None:
    """The vendor's creation stamp read in the wrong zone (wall-clock time taken as UTC)."""
    store = _Store()
    off = datetime.now(UTC) - timedelta(hours=8)
    with pytest.raises(AssertionError, match="is not the creation"):
        check_created_at(store, _reader(store, created_at=off))


def test_a_creation_time_after_the_modstamp_fails() -> None:
    store = _Store()
    ahead = datetime.now(UTC) + timedelta(seconds=3)
    with pytest.raises(AssertionError, match="after the record's modstamp"):
        check_created_at(store, _reader(store, created_at=ahead))


def test_a_connector_that_declares_no_creation_time_is_skipped() -> None:
    store = _Store()
    reader = _reader(store, created_at=None, reports_created=False)
    assert "reports_created" in (check_created_at(store, reader) or "")
    assert store.records == {}, "a skipped check created nothing"


def test_connectors_report_creation_by_default() -> None:
    assert Connector.reports_created is True
