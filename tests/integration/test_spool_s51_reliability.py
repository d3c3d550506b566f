"""`consentsync plan` reads the whole CRM into a spool file in TMPDIR before it takes the ledger's
writer lock: when that disk is full, the one-line error names the directory and what to do, never
"the output could not be written" (the plan's output is not what failed), and the ledger is left
as it was."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import func, select

from consentsync import exit_codes
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.ledger.schema import crm_links, outbox, subjects
from tests.conftest import SQLITE_ONLY
from tests.integration.crash_config import CONNECTOR, sync_command
from tests.integration.helpers import migrated_crash_config, seeded_org


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(200, seed=3)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 16 KiB file system of its own (a tmpfs: needs the right to mount)."""
    where = tmp_path / "tiny"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()[:200]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@SQLITE_ONLY
def test_a_plan_whose_spool_disk_is_full_says_where_in_one_line(
    tmp_path: Path, ledger_url: str, org: Any, full_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = migrated_crash_config(tmp_path / "run", org, ledger_url, monkeypatch)
    env = {**os.environ, "TMPDIR": str(full_disk)}
    env.pop("CONSENTSYNC_CONFIG", None)
    planned = subprocess.run(
        [*sync_command(config)[:3], "plan", CONNECTOR], env=env, capture_output=True, text=True, timeout=300
    )
    assert planned.returncode == exit_codes.UNAVAILABLE, planned.stderr[-1500:]
    errors = [line for line in planned.stderr.splitlines() if line.startswith("consentsync: error:")]
    assert len(errors) == 1, planned.stderr[-1500:]
    assert str(full_disk) in errors[0] and "TMPDIR" in errors[0], errors[0]
    assert "output could not be written" not in errors[0], errors[0]
    assert "Traceback" not in planned.stderr
    # A full disk is no crash: the run's log shows no frames of it either.
    assert '"sync.crashed"' not in planned.stderr, planned.stderr[-1500:]
    assert '"exception"' not in planned.stderr, planned.stderr[-1500:]
    # The new ledger holds nobody yet: the plan, which writes nothing, left it so.
    ledger = open_ledger(load_config(config))
    try:
        with ledger.engine.connect() as conn:
            counts = [
                conn.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (subjects, crm_links, outbox)
            ]
    finally:
        ledger.engine.dispose()
    assert counts == [0, 0, 0]
