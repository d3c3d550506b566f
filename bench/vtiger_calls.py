"""API calls the Vtiger connector makes against the sandbox, next to the least the API allows.

Vtiger answers at most 100 rows a query and has no batch write, so the floor is
ceil(N / 100) queries to read N records, one `revise` per changed record, plus the two login
calls (getchallenge, login) and one describe per module. Re-reading from `>=` the last second of
each page, and overlapping the pages of a second that holds more than 100 changes, cost extra
queries: this prints how many, for spread-out stamps and for imports that put many records in
one second.

    .venv/bin/python bench/vtiger_calls.py [--records 1000 5000] [--overlap 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import time

from consentsync_vtiger import VtigerConnector
from consentsync_vtiger.sandbox.server import VtigerCrm, VtigerSandbox

from consentsync.sdk import Cursor, RecordUpdate


def _fill(crm: VtigerCrm, count: int, crowded: int) -> None:
    """``count`` contacts: ``crowded`` of them in one second (an import), the rest spread over
    distinct seconds, in a few bursts of 2-30 records sharing a second."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)
    moment = start
    for index in range(count - crowded):
        if index % 17 == 0:
            moment += dt.timedelta(seconds=1)
        crm.create("Contacts", lastname=f"Bench {index}", email=f"bench.{index}@example.test", at=moment)
    burst = start + dt.timedelta(days=1)
    for index in range(crowded):
        crm.create("Contacts", lastname=f"Import {index}", email=f"import.{index}@example.test", at=burst)


def measure(count: int, crowded: int, overlap: int) -> dict[str, float]:
    with VtigerSandbox(VtigerCrm(privacy_guard=False)) as sandbox:
        _fill(sandbox.crm, count, crowded)
        connector = VtigerConnector(
            "bench",
            {
                "url": sandbox.url,
                "username": sandbox.credentials.username,
                "access_key": sandbox.credentials.access_key,
                "ca_bundle": str(sandbox.ca_cert_path),
                "crowded_second_overlap": overlap,
            },
        )
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
        began = time.perf_counter()
        records = list(connector.read_changes("Contacts", ["email", "emailoptout"], Cursor(), until))
        elapsed = time.perf_counter() - began
        assert len(records) == count == len({r.record_id for r in records})
        queries = connector.usage.per_endpoint.get("query", 0)
        changed = [r.record_id for r in records[: count // 10]]
        connector.write([RecordUpdate("Contacts", rid, {"emailoptout": True}) for rid in changed])
        revises = connector.usage.per_endpoint.get("revise", 0)
        connector.close()
        return {
            "queries": queries,
            "query_floor": math.ceil(count / 100),
            "revises": revises,
            "revise_floor": len(changed),
            "other": connector.usage.calls - queries - revises,
            "seconds": elapsed,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--overlap", type=int, default=10)
    args = parser.parse_args()
    print(
        f"{'records':>8} {'in one s':>8} {'queries':>8} {'floor':>6} {'extra':>6} "
        f"{'revise':>7} {'floor':>6} {'login+describe':>14} {'read s':>7}"
    )
    for count in args.records:
        for crowded in (0, count // 4):
            r = measure(count, crowded, args.overlap)
            extra = (r["queries"] - r["query_floor"]) / r["query_floor"]
            print(
                f"{count:>8} {crowded:>8} {r['queries']:>8.0f} {r['query_floor']:>6.0f} {extra:>6.0%} "
                f"{r['revises']:>7.0f} {r['revise_floor']:>6.0f} {r['other']:>14.0f} {r['seconds']:>7.2f}"
            )


if __name__ == "__main__":
    main()
