"""`consentsync demo --crms a,b,c`: one person in several CRMs; a withdrawal captured in one of
them reaches all the others.

Every CRM is its connector's sandbox, found through the harness its connector package registers
(entry-point group ``consentsync.harnesses``, see ``consentsync.sdk.harness``): the core names no
vendor. Each sandbox gets a few background contacts and the same person (one email address), who
subscribed on the web site with double opt-in (recorded in the ledger as a trusted capture);
every connector runs a full sync, then an incremental one; the person then unsubscribes in the
first CRM; that connector syncs (the ledger records the withdrawal), then every other one (each
pushes the suppression to its copy of the person); the report shows each CRM's flag and the
audit log's push entries.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from consentsync import audit
from consentsync.app import open_ledger, open_sync
from consentsync.config import load_config, write_starter
from consentsync.demo import email_marketing_state
from consentsync.domain import ConsentStatus, Evidence, InvalidInput
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import utcnow
from consentsync.sdk.harness import available_harnesses
from consentsync.sdk.registry import SANDBOX_EXTRA

PERSON = "pat.doe@example.org"


def run_crms_demo(
    vendors: Sequence[str],
    *,
    records: int = 20,
    workdir: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    harnesses = _harnesses(vendors)
    started = time.monotonic()
    work = workdir or Path(tempfile.mkdtemp(prefix="consentsync-demo-crms-"))
    summary: dict[str, Any] = {"workdir": str(work), "person": PERSON, "crms": {}}
    running: list[Any] = []
    try:
        person_ids: dict[str, str] = {}
        for vendor, harness in harnesses.items():
            harness.start()
            running.append(harness)
            harness.seed(records)
            person_ids[vendor] = harness.create_person(PERSON)
            say(f"{vendor}: sandbox with {records} contacts and {PERSON} as {harness.object_type} "
                f"{person_ids[vendor]}")  # fmt: skip
        _past_this_second()
        config = load_config(_write_config(work, harnesses))
        ledger = open_ledger(config, migrate=True)
        ledger.clock = utcnow
        say(f"ledger: {config.settings.ledger.url} (in {work})\n")

        subscribed = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        ledger.record(
            Identity(email=PERSON),
            Evidence.from_web_form(
                ConsentStatus.GRANTED,
                subscribed,
                subscribed,
                notice_version="newsletter-v3",
                double_opt_in_at=subscribed,
            ),
        )
        say(f"{PERSON} subscribed to the newsletter on the web site (double opt-in, notice newsletter-v3)\n")
        for vendor in harnesses:
            _sync(config, ledger, vendor, "full sync", say, full=True)
        say("")
        for vendor in harnesses:  # every CRM now hears what the others said
            _sync(config, ledger, vendor, "incremental sync", say)

        first, others = vendors[0], list(vendors[1:])
        harnesses[first].opt_out(person_ids[first])
        say(f"\n{PERSON} unsubscribes from email marketing in {first}\n")
        _past_this_second()
        withdrawal = _sync(config, ledger, first, "incremental sync", say)
        summary["withdrawal_run"] = withdrawal
        for vendor in others:
            summary["crms"][vendor] = _sync(config, ledger, vendor, "incremental sync", say)

        view = ledger.subject_view(PERSON)
        state = email_marketing_state(view)
        say(
            f"\nledger: {PERSON} email_marketing/email is {state['status']}, suppressed "
            f"{state['suppressed']} (rule {state['rule']}), linked to {len(view['crm_records'])} CRM records"
        )
        flags = {vendor: harnesses[vendor].read_opted_out(person_ids[vendor]) for vendor in harnesses}
        for vendor, opted_out in flags.items():
            say(f"  {vendor} {person_ids[vendor]}: opted out of email = {opted_out}")
        summary["opted_out"] = flags
        summary["ledger_state"] = state
        runs = {withdrawal["run_id"], *(summary["crms"][v]["run_id"] for v in others)}
        pushes = _pushes(ledger, PERSON, runs)
        say("\naudit log, pushes of the withdrawal:")
        for entry in pushes:
            say(
                f"  #{entry['seq']} {entry['what']['connector']} {entry['what']['object']} "
                f"{entry['what']['record']}: {entry['old']} -> {entry['new']} (rule {entry['rule']})"
            )
        summary["pushes"] = [
            {"seq": e["seq"], "connector": e["what"]["connector"], "record": e["what"]["record"]}
            for e in pushes
        ]
        summary["api_calls"] = {vendor: h.api_calls() for vendor, h in harnesses.items()}
    finally:
        for harness in running:
            harness.stop()
    summary["seconds"] = round(time.monotonic() - started, 1)
    say(f"\nAPI calls served: {summary.get('api_calls')}; the demo took {summary['seconds']} s")
    say(f"look further with: consentsync --config {work / 'consentsync.yaml'} audit log --email {PERSON}")
    return summary


def _past_this_second() -> None:
    """Waits for the wall clock's next whole second. Some CRMs stamp changes to the second only
    (SuperOffice, Vtiger), so their connectors hand a second on once it is over; a production
    run's signpost lag covers this, the demo (no lag, everything within a second or two) waits."""
    now = time.time()
    time.sleep(math.floor(now) + 1.0 - now + 0.01)


def _harnesses(vendors: Sequence[str]) -> dict[str, Any]:
    registered = available_harnesses()
    if not registered:
        raise InvalidInput(f"--crms needs the CRM sandboxes, and none is installed: {SANDBOX_EXTRA}")
    unknown = [v for v in vendors if v not in registered]
    if unknown or len(set(vendors)) < 2 or len(set(vendors)) != len(vendors):
        raise InvalidInput(
            f"--crms needs two or more different CRMs from: {', '.join(sorted(registered))}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return {vendor: registered[vendor].load()() for vendor in vendors}


def _write_config(work: Path, harnesses: dict[str, Any]) -> Path:
    path = work / "consentsync.yaml"
    write_starter(path, f"sqlite:///{work / 'consentsync.db'}")
    data = yaml.safe_load(path.read_text())
    data["connectors"] = [
        {
            "name": f"{vendor}-demo",
            "vendor": vendor,
            "mappings": [str(p) for p in harness.mapping_files],
            "settings": _secrets_to_env(vendor, harness.connector_settings()),
            "signpost_lag_seconds": 0,
            # Pushes straight away, to every record (a real connector starts in observe mode).
            "mode": "two_way",
            "push_guard": {"max_records": None, "max_share": None},
        }
        for vendor, harness in harnesses.items()
    ]
    comments = path.read_text().split("\nversion: 1", 1)[0]
    path.write_text(comments + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _secrets_to_env(vendor: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Credentials go to the environment; the config file names them, as it would in production."""
    # Imported here: the sandboxes (and their serving module) are the `demo` extra's, which a
    # harness being registered implies.
    from consentsync.sandbox.serving import secrets_to_env

    written, env = secrets_to_env(settings, f"CONSENTSYNC_DEMO_{vendor}")
    os.environ.update(env)
    return written


def _sync(
    config: Any, ledger: Any, vendor: str, label: str, say: Callable[[str], None], *, full: bool = False
) -> dict[str, Any]:
    engine = open_sync(config, f"{vendor}-demo", ledger)
    try:
        report = engine.run(full=full)
    finally:
        engine.connector.close()
    c = report.counts
    say(
        f"{vendor} {label}: {report.status}; read {c.read}, recorded {c.evidence_recorded} consent events, "
        f"{c.state_changes} ledger changes, {c.pushed} pushes, {c.api_calls} API calls"
    )
    return {"run_id": report.run_id, "status": report.status, "pushed": c.pushed, "api_calls": c.api_calls}


def _pushes(ledger: Any, email: str, run_ids: set[str]) -> list[dict[str, Any]]:
    uids = ledger.subject_uids_for_email(email)
    with ledger.engine.connect() as conn:
        return [
            e for e in audit.entries(conn, subject_uids=uids, action="crm.pushed") if e.get("run") in run_ids
        ]
