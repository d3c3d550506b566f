"""Pushes sent while later people are still examined: where nothing must count the whole queue
first (no push guard, no approved plan, not observing), a batch's pushes go to the CRM as soon as
the batch is committed, and the CRM's time overlaps examining the next batch. Where a guard holds
the run, nothing is sent before every person was examined. Either way the end state is the same,
and a push the CRM refused for now is not sent twice in one run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import func, select

from consentsync.config import write_starter
from consentsync.ledger.schema import outbox, sync_examine
from consentsync.ledger.service import Ledger
from consentsync.sdk import RecordUpdate, WriteResult
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock, migrated_ledger
from tests.integration.test_sync_engine import _engine, _org_flags


def _watch_marks(engine: SyncEngine, ledger: Ledger) -> list[int]:
    """The people still marked for examination as each CRM write call begins."""
    seen: list[int] = []
    write_batches = engine.connector.write_batches

    def watched(updates: Sequence[RecordUpdate]) -> Iterator[dict[int, WriteResult]]:
        batches = write_batches(updates)
        while True:
            with ledger.engine.connect() as conn:
                seen.append(conn.execute(select(func.count()).select_from(sync_examine)).scalar_one())
            try:
                yield next(batches)
            except StopIteration:
                return

    engine.connector.write_batches = watched  # type: ignore[method-assign]
    return seen


@contextmanager
def _seeded() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(120, seed=11)
        yield sandbox


@contextmanager
def _second_ledger(directory: Path, clock: Clock) -> Iterator[tuple[Ledger, Path]]:
    """An empty SQLite ledger beside the test's own, with a config of its own."""
    directory.mkdir()
    path = directory / "consentsync.yaml"
    write_starter(path, f"sqlite:///{directory / 'ledger.db'}")
    with migrated_ledger(path, clock) as opened:
        yield opened, path


def _outbox(ledger: Ledger) -> list[Any]:
    with ledger.engine.connect() as conn:
        return conn.execute(select(outbox.c.record_id, outbox.c.status, outbox.c.attempts)).all()


def test_pushes_begin_while_later_people_are_still_examined(
    ledger: Ledger, config_path: Path, tmp_path: Path, clock: Clock
) -> None:
    with _seeded() as sandbox:
        options = SyncOptions(batch_size=10, push_batch_size=20, signpost_lag_seconds=0)
        engine = _engine(ledger, config_path, sandbox, options=options)
        marks = _watch_marks(engine, ledger)
        report = engine.run(full=True)
        assert report.status == "succeeded", report.error
        assert report.counts.pushed > 0
        assert marks and marks[0] > 0, f"the first write call began with {marks[:1]} people left to examine"
        flags = _org_flags(sandbox)
    assert {status for _, status, _ in _outbox(ledger)} == {"done"}
    # The same org synced with a guard that lets everything through, and so examines everyone
    # before it pushes, ends in the same flags.
    with (
        _seeded() as sandbox,
        _second_ledger(tmp_path / "guarded", clock) as (guarded_ledger, guarded_config),
    ):
        options = SyncOptions(
            batch_size=10, push_batch_size=20, signpost_lag_seconds=0, guard_max_records=10**6
        )
        engine = _engine(guarded_ledger, guarded_config, sandbox, options=options)
        marks = _watch_marks(engine, guarded_ledger)
        report = engine.run(full=True)
        assert report.status == "succeeded", report.error
        assert marks and set(marks) == {0}, "a guarded run pushed before every person was examined"
        assert _org_flags(sandbox) == flags


def test_a_push_the_crm_refused_for_now_is_not_sent_again_in_the_same_run(
    ledger: Ledger, config_path: Path
) -> None:
    with _seeded() as sandbox:
        contacts = [r["Id"] for r in sandbox.org.records("Contact")]
        sandbox.faults.lock_records(*contacts)
        engine = _engine(
            ledger,
            config_path,
            sandbox,
            options=SyncOptions(batch_size=10, signpost_lag_seconds=0),
            lock_retries=0,
        )
        report = engine.run(full=True)
        assert report.status == "succeeded", report.error
    refused = [(record, attempts) for record, status, attempts in _outbox(ledger) if status == "pending"]
    assert refused, "some locked contact needed a push"
    assert {attempts for _, attempts in refused} == {1}, refused
