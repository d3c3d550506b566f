"""The floor under bench/ledger_bench.py: how fast SQLite alone stores the rows one event costs.

    python bench/sqlite_floor.py                       # 1,000,000 events, 100,000 people
    python bench/sqlite_floor.py --events 200000 --subjects 20000

Same ledger schema, same connection settings (foreign keys, WAL, synchronous=NORMAL, cache), same
batches, same rows per event as ``Ledger.record_many`` writes: a subject and its email for each new
person, the consent event, its hash-chained audit entry, the current-state upsert and the
change-feed row, plus the reads it makes (people by email, their subject rows, objections and
states, the replay check by subject through the key (subject_id, fingerprint)). No reconciliation,
no Python objects: the values are made up as cheaply as possible. What the ledger reaches can only
be below this figure; the gap between the two is the cost of consentsync's own code.

``bench/ledger_bench.py --compare`` runs ``record_floor`` on the same stream of people as the
ledgers it measures.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import orjson

from consentsync.app import open_ledger
from consentsync.config import parse_config, starter_config_text
from consentsync.ledger.service import Ledger
from consentsync.logs import configure as configure_logging

NOW = "2026-11-01 00:00:00.000000"
SUMMARY = orjson.dumps(
    {
        "v": 1,
        "latest": {
            "sort_time": "2024-01-01T00:00:00Z",
            "rank": 3,
            "fingerprint": "a" * 64,
            "status": "granted",
            "basis": "consent",
            "event_time": "2024-01-01T00:00:00Z",
            "observed_at": "2026-11-01T00:00:00Z",
            "source": "web_form",
            "evidenced": True,
        },
        "tied": False,
        "restriction": None,
        "trusted_opt_in_at": None,
    },
    option=orjson.OPT_SORT_KEYS,
).decode()
STATE_UPSERT = (
    "INSERT INTO consent_states (subject_id, purpose, channel, summary, status, basis, suppressed, rule,"
    " since, expires_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (subject_id, purpose,"
    " channel) DO UPDATE SET summary = excluded.summary, status = excluded.status, basis = excluded.basis,"
    " suppressed = excluded.suppressed, rule = excluded.rule, since = excluded.since,"
    " expires_at = excluded.expires_at, updated_at = excluded.updated_at"
)
EVENT_INSERT = (
    "INSERT INTO consent_events (subject_id, purpose, channel, status, basis, event_time, recorded_at,"
    " source, origin, actor, notice_version, double_opt_in_at, evidence_ref, fingerprint, run_id)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
AUDIT_INSERT = (
    "INSERT INTO audit_entries (seq, at, action, subject_uid, run_id, payload, prev_hash, hash, subject_id)"
    " VALUES (?,?,?,?,?,?,?,?,?)"
)


@dataclass(frozen=True, slots=True)
class FloorRun:
    events: int
    elapsed: float  # wall seconds
    cpu: float  # CPU seconds of this process


def open_fresh_ledger(url: str, workdir: Path) -> Ledger:
    """A ledger at ``url`` (migrated to the current schema) with the starter configuration."""
    text = starter_config_text().replace("url: sqlite:///consentsync.db", f"url: {url}")
    text = text.replace(
        "erasure_hmac_key_file: consentsync.key", "erasure_hmac_key: bench-key-0123456789abcdef"
    )
    return open_ledger(parse_config(text, workdir / "consentsync.yaml"), migrate=True)


def people(events: int, subjects: int, seed: int) -> Iterable[int]:
    rng = random.Random(seed)
    return (int(rng.random() * subjects) for _ in range(events))


def _in(column_sql: str, values: list, cursor, size: int = 500) -> list:  # type: ignore[type-arg]
    rows: list = []  # type: ignore[type-arg]
    for start in range(0, len(values), size):
        part = values[start : start + size]
        rows += cursor.execute(column_sql + f" IN ({','.join('?' * len(part))})", part).fetchall()
    return rows


def record_floor(db_path: Path, persons: Iterable[int], batch: int) -> FloorRun:
    """Writes the rows of one event per person in ``persons`` (an index: person{N}@example.org)
    into a fresh ledger file at ``db_path``, ``batch`` events a transaction."""
    ledger = open_fresh_ledger(f"sqlite:///{db_path}", db_path.parent)
    raw = ledger.engine.raw_connection()  # the ledger's own connection settings
    db = raw.driver_connection
    cursor = db.cursor()
    stream = iter(persons)
    seq, prev = cursor.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    started, cpu_started, done = time.perf_counter(), time.process_time(), 0
    while chunk := list(islice(stream, batch)):
        size = len(chunk)
        cursor.execute("BEGIN IMMEDIATE")
        emails = [f"person{person}@example.org" for person in chunk]
        found = dict(
            (value, subject_id)
            for subject_id, value in _in(
                "SELECT subject_id, value FROM subject_identifiers WHERE kind = 'email' AND value",
                sorted(set(emails)),
                cursor,
            )
        )
        for email in sorted(set(emails) - found.keys()):
            cursor.execute(
                "INSERT INTO subjects (uid, created_at, restricted) VALUES (?, ?, 0)",
                (str(uuid.uuid4()), NOW),
            )
            found[email] = cursor.lastrowid
            cursor.execute(
                "INSERT INTO subject_identifiers (subject_id, kind, value) VALUES (?, 'email', ?)",
                (found[email], email),
            )
        ids = sorted({found[e] for e in emails})
        uids = dict(_in("SELECT id, uid FROM subjects WHERE id", ids, cursor))
        _in("SELECT * FROM objections WHERE subject_id", ids, cursor)
        _in("SELECT subject_id, purpose, channel, summary FROM consent_states WHERE subject_id", ids, cursor)
        prints = [hashlib.sha256(f"{done + i}".encode()).hexdigest() for i in range(size)]
        _in("SELECT subject_id, fingerprint FROM consent_events WHERE subject_id", ids, cursor)
        events, entries = [], []
        for email, fingerprint in zip(emails, prints, strict=True):
            subject_id = found[email]
            events.append(
                (subject_id, "email_marketing", "email", "granted", "consent", NOW, NOW, "web_form",
                 "capture", None, "v1", None, None, fingerprint, None)
            )  # fmt: skip
            seq += 1
            payload = orjson.dumps(
                {"seq": seq, "at": NOW, "action": "consent.recorded", "subject": uids[subject_id],
                 "what": {"purpose": "email_marketing", "event_fingerprint": fingerprint},
                 "old": {"status": "granted", "basis": "consent", "suppressed": False},
                 "new": {"status": "granted", "basis": "consent", "suppressed": False},
                 "rule": "latest_event_time", "source": "web_form", "actor": None, "run": None},
                option=orjson.OPT_SORT_KEYS,
            ).decode()  # fmt: skip
            digest = hashlib.sha256((prev + payload).encode()).hexdigest()
            entries.append(
                (seq, NOW, "consent.recorded", uids[subject_id], None, payload, prev, digest, subject_id)
            )
            prev = digest
        cursor.executemany(EVENT_INSERT, events)
        cursor.executemany(
            STATE_UPSERT,
            [(s, "email_marketing", "email", SUMMARY, "granted", "consent", 0, "latest_event_time", NOW,
              NOW, NOW) for s in ids],
        )  # fmt: skip
        cursor.executemany(AUDIT_INSERT, entries)
        cursor.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
        cursor.executemany(
            "INSERT INTO state_changes (subject_id, created_at) VALUES (?, ?)", [(s, NOW) for s in ids]
        )
        cursor.execute("COMMIT")
        done += size
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    raw.close()
    ledger.engine.dispose()
    return FloorRun(done, elapsed, cpu)


def stream_arguments(description: str | None) -> argparse.ArgumentParser:
    """The options that say which stream a bench records (the floor's and the ledger's)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = stream_arguments(__doc__).parse_args(argv)
    configure_logging("WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="consentsync-floor-"))
    run = record_floor(workdir / "ledger.db", people(args.events, args.subjects, args.seed), args.batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"events: {run.events:,}  subjects: {args.subjects:,}  batch: {args.batch:,}")
    print(
        f"SQLite floor: {run.events / run.elapsed:,.0f} events/s ({run.elapsed:,.1f} s), "
        f"peak RSS {peak:,.1f} MiB"
    )
    print(f"cpu: {run.cpu:,.1f} s of this process, {run.events / run.cpu:,.0f} events per CPU second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
