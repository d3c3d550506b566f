"""Every registered connector says, of each record it reads, when the CRM created it
(``CrmRecord.created_at``), from the vendor's own creation stamp converted as its modstamp is:
the engine lets an erasure's delete or anonymise reach a record first read after the erasure
only where the CRM created it before. The check is the harness kit's
(``consentsync.sdk.harness.check_created_at``), run by the contract kit for every connector;
here the conversions are pinned where a sandbox answers only one spelling."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consentsync.sdk import Cursor, registry
from consentsync.sdk.harness import available_harnesses, build_connector

VENDORS = sorted(available_harnesses())


@pytest.fixture(params=VENDORS)
def harness(request: pytest.FixtureRequest) -> Iterator[Any]:
    made = available_harnesses()[request.param].load()()
    made.start()
    try:
        yield made
    finally:
        made.stop()


@pytest.mark.parametrize("vendor", sorted(registry.available()))
def test_every_built_in_connector_reports_creation(vendor: str) -> None:
    assert registry.load(vendor).reports_created is True


def test_a_record_changed_later_keeps_its_creation_time(harness: Any) -> None:
    """Read again after a CRM user's edit, a record still says when it was created (not when it
    was changed)."""
    connector = build_connector(harness)
    try:
        (record_id,) = harness.seed(1)
        first = _read_one(connector, harness, record_id)
        harness.change(record_id)
        again = _read_one(connector, harness, record_id)
    finally:
        connector.close()
    assert first.created_at is not None and again.created_at == first.created_at
    assert again.modstamp >= first.modstamp


def _read_one(connector: Any, harness: Any, record_id: str) -> Any:
    until = datetime.now(UTC) + timedelta(seconds=5)
    records = connector.read_changes(harness.object_type, list(harness.read_fields), Cursor(), until)
    (record,) = [r for r in records if r.record_id == record_id]
    return record
