"""Dynamics (Customer Insights - Journeys): the Opted out consent row consentsync created for a
person's no stays consentsync's own write when someone else changes only what surrounds its value
(its source, its reason description, its state), as long as the row's audit history shows the
value never changed. Before, any such edit made the row "the person's withdrawal", observed then:
it outranked the newer, trusted opt-in the person gave since, and travelled to every CRM
(black-box finding bb59b F1). A change of the value itself (the person in a preference center) is
still theirs, and so is a row whose history cannot tell."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from consentsync_dynamics.sandbox.server import DynamicsSandbox

from consentsync.domain import ConsentStatus
from consentsync.ledger.identity import Identity
from consentsync.ledger.service import Ledger
from tests.conftest import SQLITE_ONLY
from tests.integration.helpers import consent_value
from tests.integration.test_dynamics_consent_rows import OPTED_IN
from tests.integration.test_dynamics_journeys_rows import CONSENTS, _contact, _rows, _run, _said, dv  # noqa: F401

pytestmark = SQLITE_ONLY

MARKETER = "aaaaaaaa-0000-4000-8000-00000000beef"
LOADED = 534120003  # msdynmkt_source: Loaded


def _audited(dv: DynamicsSandbox, *, value: bool = True) -> None:  # noqa: F811
    dv.environment.auditing = True
    table = dv.environment.tables[CONSENTS]
    table.audited = True
    if not value:
        table.columns["msdynmkt_value"] = replace(table.columns["msdynmkt_value"], audited=False)


def _state(ledger: Ledger, email: str) -> ConsentStatus:
    return ledger.decision_for(email, "email_marketing", "email")[1].status


def _own_row_after_a_newer_opt_in(ledger: Ledger, config_path: Path, dv: DynamicsSandbox, email: str) -> str:  # noqa: F811
    """The person's no creates consentsync's Opted out row; they then opt in again on the web form
    (trusted, newer): the ledger says granted, the row still says Opted out (never written back)."""
    _contact(dv, email)
    _run(ledger, config_path, dv, full=True)
    _said(ledger, email, ConsentStatus.WITHDRAWN)
    _run(ledger, config_path, dv)
    (row,) = _rows(dv, email)
    time.sleep(1.1)  # the opt-in is newer than the no, in whole seconds
    now = datetime.now(UTC)
    ledger.record(Identity(email=email), consent_value(ConsentStatus.GRANTED, now, now, notice_version="v1"))
    _run(ledger, config_path, dv)
    assert _state(ledger, email) is ConsentStatus.GRANTED
    time.sleep(1.1)  # the edit below is stamped after the row's creation
    return str(row["msdynmkt_contactpointconsent4id"])


@pytest.mark.parametrize(
    "edit",
    [
        {"msdynmkt_source": LOADED},
        {"statecode": 1, "statuscode": 2},  # deactivated
        {"msdynmkt_reason": "checked by marketing"},
    ],
    ids=["source", "deactivated", "reason"],
)
def test_a_marketer_touching_only_what_surrounds_the_value_is_not_the_persons_no(
    ledger: Ledger,
    config_path: Path,
    dv: DynamicsSandbox,  # noqa: F811
    edit: dict[str, object],
) -> None:
    _audited(dv)
    rid = _own_row_after_a_newer_opt_in(ledger, config_path, dv, "pat@example.test")
    dv.environment.update(CONSENTS, rid, edit, by=MARKETER)
    for _ in range(2):
        report = _run(ledger, config_path, dv)
        assert (report.counts.evidence_recorded, report.counts.state_changes) == (0, 0)
    assert _state(ledger, "pat@example.test") is ConsentStatus.GRANTED


def test_a_value_changed_and_set_back_by_the_person_is_their_no(
    ledger: Ledger,
    config_path: Path,
    dv: DynamicsSandbox,  # noqa: F811
) -> None:
    """Opted in and then Opted out again on a preference center, between two reads: the row says
    what consentsync wrote, but its history shows the person set it. Their no is recorded."""
    _audited(dv)
    rid = _own_row_after_a_newer_opt_in(ledger, config_path, dv, "pia@example.test")
    dv.environment.update(CONSENTS, rid, {"msdynmkt_value": OPTED_IN}, by=MARKETER)
    time.sleep(1.1)
    dv.environment.update(CONSENTS, rid, {"msdynmkt_value": 534120002}, by=MARKETER)
    report = _run(ledger, config_path, dv)
    assert report.counts.evidence_recorded == 1
    assert _state(ledger, "pia@example.test") is ConsentStatus.WITHDRAWN


def test_without_the_values_audit_history_an_edited_own_row_is_read_as_any_row(
    ledger: Ledger,
    config_path: Path,
    dv: DynamicsSandbox,  # noqa: F811
) -> None:
    """msdynmkt_value not audited: a marketer's edit cannot be told from the person's Opted in and
    Opted out again, and the person's no must not be lost: the row is read (documented limit)."""
    _audited(dv, value=False)
    rid = _own_row_after_a_newer_opt_in(ledger, config_path, dv, "una@example.test")
    dv.environment.update(CONSENTS, rid, {"msdynmkt_source": LOADED}, by=MARKETER)
    report = _run(ledger, config_path, dv)
    assert report.counts.evidence_recorded == 1
