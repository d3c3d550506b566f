"""Crash-safety harness: SIGKILL `consentsync sync` at random moments, restart it, and check that
the ledger, the CRM and the audit log end exactly as after an uninterrupted run.

Each killed run dies in one of these ways, chosen at random (the report counts each):

* ``timed``: SIGKILL from outside after a random delay (whatever the run was doing);
* ``read``: the run kills itself after reading its N-th page, before committing it;
* ``push-sent``: after marking a push batch sent, before the CRM sees it;
* ``push-answered``: after the CRM answered a push batch (the writes are applied), before the
  ledger commits the answer: the case where a lost acknowledgement must not become evidence.

Used by bench/crash_soak.py (50+ trials) and by the test suite (a handful).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from consentsync import audit
from consentsync.app import open_ledger
from consentsync.config import load_config, write_starter
from consentsync.ledger.schema import audit_entries, consent_events, outbox

MAPPINGS = ("contact.yaml", "lead.yaml", "individual.yaml", "contact_point_type_consent.yaml")
OBJECTS = ("Contact", "Lead", "Individual", "ContactPointTypeConsent")
CONNECTOR = "sf"


KILL_PHASES = ("timed", "read", "push-sent", "push-answered")


@dataclass
class Trial:
    kills: int = 0
    runs: int = 0
    problems: list[str] = field(default_factory=list)
    kills_by_phase: Counter[str] = field(default_factory=Counter)


def _failpoints(phase: str, rng: random.Random) -> str | None:
    """The CONSENTSYNC_FAILPOINTS value that makes a run die in ``phase``."""
    if phase == "read":
        return f"sync.page.read=kill@{rng.randint(1, 6)}"
    if phase == "push-sent":
        return "sync.push.sent=kill@1"
    if phase == "push-answered":
        return f"sync.push.answered=kill@{rng.randint(1, 2)}"
    return None


def write_config(folder: Path, sandbox: Any, mappings: Path, ledger_url: str | None = None) -> Path:
    """A consentsync.yaml in ``folder`` with one Salesforce connector, ``sf``, against ``sandbox``
    (its secret read from CRASHTEST_SF_SECRET) and a ledger (SQLite beside it by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "consentsync.yaml"
    write_starter(config_path, ledger_url or f"sqlite:///{folder / 'ledger.db'}")
    ca = folder / "ca.pem"
    shutil.copy(sandbox.ca_cert_path, ca)
    data = yaml.safe_load(config_path.read_text())
    data["connectors"] = [
        {
            "name": CONNECTOR,
            "vendor": "salesforce",
            "mappings": [str(mappings / name) for name in MAPPINGS],
            "settings": {
                "login_url": sandbox.login_url,
                "auth": "client_credentials",
                "client_id": sandbox.credentials.client_id,
                "client_secret": "${CRASHTEST_SF_SECRET}",
                "ca_bundle": str(ca),
            },
            "signpost_lag_seconds": 0,
            "batch_size": 25,
            "mode": "two_way",
            "push_guard": {"max_records": None, "max_share": None},
        }
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config_path


def sync_command(config_path: Path) -> list[str]:
    """`consentsync --config PATH sync sf`, with this interpreter's consentsync."""
    return [str(Path(sys.executable).parent / "consentsync"), "--config", str(config_path), "sync", CONNECTOR]


def _sync(config_path: Path, env: dict[str, str], *, kill_after: float | None) -> bool:
    """Runs one sync in its own process; SIGKILLs it after ``kill_after`` seconds if still running.
    Returns True when the process was killed."""
    process = subprocess.Popen(
        sync_command(config_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # A run killed by its own failpoint ends with -SIGKILL.
        return process.wait(timeout=kill_after if kill_after is not None else 120) == -signal.SIGKILL
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def _quiesce(config_path: Path, env: dict[str, str], trial: Trial) -> None:
    """Uninterrupted runs until a run has nothing to read beyond its own echoes and nothing to push."""
    for _ in range(4):
        trial.runs += 1
        done = subprocess.run(sync_command(config_path), env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])[-600:]
            trial.problems.append(f"a clean run after the kills exited {done.returncode}: {tail}")
    # Four runs are plenty: the first resumes, the second reads the first's echoes, the rest find nothing.


def end_state(config_path: Path, sandbox: Any) -> dict[str, Any]:
    config = load_config(config_path)
    ledger = open_ledger(config)
    try:
        with ledger.engine.connect() as conn:
            verified = audit.verify(conn)
            events = conn.execute(select(consent_events.c.subject_id)).all()
            pushed = [e["what"].get("outbox") for e in audit.entries(conn, action="crm.pushed")]
            done = conn.execute(select(outbox.c.id).where(outbox.c.status == "done")).scalars().all()
            pending = conn.execute(select(outbox.c.id).where(outbox.c.status == "pending")).scalars().all()
            actions = Counter(conn.execute(select(audit_entries.c.action)).scalars().all())
            emails = [
                row[0]
                for row in conn.exec_driver_sql("SELECT value FROM subject_identifiers WHERE kind = 'email'")
            ]
        states = {}
        for email in emails:
            view = ledger.subject_view(email)
            states[email] = sorted(
                (p["purpose"], p["channel"], p["status"], p["suppressed"]) for p in view["purposes"]
            )
    finally:
        ledger.engine.dispose()
    crm = sorted(
        (
            kind,
            str(r.get("Email") or r.get("Id"))[:80],
            str(r.get("HasOptedOutOfEmail")),
            str(r.get("DoNotCall")),
            str(r.get("HasOptedOutSolicit")),
            str(r.get("HasOptedOutProfiling")),
        )
        for kind in OBJECTS
        for r in sandbox.org.records(kind)
        if kind != "ContactPointTypeConsent"
    )
    return {
        "verified": verified.ok,
        "events": len(events),
        "pushed_outbox_ids": pushed,
        "outbox_done": len(done),
        "outbox_pending": len(pending),
        "subject_created": actions["subject.created"],
        "consent_recorded": actions["consent.recorded"],
        "states": states,
        "crm": crm,
    }


def compare(reference: dict[str, Any], trial: dict[str, Any]) -> list[str]:
    problems = []
    if not trial["verified"]:
        problems.append("audit verify failed")
    duplicates = [i for i, n in Counter(trial["pushed_outbox_ids"]).items() if n > 1]
    if duplicates:
        problems.append(f"push audited twice for outbox rows {duplicates[:5]}")
    if len(trial["pushed_outbox_ids"]) != trial["outbox_done"]:
        problems.append(
            f"{len(trial['pushed_outbox_ids'])} push entries for {trial['outbox_done']} done rows"
        )
    if trial["outbox_pending"]:
        problems.append(f"{trial['outbox_pending']} pushes still pending")
    for name in ("states", "crm", "events", "subject_created", "consent_recorded"):
        if trial[name] != reference[name]:
            problems.append(f"{name} differs from the uninterrupted run")
    return problems


def run_trials(
    trials: int,
    *,
    records: int = 60,
    seed: int = 1,
    workdir: Path,
    max_kill_after: float = 3.0,
    phases: tuple[str, ...] = KILL_PHASES,
) -> list[Trial]:
    from consentsync_salesforce.sandbox import SalesforceSandbox

    from consentsync.demo import find_mappings

    mappings = find_mappings()
    rng = random.Random(seed)
    results: list[Trial] = []
    env = {**os.environ}
    env.pop("CONSENTSYNC_CONFIG", None)
    with SalesforceSandbox() as reference_org:
        reference_org.org.seed(records, seed=seed)
        env["CRASHTEST_SF_SECRET"] = reference_org.credentials.client_secret
        reference_config = write_config(workdir / "reference", reference_org, mappings)
        open_ledger(load_config(reference_config), migrate=True).engine.dispose()
        _quiesce(reference_config, env, Trial())
        reference = end_state(reference_config, reference_org)
    for number in range(trials):
        trial = Trial()
        with SalesforceSandbox() as org:
            org.org.seed(records, seed=seed)
            env["CRASHTEST_SF_SECRET"] = org.credentials.client_secret
            config = write_config(workdir / f"trial-{number}", org, mappings)
            open_ledger(load_config(config), migrate=True).engine.dispose()
            for _ in range(rng.randint(1, 3)):
                trial.runs += 1
                phase = rng.choice(phases)
                points = _failpoints(phase, rng)
                run_env = {**env, "CONSENTSYNC_FAILPOINTS": points} if points else env
                # A failpoint run that is not killed by its point (too few pages or pushes) is
                # still bounded by the timed kill.
                killed = _sync(
                    config, run_env, kill_after=rng.uniform(0.3, max_kill_after) if not points else 60
                )
                trial.kills += killed
                if killed:
                    trial.kills_by_phase[phase] += 1
            _quiesce(config, env, trial)
            trial.problems += compare(reference, end_state(config, org))
        results.append(trial)
        shutil.rmtree(workdir / f"trial-{number}", ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--records", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="consentsync-crash-") as folder:
        results = run_trials(args.trials, records=args.records, seed=args.seed, workdir=Path(folder))
    kills = sum(t.kills for t in results)
    failed = [t for t in results if t.problems]
    runs = sum(t.runs for t in results)
    phases: Counter[str] = sum((t.kills_by_phase for t in results), Counter())
    print(f"trials: {len(results)}, processes killed with SIGKILL: {kills}, runs: {runs}")
    print("kills by phase: " + ", ".join(f"{phase} {phases[phase]}" for phase in KILL_PHASES))
    print(f"failures: {len(failed)}")
    for number, trial in enumerate(results):
        for problem in trial.problems:
            print(f"  trial {number}: {problem}")
    print(f"took {time.monotonic() - started:.0f} s")
    return 1 if failed else 0
