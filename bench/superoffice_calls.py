"""API calls the SuperOffice connector makes, against the least SuperOffice's API allows.

Runs the real sync engine on a fresh SQLite ledger against a seeded SuperOffice sandbox: a full
sync, an incremental sync after some persons' consents changed in SuperOffice, and one after some
persons withdrew elsewhere (their withdrawals pushed back); prints the calls per endpoint kind
that the sandbox answered, next to the minimum:

* reading: the archive lists changed consents at most 1000 rows a call (``$top``), and shows a
  legal basis only by its display name, so reading keys needs one ``GetConsentInfos`` a person:
  minimum = max(1, ceil(consent rows changed / 1000)) + persons changed, counted in the tenant
  since the previous run began (our own writes of the previous run included);
* writing: SuperOffice has no batch call for consents: minimum = one call per consent written.

    .venv/bin/python bench/superoffice_calls.py [--persons 2000] [--changes 100] [--page-size 1000]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml
from consentsync_superoffice.sandbox.server import SuperOfficeSandbox

from consentsync.app import open_connector, open_ledger
from consentsync.config import load_config, write_starter
from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import utcnow
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
                "mappings": [str(ROOT / "connectors/consentsync_superoffice/mappings/person.yaml")],
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

        last_start: list[datetime | None] = [None]

        def run(label: str, *, full: bool = False) -> None:
            # What changed in the tenant since the previous run began: the least a read can cost.
            since = None if full else last_start[0]
            changed_rows = [r for r in so.tenant.consent_rows() if since is None or r.updated >= since]
            changed_persons = {r.person_id for r in changed_rows}
            minimum_reads = max(1, math.ceil(len(changed_rows) / 1000)) + len(changed_persons)
            last_start[0] = so.tenant.now()
            connector, mappings = open_connector(config, "so")
            so.reset_counters()
            started = time.perf_counter()
            report = SyncEngine(ledger, connector, mappings, SyncOptions(signpost_lag_seconds=0)).run(
                full=full
            )
            elapsed = time.perf_counter() - started
            reads = so.calls["archive"] + so.calls["get_consent_infos"]
            pushed = report.counts.pushed
            print(
                f"{label:<40} {report.status}: read {report.counts.read} persons, "
                f"evidence {report.counts.evidence_recorded}, pushed {pushed} in {elapsed:.1f}s"
            )
            print(f"    calls by kind {dict(sorted(so.calls.items()))}")
            print(
                f"    read calls {reads} (minimum {minimum_reads}: {len(changed_rows)} consent rows of "
                f"{len(changed_persons)} persons changed); write calls {so.write_calls} (minimum {pushed}: "
                "one per consent written)"
            )
            connector.close()

        # The full sync pushes too: seeded duplicates (two persons, one address) where one withdrew
        # get the other's e-marketing consent withdrawn as well.
        run("full sync", full=True)
        time.sleep(1.1)  # a run reads whole seconds before the one it started in
        changed = list(so.tenant.persons)[: args.changes]
        for person_id in changed:
            so.tenant.set_consent(person_id, "STORE", "MANUAL", "CONTRACT", "renewed contract")
        time.sleep(1.1)
        run(f"incremental: {len(changed)} persons changed")
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
        run(f"push: {len(withdrawing)} withdrawals from a web form")
        time.sleep(1.1)
        run("incremental: our own writes read back")
        time.sleep(1.1)
        run("incremental: no change")
        ledger.engine.dispose()


if __name__ == "__main__":
    main()
