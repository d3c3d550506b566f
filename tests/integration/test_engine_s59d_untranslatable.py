"""A record holding a value its mapping cannot translate, through the sync engine, on SQLite and
PostgreSQL against a scripted CRM (docs/policy.md, "Event times and input limits"): its no is
recorded and the record quarantined for the value alone (counted, named); a grant whose basis
cannot be named is held back until the mapping names it, when the run reads every record again;
a record with nothing else to say waits whole, unlinked, as it always did."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from consentsync.ledger.schema import crm_links
from consentsync.ledger.service import Ledger
from consentsync.mapping import parse_mapping
from consentsync.sdk import CrmRecord, Cursor
from consentsync.sync.engine import SyncEngine, SyncOptions
from tests.conftest import Clock
from tests.integration.helpers import mapping_text
from tests.integration.test_clock_s51b_regulator import SkewedCrm, _reasons, _status

CONSENTS = """\
  - purpose: email_marketing
    channel: email
    status: {field: optout, direction: pull, pull: {true: withdrawn, false: null}}
    basis: {field: basis, direction: pull, pull: {consent: consent, LI: legitimate_interests}}
  - purpose: profiling
    channel: email
    status: {field: profiled, direction: pull, pull: {true: granted, false: null}}
    basis: {field: basis, direction: pull, pull: {consent: consent, LI: legitimate_interests}}
"""


def _engine(ledger: Ledger, config_path: Path, crm: SkewedCrm, *, named: bool = False) -> SyncEngine:
    consents = CONSENTS.replace("LI: legitimate_interests", "LI: legitimate_interests, B2B: contract")
    text = mapping_text("scripted", "thing", ("id", "modifiedon", "email"), consents if named else CONSENTS)
    return SyncEngine(
        ledger,
        crm,
        [parse_mapping(text, config_path.parent / "thing.yaml")],
        SyncOptions(signpost_lag_seconds=0),
    )


def test_a_no_is_recorded_and_a_grant_on_an_unnamed_basis_held_back_until_the_mapping_names_it(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    crm = SkewedCrm(clock, ahead=timedelta(0))
    crm.put("r1", "mixed@example.com", optout=True, profiled=True, basis="B2B")
    report = _engine(ledger, config_path, crm).run()
    assert report.status == "succeeded"
    assert _status(ledger, "mixed@example.com", "email_marketing") == ("withdrawn", True)
    assert _status(ledger, "mixed@example.com", "profiling")[0] != "granted"
    # Quarantined once, for the value (two consents read it): counted, so the run exits 4.
    [reason] = _reasons(ledger)
    assert "field basis: cannot translate 'B2B'" in reason
    assert report.counts.quarantined == 1
    # The mapping names the value: every record is read again, the grant recorded.
    clock.advance(minutes=1)
    assert _engine(ledger, config_path, crm, named=True).run().status == "succeeded"
    assert _status(ledger, "mixed@example.com", "profiling") == ("granted", False)
    assert _status(ledger, "mixed@example.com", "email_marketing") == ("withdrawn", True)


def test_a_record_whose_only_value_is_a_grant_on_an_unnamed_basis_waits_whole(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    crm = SkewedCrm(clock, ahead=timedelta(0))
    crm.put("r1", "grant@example.com", profiled=True, basis="B2B")
    report = _engine(ledger, config_path, crm).run()
    assert report.status == "succeeded" and report.counts.quarantined == 1
    assert len(_reasons(ledger)) == 1
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(crm_links)).scalar_one() == 0


class _DeletingCrm(SkewedCrm):
    """The scripted CRM, whose deleted records come with their last values (a recycle bin)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, ahead=timedelta(0))
        self.deleted: set[str] = set()

    def read_changes(
        self, object_type: str, fields: Sequence[str], since: Cursor, until: datetime
    ) -> Iterator[CrmRecord]:
        for record in super().read_changes(object_type, fields, since, until):
            yield replace(record, deleted=True) if record.record_id in self.deleted else record


def test_a_deleted_records_last_no_is_kept_beside_a_value_the_mapping_cannot_translate(
    ledger: Ledger, config_path: Path, clock: Clock
) -> None:
    """The person ticks the opt-out and a user sets a legal basis the mapping does not name, then
    the record is deleted before any sync read it again: its last no is still the person's
    (``_keep_the_last_no``), and the record is quarantined for the value, as a live one is."""
    crm = _DeletingCrm(clock)
    crm.put("r1", "last@example.com", profiled=True, basis="consent")
    assert _engine(ledger, config_path, crm).run().status == "succeeded"
    clock.advance(minutes=1)
    crm.put("r1", "last@example.com", optout=True, profiled=True, basis="B2B")
    crm.deleted.add("r1")
    report = _engine(ledger, config_path, crm).run()
    assert report.status == "succeeded"
    assert _status(ledger, "last@example.com", "email_marketing") == ("withdrawn", True)
    [reason] = _reasons(ledger)
    assert "field basis: cannot translate 'B2B'" in reason
