"""A sync run's write connection keeps what its pages committed, and only while nobody else writes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from consentsync.ledger import checkpoint
from consentsync.ledger.engine import READ_ONLY, make_engine
from consentsync.sync.writer import RunWriter

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def _stage(writer: RunWriter, subject_id: int) -> None:
    writer.warm.stage([], {subject_id: object()}, {}, {}, NOW)


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
    yield engine
    engine.dispose()


def test_what_a_committed_transaction_staged_is_kept_for_the_next(engine) -> None:
    writer = RunWriter(engine)
    with writer.transaction() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        _stage(writer, 7)
    with writer.transaction():
        assert writer.warm.knows(7)
    writer.close()


def test_a_commit_by_another_connection_empties_it(engine) -> None:
    writer = RunWriter(engine)
    with writer.transaction():
        _stage(writer, 7)
    with engine.begin() as other:  # an objection decided, an erasure, a capture meanwhile
        other.execute(text("INSERT INTO t VALUES (2)"))
    with writer.transaction():
        assert not writer.warm.knows(7)
    writer.close()


def test_a_rolled_back_transaction_leaves_nothing(engine) -> None:
    writer = RunWriter(engine)
    with pytest.raises(RuntimeError), writer.transaction():
        _stage(writer, 7)
        raise RuntimeError("the page failed")
    with writer.transaction():
        pass  # a later transaction that stages nothing must not take in the failed one's
    assert not writer.warm.knows(7)
    writer.close()


def test_the_check_runs_inside_the_transaction_and_can_refuse_it(engine) -> None:
    writer = RunWriter(engine)

    def lost(conn) -> None:
        assert conn.in_transaction()
        raise LookupError("lease lost")

    with pytest.raises(LookupError), writer.transaction(lost) as conn:
        conn.execute(text("INSERT INTO t VALUES (3)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t WHERE v = 3")).scalar() == 0
    writer.close()


def test_the_run_empties_a_large_log_itself_and_keeps_what_it_knows(engine, monkeypatch) -> None:
    # A log restarted by another connection reads to the run as someone's commit and would empty
    # its cache every few seconds of a large sync; the run restarts it on its own connection.
    monkeypatch.setattr(checkpoint, "RESTART_BYTES", 512 * 1024)
    wal = Path(f"{engine.url.database}-wal")
    writer = RunWriter(engine)
    with writer.transaction():
        _stage(writer, 7)
    largest, emptied = 0, False
    for _ in range(400):
        with writer.transaction() as conn:
            conn.execute(
                text("INSERT INTO t SELECT length(randomblob(4000)) FROM (SELECT 1 UNION ALL SELECT 2)")
            )
            conn.execute(text("CREATE TABLE IF NOT EXISTS big (b BLOB)"))
            conn.execute(text("INSERT INTO big VALUES (randomblob(8000))"))
        size = wal.stat().st_size if wal.exists() else 0
        emptied = emptied or (largest > 512 * 1024 and size < largest)
        largest = max(largest, size)
    assert emptied, f"the log grew to {largest} bytes and was never started over"
    assert writer.warm.knows(7), "restarting the log emptied the run's cache"
    writer.close()


def _rows(engine) -> list[int]:
    """What another connection sees (a reader: it takes no write lock)."""
    with engine.connect().execution_options(**{READ_ONLY: True}) as other:
        return [v for (v,) in other.execute(text("SELECT v FROM t ORDER BY v"))]


def test_deferred_transactions_commit_together_with_the_next_one(engine) -> None:
    writer = RunWriter(engine)
    for value in (1, 2):
        with writer.transaction(defer=True) as conn:
            conn.execute(text(f"INSERT INTO t VALUES ({value})"))
        assert writer.deferring
        assert _rows(engine) == [], "another connection saw a transaction not yet committed"
    with writer.transaction() as conn:  # not deferred: ends the group
        conn.execute(text("INSERT INTO t VALUES (3)"))
    assert not writer.deferring
    assert _rows(engine) == [1, 2, 3]
    with writer.transaction(defer=True) as conn:
        conn.execute(text("INSERT INTO t VALUES (4)"))
    writer.commit()
    assert _rows(engine) == [1, 2, 3, 4]
    writer.close()


def test_a_failure_in_a_group_rolls_all_of_it_back_and_empties_the_cache(engine) -> None:
    writer = RunWriter(engine)
    with writer.transaction(defer=True) as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        _stage(writer, 7)
    assert writer.warm.knows(7)  # the group's next transaction reads what the first one wrote
    with pytest.raises(RuntimeError), writer.transaction(defer=True) as conn:
        conn.execute(text("INSERT INTO t VALUES (2)"))
        raise RuntimeError("the second page failed")
    assert not writer.deferring
    assert not writer.warm.knows(7), "the cache kept what a rolled-back group wrote"
    writer.commit()
    assert _rows(engine) == []
    with writer.transaction() as conn:  # the connection is usable again
        conn.execute(text("INSERT INTO t VALUES (5)"))
    assert _rows(engine) == [5]
    writer.close()


def test_a_group_is_bounded_by_transactions_and_by_time(engine, monkeypatch) -> None:
    from consentsync.sync import writer as module

    monkeypatch.setattr(module, "MAX_JOINED", 3)
    writer = RunWriter(engine)
    for value in range(1, 4):
        with writer.transaction(defer=True) as conn:
            conn.execute(text(f"INSERT INTO t VALUES ({value})"))
    assert not writer.deferring and _rows(engine) == [1, 2, 3], "the third joined did not commit"
    clock = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    with writer.transaction(defer=True) as conn:
        conn.execute(text("INSERT INTO t VALUES (4)"))
    assert writer.deferring
    clock[0] += module.MAX_OPEN_SECONDS
    with writer.transaction(defer=True) as conn:
        conn.execute(text("INSERT INTO t VALUES (5)"))
    assert not writer.deferring and _rows(engine) == [1, 2, 3, 4, 5], "a group outlived its time"
    writer.close()


def test_closing_the_writer_rolls_back_a_group_left_open(engine) -> None:
    writer = RunWriter(engine)
    with writer.transaction(defer=True) as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    writer.close()
    assert _rows(engine) == []
