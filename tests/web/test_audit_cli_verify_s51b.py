"""`consentsync audit verify` beside the ledger's writers (session 51, round 2).

The command recomputed the chain, compared the consent events with their entries and checked
the signed checkpoints inside one write transaction: it held the ledger's writer lock (SQLite's
BEGIN IMMEDIATE, the advisory writer lock on PostgreSQL) for the whole run, minutes on a large
ledger. A nightly `audit verify` from cron held every sync, every objection and every capture of
the preference centre behind it, each failing once its lock wait ran out. It reads one snapshot
now, as the console's *Verify chain* does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from consentsync import audit
from consentsync.ledger.service import Ledger
from tests.conftest import Cli, stop

# The real command in a process of its own, held at its first entry until the test's writer is
# done (10 s at most): as a pass over millions of entries is still running when a person objects.
VERIFIER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from consentsync import audit
    from consentsync.cli import main

    started, written = Path(sys.argv[1]), Path(sys.argv[2])
    check = audit._check_entry
    calls = 0

    def held_open(*args):
        global calls
        calls += 1
        if calls == 1:
            started.touch()
            deadline = time.monotonic() + 10
            while not written.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return check(*args)

    audit._check_entry = held_open
    main(["--config", sys.argv[3], "audit", "verify", "--json"])
    """
)


def test_a_writer_in_another_process_is_not_held_while_audit_verify_runs(
    cli: Cli, ledger: Ledger, tmp_path: Path
) -> None:
    ledger.raise_objection("first@example.com", "profiling")
    with ledger.engine.connect() as conn:
        head = audit.verify(conn).head_seq
    started, written = tmp_path / "started", tmp_path / "written"
    verifier = subprocess.Popen(
        [sys.executable, "-c", VERIFIER, str(started), str(written), str(cli.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert verifier.poll() is None, verifier.communicate()
            assert time.monotonic() < deadline, "audit verify never reached the chain"
            time.sleep(0.02)
        began = time.monotonic()
        ledger.raise_objection("writer@example.com", "profiling")  # a person objects meanwhile
        waited = time.monotonic() - began
        written.touch()
        out, err = verifier.communicate(timeout=60)
    finally:
        stop(verifier)
    assert waited < 3, f"the writer waited {waited:.1f} s for audit verify"
    assert verifier.returncode == 0, f"{verifier.returncode}: {out}{err}"
    found = json.loads(out)
    # The run read the ledger as it was when it began: the chain whole up to that head, and the
    # events recorded meanwhile not taken for events without their entries.
    assert (found["ok"], found["head_seq"], found["entries_checked"]) == (True, head, head), found
    assert found["events"]["ok"], found
    with ledger.engine.connect() as conn:
        after = audit.verify(conn)
    assert after.ok and after.head_seq > head
