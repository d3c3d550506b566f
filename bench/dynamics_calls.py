"""API calls the Dynamics connector makes against the Dataverse sandbox, next to the least the
Web API allows (pages of 5,000 rows, batches of 1,000 requests), for a first read, a delta read
and a write; prints one line per figure.

    .venv/bin/python bench/dynamics_calls.py [--contacts 20000] [--changes 3000]
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import UTC, datetime, timedelta

from consentsync_dynamics import DynamicsConnector
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.sdk import Cursor, RecordUpdate

FIELDS = ["emailaddress1", "donotemail", "donotbulkemail", "donotphone", "donotpostalmail"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--changes", type=int, default=3_000)
    args = parser.parse_args()
    with DynamicsSandbox() as dv:
        dv.environment.seed(args.contacts, seed=1)
        settings = {
            "environment_url": dv.environment_url,
            "token_url": dv.token_url,
            "client_id": dv.credentials.client_id,
            "client_secret": dv.credentials.client_secret,
            "ca_bundle": str(dv.ca_cert_path),
        }
        until = datetime.now(UTC) + timedelta(seconds=5)
        pages = math.ceil(args.contacts / 5000)

        def measure(label: str, minimum: int, action: object) -> object:
            connector = DynamicsConnector("bench", settings)
            connector.check()  # token and WhoAmI: not part of the figure
            dv.reset_counters()
            started = time.perf_counter()
            result = action(connector)  # type: ignore[operator]
            seconds = time.perf_counter() - started
            calls = dv.total_calls
            print(
                f"{label:<44} calls {calls:>4}  minimum {minimum:>4}  ({dict(dv.calls)})  {seconds:6.2f} s",
                flush=True,
            )
            return result

        def first_read(connector: DynamicsConnector) -> Cursor:
            count = sum(1 for _ in connector.read_changes("contact", FIELDS, Cursor(), until))
            assert count == args.contacts
            assert connector.completed_cursor is not None
            return connector.completed_cursor

        # Minimum for a first read: one pass of pages (metadata: 2 calls, cached per connector).
        cursor = measure(f"first read of {args.contacts} contacts", pages + 2, first_read)
        ids = [row["contactid"] for row in dv.environment.records("contact")[: args.changes]]
        for record_id in ids:
            dv.environment.update("contact", record_id, {"donotphone": True})

        def delta_read(connector: DynamicsConnector) -> None:
            count = sum(1 for _ in connector.read_changes("contact", FIELDS, cursor, until))  # type: ignore[arg-type]
            assert count == args.changes

        measure(f"delta read of {args.changes} changes", math.ceil(args.changes / 5000) + 2, delta_read)

        def write(connector: DynamicsConnector) -> None:
            results = connector.write([RecordUpdate("contact", i, {"donotbulkemail": True}) for i in ids])
            assert all(r.ok for r in results)

        measure(f"write of {args.changes} updates", math.ceil(args.changes / 1000) + 1, write)


if __name__ == "__main__":
    main()
