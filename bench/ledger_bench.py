"""Records N consent events into a fresh SQLite ledger and prints events/s and peak memory.

    python bench/ledger_bench.py                 # 1,000,000 events, 100,000 people
    python bench/ledger_bench.py --events 200000 --subjects 20000 --url sqlite:////tmp/x.db

Every event goes the whole way: identity resolution, replay check, reconciliation, the event
row, the current-state upsert and a hash-chained audit entry. Memory is sampled at checkpoints
so that "flat in the number of events" can be read off the output; the chain is verified at the
end.

Batches of 50,000 events a transaction, as a bulk import would write them: each commit rewrites
every index page its batch touched, and the indexes keyed by fingerprint and subject take random
keys, so larger batches write each page fewer times (--batch 5000 measures the smaller batches
of a sync run). docs/performance.md has the figures and what bounds them.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from consentsync.app import open_ledger
from consentsync.audit import verify
from consentsync.config import parse_config, starter_config_text
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import RecordRequest
from consentsync.logs import configure as configure_logging

STATUSES = [
    (ConsentStatus.GRANTED, 6),
    (ConsentStatus.WITHDRAWN, 2),
    (ConsentStatus.REQUESTED, 1),
    (ConsentStatus.REFUSED, 1),
]
SOURCES = [("web_form", Origin.CAPTURE), ("salesforce", Origin.CRM), ("hubspot", Origin.CRM)]


def rss_mib() -> float:
    """Peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evidence_stream(events: int, subjects: int, seed: int) -> Iterator[RecordRequest]:
    rng = random.Random(seed)
    # A pool of statuses drawn by weight once, indexed by a cheap random int per event, so the
    # figures measure the ledger rather than this generator.
    pool = [status for status, weight in STATUSES for _ in range(weight)]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    observed = datetime(2026, 11, 1, tzinfo=UTC)
    for index in range(events):
        person = int(rng.random() * subjects)
        source, origin = SOURCES[index % len(SOURCES)]
        status = pool[int(rng.random() * len(pool))]
        yield RecordRequest(
            Identity(email=f"person{person}@example.org"),
            Evidence(
                purpose="email_marketing",
                channel="email",
                status=status,
                basis=LawfulBasis.CONSENT,
                event_time=start + timedelta(seconds=index),
                observed_at=observed,
                source=source,
                origin=origin,
                notice_version="v1" if origin is Origin.CAPTURE else None,
            ),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--checkpoint", type=int, default=100_000)
    parser.add_argument("--url", help="ledger URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    configure_logging("WARNING")

    workdir = Path(tempfile.mkdtemp(prefix="consentsync-bench-"))
    url = args.url or f"sqlite:///{workdir / 'ledger.db'}"
    text = starter_config_text().replace("url: sqlite:///consentsync.db", f"url: {url}")
    text = text.replace(
        "erasure_hmac_key_file: consentsync.key", "erasure_hmac_key: bench-key-0123456789abcdef"
    )
    ledger = open_ledger(parse_config(text, workdir / "consentsync.yaml"), migrate=True)

    print(f"ledger: {url}")
    print(f"events: {args.events:,}  subjects: {args.subjects:,}  batch: {args.batch:,}")
    print(f"{'events':>10}  {'events/s (window)':>18}  {'events/s (total)':>17}  {'peak RSS MiB':>12}")
    stream = evidence_stream(args.events, args.subjects, args.seed)
    started = window_started = time.perf_counter()
    cpu_started = time.process_time()
    done = 0
    totals = {"recorded": 0, "duplicates": 0, "state_changes": 0, "subjects_created": 0}
    while done < args.events:
        chunk = min(args.checkpoint, args.events - done)
        stats = ledger.record_many((next(stream) for _ in range(chunk)), batch_size=args.batch)
        for name in totals:
            totals[name] += getattr(stats, name)
        done += chunk
        now = time.perf_counter()
        print(
            f"{done:>10,}  {chunk / (now - window_started):>18,.0f}  {done / (now - started):>17,.0f}"
            f"  {rss_mib():>12,.1f}",
            flush=True,
        )
        window_started = now
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print(
        f"\nrecorded {totals['recorded']:,} events ({totals['duplicates']:,} duplicates) "
        f"for {totals['subjects_created']:,} new subjects, {totals['state_changes']:,} state changes"
    )
    print(f"total: {elapsed:,.1f} s, {done / elapsed:,.0f} events/s, peak RSS {rss_mib():,.1f} MiB")
    # On a busy machine the wall clock also counts other processes' turns; CPU seconds do not.
    print(f"cpu: {cpu:,.1f} s of this process, {done / cpu:,.0f} events per CPU second")
    verify_started = time.perf_counter()
    with ledger.engine.connect() as conn:
        result = verify(conn)
    print(
        f"audit verify: ok={result.ok}, {result.entries_checked:,} entries in "
        f"{time.perf_counter() - verify_started:,.1f} s"
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
