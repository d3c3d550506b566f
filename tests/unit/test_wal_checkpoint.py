"""The SQLite ledger's write-ahead log is copied back into the database beside the writer."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from consentsync.ledger import checkpoint
from consentsync.ledger.checkpoint import BACKSTOP_PAGES, BackgroundCheckpoint
from consentsync.ledger.engine import make_engine


def test_the_log_is_checkpointed_by_another_thread_while_the_writer_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)"))
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == BACKSTOP_PAGES
    before = path.stat().st_size
    deadline = time.monotonic() + 3.0
    # Far below SQLite's own threshold (BACKSTOP_PAGES): only the background checkpoint can
    # have copied these pages into the database file.
    while time.monotonic() < deadline and path.stat().st_size <= before + 100 * 4000:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (v) VALUES (randomblob(4000))"))
        time.sleep(0.005)
    assert path.stat().st_size > before + 100 * 4000
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() > 100
    engine.dispose()


def test_a_removed_ledger_file_is_not_created_again(tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    background = BackgroundCheckpoint(str(missing), period=0)
    background._run()
    assert not missing.exists()
    assert background.completed == 0


def test_a_log_written_without_pause_is_emptied_once_large(tmp_path: Path, monkeypatch) -> None:
    # A writer that never stops keeps passive checkpoints from ever copying the whole log; the
    # log must still be started over once it is large, or it grows for as long as the run writes.
    monkeypatch.setattr(checkpoint, "BACKGROUND_RESTART_BYTES", 1024 * 1024)
    path = tmp_path / "ledger.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)"))
    wal = Path(f"{path}-wal")
    largest, emptied = 0, False
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not emptied:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (v) SELECT randomblob(4000) FROM (SELECT 1 UNION ALL SELECT 2)"))
        size = wal.stat().st_size if wal.exists() else 0
        emptied = largest > 1024 * 1024 and size < largest
        largest = max(largest, size)
    assert emptied, f"the log grew to {largest} bytes and was never started over"
    engine.dispose()


def test_a_checkpoint_started_after_a_commit_copies_the_whole_log(tmp_path: Path) -> None:
    # Started once the writer committed (not as its next transaction begins), the copy reaches
    # the log's end, so SQLite can start the log over at the next write with nobody waiting.
    path = tmp_path / "ledger.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)"))
        conn.execute(text("INSERT INTO t (v) SELECT randomblob(4000) FROM (SELECT 1 UNION ALL SELECT 2)"))
    background = checkpoint._ATTACHED[engine]
    background._last = 0.0  # its period has passed
    done = background.completed
    checkpoint.after_commit(engine)
    deadline = time.monotonic() + 5.0
    while background.completed == done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert background.completed == done + 1
    # Every page the log held is in the database file now: its size is the database's.
    connection = sqlite3.connect(path)
    pages, page_size = (
        connection.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "page_size")
    )
    connection.close()
    assert pages > 2
    assert path.stat().st_size == pages * page_size
    engine.dispose()


def test_while_a_writer_paces_checkpoints_a_beginning_transaction_starts_none(tmp_path: Path) -> None:
    background = BackgroundCheckpoint(str(tmp_path / "ledger.db"), period=0)
    background._run = lambda: None  # type: ignore[method-assign]  # what starts matters here, not the copy
    background._running = True  # as after_commit leaves it, without a thread
    background.maybe_start(after_commit=True)
    background._running = False
    background.maybe_start()
    assert not background._running
    background._paced_until = 0.0  # the writer stopped calling after_commit long ago
    background.maybe_start()
    assert background._running
