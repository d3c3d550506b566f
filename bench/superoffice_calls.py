"""API calls the SuperOffice connector makes, against the least SuperOffice's API allows.

Runs the real sync engine on a fresh SQLite ledger against a seeded SuperOffice sandbox: a full
sync, an incremental sync after some persons' consents changed in SuperOffice, and one after some
persons withdrew elsewhere (their withdrawals pushed back); prints the calls per endpoint kind
that the sandbox answered, next to the minimum:

* reading: the archive lists changed consents at most 1000 rows a call (``$top``), and shows a
  legal basis only by its display name, so reading keys needs one ``GetConsentInfos`` a person:
  minimum = ceil(consent rows / 1000) + persons changed;
* writing: SuperOffice has no batch call for consents: minimum = one call per consent written.

    .venv/bin/python bench/superoffice_calls.py [--persons 2000] [--changes 100] [--page-size 1000]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import yaml

from consentsync.app import open_connector, open_ledger
from consentsync.config import load_config, write_starter
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import utcnow
from consentsync.sandbox.superoffice import SuperOfficeSandbox
from consentsync.sync.engine import SyncEngine, SyncOptions

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=2000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, SuperOfficeSandbox() as so:
        so.tenant.seed(args.persons, seed=1)
        config_path = Path(folder) / "consentsync.yaml"
        write_starter(config_path, f"sqlite:///{Path(folder) / 'ledger.db'}")
        data = yaml.safe_load(config_path.read_text())
        c = so.credentials
        data["connectors"] = [
            {
                "name": "so",
                "vendor": "superoffice",
                "mappings": [str(ROOT / "mappings" / "superoffice" / "person.yaml")],
                "settings": {
                    "base_url": so.tenant_url,
                    "client_id": c.client_id,
                    "client_secret": c.client_secret,
                    "refresh_token": c.refresh_token,
                    "token_url": so.token_url,
                    "ca_bundle": str(so.ca_cert_path),
                    "page_size": args.page_size,
                },
            }
        ]
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        config = load_config(config_path)
        ledger = open_ledger(config, migrate=True)
        ledger.clock = utcnow

        def run(label: str, *, full: bool = False, rows: int, persons: int, writes: int) -> None:
            connector, mappings = open_connector(config, "so")
            so.reset_counters()
            started = time.perf_counter()
            report = SyncEngine(ledger, connector, mappings, SyncOptions(signpost_lag_seconds=0)).run(
                full=full
            )
            elapsed = time.perf_counter() - started
            calls = dict(sorted(so.calls.items()))
            reads = so.calls["archive"] + so.calls["get_consent_infos"]
            minimum_reads = math.ceil(rows / 1000) + persons
            print(
                f"{label:<38} status={report.status} read={report.counts.read} pushed={report.counts.pushed} "
                f"time={elapsed:.1f}s"
            )
            print(
                f"    calls {calls} (token calls not counted by the tenant: {connector.usage.per_endpoint})"
            )
            print(
                f"    read calls {reads} vs minimum {minimum_reads}; "
                f"write calls {so.write_calls} vs minimum {writes}"
            )
            connector.close()

        rows = len(so.tenant.consent_rows())
        run("full sync", full=True, rows=rows, persons=len(so.tenant.persons), writes=0)
        time.sleep(1.1)  # a run reads whole seconds before the one it started in
        changed = list(so.tenant.persons)[: args.changes]
        for person_id in changed:
            so.tenant.set_consent(person_id, "STORE", "MANUAL", "CONTRACT", "renewed contract")
        time.sleep(1.1)
        run(f"incremental: {len(changed)} persons changed", rows=len(changed), persons=len(changed), writes=0)
        emails = [person.email for person in so.tenant.persons.values()]
        consenting = [
            pid
            for pid, person in so.tenant.persons.items()
            if emails.count(person.email) == 1
            and (row := so.tenant.consent(pid, "EMARKETING")) is not None
            and row.legal_base.key == "CONSENT"
        ]
        withdrawing = consenting[: args.changes]
        for person_id in withdrawing:
            email = so.tenant.persons[person_id].email
            assert email
            ledger.record(
                Identity(email=email),
                Evidence(
                    purpose="email_marketing",
                    channel="email",
                    status=ConsentStatus.WITHDRAWN,
                    basis=LawfulBasis.CONSENT,
                    event_time=utcnow(),
                    observed_at=utcnow(),
                    source="web_form",
                    origin=Origin.CAPTURE,
                ),
            )
        run(
            f"push: {len(withdrawing)} withdrawals from a web form",
            rows=0,
            persons=0,
            writes=len(withdrawing),
        )
        time.sleep(1.1)
        run(
            "incremental: our own writes read back", rows=len(withdrawing), persons=len(withdrawing), writes=0
        )
        run("incremental: no change", rows=0, persons=0, writes=0)
        ledger.engine.dispose()


if __name__ == "__main__":
    main()
