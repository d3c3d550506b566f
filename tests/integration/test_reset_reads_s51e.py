"""``state reset --to`` keeps what the cursor it replaces recorded of the mapping its records
were read under: a mapping changed before the reset is still noticed (the object is read from
its start and a contact nobody edited since has its no learned), and under the same mapping the
read goes from the chosen time, taking what it reads whole, then on from its cursor."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from consentsync_salesforce.sandbox import SalesforceSandbox

from consentsync.ledger.service import Ledger
from consentsync.sync import cursors
from consentsync.sync.engine import RunReport, SyncEngine, SyncOptions
from tests.integration.helpers import sandbox_engine

EMAIL_OPTOUT = """\
  - purpose: email_marketing
    channel: email
    status:
      field: HasOptedOutOfEmail
      direction: pull
      pull: {true: withdrawn, false: null}
"""
DO_NOT_CALL_READ = """\
  - purpose: service
    channel: phone
    status:
      field: DoNotCall
      direction: pull
      pull: {true: withdrawn, false: null}
"""


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox() as sandbox:
        yield sandbox


def _engine(ledger: Ledger, config_path: Path, org: SalesforceSandbox, consents: str) -> SyncEngine:
    mapping = config_path.parent / "contact.yaml"
    mapping.write_text(
        "version: 1\nvendor: salesforce\nobject: Contact\n"
        "identity: {record_id: Id, modstamp: SystemModstamp, email: Email}\n"
        f"consents:\n{consents}"
    )
    connector = {
        "name": "sf",
        "vendor": "salesforce",
        "mappings": [str(mapping)],
        "settings": org.connection_settings(),
    }
    # No look-back window: a contact edited before the last run is behind the cursor.
    return sandbox_engine(
        ledger, config_path, connector, SyncOptions(signpost_lag_seconds=0, lookback_seconds=0)
    )


def _run(engine: SyncEngine) -> RunReport:
    report = engine.run()
    assert report.status == "succeeded", report.error
    return report


def _status(ledger: Ledger, email: str) -> str:
    _uid, state = ledger.decision_for(email, "service", "phone")
    return state.status.value


def _reset(ledger: Ledger, to: datetime) -> None:
    cursors.reset(ledger.engine, "sf", "Contact", to=to, actor="admin@example.com", clock=ledger.clock)


def test_a_mapping_changed_before_a_reset_to_a_time_is_still_applied_to_every_contact(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    org.org.create("Contact", LastName="Ng", Email="ng@example.com", DoNotCall=True)
    org.org.create("Contact", LastName="Ode", Email="ode@example.com")
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT))
    assert _status(ledger, "ng@example.com") != "withdrawn"
    # The admin maps Do Not Call, then moves the cursor to now (after both contacts' stamps).
    engine = _engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ)
    _reset(ledger, datetime.now(UTC) + timedelta(seconds=1))
    report = _run(engine)
    assert report.note is not None and "mapping for Contact changed" in report.note
    assert report.counts.read == 2
    assert _status(ledger, "ng@example.com") == "withdrawn", "the no nobody edited since is learned"
    assert _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ)).counts.read == 0


def test_a_reset_under_the_same_mapping_reads_from_the_chosen_time_then_on_from_its_cursor(
    ledger: Ledger, config_path: Path, org: SalesforceSandbox
) -> None:
    org.org.create("Contact", LastName="Ng", Email="ng@example.com", DoNotCall=True)
    org.org.create("Contact", LastName="Ode", Email="ode@example.com")
    _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ))
    _reset(ledger, datetime.now(UTC) + timedelta(seconds=1))
    report = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ))
    assert (report.counts.read, report.note) == (0, None), "the admin's position is honoured"
    _reset(ledger, datetime(2000, 1, 1, tzinfo=UTC))
    report = _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ))
    assert (report.counts.read, report.note) == (2, None)
    assert _run(_engine(ledger, config_path, org, EMAIL_OPTOUT + DO_NOT_CALL_READ)).counts.read == 0
