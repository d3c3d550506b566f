"""SIGKILL `consentsync sync` at random moments, restart it, and compare the end state (ledger,
CRM sandbox, audit log) with an uninterrupted run. Prints the trial count and the failures.

    python bench/crash_soak.py --trials 50                      # the Salesforce scenario
    python bench/crash_soak.py --trials 10 --connector vtiger   # any registered connector
    python bench/crash_soak.py --trials 5 --connector all

Without --connector it runs consentsync.sync.crashtest's Salesforce scenario (the org's own seed,
four objects). With --connector it finds the connector's sandbox through its harness
(entry-point group consentsync.harnesses), seeds the existing org the harness knows
(``seed_existing_org``: people over years, with and without opt-outs, so that runs push; fixed
dates, so that two sandboxes hold the same records) and reads the CRM's end state through
``store_state`` (--records is the Salesforce scenario's): every connector whose harness
can do both (AdoptionHarness), a third party's too. The kill phases, the runs to quiescence and
the comparison are crashtest's.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.sdk.harness import AdoptionHarness, available_harnesses, write_sync_config
from consentsync.sync import crashtest
from consentsync.sync.crashtest import CONNECTOR, KILL_PHASES, Trial, compare


def crm_state(harness: Any) -> list[tuple[tuple[str, str], ...]]:
    """The CRM's records as the harness reads them from its store, without their ids (each
    sandbox makes its own): one sorted tuple of (field, value) per record, in a sorted list."""
    store = harness.store_state()
    ids = {part for key in store for part in key.split("/")}
    return sorted(
        tuple(sorted((name, str(value)) for name, value in fields.items() if str(value) not in ids))
        for fields in store.values()
    )


def end_state(config: Path, harness: Any) -> dict[str, Any]:
    """crashtest's end state (ledger, audit log, outbox) with the CRM read through the harness."""
    no_org = SimpleNamespace(org=SimpleNamespace(records=lambda kind: []))  # crashtest reads an org
    state = crashtest.end_state(config, no_org)
    state["crm"] = crm_state(harness)
    return state


def started_harness(vendor: str) -> Any:
    harness = available_harnesses()[vendor].load()()
    if not isinstance(harness, AdoptionHarness):
        raise SystemExit(f"{vendor}: its harness cannot seed an existing org or read its store back")
    harness.start()
    harness.seed_existing_org()
    return harness


def configured(harness: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = write_sync_config(harness, folder, name=CONNECTOR)
    open_ledger(load_config(config), migrate=True).engine.dispose()
    return config


def run_trials(vendor: str, trials: int, *, seed: int, workdir: Path) -> list[Trial]:
    rng = random.Random(seed)
    env = {k: v for k, v in os.environ.items() if k != "CONSENTSYNC_CONFIG"}
    reference_harness = started_harness(vendor)
    try:
        config = configured(reference_harness, workdir / "reference")
        crashtest._quiesce(config, env, Trial())
        reference = end_state(config, reference_harness)
    finally:
        reference_harness.stop()
    results = []
    for number in range(trials):
        trial, harness = Trial(), started_harness(vendor)
        try:
            config = configured(harness, workdir / f"trial-{number}")
            for _ in range(rng.randint(1, 3)):
                trial.runs += 1
                phase = rng.choice(KILL_PHASES)
                points = crashtest._failpoints(phase, rng)
                run_env = {**env, "CONSENTSYNC_FAILPOINTS": points} if points else env
                # A failpoint run its point does not kill is still bounded by the timed kill.
                kill_after = rng.uniform(0.3, 3.0) if not points else 60
                killed = crashtest._sync(config, run_env, kill_after=kill_after)
                trial.kills += killed
                trial.kills_by_phase[phase] += killed
            crashtest._quiesce(config, env, trial)
            trial.problems += compare(reference, end_state(config, harness))
        finally:
            harness.stop()
        results.append(trial)
        shutil.rmtree(workdir / f"trial-{number}", ignore_errors=True)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--records", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connector", help="a registered harness's name, or 'all' (default: Salesforce's)")
    args = parser.parse_args(argv)
    if args.connector is None:
        return crashtest.main(argv)
    os.environ.setdefault("CONSENTSYNC_ERASURE_KEY", "crash-soak-erasure-key-0123456789abcdef")
    vendors = sorted(available_harnesses()) if args.connector == "all" else [args.connector]
    worst = 0
    for vendor in vendors:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"consentsync-crash-{vendor}-") as folder:
            results = run_trials(vendor, args.trials, seed=args.seed, workdir=Path(folder))
        failed = [t for t in results if t.problems]
        phases: Counter[str] = sum((t.kills_by_phase for t in results), Counter())
        took = time.monotonic() - started
        kills, runs = sum(t.kills for t in results), sum(t.runs for t in results)
        print(f"{vendor}: {len(results)} trials, {kills} killed, {runs} runs, {len(failed)} failed")
        print(f"  took {took:.0f} s")
        print("  kills by phase: " + ", ".join(f"{phase} {phases[phase]}" for phase in KILL_PHASES))
        for number, trial in enumerate(results):
            for problem in trial.problems:
                print(f"  trial {number}: {problem}")
        worst = max(worst, 1 if failed else 0)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
