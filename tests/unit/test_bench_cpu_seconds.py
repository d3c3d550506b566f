"""bench/sync_bench.py reads the CPU the emulator spent from /proc: a process that spins shows
its time there, one that waits does not, and a process that is gone has none."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from sync_bench import cpu_seconds

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")

SPIN = (
    "import time\nprint('ready', flush=True)\nend = time.process_time() + 0.5\n"
    "while time.process_time() < end: pass\nprint('done', flush=True)\ninput()"
)
WAIT = "print('ready', flush=True)\nprint('done', flush=True)\ninput()"


def _measured(code: str) -> float:
    """The CPU seconds ``cpu_seconds`` saw the child spend between its two lines."""
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline().strip() == "ready"
        started = cpu_seconds(process.pid)
        time.sleep(0.3)
        assert process.stdout.readline().strip() == "done"
        spent = cpu_seconds(process.pid)
        assert started is not None and spent is not None
        return spent - started
    finally:
        process.communicate("\n", timeout=30)


def test_a_spinning_process_shows_its_cpu_and_a_waiting_one_none() -> None:
    assert _measured(SPIN) >= 0.4
    assert _measured(WAIT) < 0.05


def test_a_process_that_is_gone_has_no_cpu_to_read() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    assert cpu_seconds(process.pid) is None
