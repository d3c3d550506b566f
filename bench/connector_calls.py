"""API calls of a full and an incremental sync, per connector, against the CRM's minimum.

The one call benchmark for every connector: each whose harness is registered under
``consentsync.harnesses`` (built-ins and installed third-party connectors alike; ``--vendor``
picks some), against its sandbox: seed N records (``--same-second`` puts a share of them on one
change time, the case CRMs stamping whole seconds must page through), run a full sync
with the real engine on a fresh SQLite ledger, change K records as a CRM user would, run an
incremental sync, and count the calls the sandbox answered. The minimum is what the CRM's own
paging and batching allow: ceil(records read / page size) reads plus ceil(records written /
batch size) writes, the page and batch sizes being the harness's.

    .venv/bin/python bench/connector_calls.py [--records 500] [--changes 50] [--same-second 0.25]
        [--vendor NAME ...]

Prints one line per connector and sync, and the ratio of calls made to the minimum.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consentsync.sdk.harness import available_harnesses, open_sync_engine, write_sync_config


@dataclass
class Measured:
    vendor: str
    sync: str
    read: int
    pushed: int
    calls: int
    writes: int
    minimum: int

    @property
    def ratio(self) -> float:
        return self.calls / self.minimum if self.minimum else float("inf")


def _pushed_fields(engine: Any, run_id: str) -> list[dict[str, Any]]:
    """The field sets the run pushed (acknowledged outbox rows)."""
    from sqlalchemy import select

    from consentsync.ledger.schema import outbox

    with engine.ledger.engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.fields).where(
                outbox.c.status == "done", outbox.c.done_at >= _started(engine, run_id)
            )
        ).scalars()
        return [json.loads(row) for row in rows]


def _started(engine: Any, run_id: str) -> Any:
    from sqlalchemy import select

    from consentsync.ledger.schema import sync_runs

    with engine.ledger.engine.connect() as conn:
        return conn.execute(select(sync_runs.c.started_at).where(sync_runs.c.id == run_id)).scalar_one()


def _minimum_writes(harness: Any, pushed: list[dict[str, Any]]) -> int:
    """The fewest write calls the CRM allows for these pushes: the harness says where its CRM
    cannot batch (HubSpot's subscription changes); else ceil(pushes / batch size)."""
    hook = getattr(harness, "minimum_write_calls", None)
    if hook is not None:
        return int(hook(pushed))
    return math.ceil(len(pushed) / harness.write_batch_size)


def measure(vendor: str, records: int, changes: int, same_second: float = 0.0) -> list[Measured]:
    harness = available_harnesses()[vendor].load()()
    harness.start()
    try:
        shared = round(records * same_second)
        ids = harness.seed(records - shared) + (harness.seed(shared, shared_modstamp=True) if shared else [])
        with tempfile.TemporaryDirectory(prefix=f"bench-{vendor}-") as directory:
            config = write_sync_config(harness, Path(directory))
            out = []
            # full: everything read, the ledger's suppressions pushed; read-back: the next run
            # reads those writes back (and must push nothing); incremental: after K user edits.
            for sync, edits in (("full", []), ("read-back", []), ("incremental", ids[:changes])):
                for record_id in edits:
                    harness.change(record_id)
                before_calls, before_writes = harness.api_calls(), harness.write_calls()
                engine = open_sync_engine(config, batch_size=200)
                report = engine.run(full=sync == "full")
                if report.status != "succeeded":
                    raise SystemExit(f"{vendor} {sync} sync {report.status}: {report.error}")
                calls = harness.api_calls() - before_calls
                writes = harness.write_calls() - before_writes
                read, pushed = report.counts.read, report.counts.pushed
                minimum = max(1, math.ceil(read / harness.page_size)) + _minimum_writes(
                    harness, _pushed_fields(engine, report.run_id)
                )
                out.append(Measured(vendor, sync, read, pushed, calls, writes, minimum))
            return out
    finally:
        harness.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument(
        "--same-second", type=float, default=0.0, help="share of the records seeded on one change time"
    )
    parser.add_argument("--vendor", action="append", help="only these (default: every registered harness)")
    args = parser.parse_args()
    os.environ.setdefault("CONSENTSYNC_ERASURE_KEY", "bench-erasure-key-0123456789abcdef")
    vendors = args.vendor or sorted(available_harnesses())
    header = ("connector", "sync", "read", "pushed", "calls", "writes", "minimum", "ratio")
    print("{:<12} {:<12} {:>6} {:>7} {:>6} {:>7} {:>8} {:>6}".format(*header))
    for vendor in vendors:
        for row in measure(vendor, args.records, args.changes, args.same_second):
            print(
                f"{row.vendor:<12} {row.sync:<12} {row.read:>6} {row.pushed:>7} {row.calls:>6} "
                f"{row.writes:>7} {row.minimum:>8} {row.ratio:>6.2f}",
                flush=True,
            )
    print(
        "minimum = ceil(read / page size) + ceil(pushed / batch size), with the harness's page and "
        "batch sizes; calls include logins, describes and, for HubSpot, subscription status reads "
        "and one v3 call per subscription change (v3 has no batch).",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
