"""A lease's holder names its process by host, PID, PID namespace and start time: the shipped
image runs the daemon as PID 1, and after a container restart (same hostname, a new PID
namespace, PID 1 again) the dead holder is known dead at once, not taken for the new process
itself with the first run skipped until the lease expired. Real processes, each in a PID
namespace of its own, as a container's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from consentsync.ledger.schema import connector_leases
from consentsync.ledger.service import Ledger
from consentsync.sync.lease import holder_dead, this_process

ROOT = Path(__file__).resolve().parents[2]
# A process that takes connector crm's lease for ten minutes and dies holding it (as a container
# stopped under it), printing its pid and its holder first.
TAKE = """
import os, sys
from datetime import timedelta
from pathlib import Path
from consentsync.app import open_ledger
from consentsync.config import load_config
from consentsync.sync.lease import Lease, RunInProgress
ledger = open_ledger(load_config(Path(sys.argv[1])))
lease = Lease(ledger.engine, "crm", sys.argv[2], ledger.clock, ttl=timedelta(minutes=10))
try:
    token = lease.acquire()
except RunInProgress as busy:
    print(os.getpid(), "busy", str(busy).replace(" ", "_"), flush=True)
    os._exit(3)
print(os.getpid(), token, lease.holder, flush=True)
os._exit(0)
"""


def _in_a_container_of_its_own(config: Path, run_id: str) -> list[str]:
    """Runs TAKE as PID 1 of a new PID namespace (what a container start gives the daemon)."""
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", TAKE, str(config), run_id],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    return done.stdout.split() or [done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""]


def _unshare_works() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_a_daemon_restarted_as_pid_1_in_its_container_takes_over_its_dead_lease(
    ledger: Ledger, config_path: Path
) -> None:
    if not _unshare_works():
        pytest.skip("no PID namespaces here (unshare needs CAP_SYS_ADMIN)")
    first = _in_a_container_of_its_own(config_path, "run-before-the-restart")
    assert first[:2] == ["1", "1"], first
    # The container restarts: the same hostname, a new PID namespace, the daemon PID 1 again.
    second = _in_a_container_of_its_own(config_path, "run-after-the-restart")
    assert second[:2] == ["1", "2"], f"the dead holder was taken for the new process: {second}"
    with ledger.engine.connect() as conn:
        row = conn.execute(select(connector_leases).where(connector_leases.c.connector == "crm")).one()
    assert (row.run_id, row.token, row.holder) == ("run-after-the-restart", 2, second[2])
    host = socket.gethostname()
    assert first[2].startswith(f"{host}:1/"), "the holder names its PID namespace and start time"


def test_a_holder_is_dead_when_its_pid_started_at_another_time_and_alive_when_it_is_the_same(
    tmp_path: Path,
) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from consentsync.sync.lease import this_process as t; print(t(), flush=True); "
            "import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        holder = child.stdout.readline().strip()
        host, _, process = holder.rpartition(":")
        pid, _, recorded = process.partition("/")
        if not recorded:
            pytest.skip("no /proc here: holders are host:pid")
        namespace, _, started = recorded.partition("/")
        assert (host, int(pid)) == (socket.gethostname(), child.pid)
        assert not holder_dead(holder), "the live process itself"
        # The same PID, started at another time: the PID was reused, its holder is gone.
        assert holder_dead(f"{host}:{pid}/{namespace}/{int(started) + 1}")
        assert not holder_dead(f"{host}:{pid}"), "a holder written by an older version: alive"
        # Another host's process cannot be told from here.
        assert not holder_dead(f"elsewhere.{host}:{pid}/{namespace}/{int(started) + 1}")
    finally:
        child.kill()
        child.wait()
    assert holder_dead(holder), "the process is gone"
    assert holder_dead(f"{host}:{pid}"), "an older version's holder, its process gone"
    assert not holder_dead(this_process())
    assert os.getpid() == int(this_process().rpartition(":")[2].partition("/")[0])
