"""PostgreSQL going away at any moment of a run: the ledger is reached through a TCP proxy that the
test closes, as a failover, a restarted server or a cut network would. Whenever it goes away, the
command says so in one line with exit 69 (try again later), never a traceback, and no run is left
"running" once the ledger is back."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync import exit_codes
from tests.integration.crash_config import sync_command
from tests.integration.helpers import migrated_crash_config, seeded_org


class Outage:
    """A TCP proxy to the PostgreSQL server that can be cut (every connection closed, new ones
    refused) and restored on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                # shutdown wakes the accepting thread (a bare close would let it accept on).
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def outage(ledger_url: str) -> Any:
    where = urlsplit(ledger_url)
    proxy = Outage((where.hostname or "127.0.0.1", where.port or 5432))
    yield proxy
    proxy.cut()


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    yield from seeded_org(60, seed=5)


@pytest.fixture
def config(
    tmp_path: Path, ledger_url: str, outage: Outage, org: Any, monkeypatch: pytest.MonkeyPatch
) -> Path:
    where = urlsplit(ledger_url)
    proxied = ledger_url.replace(f"{where.hostname}:{where.port or 5432}", f"127.0.0.1:{outage.port}", 1)
    return migrated_crash_config(tmp_path / "run", org, proxied, monkeypatch)


def _one_line(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == exit_codes.UNAVAILABLE, result.stderr[-1500:]
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("consentsync: error:")]
    assert len(errors) == 1 and "ledger" in errors[0].lower(), result.stderr[-1500:]


def _runs(config: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    listed = subprocess.run(
        [*sync_command(config)[:3], "runs", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr[-800:]
    return json.loads(listed.stdout)


# The failpoints where the ledger goes away: before the run's first page is committed (the run
# holds its lock and lease), and after its pages and pushes, at its last checks.
@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("moment", ["sync.page.read=hold@1", "sync.push.answered=hold@1"])
def test_the_ledger_going_away_mid_run_is_one_line_and_leaves_no_run_running(
    config: Path, outage: Outage, tmp_path: Path, moment: str
) -> None:
    held = tmp_path / "held"
    held.mkdir()
    env = {**os.environ, "CONSENTSYNC_FAILPOINTS": moment, "CONSENTSYNC_FAILPOINT_DIR": str(held)}
    env.pop("CONSENTSYNC_CONFIG", None)
    run = subprocess.Popen(
        sync_command(config), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    marker = held / f"{moment.split('=')[0]}.held"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert run.poll() is None, run.communicate()[1][-1500:]
        assert time.monotonic() < deadline, "the run never reached its failpoint"
        time.sleep(0.05)
    outage.cut()
    marker.unlink()
    stdout, stderr = run.communicate(timeout=120)
    _one_line(subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr))

    outage.restore()
    env.pop("CONSENTSYNC_FAILPOINTS")
    # Once the ledger is back, nothing claims to be running, and the next run completes.
    assert [r["status"] for r in _runs(config, env) if r["status"] == "running"] == []
    again = subprocess.run(sync_command(config), env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode in (exit_codes.OK, exit_codes.QUARANTINED), again.stderr[-1500:]


@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_a_ledger_away_at_the_start_is_one_line(config: Path, outage: Outage) -> None:
    outage.cut()
    env = {**os.environ}
    env.pop("CONSENTSYNC_CONFIG", None)
    for command in (sync_command(config), [*sync_command(config)[:3], "status"]):
        _one_line(subprocess.run(command, env=env, capture_output=True, text=True, timeout=120))
