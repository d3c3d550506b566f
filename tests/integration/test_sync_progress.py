"""`consentsync sync`'s progress, as a real process against the Salesforce sandbox: rich's bars
with a rate on a terminal (a pseudo-terminal here), `sync.progress` JSON lines at a fixed interval
off one, and `--json`'s stdout left to the report."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from consentsync_salesforce.sandbox.harness import SalesforceHarness

from consentsync.cli import main
from consentsync.sdk.harness import write_sync_config

CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
SEED = 600  # with the duplicates the seed adds: four pages of 200
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@pytest.fixture
def synced(tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str], int]]:
    """The command that syncs (two-way) a seeded sandbox org whose pages are slowed to 0.25 s
    each, so that the read lasts about a second; its environment; the org's contacts."""
    harness = SalesforceHarness()
    harness.start()
    try:
        harness.sandbox.org.seed(SEED, seed=3)
        harness.sandbox.faults.update(delay=0.25, delay_kinds=["query", "queryMore"])
        config = write_sync_config(harness, tmp_path)
        data = yaml.safe_load(config.read_text())
        data["connectors"][0]["batch_size"] = harness.page_size  # a commit and an update a page
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        assert CliRunner().invoke(main, ["--config", str(config), "init"]).exit_code == 0
        env = {**os.environ, "CONSENTSYNC_CONFIG": str(config)}
        env.pop("CONSENTSYNC_PROGRESS_INTERVAL", None)
        yield [CONSENTSYNC, "sync", "contract"], env, harness.sandbox.org.count("Contact")
    finally:
        harness.stop()


def _under_a_terminal(command: list[str], env: dict[str, str], columns: int = 100) -> tuple[int, str]:
    """Runs ``command`` with stdin, stdout and stderr on a pseudo-terminal ``columns`` wide (the
    counts beside the bars grow as the run goes on: the stage's name must stay whole)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        command, stdin=follower, stdout=follower, stderr=follower, env={**env, "TERM": "xterm-256color"}
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_rich_shows_each_stage_with_its_rate(
    synced: tuple[list[str], dict[str, str], int],
) -> None:
    command, env, contacts = synced
    code, output = _under_a_terminal(command, env)
    assert code == 0, output[-2000:]
    screen = ANSI.sub("", output)
    assert "\x1b[" in output  # drawn in place by rich, not printed line after line
    reading = [line for line in screen.splitlines() if "contract reading Contact" in line]
    assert reading, screen[-2000:]
    # The last drawing of the read: every record of the object, a rate a second, the ETA column.
    assert f"{contacts}/{contacts}" in reading[-1] and "ETA" in reading[-1], reading[-1]
    assert re.search(r"\b[1-9][\d,]*/s\b", reading[-1]), reading[-1]
    assert "contract examining" in screen and "contract pushing" in screen
    assert "Run " in screen or "succeeded" in screen  # the report follows the bars


def test_off_a_terminal_progress_is_a_json_line_at_the_interval(
    synced: tuple[list[str], dict[str, str], int],
) -> None:
    command, env, contacts = synced
    started = time.monotonic()
    run = subprocess.run(
        [*command, "--json", "--progress-interval", "0.2"],
        env={**env, "CONSENTSYNC_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["status"] == "succeeded"  # stdout: the report and nothing else
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    progress = [line for line in lines if line["event"] == "sync.progress"]
    # The run lasts about a second: a line every 0.2 s, and one at its end.
    assert len(progress) >= 3, run.stderr[-2000:]
    assert len(progress) <= elapsed / 0.2 + 2
    for line in progress:
        assert {"stage", "done", "total", "rate"} <= set(line)
        assert isinstance(line["done"], int) and isinstance(line["rate"], int | float)
    reads = [line for line in progress if line["stage"] == "reading Contact"]
    assert reads and reads[-1]["total"] == contacts and 0 < reads[-1]["done"] <= contacts
    assert any(line["rate"] > 0 for line in reads)
    # The run ends pushing: the last line says how many pushes went through.
    assert progress[-1]["stage"] == "pushing"
    assert progress[-1]["done"] == json.loads(run.stdout)["counts"]["pushed"] > 0


def test_a_bad_interval_in_the_environment_is_a_one_line_error(
    synced: tuple[list[str], dict[str, str], int],
) -> None:
    command, env, _ = synced
    # nan passed click's range and made the reporter log in a busy loop; inf overflowed its timer.
    for value in ("soon", "nan", "inf", "1e309", "86401"):
        bad = subprocess.run(
            command, env={**env, "CONSENTSYNC_PROGRESS_INTERVAL": value}, capture_output=True, text=True
        )
        assert bad.returncode == 2 and "progress-interval" in bad.stderr and "Traceback" not in bad.stderr
        assert "sync.progress" not in bad.stdout + bad.stderr, value
