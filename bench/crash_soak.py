"""SIGKILL `consentsync sync` at random moments, restart it, and compare the end state (ledger,
CRM sandbox, audit log) with an uninterrupted run. Prints the trials and the failures per
connector; exits 1 if any trial ended otherwise.

    python bench/crash_soak.py --trials 50                      # every registered connector
    python bench/crash_soak.py --trials 10 --connector vtiger   # one

The connector's sandbox comes from its harness (entry-point group consentsync.harnesses), which
seeds the existing org it knows (``seed_existing_org``: people over years, with and without
opt-outs, so that runs push; fixed dates, so that two sandboxes hold the same records) and reads
the CRM's end state back (``store_state``): a third party's connector too. The kill phases, the
runs to quiescence and the comparison are consentsync.sdk.crashtest's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from consentsync.logs import configure as configure_logging
from consentsync.sdk.crashtest import KILL_PHASES, run_trials
from consentsync.sdk.harness import available_harnesses


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connector", default="all", help="a registered harness's name, or 'all'")
    args = parser.parse_args(argv)
    os.environ.setdefault("CONSENTSYNC_ERASURE_KEY", "crash-soak-erasure-key-0123456789abcdef")
    configure_logging("WARNING")  # the trials' own ledger writes log at debug
    vendors = sorted(available_harnesses()) if args.connector == "all" else [args.connector]
    worst = 0
    for vendor in vendors:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"consentsync-crash-{vendor}-") as folder:
            try:
                results = run_trials(vendor, args.trials, seed=args.seed, workdir=Path(folder))
            except LookupError as error:  # no such harness, or one that cannot seed an org
                print(f"{vendor}: skipped: {error.args[0]}")
                worst = max(worst, 2)
                continue
        failed = [t for t in results if t.problems]
        phases: Counter[str] = sum((t.kills_by_phase for t in results), Counter())
        tried: Counter[str] = sum((t.runs_by_phase for t in results), Counter())
        kills, runs = sum(t.kills for t in results), sum(t.runs for t in results)
        print(f"{vendor}: {len(results)} trials, {kills} killed, {runs} runs, {len(failed)} failed")
        print(f"  took {time.monotonic() - started:.0f} s")
        killed_of = (f"{phase} {phases[phase]}/{tried[phase]}" for phase in KILL_PHASES)
        print("  runs killed / runs tried, by phase: " + ", ".join(killed_of))
        for number, trial in enumerate(results):
            for problem in trial.problems:
                print(f"  trial {number}: {problem}")
        worst = max(worst, 1 if failed else 0)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
