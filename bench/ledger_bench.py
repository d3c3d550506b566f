"""Records N consent events into a fresh SQLite ledger and prints events/s and peak memory.

    python bench/ledger_bench.py                 # 1,000,000 events, 100,000 people
    python bench/ledger_bench.py --events 200000 --subjects 20000 --url sqlite:////tmp/x.db
    python bench/ledger_bench.py --compare --events 200000 --subjects 20000 [--pg-url URL] [--repeat 3]

Every event goes the whole way: identity resolution, replay check, reconciliation, the event
row, the current-state upsert and a hash-chained audit entry. Memory is sampled at checkpoints
so that "flat in the number of events" can be read off the output; the chain is verified at the
end.

Batches of 50,000 events a transaction, as a bulk import would write them: each commit rewrites
every index page its batch touched, and the indexes keyed by hashes (identifiers, uids) or by the
people a batch meets take random keys, so larger batches write each page fewer times (--batch 5000
measures the smaller batches of a sync run). docs/performance.md has the figures and what bounds
them.

--compare records the same stream, in one run, into the SQLite floor (bench/sqlite_floor.py),
a SQLite ledger and a PostgreSQL ledger (in a schema of its own, created and dropped on the
server of --pg-url, default $CONSENTSYNC_TEST_POSTGRES_URL), and prints the ratios of
issue 14: SQLite ledger / floor (events/s, at least 0.5) and PostgreSQL ledger / SQLite ledger
(time, at most 2.0). CPU seconds are this process's: PostgreSQL's own work is not in them.
``--repeat N`` runs N such rounds and prints the median of each ratio: the floor alone varies by
a tenth or more between rounds on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, text
from sqlite_floor import FloorRun, open_fresh_ledger, people, record_floor, stream_arguments

from consentsync.audit import verify
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger, RecordRequest, RecordStats
from consentsync.logs import configure as configure_logging

STATUSES = [
    (ConsentStatus.GRANTED, 6),
    (ConsentStatus.WITHDRAWN, 2),
    (ConsentStatus.REQUESTED, 1),
    (ConsentStatus.REFUSED, 1),
]
SOURCES = [("web_form", Origin.CAPTURE), ("salesforce", Origin.CRM), ("hubspot", Origin.CRM)]
POSTGRES_ENV = "CONSENTSYNC_TEST_POSTGRES_URL"


def rss_mib() -> float:
    """Peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evidence_stream(events: int, subjects: int, seed: int) -> Iterator[RecordRequest]:
    """One event per person of ``sqlite_floor.people`` (the floor's stream, for the same seed)."""
    rng = random.Random(seed + 1)
    # A pool of statuses drawn by weight once, indexed by a cheap random int per event, and one
    # identity per person, so that the figures measure the ledger rather than this generator.
    pool = [status for status, weight in STATUSES for _ in range(weight)]
    identities: dict[int, Identity] = {}
    start = datetime(2024, 1, 1, tzinfo=UTC)
    observed = datetime(2026, 11, 1, tzinfo=UTC)
    for index, person in enumerate(people(events, subjects, seed)):
        identity = identities.get(person)
        if identity is None:
            identity = identities[person] = Identity(email=f"person{person}@example.org")
        source, origin = SOURCES[index % len(SOURCES)]
        yield RecordRequest(
            identity,
            Evidence(
                purpose="email_marketing",
                channel="email",
                status=pool[int(rng.random() * len(pool))],
                basis=LawfulBasis.CONSENT,
                event_time=start + timedelta(seconds=index),
                observed_at=observed,
                source=source,
                origin=origin,
                notice_version="v1" if origin is Origin.CAPTURE else None,
            ),
        )


@dataclass(slots=True)
class LedgerRun:
    stats: RecordStats
    elapsed: float
    cpu: float


def record(
    ledger: Ledger,
    stream: Iterable[RecordRequest],
    batch: int,
    checkpoint: int,
    progress: Callable[[int, int, float], None] | None = None,
) -> LedgerRun:
    """Records ``stream`` through ``Ledger.record_many``, ``checkpoint`` events a call."""
    iterator = iter(stream)
    total = RecordStats()
    started, cpu_started = time.perf_counter(), time.process_time()
    while True:
        window = time.perf_counter()
        stats = ledger.record_many(islice(iterator, checkpoint), batch_size=batch)
        if not stats.received:
            break
        total.add(stats)
        if progress is not None:
            progress(total.received, stats.received, time.perf_counter() - window)
    return LedgerRun(total, time.perf_counter() - started, time.process_time() - cpu_started)


def verified(ledger: Ledger) -> str:
    started = time.perf_counter()
    with ledger.engine.connect() as conn:
        result = verify(conn)
    return (
        f"audit verify: ok={result.ok}, {result.entries_checked:,} entries in "
        f"{time.perf_counter() - started:,.1f} s"
    )


def single(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="consentsync-bench-"))
    url = args.url or f"sqlite:///{workdir / 'ledger.db'}"
    ledger = open_fresh_ledger(url, workdir)
    print(f"ledger: {url}")
    print(f"events: {args.events:,}  subjects: {args.subjects:,}  batch: {args.batch:,}")
    print(f"{'events':>10}  {'events/s (window)':>18}  {'events/s (total)':>17}  {'peak RSS MiB':>12}")
    started = time.perf_counter()

    def progress(done: int, chunk: int, seconds: float) -> None:
        print(
            f"{done:>10,}  {chunk / seconds:>18,.0f}  {done / (time.perf_counter() - started):>17,.0f}"
            f"  {rss_mib():>12,.1f}",
            flush=True,
        )

    stream = evidence_stream(args.events, args.subjects, args.seed)
    run = record(ledger, stream, args.batch, args.checkpoint, progress)
    stats, done = run.stats, run.stats.received
    print(
        f"\nrecorded {stats.recorded:,} events ({stats.duplicates:,} duplicates) "
        f"for {stats.subjects_created:,} new subjects, {stats.state_changes:,} state changes"
    )
    print(f"total: {run.elapsed:,.1f} s, {done / run.elapsed:,.0f} events/s, peak RSS {rss_mib():,.1f} MiB")
    # On a busy machine the wall clock also counts other processes' turns; CPU seconds do not.
    print(f"cpu: {run.cpu:,.1f} s of this process, {done / run.cpu:,.0f} events per CPU second")
    summary = verified(ledger)
    print(summary)
    return 0 if "ok=True" in summary else 1


def _in_schema(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


@dataclass(slots=True)
class Round:
    floor: FloorRun
    sqlite: LedgerRun
    postgres: LedgerRun

    @property
    def floor_ratio(self) -> float:
        return self.floor.elapsed / self.sqlite.elapsed

    @property
    def pg_ratio(self) -> float:
        return self.postgres.elapsed / self.sqlite.elapsed


def compare(args: argparse.Namespace) -> int:
    pg_url = args.pg_url or os.environ.get(POSTGRES_ENV)
    if not pg_url:
        print(f"--compare needs --pg-url or {POSTGRES_ENV}", file=sys.stderr)
        return 2
    print(f"events: {args.events:,}  subjects: {args.subjects:,}  batch: {args.batch:,}  seed: {args.seed}")
    rounds: list[Round] = []
    for number in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"round {number} of {args.repeat}", flush=True)
        done = _round(args, pg_url, Path(tempfile.mkdtemp(prefix="consentsync-compare-")))
        if done is None:
            return 1
        rounds.append(done)
    last = rounds[-1]
    print(
        f"\nrecorded {last.sqlite.stats.recorded:,} events for {last.sqlite.stats.subjects_created:,} "
        f"people, {last.sqlite.stats.state_changes:,} state changes (the same on both ledgers)"
    )
    print(f"{'':<20} {'events/s':>10} {'wall s':>8} {'CPU s':>8}")
    for done in rounds:
        for name, elapsed, cpu in (
            ("SQLite floor", done.floor.elapsed, done.floor.cpu),
            ("SQLite ledger", done.sqlite.elapsed, done.sqlite.cpu),
            ("PostgreSQL ledger", done.postgres.elapsed, done.postgres.cpu),
        ):
            print(f"{name:<20} {args.events / elapsed:>10,.0f} {elapsed:>8,.1f} {cpu:>8,.1f}")
    # With rounds, the median of the ratios each round measured (its floor and ledgers one after
    # the other): the machine's speed drifts between rounds more than within one.
    floor_ratio = statistics.median(done.floor_ratio for done in rounds)
    pg_ratio = statistics.median(done.pg_ratio for done in rounds)
    each = (
        f" (median of {', '.join(f'{done.floor_ratio:.2f}x' for done in rounds)})" if len(rounds) > 1 else ""
    )
    print(
        f"\nsqlite ledger / floor (events/s): {floor_ratio:.2f}x{each}  (target >= 0.5: "
        f"{'met' if floor_ratio >= 0.5 else 'NOT met'})"
    )
    each = f" (median of {', '.join(f'{done.pg_ratio:.2f}x' for done in rounds)})" if len(rounds) > 1 else ""
    print(
        f"postgres ledger / sqlite ledger (time): {pg_ratio:.2f}x{each}  (target <= 2.0: "
        f"{'met' if pg_ratio <= 2.0 else 'NOT met'})"
    )
    print(f"peak RSS of the whole run: {rss_mib():,.1f} MiB")
    return 0


def _round(args: argparse.Namespace, pg_url: str, workdir: Path) -> Round | None:
    """The floor, a SQLite ledger and a PostgreSQL ledger, one after the other, on the same
    stream; None (said why) where the two ledgers disagree."""
    floor = record_floor(workdir / "floor.db", people(args.events, args.subjects, args.seed), args.batch)
    print(f"  SQLite floor done in {floor.elapsed:,.1f} s", flush=True)

    def measure(ledger: Ledger, name: str) -> LedgerRun:
        stream = evidence_stream(args.events, args.subjects, args.seed)
        run = record(ledger, stream, args.batch, args.checkpoint)
        print(f"  {name} done in {run.elapsed:,.1f} s; {verified(ledger)}", flush=True)
        return run

    sqlite = measure(open_fresh_ledger(f"sqlite:///{workdir / 'ledger.db'}", workdir), "SQLite ledger")
    schema = f"consentsync_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        ledger = open_fresh_ledger(_in_schema(pg_url, schema), workdir)
        postgres = measure(ledger, f"PostgreSQL ledger (schema {schema})")
        ledger.engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
    if (sqlite.stats.recorded, sqlite.stats.state_changes) != (
        postgres.stats.recorded,
        postgres.stats.state_changes,
    ):
        print(f"the two ledgers disagree: SQLite {sqlite.stats}, PostgreSQL {postgres.stats}")
        return None
    return Round(floor, sqlite, postgres)


def main(argv: list[str] | None = None) -> int:
    parser = stream_arguments(__doc__)
    parser.add_argument("--checkpoint", type=int, default=100_000)
    parser.add_argument("--url", help="ledger URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--compare", action="store_true", help="floor, SQLite and PostgreSQL in one run")
    parser.add_argument("--pg-url", help=f"PostgreSQL server for --compare (default: ${POSTGRES_ENV})")
    parser.add_argument(
        "--repeat", type=int, default=1, help="with --compare: rounds to run; the median ratios are printed"
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    return compare(args) if args.compare else single(args)


if __name__ == "__main__":
    sys.exit(main())
