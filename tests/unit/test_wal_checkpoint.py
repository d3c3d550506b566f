"""The SQLite ledger's write-ahead log is copied back into the database beside the writer."""

from __future__ import annotations

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
    monkeypatch.setattr(checkpoint, "RESTART_BYTES", 1024 * 1024)
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
