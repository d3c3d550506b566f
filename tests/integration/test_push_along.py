"""Pushes sent while later people are still examined: where nothing must count the whole queue
first (no push guard, no approved plan, not observing), a batch's pushes go to the CRM as soon as
the batch is committed, and the CRM's time overlaps examining the next batch. Where a guard holds
the run, nothing is sent before every person was examined. Either way the end state is the same,
and a push the CRM refused for now is not sent twice in one run."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import event, func, insert, select

from consentsync.app import open_ledger
from consentsync.config import load_config, write_starter
from consentsync.ledger.schema import crm_links, crm_snapshots, outbox, sync_examine
from consentsync.ledger.service import Ledger
from consentsync.sdk import RecordUpdate, WriteResult
from consentsync.sdk.crashtest import (
    Trial,
    compare,
    configured,
    end_state,
    quiesce,
    run_killed,
    started_harness,
)
from consentsync.sync.engine import RunReport, SyncEngine, SyncOptions, _Calls, _Share
from consentsync.sync.prefetch import Prefetch
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


def _watch_side_by_side(engine: SyncEngine) -> list[int]:
    """The most CRM write calls in flight at once, in a list of one, kept up to date."""
    most, now, lock = [0], [0], threading.Lock()
    write_batches = engine.connector.write_batches

    def watched(updates: Sequence[RecordUpdate]) -> Iterator[dict[int, WriteResult]]:
        batches = write_batches(updates)
        while True:
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            try:
                answers = next(batches)
            except StopIteration:
                return
            finally:
                with lock:
                    now[0] -= 1
            yield answers

    engine.connector.write_batches = watched  # type: ignore[method-assign]
    return most


@pytest.mark.parametrize("push_along", [True, False], ids=["along", "after-examining"])
def test_a_push_group_is_written_in_shares_side_by_side(
    ledger: Ledger, config_path: Path, tmp_path: Path, clock: Clock, push_along: bool
) -> None:
    """With ``push_concurrency`` 3, a group's calls overlap (each write call of the sandbox takes
    0.1 s), and the CRM ends as after one call at a time."""
    guard = None if push_along else 10**6
    with _seeded() as sandbox:
        sandbox.faults.update(delay=0.1, delay_kinds=("composite",))
        options = SyncOptions(batch_size=10, push_batch_size=40, push_concurrency=3, signpost_lag_seconds=0)
        engine = _engine(ledger, config_path, sandbox, options=replace(options, guard_max_records=guard))
        most = _watch_side_by_side(engine)
        report = engine.run(full=True)
        assert report.status == "succeeded", report.error
        assert most[0] >= 2, "the write calls went one at a time"
        flags = _org_flags(sandbox)
    with _seeded() as sandbox, _second_ledger(tmp_path / "serial", clock) as (serial_ledger, serial_config):
        options = SyncOptions(batch_size=10, push_batch_size=40, push_concurrency=1, signpost_lag_seconds=0)
        engine = _engine(serial_ledger, serial_config, sandbox, options=options)
        most = _watch_side_by_side(engine)
        assert engine.run(full=True).status == "succeeded"
        assert most[0] == 1
        assert _org_flags(sandbox) == flags
    assert {status for _, status, _ in _outbox(ledger)} == {"done"}


@pytest.mark.parametrize("point", ["sync.push.sent=kill@1", "sync.push.answered=kill@1"])
def test_a_run_killed_while_pushing_along_the_examination_ends_like_an_uninterrupted_one(
    tmp_path: Path, point: str
) -> None:
    """SIGKILLed after a group was marked sent (before the CRM saw it), or after the CRM answered
    a call (before the ledger committed the answer), while later people were still to be
    examined: the runs after it end where an uninterrupted run does."""
    env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
    harness, people = started_harness("salesforce")
    try:
        since = datetime.now(UTC)
        config = configured(harness, tmp_path / "reference", people, push_along=True)
        quiesce(config, env, Trial())
        reference = end_state(config, harness, since)
    finally:
        harness.stop()
    harness, people = started_harness("salesforce")
    try:
        since = datetime.now(UTC)
        config = configured(harness, tmp_path / "killed", people, push_along=True)
        assert run_killed(config, {**env, "CONSENTSYNC_FAILPOINTS": point}, kill_after=120)
        ledger = open_ledger(load_config(config))
        try:
            with ledger.engine.connect() as conn:
                still_marked = conn.execute(select(func.count()).select_from(sync_examine)).scalar_one()
                sent = conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_not(None))
                ).scalar_one()
        finally:
            ledger.engine.dispose()
        assert still_marked > 0 and sent > 0, (
            f"killed with {still_marked} people left to examine, {sent} sent"
        )
        trial = Trial()
        quiesce(config, env, trial)
        assert trial.problems == []
        assert compare(reference, end_state(config, harness, since)) == []
    finally:
        harness.stop()


def _two_writes_of_one_contact(ledger: Ledger) -> tuple[list[Any], dict[str, bool]]:
    """Two pending outbox rows for one contact the run pushed, each turning one of its flags
    the other way, and the flags as the ledger last saw them."""
    with ledger.engine.begin() as conn:
        done = conn.execute(
            select(outbox).where(
                outbox.c.status == "done", outbox.c.object_type == "Contact", outbox.c.action == "update"
            )
        ).first()
        assert done is not None, "the run pushed a contact"
        held = orjson.loads(
            conn.execute(
                select(crm_snapshots.c.fields)
                .join(crm_links, crm_links.c.id == crm_snapshots.c.link_id)
                .where(crm_links.c.object_type == "Contact", crm_links.c.record_id == done.record_id)
            ).scalar_one()
        )
        flags = {name: bool(held.get(name)) for name in ("HasOptedOutOfEmail", "DoNotCall")}
        ids = [
            conn.execute(
                insert(outbox)
                .values(
                    {
                        **{column: getattr(done, column) for column in done._fields if column != "id"},
                        "fields": orjson.dumps({name: not value}).decode(),
                        "status": "pending",
                        "sent_at": datetime.now(UTC),
                    }
                )
                .returning(outbox.c.id)
            ).scalar_one()
            for name, value in flags.items()
        ]
        rows = conn.execute(select(outbox).where(outbox.c.id.in_(ids)).order_by(outbox.c.id)).all()
    return rows, flags


def test_answers_taken_together_commit_in_one_transaction_each_applied_in_turn(
    ledger: Ledger, config_path: Path
) -> None:
    """The answers of several CRM calls taken at once are committed in one transaction, each
    applied as if on its own: a record two of them wrote holds both writes afterwards."""
    with _seeded() as sandbox:
        engine = _engine(
            ledger, config_path, sandbox, options=SyncOptions(batch_size=10, signpost_lag_seconds=0)
        )
        assert engine.run(full=True).status == "succeeded"
        rows, before = _two_writes_of_one_contact(ledger)
        commits: list[int] = []
        event.listen(ledger.engine, "commit", lambda _conn: commits.append(1))
        report = RunReport("run", "sf", "running", datetime.now(UTC))
        engine._settle_answers([([row], {0: WriteResult(row.record_id, True)}) for row in rows], report)
    assert len(commits) == 1, f"{len(commits)} commits for the answers of two calls"
    assert report.counts.pushed == 2
    with ledger.engine.connect() as conn:
        statuses = conn.execute(
            select(outbox.c.status).where(outbox.c.id.in_([r.id for r in rows]))
        ).scalars()
        assert set(statuses) == {"done"}
        held = orjson.loads(
            conn.execute(
                select(crm_snapshots.c.fields)
                .join(crm_links, crm_links.c.id == crm_snapshots.c.link_id)
                .where(crm_links.c.object_type == "Contact", crm_links.c.record_id == rows[0].record_id)
            ).scalar_one()
        )
    assert {name: held[name] for name in before} == {name: not value for name, value in before.items()}


def test_answers_handed_over_before_a_shares_error_are_committed(ledger: Ledger, config_path: Path) -> None:
    """A share's calls fail after another share's call answered: the answer is committed before
    the error goes up."""
    with _seeded() as sandbox:
        engine = _engine(
            ledger, config_path, sandbox, options=SyncOptions(batch_size=10, signpost_lag_seconds=0)
        )
        assert engine.run(full=True).status == "succeeded"
        rows, _ = _two_writes_of_one_contact(ledger)

        def answered() -> Iterator[dict[int, WriteResult]]:
            yield {0: WriteResult(rows[0].record_id, True)}

        def failing() -> Iterator[dict[int, WriteResult]]:
            raise ConnectionError("the CRM went away")
            yield {}

        arrived = threading.Event()
        shares = [
            _Share([rows[0]], Prefetch(answered(), depth=4, arrived=arrived)),
            _Share([rows[1]], Prefetch(failing(), depth=4, arrived=arrived)),
        ]
        for share in shares:
            share.calls._thread.join()
        report = RunReport("run", "sf", "running", datetime.now(UTC))
        with pytest.raises(ConnectionError):
            engine._settle_ready(_Calls(shares, arrived), report)
    with ledger.engine.connect() as conn:
        statuses = dict(
            conn.execute(
                select(outbox.c.id, outbox.c.status).where(outbox.c.id.in_([r.id for r in rows]))
            ).all()
        )
    assert statuses == {rows[0].id: "done", rows[1].id: "pending"}


def test_a_records_outbox_history_is_weighed_oldest_first_without_superseded_rows(
    ledger: Ledger, config_path: Path
) -> None:
    """The examination weighs a new decision against the record's latest row that still matters
    (``_repeats``): the history comes oldest first, whatever order the lookup returns it in."""
    with _seeded() as sandbox:
        engine = _engine(
            ledger, config_path, sandbox, options=SyncOptions(batch_size=10, signpost_lag_seconds=0)
        )
        assert engine.run(full=True).status == "succeeded"
    with ledger.engine.begin() as conn:
        done = conn.execute(
            select(outbox).where(outbox.c.status == "done", outbox.c.object_type == "Contact")
        ).first()
        assert done is not None, "the run pushed a contact"
        added = [
            conn.execute(
                insert(outbox)
                .values(
                    {
                        **{column: getattr(done, column) for column in done._fields if column != "id"},
                        "fields": orjson.dumps({"HasOptedOutOfEmail": index % 2 == 0}).decode(),
                        "status": status,
                    }
                )
                .returning(outbox.c.id)
            ).scalar_one()
            for index, status in enumerate(("dead", "superseded", "pending", "done", "pending"))
        ]
        queued = engine._queued(conn, [done])
    history = queued[(done.object_type, done.record_id)]
    assert [old.id for old in history] == [done.id, added[0], added[2], added[3], added[4]]
    assert [old.status for old in history] == ["done", "dead", "pending", "done", "pending"]
    assert history[-1].fields == orjson.dumps({"HasOptedOutOfEmail": True}).decode()
