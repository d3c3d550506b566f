"""Salesforce against its sandbox (session 51, round 2): a Bulk API 2.0 job closed by a process
that was then killed while it polled goes on running; the next write must settle it first, so
that its older values never land after the newer ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from consentsync_salesforce import SalesforceConnector
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.sdk import ConnectorError, RecordUpdate
from tests.connectors.against_sandbox import connector_settings
from tests.connectors.test_salesforce_s51 import newer_value_stands
from tests.integration.helpers import free_port

QUEUED_FOR = 3.0  # seconds the sandbox keeps a closed job queued before it applies it

# The run that dies: writes 55 Contacts' Title through one Bulk job and waits for its answer.
_BULK_RUN = """
import json, sys
from consentsync_salesforce import SalesforceConnector
from consentsync.sdk import RecordUpdate
settings, ids = json.loads(sys.argv[1]), json.loads(sys.argv[2])
connector = SalesforceConnector("sf-s51b", settings)
list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "stale"}) for i in ids]))
print("answered", flush=True)
"""


@pytest.fixture
def salesforce() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(port=free_port()) as server:
        server.org.seed(60, seed=5)
        yield server


def _settings(salesforce: SalesforceSandbox, state: Path, **extra: object) -> dict[str, object]:
    return connector_settings(
        salesforce.connection_settings(),
        {"bulk_threshold": 50, "bulk_poll_first": 0.05, "bulk_poll_interval": 0.05, "state_dir": str(state)},
        extra,
    )


def _noted(state: Path) -> list[Path]:
    """The journal files in ``state`` (none once every job is seen to end)."""
    return list(state.iterdir()) if state.exists() else []


def _kill_while_polling(salesforce: SalesforceSandbox, settings: dict[str, object], ids: list[str]) -> None:
    """Runs the bulk write in a process of its own and SIGKILLs it once its job is closed (the
    process is then polling; the job is queued in the org)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _BULK_RUN, json.dumps(settings), json.dumps(ids)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={key: value for key, value in os.environ.items() if not key.startswith("CONSENTSYNC_")},
    )
    try:
        deadline = time.monotonic() + 30
        while not any(job.state == "UploadComplete" for job in list(salesforce._jobs.values())):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the job was never closed"
            time.sleep(0.01)
        time.sleep(0.2)  # a few polls
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert [job.state for job in salesforce._jobs.values()] == ["UploadComplete"]


def test_a_bulk_job_of_a_process_killed_while_polling_never_lands_after_the_next_runs_write(
    salesforce: SalesforceSandbox, tmp_path: Path
) -> None:
    """The killed run's job holds the old value (a grant); the next run writes the newer one (a
    withdrawal) to some of the same records. Before it writes, the next run aborts the job the
    killed run left, so the newer value stands; without it the job ran after the write."""
    salesforce.bulk_delay = QUEUED_FOR
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:55]]
    settings = _settings(salesforce, tmp_path / "state", bulk_timeout=60)
    # The next run's connector lives across runs (the daemon's) and wrote before the other
    # process (an ``apply``) was killed: it must look again, not trust what it saw then.
    newer = SalesforceConnector("sf-s51b", settings)
    list(newer.write_batches([RecordUpdate("Contact", ids[-1], {"Title": "before"})]))
    _kill_while_polling(salesforce, settings, ids)

    newer_value_stands(salesforce, newer, ids, QUEUED_FOR)
    # Settled and forgotten: the write after that asks nothing about it.
    assert not _noted(tmp_path / "state")
    salesforce.reset_counters()
    list(newer.write_batches([RecordUpdate("Contact", ids[0], {"Title": "again"})]))
    assert salesforce.calls["bulk_status"] == 0 and salesforce.calls["bulk_state"] == 0


def test_a_job_left_that_ended_meanwhile_is_forgotten_without_an_abort(
    salesforce: SalesforceSandbox, tmp_path: Path
) -> None:
    """The killed run's job finished before the next run: its values landed before the newer
    write, which then stands; the next run only asks its state, once."""
    salesforce.bulk_delay = 1.0
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:55]]
    settings = _settings(salesforce, tmp_path / "state", bulk_timeout=60)
    _kill_while_polling(salesforce, settings, ids)
    time.sleep(1.5)
    assert [job.state for job in salesforce._jobs.values()] == ["JobComplete"]
    salesforce.reset_counters()
    newer = SalesforceConnector("sf-s51b", settings)
    list(newer.write_batches([RecordUpdate("Contact", i, {"Title": "newer"}) for i in ids[:5]]))
    assert salesforce.calls["bulk_state"] == 0 and salesforce.calls["bulk_status"] == 1
    assert [salesforce.org.get(i)["Title"] for i in ids[:5]] == ["newer"] * 5
    assert not _noted(tmp_path / "state")


def test_a_finished_bulk_write_leaves_nothing_to_settle(
    salesforce: SalesforceSandbox, tmp_path: Path
) -> None:
    """The normal case costs no call: a job seen to end is forgotten at once."""
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:55]]
    connector = SalesforceConnector("sf-s51b", _settings(salesforce, tmp_path / "state"))
    (answers,) = list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "bulk"}) for i in ids]))
    assert all(result.ok for result in answers.values())
    assert not _noted(tmp_path / "state")
    salesforce.reset_counters()
    again = SalesforceConnector("sf-s51b", _settings(salesforce, tmp_path / "state"))
    list(again.write_batches([RecordUpdate("Contact", ids[0], {"Title": "again"})]))
    assert salesforce.calls["bulk_status"] == 0 and salesforce.calls["bulk_list"] == 0


def test_a_journal_that_cannot_be_read_stops_the_write_before_anything(
    salesforce: SalesforceSandbox, tmp_path: Path
) -> None:
    """Whether an earlier run left a job is unknown: nothing is written, and the run stops with
    the directory named, not a traceback."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the state directory should be")
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:55]]
    connector = SalesforceConnector("sf-s51b", _settings(salesforce, blocked))
    with pytest.raises(ConnectorError, match=r"not-a-directory.*state_dir"):
        list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "unrecorded"}) for i in ids]))
    assert not salesforce._jobs
    assert all(salesforce.org.get(i)["Title"] != "unrecorded" for i in ids)


def test_a_bulk_job_is_never_closed_unrecorded(salesforce: SalesforceSandbox) -> None:
    """The journal reads (nothing there) but cannot be written (a directory no one can make,
    even root: under /proc): the job is aborted before it is closed, nothing of it applied,
    and the run stops with the directory named."""
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:55]]
    unmakeable = Path("/proc/consentsync-s51b/state")
    connector = SalesforceConnector("sf-s51b", _settings(salesforce, unmakeable))
    with pytest.raises(ConnectorError, match=r"/proc/consentsync-s51b/state.*state_dir"):
        list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "unrecorded"}) for i in ids]))
    assert [job.state for job in salesforce._jobs.values()] == ["Aborted"]
    assert all(salesforce.org.get(i)["Title"] != "unrecorded" for i in ids)


def test_a_noted_job_salesforce_no_longer_has_is_forgotten(
    salesforce: SalesforceSandbox, tmp_path: Path
) -> None:
    """Jobs are deleted seven days after they end: a noted job answered 404 has ended. A name
    that is no job id is dropped without a call."""
    settings = _settings(salesforce, tmp_path / "state")
    connector = SalesforceConnector("sf-s51b", settings)
    connector._journal.add("750000000000001AAA")
    connector._journal.add("../../sobjects")
    salesforce.reset_counters()
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:3]]
    for batch in connector.write_batches([RecordUpdate("Contact", i, {"Title": "newer"}) for i in ids]):
        assert all(result.ok for result in batch.values())
    assert salesforce.calls["bulk_status"] == 1 and salesforce.calls["bulk_state"] == 0
    assert not _noted(tmp_path / "state")


def test_a_default_journal_place_that_cannot_be_used_leaves_bulk_writes_working(
    salesforce: SalesforceSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No state_dir given and the user's default one unusable (a read-only home, a service user
    without one): the journal is off, said in the log, and bulk writes go as before. A
    directory an admin gave that cannot be used still stops the write (the test above)."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the state folder would be")
    monkeypatch.delenv("CONSENTSYNC_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked))
    settings = _settings(salesforce, tmp_path)
    settings.pop("state_dir")
    ids = [r["Id"] for r in salesforce.org.records("Contact")[:55]]
    connector = SalesforceConnector("sf-s51b", settings)
    (answers,) = list(connector.write_batches([RecordUpdate("Contact", i, {"Title": "bulk"}) for i in ids]))
    assert all(result.ok for result in answers.values())
    assert [salesforce.org.get(i)["Title"] for i in ids] == ["bulk"] * len(ids)
    assert connector._journal.off
