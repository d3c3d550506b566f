"""What an operator's probe found at the process level: a listing piped into a reader that stops
early (`consentsync audit log | head -1`) exits 141 without a word on stderr; `consentsync apply`
of a plan the ledger changed underneath is refused before any run is recorded; `consentsync web`
stopped by SIGTERM exits 0, as the daemon does."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml

from consentsync import exit_codes
from consentsync.app import open_ledger
from consentsync.config import load_config, write_starter
from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import RecordRequest
from tests.conftest import TEST_ERASURE_KEY, own_environment, stop
from tests.integration.helpers import consent_value, local_session

CONSENTSYNC = str(Path(sys.executable).parent / "consentsync")
PORTS = range(18400, 18500)  # this suite's servers listen here only


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment of the test's own: its HOME and TMPDIR, its config, no CONSENTSYNC_* setting
    from the caller's."""
    return own_environment(tmp_path, TEST_ERASURE_KEY)


@pytest.fixture
def config(tmp_path: Path, env: dict[str, str]) -> Path:
    path = Path(env["CONSENTSYNC_CONFIG"])
    write_starter(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    done = consentsync(env, "init")
    assert done.returncode == 0, done.stderr
    return path


def consentsync(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONSENTSYNC, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _fill(config: Path, people: int) -> None:
    """``people`` consents recorded: an audit log of twice as many entries (subject, consent),
    well over what a pipe holds."""
    ledger = open_ledger(load_config(config), migrate=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ledger.record_many(
        RecordRequest(
            Identity(email=f"p{n}@example.com"),
            consent_value(
                ConsentStatus.GRANTED,
                start + timedelta(minutes=n),
                start + timedelta(minutes=n),
                evidence_ref=f"form-{n}",
                double_opt_in_at=start + timedelta(minutes=n),
            ),
        )
        for n in range(people)
    )
    ledger.engine.dispose()


# -- a reader that stops early ----------------------------------------------------------------------


@pytest.mark.parametrize("args", [["audit", "log"], ["audit", "log", "--json"]])
def test_a_listing_whose_reader_stops_after_one_line_exits_141_and_says_nothing(
    config: Path, env: dict[str, str], args: list[str]
) -> None:
    _fill(config, 1500)  # some 1.5 MB of table: far more than a pipe buffers
    process = subprocess.Popen(
        [CONSENTSYNC, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        first = process.stdout.readline()
        process.stdout.close()  # as `head -1` does
        code = process.wait(timeout=60)
        error = process.stderr.read().decode()
    finally:
        stop(process)  # type: ignore[arg-type]
    assert first.strip(), "nothing was listed"
    assert code == exit_codes.READER_GONE == 141, (code, error)
    assert error == ""


def test_a_listing_read_to_its_end_still_exits_0(config: Path, env: dict[str, str]) -> None:
    _fill(config, 200)
    done = consentsync(env, "audit", "log", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) >= 400


# -- `consentsync web` stopped by SIGTERM -----------------------------------------------------------


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


@pytest.fixture
def web(config: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = _free_port()
    process = subprocess.Popen(
        [CONSENTSYNC, "web", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        yield process, port
    finally:
        stop(process)


def _answers(port: int, within: float = 30) -> requests.Response:
    session = local_session()
    deadline = time.monotonic() + within
    while True:
        try:
            return session.get(f"http://127.0.0.1:{port}/healthz", timeout=2, allow_redirects=False)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_web_stopped_by_a_signal_exits_0_without_a_traceback(
    web: tuple[subprocess.Popen[str], int], sig: signal.Signals
) -> None:
    process, port = web
    assert _answers(port).status_code < 500
    process.send_signal(sig)
    code = process.wait(timeout=30)
    _out, err = process.communicate(timeout=10)
    assert code == 0, (code, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


# -- `consentsync apply` of a plan that no longer holds -----------------------------------------------


def _runs(env: dict[str, str]) -> list[dict[str, object]]:
    done = consentsync(env, "runs", "list", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


@pytest.fixture
def org() -> Iterator[object]:
    from consentsync_salesforce.sandbox import SalesforceSandbox

    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(40, seed=11)
        yield sandbox


def test_apply_of_a_stale_plan_exits_65_and_pushes_nothing(
    config: Path, env: dict[str, str], org: object, tmp_path: Path
) -> None:
    """A plan the CRM changed underneath is refused with its own exit code (65, not a run's
    generic failure 1); the refused run is on record with what to do next, nothing is pushed, and
    a plan made then applies. Checked without a second read first: apply reads the CRM once."""
    from consentsync_salesforce.sandbox import SalesforceSandbox

    from consentsync.demo import find_mappings
    from tests.integration.crash_config import write_config

    assert isinstance(org, SalesforceSandbox)
    env["CRASHTEST_SF_SECRET"] = org.credentials.client_secret
    path = write_config(tmp_path / "cfg", org, find_mappings())
    data = yaml.safe_load(path.read_text())
    data["connectors"][0]["mode"] = "observe"  # pushes nothing on its own: only an applied plan does
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env["CONSENTSYNC_CONFIG"] = str(path)
    assert consentsync(env, "init").returncode == 0
    synced = consentsync(env, "sync", "sf", "--full", "--json")
    assert synced.returncode == 0, synced.stderr
    plan_path = tmp_path / "plan.json"
    planned = consentsync(env, "plan", "sf", "-o", str(plan_path), "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    target = next(item for item in plan["items"] if item["object_type"] == "Contact")
    field, value = next(iter(target["new"].items()))
    org.org.update(target["record_id"], **{field: value})  # a CRM user did it meanwhile
    crm_before = json.dumps(
        {kind: sorted(org.org.records(kind), key=lambda r: r["Id"]) for kind in ("Contact", "Lead")},
        sort_keys=True, default=str,
    )  # fmt: skip

    refused = consentsync(env, "apply", str(plan_path), "--actor", "dpo")

    assert refused.returncode == exit_codes.STALE_PLAN, (refused.returncode, refused.stderr)
    assert "Traceback" not in refused.stderr
    assert "make a new plan with `consentsync plan sf`" in refused.stdout + refused.stderr
    latest = _runs(env)[0]
    assert latest["status"] == "failed" and str(latest["error"]).startswith("plan: ")
    assert json.dumps(
        {kind: sorted(org.org.records(kind), key=lambda r: r["Id"]) for kind in ("Contact", "Lead")},
        sort_keys=True, default=str,
    ) == crm_before  # fmt: skip
    # A plan made now holds, and is applied.
    assert consentsync(env, "plan", "sf", "-o", str(plan_path)).returncode == 0
    applied = consentsync(env, "apply", str(plan_path), "--actor", "dpo", "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["status"] == "succeeded"
