"""A write the CRM answered "failed" may still have been applied, in part or whole (SuperOffice
saves the fields it took before it refuses the next one; a gateway may time out after the CRM
saved): what the record then shows from that write is ours, never the person's. The next read
does not record it as the CRM's evidence, and a write the record shows whole is acknowledged."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from consentsync.ledger.schema import quarantine
from consentsync.sdk import RecordUpdate, WriteResult
from consentsync.sdk.harness import open_sync_engine, write_sync_config
from consentsync.sdk.testing import _captured, _set_connector
from tests.conftest import running_harness

EMAIL = "answered.failed@example.test"


@pytest.fixture
def harness() -> Iterator[Any]:
    with running_harness("salesforce") as started:
        yield started


def _applied_but_refused(connector: Any) -> None:
    """The connector's writes reach the CRM, and every answer says they did not."""
    real = connector.write_batches

    def write_batches(updates: Sequence[RecordUpdate]) -> Iterator[dict[int, WriteResult]]:
        for answers in real(updates):
            yield {
                position: WriteResult(result.record_id, False, "GATEWAY_TIMEOUT", "no answer in time")
                for position, result in answers.items()
            }

    connector.write_batches = write_batches


def test_a_write_answered_failed_is_not_read_back_as_the_persons_choice(harness: Any, tmp_path: Path) -> None:
    record_id = harness.create_person(EMAIL)
    config = write_sync_config(harness, tmp_path)
    _set_connector(config, mode="two_way")
    engine = open_sync_engine(config)
    _captured(engine.ledger, [EMAIL], granted=False)  # unsubscribed on the web site
    time.sleep(1.1)
    _applied_but_refused(engine.connector)
    first = engine.run(full=True)
    assert first.counts.push_failed >= 1, first.counts
    assert harness.read_opted_out(record_id), "the write did not reach the CRM"
    history = len(engine.ledger.subject_view(EMAIL)["history"])
    time.sleep(1.1)
    second = open_sync_engine(config).run()
    assert second.status in ("succeeded", "failed"), second.error
    view = engine.ledger.subject_view(EMAIL)
    crm_events = [e for e in view["history"][history:] if e["origin"] == "crm"]
    assert crm_events == [], "our own write came back as the CRM's evidence"
    assert second.counts.echoes_recognised >= 1, second.counts  # shown whole: acknowledged
    # Dead-lettered and quarantined when it was refused; found done, its quarantine is resolved.
    with engine.ledger.engine.connect() as conn:
        stages = conn.execute(select(quarantine.c.stage, quarantine.c.resolved_at)).all()
    assert [stage for stage, _ in stages] == ["push"] and all(resolved for _, resolved in stages), stages
