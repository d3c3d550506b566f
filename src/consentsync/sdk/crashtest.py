"""Crash-safety trials for any registered connector: SIGKILL `consentsync sync` at random moments,
restart it, and check that the ledger, the CRM and the audit log end exactly as after an
uninterrupted run.

The connector's sandbox comes from its contract harness (entry-point group
``consentsync.harnesses``), which must seed an existing org and read its store back
(``AdoptionHarness``): the built-ins and a third party's connector alike.

Each killed run dies in one of these ways, chosen at random (the report counts each):

* ``timed``: SIGKILL from outside after a random delay (whatever the run was doing);
* ``read``: the run kills itself after reading its N-th page, before committing it;
* ``push-sent``: after marking a push batch sent, before the CRM sees it;
* ``push-answered``: after the CRM answered a push batch (the writes are applied), before the
  ledger commits the answer: the case where a lost acknowledgement must not become evidence.

Used by bench/crash_soak.py (50+ trials a connector) and by the test suite (a handful).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from consentsync import audit
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.domain import ConsentStatus, Evidence
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import audit_entries, consent_events, outbox
from consentsync.sdk.harness import AdoptionHarness, available_harnesses, write_sync_config

# The connector's name in the trial's configuration.
CONNECTOR = "crm"
KILL_PHASES = ("timed", "read", "push-sent", "push-answered")
PAGE = 10
# Pushes a group where the trial pushes along the examination: a seeded org's first run decides
# a few pushes a page.
PUSH_ALONG = 2
# When the people the trials make withdraw on the web site: after every seeded change.
WITHDRAWN_AT = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


@dataclass
class Trial:
    kills: int = 0
    runs: int = 0
    problems: list[str] = field(default_factory=list)
    kills_by_phase: Counter[str] = field(default_factory=Counter)
    runs_by_phase: Counter[str] = field(default_factory=Counter)  # killed or not


def failpoints(phase: str, rng: random.Random) -> str | None:
    """The CONSENTSYNC_FAILPOINTS value that makes a run die in ``phase``."""
    if phase == "read":
        return f"sync.page.read=kill@{rng.randint(1, 4)}"  # a seeded org reads a few pages of 10
    if phase == "push-sent":
        return "sync.push.sent=kill@1"
    if phase == "push-answered":
        return f"sync.push.answered=kill@{rng.randint(1, 2)}"
    return None


def sync_command(config_path: Path, connector: str = CONNECTOR) -> list[str]:
    """`consentsync --config PATH sync CONNECTOR`, with this interpreter's consentsync."""
    return [str(Path(sys.executable).parent / "consentsync"), "--config", str(config_path), "sync", connector]


def run_killed(config_path: Path, env: dict[str, str], *, kill_after: float | None) -> bool:
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


def quiesce(config_path: Path, env: dict[str, str], trial: Trial) -> None:
    """Uninterrupted runs until a run has nothing to read beyond its own echoes and nothing to push.
    Four are plenty: the first resumes, the second reads the first's echoes, the rest find nothing."""
    for _ in range(4):
        trial.runs += 1
        done = subprocess.run(sync_command(config_path), env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])[-600:]
            trial.problems.append(f"a clean run after the kills exited {done.returncode}: {tail}")


def crm_state(harness: AdoptionHarness, since: datetime) -> list[tuple[tuple[str, str], ...]]:
    """The CRM's records as the harness reads them from its store, without their ids (each
    sandbox makes its own) and with the times the runs stamped (at or after ``since``, when the
    org was seeded) said as such: whether a run wrote a value matters here, not when. One
    sorted tuple of (field, value) per record, in a sorted list."""
    store = harness.store_state()
    ids = {part for key in store for part in key.split("/")}
    return sorted(
        tuple(
            sorted(
                (name, str(_run_times_said(value, since)))
                for name, value in fields.items()
                if str(value) not in ids
            )
        )
        for fields in store.values()
    )


def _run_times_said(value: Any, since: datetime) -> Any:
    if isinstance(value, dict):
        return {key: _run_times_said(item, since) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_run_times_said(item, since) for item in value]
    if isinstance(value, datetime | str):
        try:
            moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
        except ValueError:
            return value
        # A CRM that stamps whole seconds stamps a run at the start of its second.
        if moment.tzinfo is not None and moment >= since - timedelta(seconds=1):
            return "<stamped by a run>"
    return value


def end_state(config_path: Path, harness: AdoptionHarness, since: datetime) -> dict[str, Any]:
    """The ledger (events, states, audit chain), the outbox and the CRM after the trial's runs."""
    ledger = open_ledger(load_config(config_path))
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
    return {
        "verified": verified.ok,
        "events": len(events),
        "pushed_outbox_ids": pushed,
        "outbox_done": len(done),
        "outbox_pending": len(pending),
        "subject_created": actions["subject.created"],
        "consent_recorded": actions["consent.recorded"],
        "states": states,
        "crm": crm_state(harness, since),
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


def started_harness(vendor: str) -> tuple[AdoptionHarness, list[str]]:
    """The vendor's harness (entry point), its sandbox started and seeded as an existing org;
    with the addresses of the org's people."""
    harnesses = available_harnesses()
    if vendor not in harnesses:
        raise LookupError(
            f"no harness registered for {vendor!r}: installed are {', '.join(sorted(harnesses))}"
        )
    harness = harnesses[vendor].load()()
    if not (hasattr(harness, "seed_existing_org") and hasattr(harness, "store_state")):
        raise LookupError(f"{vendor}: its harness cannot seed an existing org or read its store back")
    harness.start()
    return harness, harness.seed_existing_org()


def configured(harness: Any, folder: Path, people: list[str], *, push_along: bool = False) -> Path:
    """The trial's consentsync.yaml (a SQLite ledger beside it, migrated), the ledger knowing
    that every third of ``people`` withdrew from email marketing on the web site: the CRM does
    not know it yet, so the runs push (an org that agrees with itself gives nothing to push, and
    the push phases would never be reached). With ``push_along``, pushes go in groups of
    ``PUSH_ALONG``, so that they are sent while later people are still examined."""
    folder.mkdir(parents=True, exist_ok=True)
    # Small pages: a run is killed between pages as well as inside the last one.
    config = write_sync_config(
        harness, folder, name=CONNECTOR, batch_size=PAGE, push_batch_size=PUSH_ALONG if push_along else None
    )
    ledger = open_ledger(load_config(config), migrate=True)
    try:
        for email in people[::3]:
            ledger.record(
                Identity(email=email),
                Evidence.from_web_form(ConsentStatus.WITHDRAWN, WITHDRAWN_AT, ledger.clock()),
            )
    finally:
        ledger.engine.dispose()
    return config


def run_trials(
    vendor: str,
    trials: int,
    *,
    seed: int = 1,
    workdir: Path,
    max_kill_after: float = 3.0,
    phases: tuple[str, ...] = KILL_PHASES,
) -> list[Trial]:
    """``trials`` sandboxes seeded alike, each synced by one to three killed runs and then to
    quiescence, each compared with one uninterrupted run's end."""
    rng = random.Random(seed)
    env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
    reference_harness, people = started_harness(vendor)
    try:
        since = datetime.now(UTC)
        config = configured(reference_harness, workdir / "reference", people)
        quiesce(config, env, Trial())
        reference = end_state(config, reference_harness, since)
    finally:
        reference_harness.stop()
    results = []
    for number in range(trials):
        trial, (harness, people) = Trial(), started_harness(vendor)
        try:
            since = datetime.now(UTC)
            # Every other trial pushes along the examination: the push stage alone, or both.
            config = configured(harness, workdir / f"trial-{number}", people, push_along=number % 2 == 1)
            for attempt in range(rng.randint(1, 3)):
                trial.runs += 1
                # In turn, so that a few trials already try every phase; where it strikes is random.
                phase = phases[(number + attempt) % len(phases)]
                points = failpoints(phase, rng)
                run_env = {**env, "CONSENTSYNC_FAILPOINTS": points} if points else env
                # A failpoint run its point does not kill (too few pages or pushes) is still
                # bounded by the timed kill.
                kill_after = rng.uniform(0.3, max_kill_after) if not points else 60
                killed = run_killed(config, run_env, kill_after=kill_after)
                trial.kills += killed
                trial.kills_by_phase[phase] += killed
                trial.runs_by_phase[phase] += 1
            quiesce(config, env, trial)
            trial.problems += compare(reference, end_state(config, harness, since))
        finally:
            harness.stop()
        results.append(trial)
        shutil.rmtree(workdir / f"trial-{number}", ignore_errors=True)
    return results
