"""The connector contract: the tests every connector passes against its sandbox, importable by
any connector's own test suite (like singer-sdk's standard tests). Importing this module imports
pytest; nothing in consentsync imports it at run time.

Use it from a test module of your connector::

    from consentsync.sdk.testing import ConnectorContract
    from consentsync_acme.testing import AcmeHarness

    class TestAcmeContract(ConnectorContract):
        harness_class = AcmeHarness

The harness (:class:`consentsync.sdk.harness.ContractHarness`) starts the connector's sandbox
and acts on it as the CRM's users would; the tests below build the connector through its entry
point and check what every connector promises the sync engine.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from consentsync.sdk.connector import Connector, CrmRecord, Cursor, RecordUpdate, WriteAction
from consentsync.sdk.errors import Action, ConnectorError, Fault
from consentsync.sdk.harness import (
    PERSON_HARNESS_MISSING,
    STANDARD_FAULTS,
    AdoptionHarness,
    ClockSkewHarness,
    ContractHarness,
    DeletionHarness,
    FaultOutcome,
    LateCommitHarness,
    PersonHarness,
    build_connector,
    check_created_at,
    fault_outcomes,
    hostile_texts,
    open_sync_engine,
    write_sync_config,
)

__all__ = ["ConnectorContract", "ConnectorTrustContract", "read_all"]

WRONG_SECRET = "wrong-secret-4c1f9e7a"


def _until() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=5)


def read_all(connector: Connector, harness: ContractHarness, since: Cursor | None = None) -> list[CrmRecord]:
    return list(
        connector.read_changes(harness.object_type, list(harness.read_fields), since or Cursor(), _until())
    )


def _key(record: CrmRecord, harness: ContractHarness) -> tuple[datetime, Any]:
    return record.modstamp, _id_key(harness, record.record_id)


def _as_stored(harness: ContractHarness, text: str) -> str:
    """What the CRM keeps of ``text``: a harness whose CRM stores 3-byte UTF-8 only (MySQL's
    ``utf8``, Vtiger's stock install) sets ``bmp_only`` and gets characters beyond the Basic
    Multilingual Plane back as ``?``, as the real server answers."""
    if getattr(harness, "bmp_only", False):
        return "".join("?" if ord(char) > 0xFFFF else char for char in text)
    return text


def _id_key(harness: ContractHarness, record_id: str) -> Any:
    id_key = getattr(harness, "id_key", None)
    return id_key(record_id) if id_key else record_id


def _links(config: Path, harness: ContractHarness) -> dict[str, Any]:
    """The ledger's links to the harness's object: record id -> row (subject_id, gone_at, ...)."""
    from sqlalchemy import select

    from consentsync.ledger.schema import crm_links

    engine = open_sync_engine(config)
    with engine.ledger.engine.connect() as conn:
        rows = conn.execute(select(crm_links).where(crm_links.c.object_type == harness.object_type)).all()
    engine.ledger.engine.dispose()
    return {row.record_id: row for row in rows}


def _push_entries(config: Path) -> list[dict[str, Any]]:
    from consentsync import audit

    engine = open_sync_engine(config)
    with engine.ledger.engine.connect() as conn:
        entries = [entry["what"] for entry in audit.entries(conn, action="crm.pushed")]
    engine.ledger.engine.dispose()
    return entries


def _crm_evidence(config: Path) -> int:
    """Consent events the ledger holds from the CRM (not from captures or the CLI)."""
    from sqlalchemy import func, select

    from consentsync.ledger.schema import consent_events

    engine = open_sync_engine(config)
    with engine.ledger.engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(consent_events).where(consent_events.c.source == "contract")
        ).scalar_one()
    engine.ledger.engine.dispose()
    return int(count)


def _captured(ledger: Any, emails: list[str], *, granted: bool) -> None:
    """The people subscribe (``granted``) or unsubscribe on the web site, a trusted capture: the
    CRM's email opt-out is then to be cleared, or ticked, whatever the CRM held before."""
    from consentsync.domain import ConsentStatus, Evidence
    from consentsync.ledger.identity import Identity

    now = datetime.now(UTC)
    for email in emails:
        ledger.record(
            Identity(email=email),
            Evidence.from_web_form(ConsentStatus.GRANTED if granted else ConsentStatus.WITHDRAWN, now, now),
        )
    ledger.engine.dispose()


def _set_connector(config: Path, **settings: Any) -> None:
    from consentsync import yamlfile

    data = yamlfile.loads(config.read_text())
    data["connectors"][0].update(settings)
    config.write_text(yamlfile.dumps(data))


def _people(harness: ContractHarness, count: int, prefix: str) -> list[str]:
    if not isinstance(harness, PersonHarness):
        pytest.skip(PERSON_HARNESS_MISSING)
    return [harness.create_person(f"{prefix}.{n}@example.test") for n in range(count)]


def _unsubscribed_people(harness: ContractHarness, config: Path, count: int, prefix: str) -> list[str]:
    """``count`` people in the CRM who all unsubscribed on the web site: whatever the mapping,
    the first sync has an opt-out to push to each of them."""
    people = _people(harness, count, prefix)
    _captured(
        open_sync_engine(config).ledger, [f"{prefix}.{n}@example.test" for n in range(count)], granted=False
    )
    time.sleep(1.1)  # whole-second CRMs read a second only once it is over
    return people


def _a_late_commit_is_read(
    harness: ContractHarness, connector: Connector, tmp_path: Path, *, behind: timedelta | None = None
) -> None:
    """A record begun before a full run and committed after it is read by the next incremental
    run, through the connector's look-back window (with the CRM's clock ``behind`` ours, where
    given); a third run re-reads the window and records nothing twice."""
    assert isinstance(harness, LateCommitHarness)
    _people(harness, 2, "before")
    late = harness.begin_late_person("late.committer@example.test", opted_out=True)
    time.sleep(1.1)  # whole-second CRMs: the late record's second is behind the cursor's
    after = _people(harness, 3, "after")
    time.sleep(1.1)
    config = write_sync_config(harness, tmp_path)
    first = open_sync_engine(config).run(full=True)
    assert first.status == "succeeded", first.error
    links = _links(config, harness)
    # The records after the late one are read, unless the connector stopped its read short of a
    # transaction still open (``Connector.covered_until``: Salesforce, where its Get Updated
    # already covers the late record's minute), which leaves them to the run after the commit.
    assert late not in links and (set(after) <= set(links) or not set(after) & set(links))
    assert _id_key(harness, late) < max(_id_key(harness, i) for i in after), "the late id must sort low"
    harness.commit_late(late)
    time.sleep(1.1)
    second = open_sync_engine(config).run()
    assert second.status == "succeeded", second.error
    clock = f", the CRM's clock {behind} behind ours" if behind else ""
    assert {late, *after} <= set(_links(config, harness)), (
        f"a record committed late, {connector.lookback} look-back{clock}, was never read"
    )
    view = open_sync_engine(config).ledger.subject_view("late.committer@example.test")
    states = {(p["purpose"], p["channel"]): p["status"] for p in view["purposes"]}
    assert states[("email_marketing", "email")] == "withdrawn"
    evidence = _crm_evidence(config)
    third = open_sync_engine(config).run()
    assert third.status == "succeeded", third.error
    assert _crm_evidence(config) == evidence, "re-reading the look-back window created evidence again"
    assert third.counts.evidence_recorded == third.counts.pushes_enqueued == 0
    assert third.counts.read == third.counts.unchanged_records, "a re-read record was taken as changed"


class ConnectorTrustContract:
    """What the sync engine needs from a connector to stay truthful under the conditions real
    CRMs create: changes committed late, pushes stopped half-way, processes killed between the
    CRM's answer and the ledger's commit, records deleted or merged in the CRM. Part of
    :class:`ConnectorContract`."""

    # -- changes committed late ----------------------------------------------------------------

    def test_a_change_committed_late_inside_the_lookback_window_is_read(
        self, harness: ContractHarness, connector: Connector, tmp_path: Path
    ) -> None:
        if not isinstance(harness, LateCommitHarness):
            pytest.skip("the harness lacks begin_late_person/commit_late (LateCommitHarness)")
        _a_late_commit_is_read(harness, connector, tmp_path)

    def test_a_change_committed_late_is_read_when_the_crms_clock_runs_behind(
        self, harness: ContractHarness, connector: Connector, tmp_path: Path
    ) -> None:
        """The CRM stamps changes with its own clock, here further behind ours than the look-back
        window: the engine bounds its reads by the CRM's clock (the Date headers of its answers),
        so the next read's window still starts behind a change committed late."""
        if not isinstance(harness, LateCommitHarness):
            pytest.skip("the harness lacks begin_late_person/commit_late (LateCommitHarness)")
        if not isinstance(harness, ClockSkewHarness):
            pytest.skip("the harness cannot set the CRM's clock off ours (ClockSkewHarness)")
        behind = connector.lookback + timedelta(minutes=10)
        harness.skew_clock(-behind)
        _a_late_commit_is_read(harness, connector, tmp_path, behind=behind)

    # -- pushes: acknowledged call by call ------------------------------------------------------

    def test_write_answers_come_call_by_call_and_nothing_applied_is_held_back(
        self, harness: ContractHarness, connector: Connector
    ) -> None:
        ids = harness.seed(harness.write_batch_size * 2 + 1)
        batches = connector.write_batches([harness.consent_update(record_id, True) for record_id in ids])
        first = next(batches)
        assert 0 < len(first) < len(ids), "the first call's answers came with the whole write's"
        answered = dict(first)
        harness.set_fault("request_limit")
        with pytest.raises(ConnectorError) as raised:
            for batch in batches:
                assert not set(batch) & set(answered), "a position was answered twice"
                answered.update(batch)
        harness.clear_faults()
        assert raised.value.action is Action.RATE_LIMITED
        applied = {i for i, record_id in enumerate(ids) if harness.read_opted_out(record_id)}
        acknowledged = {i for i, result in answered.items() if result.ok}
        assert applied <= acknowledged, (
            f"{len(applied - acknowledged)} writes the CRM applied were never handed to the engine"
        )
        assert acknowledged, "nothing was acknowledged before the limit"

    def _pushes_everyone(self, harness: ContractHarness, config: Path, people: list[str]) -> None:
        """After a clean finish: every record pushed once, audited once, no echo taken as evidence
        (the CRM's evidence is what the interrupted run read, and does not grow), and every one
        of ``people`` opted out in the CRM."""
        count = len(people)
        evidence = _crm_evidence(config)
        for _ in range(2):
            report = open_sync_engine(config).run()
            assert report.status == "succeeded", report.error
        entries = _push_entries(config)
        outbox_ids = [entry["outbox"] for entry in entries]
        assert len(outbox_ids) == len(set(outbox_ids)), "a push was audited twice"
        records = [entry["record"] for entry in entries]
        assert sorted(records) == sorted(set(records)) and len(records) == count, (
            f"{len(records)} push entries for {count} records (an uninterrupted run has one each)"
        )
        assert _crm_evidence(config) == evidence, "the project's own writes, read back, became evidence"
        quiet = open_sync_engine(config).run()
        assert quiet.counts.pushes_enqueued == 0 and quiet.counts.evidence_recorded == 0
        assert all(harness.read_opted_out(record_id) for record_id in people)

    def test_a_push_stopped_between_two_batches_ends_like_an_uninterrupted_run(
        self, harness: ContractHarness, tmp_path: Path
    ) -> None:
        config = write_sync_config(harness, tmp_path)
        from consentsync.sdk import registry

        # Two calls and more for each share written side by side: the stop comes between calls.
        count = harness.write_batch_size * 2 * max(1, registry.load(harness.vendor).write_concurrency) + 1
        people = _unsubscribed_people(harness, config, count, "stopped")
        engine = open_sync_engine(config)

        def stop_after_a_batch(report: Any) -> None:
            if report.stage == "pushing" and report.counts.pushed:
                engine.stop_requested.set()

        engine.progress = stop_after_a_batch
        stopped = engine.run(full=True)
        assert stopped.status == "stopped", f"{stopped.status}: {stopped.error}"
        assert 0 < stopped.counts.pushed < len(people), stopped.counts
        assert len(_push_entries(config)) == stopped.counts.pushed, "pushes done were not audited"
        self._pushes_everyone(harness, config, people)

    def test_a_process_killed_between_the_crms_answer_and_the_commit_loses_nothing(
        self, harness: ContractHarness, tmp_path: Path
    ) -> None:
        import os
        import subprocess
        import sys

        config = write_sync_config(harness, tmp_path)
        people = _unsubscribed_people(harness, config, harness.write_batch_size * 2 + 1, "killed")
        command = [str(Path(sys.executable).parent / "consentsync"), "--config", str(config)]
        env = {**os.environ, "CONSENTSYNC_FAILPOINTS": "sync.push.answered=kill@2"}
        env.pop("CONSENTSYNC_CONFIG", None)
        writes = harness.write_calls()
        killed = subprocess.run(
            [*command, "sync", "contract", "--full"], env=env, capture_output=True, timeout=300
        )
        assert killed.returncode == -9, (
            f"the failpoint did not fire: {killed.returncode} {killed.stderr[-400:]!r}"
        )
        # Killed once the CRM had answered a second write call: the CRM holds writes whose
        # answers the ledger never committed. Whether the first call's answer was committed
        # before that depends on timing: answers that are in when the run looks are committed
        # together, so both may still be uncommitted.
        assert harness.write_calls() - writes >= 2, "the CRM had not answered two write calls"
        done_before = len(_push_entries(config))
        assert done_before < len(people), "every answer was committed before the kill"
        self._pushes_everyone(harness, config, people)

    # -- adoption: observe, plan, apply, the push guard -----------------------------------------

    def test_observe_writes_nothing_and_an_applied_plan_writes_exactly_it(
        self, harness: ContractHarness, tmp_path: Path
    ) -> None:
        from consentsync.sync.plan import Plan

        config = write_sync_config(harness, tmp_path)
        _set_connector(config, mode="observe")
        people = _unsubscribed_people(harness, config, 3, "observed")
        writes = harness.write_calls()
        observed = open_sync_engine(config).run(full=True)
        assert observed.status == "succeeded", observed.error
        assert harness.write_calls() == writes, "observe mode wrote to the CRM"
        assert not any(harness.read_opted_out(record_id) for record_id in people)
        assert observed.counts.pushes_held >= len(people) and observed.counts.would_push
        planned = open_sync_engine(config).run(dry_run=True).plan
        assert planned is not None and {i.record_id for i in planned.items} >= set(people)
        applied = open_sync_engine(config).run(apply_plan=Plan.from_json(planned.to_json()))
        assert applied.status == "succeeded", applied.error
        assert applied.counts.pushed == len(planned.items)
        assert all(harness.read_opted_out(record_id) for record_id in people)

    def test_an_existing_org_is_observed_unchanged_and_changed_exactly_as_planned(
        self, harness: ContractHarness, tmp_path: Path
    ) -> None:
        """The shipped mappings against an org with years of data: observing changes nothing in
        the CRM, byte for byte; the adoption report, the plan and what apply changes agree."""
        from consentsync.sync.plan import Plan

        if not isinstance(harness, AdoptionHarness):
            pytest.skip("the harness lacks seed_existing_org/store_state (AdoptionHarness)")
        emails = harness.seed_existing_org()
        assert len(emails) >= 20, "an existing org has people in it"
        config = write_sync_config(harness, tmp_path)
        _set_connector(config, mode="observe", push_guard={"max_records": 500, "max_share": 0.05})
        # Two people unsubscribe on the web site meanwhile: the plan has something to push.
        _captured(open_sync_engine(config).ledger, emails[:2], granted=False)
        time.sleep(1.1)
        before = harness.store_state()
        observed = open_sync_engine(config).run(full=True)
        assert observed.status == "succeeded", observed.error
        assert harness.store_state() == before, "observing changed the CRM"
        planned = open_sync_engine(config).run(dry_run=True).plan
        assert planned is not None and planned.items, "nothing to push for two people who unsubscribed"
        assert planned.changes() == observed.counts.would_push, "the plan and the adoption report disagree"
        applied = open_sync_engine(config).run(apply_plan=Plan.from_json(planned.to_json()))
        assert applied.status == "succeeded", applied.error
        assert applied.counts.pushed == len(planned.items)
        after = harness.store_state()
        changed = {key for key in after.keys() | before.keys() if after.get(key) != before.get(key)}
        written = {f"{item.object_type}/{item.record_id}" for item in planned.items}
        assert changed == written, (
            f"changed {sorted(changed - written)[:5]}, planned {sorted(written - changed)[:5]}"
        )
        # Two-way with a guard smaller than the org's pending pushes: held, nothing written.
        _set_connector(config, mode="two_way", push_guard={"max_records": 0, "max_share": None})
        _captured(open_sync_engine(config).ledger, emails[2:4], granted=False)
        held = open_sync_engine(config).run()
        assert held.status == "held", f"{held.status}: {held.error}"
        assert harness.store_state() == after

    def test_the_push_guard_holds_a_run_that_would_push_too_much(
        self, harness: ContractHarness, tmp_path: Path
    ) -> None:
        config = write_sync_config(harness, tmp_path)
        _set_connector(config, mode="two_way", push_guard={"max_records": 2, "max_share": None})
        people = _unsubscribed_people(harness, config, 3, "guarded")
        writes = harness.write_calls()
        held = open_sync_engine(config).run(full=True)
        assert held.status == "held" and held.error and "push guard" in held.error
        assert harness.write_calls() == writes and held.counts.pushed == 0
        assert not any(harness.read_opted_out(record_id) for record_id in people)

    # -- records deleted or merged in the CRM ---------------------------------------------------

    def test_a_record_deleted_in_the_crm_is_marked_gone_and_never_pushed_to(
        self, harness: ContractHarness, connector: Connector, tmp_path: Path
    ) -> None:
        if not isinstance(harness, DeletionHarness):
            pytest.skip("the harness lacks delete_record/merge_records (DeletionHarness)")
        kept, deleted = _people(harness, 2, "deletion")
        config = write_sync_config(harness, tmp_path)
        # Both opted in, so that the erasure has a push to make.
        _captured(
            open_sync_engine(config).ledger,
            ["deletion.0@example.test", "deletion.1@example.test"],
            granted=True,
        )
        first = open_sync_engine(config).run(full=True)
        assert first.status == "succeeded", first.error
        pushed_before = {entry["outbox"] for entry in _push_entries(config)}
        time.sleep(1.1)
        harness.delete_record(deleted)
        time.sleep(1.1)
        engine = open_sync_engine(config)
        second = engine.run()
        assert second.status == "succeeded", second.error
        links = _links(config, harness)
        assert links[deleted].gone_at is not None, "the deletion did not reach the ledger"
        assert links[kept].gone_at is None
        # The person and their history stay; a later objection is pushed to the live record only.
        view = engine.ledger.subject_view("deletion.1@example.test")
        assert [link["status"] for link in view["crm_records"]] == ["gone"], view["crm_records"]
        engine.ledger.erase("deletion.1@example.test", reason="contract test")
        engine.ledger.erase("deletion.0@example.test", reason="contract test")
        third = open_sync_engine(config).run()
        assert third.status == "succeeded", third.error
        later = [e for e in _push_entries(config) if e["outbox"] not in pushed_before]
        assert [e for e in later if e["record"] == kept], "the erasure was not pushed to the live record"
        assert not [e for e in later if e["record"] == deleted], "a push was sent to a deleted record"
        if harness.can_merge:
            survivor, merged = _people(harness, 2, "merge")
            time.sleep(1.1)
            assert open_sync_engine(config).run().status == "succeeded"
            time.sleep(1.1)
            harness.merge_records(survivor, merged)
            time.sleep(1.1)
            assert open_sync_engine(config).run().status == "succeeded"
            links = _links(config, harness)
            assert links[merged].gone_at is not None and links[merged].merged_into == survivor
            assert links[survivor].gone_at is None

    def test_a_write_to_a_record_deleted_in_the_crm_answers_gone(
        self, harness: ContractHarness, connector: Connector
    ) -> None:
        """A CRM user deleted the record before a sync listed it: the write says it is gone (the
        engine marks it so), and the write beside it goes through."""
        if not isinstance(harness, DeletionHarness):
            pytest.skip("the harness lacks delete_record/merge_records (DeletionHarness)")
        kept, deleted = _people(harness, 2, "write-gone")
        harness.delete_record(deleted)
        results = connector.write([harness.consent_update(kept, True), harness.consent_update(deleted, True)])
        assert [(r.record_id, r.ok, r.gone) for r in results] == [
            (kept, True, False),
            (deleted, False, True),
        ], results
        assert harness.read_opted_out(kept) is True
        (text,) = connector.write([harness.text_update(deleted, "written after the deletion")])
        assert (text.ok, text.gone) == (False, True), text

    def test_the_delete_action_deletes_the_record(
        self, harness: ContractHarness, connector: Connector
    ) -> None:
        if not connector.can_delete:
            pytest.skip(f"the {connector.vendor} connector cannot delete (can_delete is False)")
        ids = harness.seed(3)
        results = connector.write([RecordUpdate(harness.object_type, ids[1], {}, WriteAction.DELETE)])
        assert [r.ok for r in results] == [True], results
        assert set(harness.record_ids()) == {ids[0], ids[2]}

    # -- erasure ---------------------------------------------------------------------------------

    def test_reading_an_erased_persons_record_never_restores_personal_data(
        self, harness: ContractHarness, tmp_path: Path
    ) -> None:
        (record_id,) = _people(harness, 1, "erased")
        email = "erased.0@example.test"
        config = write_sync_config(harness, tmp_path)
        assert open_sync_engine(config).run(full=True).status == "succeeded"
        engine = open_sync_engine(config)
        engine.ledger.erase(email, reason="contract test")
        time.sleep(1.1)
        assert open_sync_engine(config).run().status == "succeeded"  # pushes the suppression
        time.sleep(1.1)
        harness.change(record_id)  # a CRM user edits the record
        time.sleep(1.1)
        assert open_sync_engine(config).run(full=True).status == "succeeded"
        with engine.ledger.engine.connect() as conn:
            stored = [row[0] for row in conn.exec_driver_sql("SELECT value FROM subject_identifiers")]
        assert email not in stored, "the sync wrote the erased address back into the ledger"
        assert record_id in _links(config, harness), "the erased person's CRM link was lost"
        assert harness.read_opted_out(record_id) is True, "the erased person is not suppressed in the CRM"

    def test_a_record_read_says_when_the_crm_created_it(self, harness: ContractHarness) -> None:
        # An erasure's delete or anonymise reaches a record first read after it only where the
        # CRM created it before (``CrmRecord.created_at``; ``reports_created`` False skips).
        connector = build_connector(harness)
        try:
            skipped = check_created_at(harness, connector)
        finally:
            connector.close()
        if skipped:
            pytest.skip(skipped)


class ConnectorContract(ConnectorTrustContract):
    """Subclass it in a test module named ``Test...`` and set :attr:`harness_class` (a
    :class:`~consentsync.sdk.harness.ContractHarness` made with no arguments), or override
    :meth:`make_harness`."""

    harness_class: ClassVar[type[Any] | None] = None

    def make_harness(self) -> ContractHarness:
        if self.harness_class is None:
            raise TypeError(f"{type(self).__name__} sets no harness_class and overrides no make_harness")
        return self.harness_class()

    @pytest.fixture
    def harness(self) -> Iterator[ContractHarness]:
        harness = self.make_harness()
        assert isinstance(harness, ContractHarness), "the harness lacks part of the ContractHarness protocol"
        harness.start()
        try:
            yield harness
        finally:
            harness.stop()

    @pytest.fixture
    def connector(self, harness: ContractHarness) -> Iterator[Connector]:
        connector = build_connector(harness)
        yield connector
        connector.close()

    # -- connection check ----------------------------------------------------------------------

    def test_check_succeeds_against_the_sandbox(self, harness: ContractHarness, connector: Connector) -> None:
        before = harness.api_calls()
        connector.check()
        assert harness.api_calls() > before, "check() made no call to the CRM"

    def test_check_fails_clearly_on_bad_credentials(self, harness: ContractHarness) -> None:
        from consentsync.sdk import registry

        connector = registry.load(harness.vendor)("contract", harness.bad_credentials_settings(WRONG_SECRET))
        try:
            with pytest.raises(ConnectorError) as raised:
                connector.check()
        finally:
            connector.close()
        error = raised.value
        assert error.action is Action.FAIL, f"bad credentials must fail the run, not {error.action}"
        assert error.rule.fault is Fault.CONFIG, "bad credentials are the admin's to fix (Fault.CONFIG)"
        assert WRONG_SECRET not in str(error), "the error message leaks the secret"
        assert str(error).strip(), "the error says nothing"

    # -- reading -------------------------------------------------------------------------------

    def test_full_read_returns_every_record_once_in_cursor_order(
        self, harness: ContractHarness, connector: Connector
    ) -> None:
        harness.seed(harness.page_size * 2 + 7)
        records = read_all(connector, harness)
        ids = [r.record_id for r in records]
        assert len(ids) == len(set(ids)), "a record came twice"
        assert set(ids) == set(harness.record_ids()), "records missing from the full read"
        keys = [_key(r, harness) for r in records]
        assert keys == sorted(keys), "records are not in (modstamp, id) order"
        assert all(r.object_type == harness.object_type for r in records)
        assert all(r.modstamp.tzinfo is not None for r in records), "modstamps must be aware (UTC)"

    def test_incremental_read_inside_a_shared_timestamp_loses_and_repeats_nothing(
        self, harness: ContractHarness, connector: Connector
    ) -> None:
        harness.seed(5)
        harness.seed(harness.page_size * 2 + 5, shared_modstamp=True)
        harness.seed(5)
        everything = read_all(connector, harness)
        groups: dict[datetime, list[int]] = {}
        for index, record in enumerate(everything):
            groups.setdefault(record.modstamp, []).append(index)
        crowded = max(groups.values(), key=len)
        assert len(crowded) >= harness.page_size * 2 + 5, "the shared modstamp did not survive the read"
        # Resume from a record past the first page boundary inside the crowded second.
        for position in (crowded[harness.page_size + 1], crowded[0], crowded[-1]):
            stop = everything[position]
            rest = read_all(connector, harness, Cursor(stop.modstamp, stop.record_id))
            assert [r.record_id for r in rest] == [r.record_id for r in everything[position + 1 :]]

    def test_changes_after_the_cursor_are_read_once_and_then_nothing(
        self, harness: ContractHarness, connector: Connector
    ) -> None:
        ids = harness.seed(harness.page_size + 3)
        everything = read_all(connector, harness)
        last = everything[-1]
        cursor = Cursor(last.modstamp, last.record_id)
        assert read_all(connector, harness, cursor) == [], "a read with no change returned records"
        changed = [ids[0], ids[len(ids) // 2], ids[-1]]
        for record_id in changed:
            harness.change(record_id)
        again = read_all(connector, harness, cursor)
        assert sorted(r.record_id for r in again) == sorted(changed)
        newest = again[-1]
        assert read_all(connector, harness, Cursor(newest.modstamp, newest.record_id)) == []

    def test_signpost_excludes_later_changes(self, harness: ContractHarness, connector: Connector) -> None:
        harness.seed(3)
        past = datetime.now(UTC) - timedelta(days=400)
        records = connector.read_changes(harness.object_type, list(harness.read_fields), Cursor(), past)
        assert list(records) == []

    # -- writing -------------------------------------------------------------------------------

    def test_writes_give_one_result_per_update_in_order(
        self, harness: ContractHarness, connector: Connector
    ) -> None:
        ids = harness.seed(harness.write_batch_size + 5)
        failing = {ids[1], ids[harness.write_batch_size + 2]}
        harness.fail_writes(sorted(failing))
        updates = [harness.consent_update(record_id, True) for record_id in ids]
        results = connector.write(updates)
        assert [r.record_id for r in results] == ids, "results are not one per update, in order"
        for record_id, result in zip(ids, results, strict=True):
            if record_id in failing:
                assert not result.ok and result.error_code, f"{record_id}: a failed write reported as done"
            else:
                assert result.ok, f"{record_id}: {result.error_code} {result.message}"
                assert harness.read_opted_out(record_id) is True
        assert connector.write([]) == []

    def test_field_writes_are_batched(self, harness: ContractHarness, connector: Connector) -> None:
        ids = harness.seed(harness.write_batch_size * 2 + 1)
        before = harness.write_calls()
        results = connector.write([harness.text_update(rid, f"batched {rid}") for rid in ids])
        assert all(r.ok for r in results), [(r.error_code, r.message) for r in results if not r.ok]
        calls = harness.write_calls() - before
        assert calls <= 3, f"{len(ids)} updates took {calls} writes (batches of {harness.write_batch_size})"
        assert harness.read_text(ids[-1]) == f"batched {ids[-1]}"

    def test_writes_side_by_side_apply_every_update_once(
        self, harness: ContractHarness, connector: Connector
    ) -> None:
        """A push group is cut by ``write_shares`` and its shares written at once, as the engine
        does (``write_concurrency``, or ``push_concurrency`` in the config: any connector may be
        asked to): every update in exactly one share, every one applied and answered once. Each
        time by a connector not yet logged in, its threads let go together: they share one
        login (``sdk.SharedLogin``), as two Vtiger logins at once refuse each other."""
        ids = harness.seed(harness.write_batch_size * 2 + 1)
        for trial, writer in enumerate([connector, build_connector(harness), build_connector(harness)]):
            text = f"side by side {trial}"
            updates = [harness.text_update(record_id, f"{text} {record_id}") for record_id in ids]
            wanted = max(2, writer.write_concurrency)
            shares = writer.write_shares(updates, wanted)
            assert 1 <= len(shares) <= wanted, f"{len(shares)} shares asked {wanted}"
            assert sorted(position for share in shares for position in share) == list(range(len(updates)))
            try:
                written = _write_at_once(writer, updates, shares)
            finally:
                if writer is not connector:
                    writer.close()
            for share, results in zip(shares, written, strict=True):
                assert [r.record_id for r in results] == [ids[p] for p in share]
                assert all(r.ok for r in results), [(r.error_code, r.message) for r in results if not r.ok]
            assert {record_id: harness.read_text(record_id) for record_id in ids} == {
                record_id: f"{text} {record_id}" for record_id in ids
            }

    # -- faults --------------------------------------------------------------------------------

    @pytest.mark.parametrize("fault", sorted(STANDARD_FAULTS))
    def test_fault_is_survived_or_stops_cleanly(
        self, harness: ContractHarness, connector: Connector, fault: str
    ) -> None:
        harness.seed(harness.page_size + 2)
        expected = set(harness.record_ids())
        connector.check()
        injected = harness.faults_injected()
        harness.set_fault(fault)
        outcome = fault_outcomes(harness)[fault]
        if outcome is FaultOutcome.SURVIVES:
            records = read_all(connector, harness)
            assert {r.record_id for r in records} == expected
            assert len(records) == len(expected)
            assert harness.faults_injected() > injected, f"the sandbox injected no {fault}"
        else:
            with pytest.raises(ConnectorError) as raised:
                read_all(connector, harness)
            assert raised.value.action is Action.RATE_LIMITED, (
                f"{fault} must stop the run cleanly (Action.RATE_LIMITED), not {raised.value.action}"
            )
        harness.clear_faults()

    # -- hostile values ------------------------------------------------------------------------

    def test_hostile_values_round_trip_and_never_break_a_query(
        self, harness: ContractHarness, connector: Connector
    ) -> None:
        texts = hostile_texts(harness.text_max_length)
        created = {harness.create_with_text(text): text for text in texts}
        harness.seed(3)
        records = read_all(connector, harness)
        read = {r.record_id: r.fields.get(harness.text_field) for r in records}
        for record_id, text in created.items():
            assert read.get(record_id) == _as_stored(harness, text), (
                f"{text!r} came back as {read.get(record_id)!r}"
            )
        targets = list(created)
        results = connector.write(
            [harness.text_update(rid, text) for rid, text in zip(targets, reversed(texts), strict=True)]
        )
        assert all(r.ok for r in results), [(r.error_code, r.message) for r in results if not r.ok]
        for record_id, text in zip(targets, reversed(texts), strict=True):
            assert harness.read_text(record_id) == _as_stored(harness, text)
        # A cursor naming a hostile id is answered or refused as a ConnectorError, never a crash.
        stamp = records[0].modstamp
        for text in texts[:6]:
            with contextlib.suppress(ConnectorError):
                read_all(connector, harness, Cursor(stamp, text))

    # -- through the sync engine ---------------------------------------------------------------

    def test_two_syncs_with_no_change_write_nothing(self, harness: ContractHarness, tmp_path: Path) -> None:
        harness.seed(harness.page_size + 4)
        config = write_sync_config(harness, tmp_path)
        first = open_sync_engine(config).run(full=True)
        assert first.status == "succeeded", first.error
        assert first.counts.read >= harness.page_size + 4
        second = open_sync_engine(config).run()
        assert second.status == "succeeded", second.error
        assert (second.counts.evidence_recorded, second.counts.pushes_enqueued) == (0, 0)
        writes = harness.write_calls()
        third = open_sync_engine(config).run()
        fourth = open_sync_engine(config).run()
        assert third.status == fourth.status == "succeeded"
        assert harness.write_calls() == writes, "syncs with no change wrote to the CRM"
        # The look-back window is read again; every record in it is recognised as already seen.
        assert third.counts.read == third.counts.unchanged_records
        assert fourth.counts.read == fourth.counts.unchanged_records
        assert third.counts.pushes_enqueued == fourth.counts.pushes_enqueued == 0

    def test_a_withdrawal_in_the_crm_reaches_the_ledger(
        self, harness: ContractHarness, tmp_path: Path
    ) -> None:
        from consentsync.domain import ConsentStatus, Evidence
        from consentsync.ledger.identity import Identity

        if not isinstance(harness, PersonHarness):
            pytest.skip(PERSON_HARNESS_MISSING)
        email = "withdraws.later@example.test"
        record_id = harness.create_person(email)
        config = write_sync_config(harness, tmp_path)
        engine = open_sync_engine(config)
        now = datetime.now(UTC)
        engine.ledger.record(Identity(email=email), Evidence.from_web_form(ConsentStatus.GRANTED, now, now))
        first = engine.run(full=True)
        assert first.status == "succeeded", first.error
        assert harness.read_opted_out(record_id) is False, "a person who opted in was opted out"
        # CRMs stamping whole seconds: the change lands in a second of its own, and the sync runs
        # after it (a connector may leave the current second to the next run).
        time.sleep(1.1)
        harness.opt_out(record_id)
        time.sleep(1.1)
        second = open_sync_engine(config).run()
        assert second.status == "succeeded", second.error
        states = {(s["purpose"], s["channel"]): s for s in engine.ledger.subject_view(email)["purposes"]}
        assert states[("email_marketing", "email")]["status"] == "withdrawn"
        assert harness.read_opted_out(record_id) is True

    def test_what_the_ledger_pushes_reads_back_as_its_own_write(
        self, harness: ContractHarness, tmp_path: Path
    ) -> None:
        """An opt-in and then a withdrawal pushed to a person's record are read again by the next
        syncs (the push moved its modstamp) and recognised there as this project's own writes:
        no evidence, no push, no write call. A CRM that records a write with values of its own (a
        legal basis, a status of its own) says so in ``Connector.as_read_back``."""
        from consentsync.domain import ConsentStatus, Evidence
        from consentsync.ledger.identity import Identity

        if not isinstance(harness, PersonHarness):
            pytest.skip(PERSON_HARNESS_MISSING)
        email = "pushed.to@example.test"
        record_id = harness.create_person(email)
        config = write_sync_config(harness, tmp_path)
        time.sleep(1.1)  # a connector may leave the current second to the next run
        first = open_sync_engine(config).run(full=True)  # the person as the CRM shows them
        assert first.status == "succeeded", first.error
        ledger = open_sync_engine(config).ledger
        for status in (ConsentStatus.GRANTED, ConsentStatus.WITHDRAWN):
            now = datetime.now(UTC)
            captured = Evidence.from_web_form(status, now - timedelta(minutes=5), now, notice_version="v1")
            ledger.record(Identity(email=email), captured)
            pushed = open_sync_engine(config).run()
            assert pushed.status == "succeeded", pushed.error
            assert harness.read_opted_out(record_id) is (status is ConsentStatus.WITHDRAWN)
            time.sleep(1.1)  # whole-second stamps: what the push changed is read by the next run
            history = ledger.subject_view(email)["history"]
            writes = harness.write_calls()
            for _ in range(2):
                again = open_sync_engine(config).run()
                assert again.status == "succeeded", again.error
                counts = again.counts
                assert (counts.evidence_recorded, counts.pushes_enqueued) == (0, 0), status
            read_as_evidence = f"our own {status.value} push was read back as evidence"
            assert ledger.subject_view(email)["history"] == history, read_as_evidence
            assert harness.write_calls() == writes

    def test_sync_stopped_by_the_request_limit_resumes_where_it_stopped(
        self, harness: ContractHarness, tmp_path: Path
    ) -> None:
        ids = harness.seed(harness.page_size * 2 + 3)
        config = write_sync_config(harness, tmp_path)
        harness.set_fault("request_limit")
        stopped = open_sync_engine(config).run(full=True)
        assert stopped.status == "stopped", f"{stopped.status}: {stopped.error}"
        harness.clear_faults()
        resumed = open_sync_engine(config).run()
        assert resumed.status == "succeeded", resumed.error
        assert stopped.counts.read + resumed.counts.read >= len(ids)
        from sqlalchemy import func, select

        from consentsync.ledger.schema import crm_links

        engine = open_sync_engine(config)
        with engine.ledger.engine.connect() as conn:
            linked = conn.execute(
                select(func.count(func.distinct(crm_links.c.record_id))).where(
                    crm_links.c.object_type == harness.object_type
                )
            ).scalar_one()
        assert linked == len(ids), "records were lost between the stopped run and the next"


def _write_at_once(connector: Connector, updates: list[RecordUpdate], shares: list[list[int]]) -> list[Any]:
    """Each share of ``updates`` written by a thread of its own, the threads let go together."""
    start = threading.Barrier(len(shares))

    def write_share(share: list[int]) -> Any:
        start.wait()
        return connector.write([updates[position] for position in share])

    with ThreadPoolExecutor(len(shares)) as pool:
        return list(pool.map(write_share, shares))
