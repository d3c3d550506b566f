"""The examination's decisions made a batch ahead in a second process (sync/ahead.py): the run
ends as if it had decided alone, refuses a decision made before a change, goes on alone when the
process dies, and leaves no process behind when it is killed itself."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from consentsync_salesforce.sandbox import SalesforceSandbox
from sqlalchemy import insert, select

from consentsync.app import open_ledger, open_sync
from consentsync.config import load_config
from consentsync.demo import find_mappings
from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.schema import crm_links, outbox, sync_examine
from consentsync.ledger.service import Ledger
from consentsync.sync import ahead as ahead_module
from consentsync.sync import engine as engine_module
from consentsync.sync.engine import RunReport, SyncEngine
from tests.integration.crash_config import CONNECTOR, sync_command, write_config
from tests.integration.helpers import holding_env, wait_until_held
from tests.integration.test_ledger import _evidence
from tests.integration.test_sync_engine import _org_flags

BATCH = 10


@contextmanager
def _org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as sandbox:
        sandbox.org.seed(120, seed=11)
        yield sandbox


def _config(
    folder: Path, sandbox: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch, *, ahead: bool
) -> Path:
    """The crash tests' config for ``sandbox`` (a SQLite ledger beside it: the child runs only
    there), batches of ten, with or without deciding ahead."""
    monkeypatch.setenv("CRASHTEST_SF_SECRET", sandbox.credentials.client_secret)
    path = write_config(folder, sandbox, find_mappings())
    data = yaml.safe_load(path.read_text())
    data["connectors"][0].update(batch_size=BATCH, decide_ahead_from=1 if ahead else None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _opened(path: Path) -> tuple[Ledger, SyncEngine]:
    config = load_config(path)
    ledger = open_ledger(config, migrate=True)
    return ledger, open_sync(config, CONNECTOR, ledger)


def _outcome(ledger: Ledger, sandbox: SalesforceSandbox) -> tuple[dict[str, Any], Counter[tuple[Any, ...]]]:
    """What the CRM shows, and the outbox as decided (by record: subject ids may differ)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.object_type, outbox.c.record_id, outbox.c.fields, outbox.c.rule, outbox.c.action)
        ).all()
    return _org_flags(sandbox), Counter(tuple(row) for row in rows)


def _alone(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], Counter[tuple[Any, ...]]]:
    """The outcome of the same org's full sync decided by the run alone."""
    with _org() as sandbox:
        ledger, engine = _opened(_config(folder, sandbox, monkeypatch, ahead=False))
        report = engine.run(full=True)
        assert report.status == "succeeded", report.error
        outcome = _outcome(ledger, sandbox)
        ledger.engine.dispose()
    return outcome


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[ahead_module.DecisionsAhead]:
    """Every DecisionsAhead a run starts, for a test to reach its process."""
    instances: list[ahead_module.DecisionsAhead] = []

    class Watched(ahead_module.DecisionsAhead):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            instances.append(self)

    monkeypatch.setattr(engine_module, "DecisionsAhead", Watched)
    return instances


def _after_first_batch(engine: SyncEngine, act: Callable[[], None]) -> None:
    """Calls ``act`` once, when the first examined batch is committed (the child has just started
    with the second)."""
    done = []

    def progress(report: RunReport) -> None:
        if report.stage == "examining" and report.stage_done == BATCH and not done:
            done.append(True)
            act()

    engine.progress = progress


def _decided(instances: list[ahead_module.DecisionsAhead]) -> None:
    """Waits until the child sent its first decision: the second batch, decided on a snapshot
    taken before whatever the test does next."""
    assert instances, "no process was started to decide ahead"
    assert instances[0]._pipe.poll(60), "the child decided nothing within a minute"


def test_decisions_made_ahead_are_those_the_run_makes_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[ahead_module.DecisionsAhead]
) -> None:
    expected = _alone(tmp_path / "alone", monkeypatch)
    assert not started, "a connector with decide_ahead_from: null started a process"
    with _org() as sandbox:
        ledger, engine = _opened(_config(tmp_path / "ahead", sandbox, monkeypatch, ahead=True))
        report = engine.run(full=True)
        assert report.status == "succeeded", report.error
        flags, decided = _outcome(ledger, sandbox)
    counts = report.counts
    assert counts.pushes_enqueued > 0
    # Every batch but the first (decided while the child starts) came from the child, none again.
    batches = -(-counts.subjects_created // BATCH)  # a first sync examines every person it made
    assert counts.decided_ahead == batches - 1 and counts.decided_again == 0, counts
    assert flags == expected[0]
    assert decided == expected[1]
    assert not started[0]._process.is_alive()


def _second_batch(ledger: Ledger) -> list[int]:
    """The people the run examines next (the first batch's marks are gone)."""
    with ledger.engine.connect() as conn:
        return list(
            conn.execute(
                select(sync_examine.c.subject_id).order_by(sync_examine.c.subject_id).limit(BATCH)
            ).scalars()
        )


def _suppressed_contact(ledger: Ledger, sandbox: SalesforceSandbox, people: list[int]) -> tuple[int, str]:
    """A person of ``people`` whose email marketing the ledger suppresses and whose contact shows
    no opt-out yet: the examination decides to tick the box."""
    with ledger.engine.connect() as conn:
        states = ledger.effective_states_in(conn, people)
        links = conn.execute(
            select(crm_links.c.subject_id, crm_links.c.record_id).where(
                crm_links.c.object_type == "Contact", crm_links.c.subject_id.in_(people)
            )
        ).all()
    for subject_id, record_id in links:
        if (
            states[subject_id][("email_marketing", "email")].suppressed
            and not sandbox.org.get(record_id)["HasOptedOutOfEmail"]
        ):
            return subject_id, record_id
    raise AssertionError("no contact to be opted out in the second batch")


@contextmanager
def _second_batch_changed(
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    started: list[ahead_module.DecisionsAhead],
    change: Callable[[Ledger, int, str], None],
) -> Iterator[tuple[RunReport, Ledger, SalesforceSandbox, str]]:
    """A full sync deciding ahead, during which, once the child decided the second batch, the test
    calls ``change(ledger, person, contact)`` for a person of that batch whose contact the child
    decided to opt out. Yields the run's report, the ledger, the org and the contact's id."""
    with _org() as sandbox:
        ledger, engine = _opened(_config(folder, sandbox, monkeypatch, ahead=True))
        chosen: list[str] = []

        def act() -> None:
            _decided(started)
            subject_id, record_id = _suppressed_contact(ledger, sandbox, _second_batch(ledger))
            change(ledger, subject_id, record_id)
            chosen.append(record_id)

        _after_first_batch(engine, act)
        report = engine.run(full=True)
        assert report.status == "succeeded", report.error
        assert chosen, "the examination had no second batch"
        yield report, ledger, sandbox, chosen[0]


def test_a_consent_recorded_after_the_childs_snapshot_is_decided_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[ahead_module.DecisionsAhead]
) -> None:
    """The child decided to tick a contact's opt-out box; before the run writes that decision, the
    person grants consent on the web site. The run sees the feed moved, decides again, and the
    box stays clear."""

    def grant(ledger: Ledger, subject_id: int, _record_id: str) -> None:
        granted = _evidence(ledger, ConsentStatus.GRANTED, at=ledger.clock())
        outcome = ledger.record(Identity(subject_id=subject_id), granted)
        assert outcome.after is not None and not outcome.after.suppressed, "the grant allows nothing"

    with _second_batch_changed(tmp_path, monkeypatch, started, grant) as (report, _, sandbox, contact):
        opted_out = sandbox.org.get(contact)["HasOptedOutOfEmail"]
    assert opted_out is False, "a decision made before the grant was pushed"
    assert report.counts.decided_again == 1, report.counts


def test_an_outbox_row_added_after_the_childs_snapshot_is_weighed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[ahead_module.DecisionsAhead]
) -> None:
    """A push for a contact was queued elsewhere (a pending outbox row) after the child read the
    record's outbox: decided again, the run supersedes that row with its own decision, where the
    child's decision, made without it, would have left both to be pushed."""
    queued: list[int] = []

    def queue(ledger: Ledger, subject_id: int, record_id: str) -> None:
        row = {
            "connector": CONNECTOR,
            "object_type": "Contact",
            "record_id": record_id,
            "subject_id": subject_id,
            "fields": orjson.dumps({"HasOptedOutOfEmail": True}).decode(),
            "suppression": True,
            "rule": "test",
            "created_at": ledger.clock(),
            "status": "pending",
            "attempts": 0,
            "action": "update",
        }
        with ledger.engine.begin() as conn:
            queued.append(conn.execute(insert(outbox).values(row).returning(outbox.c.id)).scalar_one())

    with (
        _second_batch_changed(tmp_path, monkeypatch, started, queue) as (report, ledger, _, _contact),
        ledger.engine.connect() as conn,
    ):
        status = conn.execute(select(outbox.c.status).where(outbox.c.id == queued[0])).scalar_one()
    assert status == "superseded", f"the queued row ended {status}: pushed beside the run's own"
    assert report.counts.decided_again == 1, report.counts


def test_the_run_decides_on_alone_when_the_child_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[ahead_module.DecisionsAhead]
) -> None:
    expected = _alone(tmp_path / "alone", monkeypatch)
    with _org() as sandbox:
        ledger, engine = _opened(_config(tmp_path / "ahead", sandbox, monkeypatch, ahead=True))

        def kill() -> None:
            # At once: the child is still starting (it takes half a second to import), so none of
            # its decisions is in the pipe; the run meets a dead process at its next batch.
            assert started, "no process was started to decide ahead"
            os.kill(started[0]._process.pid, signal.SIGKILL)

        _after_first_batch(engine, kill)
        report = engine.run(full=True)
        assert report.status == "succeeded", report.error
        outcome = _outcome(ledger, sandbox)
    assert report.counts.decided_ahead == 0 and report.counts.subjects_created > 3 * BATCH, report.counts
    assert not started[0]._process.is_alive()
    assert outcome == expected


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(word) for word in path.read_text().split()] if path.exists() else []


def _gone(pid: int) -> bool:
    """The process ended (reaped, or a zombie nobody reaps in a container without an init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_killed_run_leaves_no_process_behind_and_the_next_run_ends_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _alone(tmp_path / "alone", monkeypatch)
    with _org() as sandbox:
        path = _config(tmp_path / "ahead", sandbox, monkeypatch, ahead=True)
        ledger = open_ledger(load_config(path), migrate=True)
        held = tmp_path / "failpoints"
        env = holding_env(held, "sync.examine.batch=hold@3")
        run = subprocess.Popen(
            [*sync_command(path), "--full"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until_held(run, held / "sync.examine.batch.held", "its third examined batch")
        children = _children(run.pid)
        assert children, "the run started no process to decide ahead"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 20
        while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(pid) for pid in children), "a process of the killed run lives on"
        env.pop("CONSENTSYNC_FAILPOINTS")
        # The lease of the killed run is taken over once it expires; the next run finishes.
        for _ in range(2):
            rerun = subprocess.run(sync_command(path), env=env, capture_output=True, text=True, timeout=300)
            if rerun.returncode == 0:
                break
            time.sleep(1)
        assert rerun.returncode == 0, rerun.stderr[-800:]
        flags = _org_flags(sandbox)
        ledger.engine.dispose()
    assert flags == expected[0]


def test_a_child_whose_key_changed_under_the_run_stands_down_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[ahead_module.DecisionsAhead]
) -> None:
    """The key the run checked and pinned is the ledger's; the child, a new process, reads the
    config's key again. Changed meanwhile (a rotation), the child compares it with the ledger's
    check and stands down: it does not try to store its own (a write, which waited 30 s for the
    lock the run holds), and the run decides alone what it would have decided."""
    from consentsync.app import KEY_CHECK_SETTING
    from consentsync.config import ERASURE_KEY_ENV
    from consentsync.ledger.schema import ledger_settings

    expected = _alone(tmp_path / "alone", monkeypatch)
    with _org() as sandbox:
        ledger, engine = _opened(_config(tmp_path / "ahead", sandbox, monkeypatch, ahead=True))
        by_name = ledger_settings.c.name == KEY_CHECK_SETTING
        with ledger.engine.connect() as conn:
            check = conn.execute(select(ledger_settings.c.value).where(by_name)).scalar_one()
        monkeypatch.setenv(ERASURE_KEY_ENV, "a-rotated-erasure-key-0123456789")
        began = time.monotonic()
        report = engine.run(full=True)
        took = time.monotonic() - began
        assert report.status == "succeeded", report.error
        outcome = _outcome(ledger, sandbox)
        with ledger.engine.connect() as conn:
            assert conn.execute(select(ledger_settings.c.value).where(by_name)).scalar_one() == check
        ledger.engine.dispose()
    assert started, "no process was started to decide ahead"
    assert report.counts.decided_ahead == 0, report.counts
    assert took < 20, f"the run waited {took:.0f} s"
    assert outcome == expected
