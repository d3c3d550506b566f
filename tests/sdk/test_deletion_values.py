"""A deletion listing handed the mapped fields (Connector.read_deletions_with): connectors whose
CRM keeps a deleted record's values take them; a plugin written before ``read_deletions`` took
``fields`` is called as before, never failed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from consentsync.sdk import Cursor
from consentsync.sdk.connector import Connector, CrmRecord, FieldInfo, WriteResult

T = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class _Base(Connector):
    vendor = "test"
    reads_deletions = True

    def check(self) -> None:
        pass

    def describe(self, object_type: str) -> dict[str, FieldInfo]:
        return {}

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        return iter(())

    def write(self, updates: Sequence[Any]) -> list[WriteResult]:
        return []


class _Keeps(_Base):
    """Its CRM answers a deleted record's last values."""

    def read_deletions(
        self, object_type: str, since: Cursor, until: datetime, fields: Sequence[str] = ()
    ) -> Iterator[CrmRecord]:
        yield CrmRecord(object_type, "1", T, {name: True for name in fields}, deleted=True)


class _Older(_Base):
    """A plugin written before read_deletions took fields."""

    def read_deletions(self, object_type: str, since: Cursor, until: datetime) -> Iterator[CrmRecord]:
        yield CrmRecord(object_type, "2", T, {}, deleted=True)


def test_the_mapped_fields_reach_a_connector_that_takes_them() -> None:
    connector = _Keeps("keeps", {})
    (gone,) = connector.read_deletions_with("contact", ["optout"], Cursor(), T)
    assert gone.deleted and gone.fields == {"optout": True}


def test_a_connector_written_before_fields_is_called_as_before() -> None:
    connector = _Older("older", {})
    (gone,) = connector.read_deletions_with("contact", ["optout"], Cursor(), T)
    assert gone.deleted and gone.fields == {}
