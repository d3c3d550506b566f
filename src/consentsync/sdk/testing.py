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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from consentsync.sdk.connector import Connector, CrmRecord, Cursor
from consentsync.sdk.errors import Action, ConnectorError, Fault
from consentsync.sdk.harness import (
    STANDARD_FAULTS,
    ContractHarness,
    FaultOutcome,
    build_connector,
    fault_outcomes,
    hostile_texts,
    open_sync_engine,
    write_sync_config,
)

__all__ = ["ConnectorContract", "read_all"]

WRONG_SECRET = "wrong-secret-4c1f9e7a"


def _until() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=5)


def read_all(connector: Connector, harness: ContractHarness, since: Cursor | None = None) -> list[CrmRecord]:
    return list(
        connector.read_changes(harness.object_type, list(harness.read_fields), since or Cursor(), _until())
    )


def _key(record: CrmRecord, harness: ContractHarness) -> tuple[datetime, Any]:
    id_key = getattr(harness, "id_key", None)
    return record.modstamp, id_key(record.record_id) if id_key else record.record_id


class ConnectorContract:
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
            assert read.get(record_id) == text, f"{text!r} came back as {read.get(record_id)!r}"
        targets = list(created)
        results = connector.write(
            [harness.text_update(rid, text) for rid, text in zip(targets, reversed(texts), strict=True)]
        )
        assert all(r.ok for r in results), [(r.error_code, r.message) for r in results if not r.ok]
        for record_id, text in zip(targets, reversed(texts), strict=True):
            assert harness.read_text(record_id) == text
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
        assert (third.counts.read, fourth.counts.read) == (0, 0)
        assert third.counts.pushes_enqueued == fourth.counts.pushes_enqueued == 0

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
