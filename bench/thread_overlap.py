"""Whether SQLite's inserts on a second thread overlap with the recording's Python work.

    python bench/thread_overlap.py                  # 200,000 rows, Python 3 times their inserts
    python bench/thread_overlap.py --rows 50000 --python-share 1

The ledger's bulk path spends about a quarter of its time in ``executemany`` (SQLite inserting
rows into B-trees) and about three times that in Python (reconciling, canonical JSON, hashing:
``--python-share``, the default 3). sqlite3 lets
go of the GIL while SQLite steps a statement, so on two cores the inserts of one batch could run
while Python prepares the next. This measures whether they do, on synthetic work of the same
shape, in one process:

``serial`` (the floor)
    the inserts, then the Python work, one after the other: what the ledger does today.
``bound``
    the longer of the two alone: what a perfect overlap would take.
``thread, executemany, switch S``
    the inserts on a thread, the Python work on the main thread, with the interpreter's switch
    interval at S seconds (``sys.setswitchinterval``). ``executemany`` takes the GIL back after
    every row; at the default 5 ms each row would wait up to 5 ms, so only shorter intervals are
    run.
``thread, multi-row VALUES``
    the inserts on a thread as one ``INSERT ... VALUES (...), (...)`` per 500 rows, so the GIL
    is taken back once a statement (SQLite parses a longer statement instead).

Prints wall seconds and each against ``serial``: below 1.0x the thread paid.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

COLUMNS = "subject_id, purpose, status, event_time, source, fingerprint, payload"
PER_STATEMENT = 500  # rows of a multi-row INSERT: 7 values a row, under SQLite's 32,766


def make_rows(count: int) -> list[tuple[object, ...]]:
    return [
        (
            index % 20_000,
            "email_marketing",
            "granted",
            f"2026-01-01 00:00:{index % 60:02d}.{index:06d}",
            "web_form",
            hashlib.sha256(str(index).encode()).hexdigest(),  # a random key, as the ledger's are
            "x" * 200,
        )
        for index in range(count)
    ]


def open_table(path: Path) -> sqlite3.Connection:
    """A fresh table with a random-key index, with the ledger's journal settings."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(f"CREATE TABLE events (id INTEGER PRIMARY KEY, {COLUMNS})")
    db.execute("CREATE UNIQUE INDEX events_fingerprint ON events (fingerprint, subject_id)")
    return db


def insert_each(db: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    marks = ", ".join("?" * len(rows[0]))
    db.execute("BEGIN")
    db.executemany(f"INSERT INTO events ({COLUMNS}) VALUES ({marks})", rows)
    db.execute("COMMIT")


def insert_multirow(db: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    one = "(" + ", ".join("?" * len(rows[0])) + ")"
    db.execute("BEGIN")
    for start in range(0, len(rows), PER_STATEMENT):
        part = rows[start : start + PER_STATEMENT]
        values = [value for row in part for value in row]
        db.execute(f"INSERT INTO events ({COLUMNS}) VALUES {', '.join([one] * len(part))}", values)
    db.execute("COMMIT")


def python_work(count: int) -> None:
    """The recording's kind of Python: a dict a payload, canonical JSON, a chained SHA-256."""
    prev = "0" * 64
    for index in range(count):
        payload = {"seq": index, "action": "consent.recorded", "subject": index % 20_000,
                   "what": {"purpose": "email_marketing", "status": "granted"}, "rule": "latest"}  # fmt: skip
        text = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
        prev = hashlib.sha256((prev + text).encode()).hexdigest()


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def side_by_side(
    path: Path, rows: list[tuple[object, ...]], work: int, insert: Callable[..., None], switch: float
) -> float:
    """The inserts on a thread while the main thread does the Python work; the wall time of both."""
    db = open_table(path)
    default = sys.getswitchinterval()
    sys.setswitchinterval(switch)
    try:
        started = time.perf_counter()
        writer = threading.Thread(target=insert, args=(db, rows))
        writer.start()
        python_work(work)
        writer.join()
        return time.perf_counter() - started
    finally:
        sys.setswitchinterval(default)
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--python-share", type=float, default=3.0, help="the Python work's time against the inserts'"
    )
    args = parser.parse_args()
    rows = make_rows(args.rows)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "overlap.db"
        db = open_table(path)
        inserts = timed(lambda: insert_each(db, rows))
        db.close()
        sample = 20_000
        payloads = round(args.python_share * inserts / timed(lambda: python_work(sample)) * sample)
        work = timed(lambda: python_work(payloads))
        serial = inserts + work
        results = [
            ("inserts alone (executemany)", inserts),
            ("Python work alone", work),
            ("serial (floor)", serial),
            ("bound (perfect overlap)", max(inserts, work)),
        ]
        for switch in (0.0005, 0.00005):
            results.append(
                (f"thread, executemany, switch {switch * 1000:g} ms",
                 side_by_side(path, rows, payloads, insert_each, switch))
            )  # fmt: skip
        results.append(
            ("thread, multi-row VALUES, switch 5 ms",
             side_by_side(path, rows, payloads, insert_multirow, 0.005))
        )  # fmt: skip
    print(f"{args.rows:,} rows inserted, {payloads:,} payloads made\n")
    for name, seconds in results:
        print(f"{name:<40} {seconds:6.2f} s   {seconds / serial:5.2f}x serial")


if __name__ == "__main__":
    main()
